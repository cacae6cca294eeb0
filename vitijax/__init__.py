"""vitijax: facial vitiligo analysis of UV photographs in JAX/Flax."""

from vitijax import xla_flags as _xla_flags

__version__ = "0.2.0"

# Before any JAX computation: XLA reads its flags once, at backend start (see vitijax.xla_flags).
_xla_flags.apply_defaults()
