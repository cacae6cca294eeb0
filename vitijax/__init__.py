"""vitijax: facial vitiligo analysis of UV photographs in JAX/Flax.

Importing the library changes no process-wide setting; the ``launch/``
entry points apply vitijax's measured XLA CPU default (:mod:`vitijax.xla_flags`).
"""

__version__ = "0.3.0"
