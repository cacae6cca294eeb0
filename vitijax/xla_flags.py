"""vitijax's XLA defaults, measured on a 2-core CPU; applied when ``vitijax`` is imported.

XLA reads ``XLA_FLAGS`` once, when JAX first starts its backend, so the
defaults are added to the environment at ``import vitijax``, before any
computation. A flag already named in ``XLA_FLAGS`` is left as the user set it;
``VITIJAX_XLA_DEFAULTS=off`` adds none. If JAX ran a computation before vitijax
was imported, the defaults have no effect in that process.

The one default: YNNPACK, which this jaxlib uses for matrix multiplies and,
above a size threshold, for convolutions, keeps the multiplies and hands
convolutions back to XLA's Eigen kernels. DDRNet's narrow convolutions
(3-64 channels at high resolution) run 1.3-2.2x faster in Eigen, which
makes the DDRNet-23-slim eval forward at 4x512x512 0.18 s -> 0.12 s and the
23-slim train step 0.94 s -> 0.84 s (docs/benchmarks.md). The flag is an XLA CPU
option; GPU compilation ignores it. It is tied to the pinned jaxlib: XLA stops
at start-up on a flag it does not know.
"""

from __future__ import annotations

import os
from typing import MutableMapping

DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def apply_defaults(env: MutableMapping[str, str] = os.environ) -> str:
    """Adds each of ``DEFAULTS`` that ``env["XLA_FLAGS"]`` does not name; returns the resulting flags."""
    flags = env.get("XLA_FLAGS", "")
    if env.get("VITIJAX_XLA_DEFAULTS", "").lower() == "off":
        return flags
    for name, value in DEFAULTS.items():
        if f"--{name}=" not in flags:
            flags = f"{flags} --{name}={value}".strip()
    env["XLA_FLAGS"] = flags
    return flags
