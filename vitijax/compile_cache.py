"""JAX's persistent compilation cache, on by default for every vitijax entry point.

A DDRNet train step takes tens of seconds to compile on a 2-core CPU; the cache
turns the second start of the same shapes into a disk read. The directory is
``$VITIJAX_JAX_CACHE`` if set, else ``~/.cache/vitijax/jax``; set
``VITIJAX_JAX_CACHE=off`` to disable it.
"""

from __future__ import annotations

import os

import jax

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "vitijax", "jax")


def enable(directory: str | None = None) -> str | None:
    """Points JAX's persistent cache at ``directory``; returns the directory used (None if off)."""
    directory = directory or os.environ.get("VITIJAX_JAX_CACHE") or DEFAULT_DIR
    if directory.lower() == "off":
        return None
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    # Cache everything that took noticeable time; tiny programs are cheaper to recompile.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
