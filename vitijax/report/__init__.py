"""Pictures and reports: overlays, grids, plots, HTML."""
