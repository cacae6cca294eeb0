"""vitijax: facial vitiligo analysis of UV photographs in JAX/Flax."""

__version__ = "0.1.0"
