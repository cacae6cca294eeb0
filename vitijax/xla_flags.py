"""vitijax's XLA defaults, measured on a 2-core CPU; applied by the ``launch/`` entry points.

XLA reads ``XLA_FLAGS`` once, when JAX starts its backend, so the defaults are
added to the environment when the ``launch`` package is imported (``python -m
launch.<name>`` imports it before anything else), never by ``import vitijax``:
a library import changes no process-wide setting. A flag already named in
``XLA_FLAGS`` is left as the user set it; ``VITIJAX_XLA_DEFAULTS=off`` adds
none. A program that imports JAX and runs computations before importing
``launch`` runs without them (XLA has read its flags by then).

The one default: this jaxlib hands matrix multiplies and, above a size
threshold, convolutions to YNNPACK; vitijax keeps the multiplies there and
gives convolutions back to XLA's Eigen kernels. DDRNet's narrow high-resolution
convolutions (3-64 channels) run 1.3-3x faster in Eigen, its wide low-resolution
ones up to 1.9x slower; over the whole model the DDRNet-23-slim eval forward at
4x512x512 goes from 0.176 s to 0.117 s and its train step from 0.88 s to 0.84 s
(docs/benchmarks.md). The flag is an XLA CPU
option that GPU compilation ignores. XLA stops at start-up on a flag it does
not know, so the default is applied only with the jaxlib it was measured on.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import MutableMapping

DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
MEASURED_WITH_JAXLIB = "0.10.2"


def apply_defaults(env: MutableMapping[str, str] = os.environ) -> str:
    """Adds each of ``DEFAULTS`` that ``env["XLA_FLAGS"]`` does not name; returns the resulting flags."""
    flags = env.get("XLA_FLAGS", "")
    if env.get("VITIJAX_XLA_DEFAULTS", "").lower() == "off":
        return flags
    try:
        jaxlib = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        jaxlib = None
    if jaxlib != MEASURED_WITH_JAXLIB:
        return flags
    missing = {name: value for name, value in DEFAULTS.items() if f"--{name}=" not in flags}
    if not missing:
        return flags
    flags = " ".join([flags, *(f"--{name}={value}" for name, value in missing.items())]).strip()
    env["XLA_FLAGS"] = flags
    return flags
