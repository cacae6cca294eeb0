"""Command-line entry points: ``python -m launch.<name>``.

Importing this package (which ``python -m launch.<name>`` does first, before
JAX starts) applies vitijax's measured XLA CPU default to this process
(:mod:`vitijax.xla_flags`); the library itself changes no process-wide setting.
"""

from vitijax import xla_flags as _xla_flags

_xla_flags.apply_defaults()
