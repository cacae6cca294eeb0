"""Review and correction of an analysis in the browser (``python -m launch.review``).

:mod:`~vitijax.review.corrections` stores, audits, scores and exports a reviewer's corrections;
:mod:`~vitijax.review.server` is the local web server; ``static/`` the page (plain JavaScript on a
canvas, no build step, nothing fetched from the internet).
"""
