"""Shared test set-up: the compilation cache, and the ../shared reference files (skip when absent)."""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import pytest

from vitijax import compile_cache

compile_cache.enable()

REFERENCE_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "reference"
REFERENCE_NPZ = REFERENCE_DIR / "ddrnet23slim_ref.npz"
REFERENCE_MD5 = "e2b7f8eeed82345c437b4f39f51ed1a6"


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
    if not REFERENCE_NPZ.is_file():
        pytest.skip(f"reference files not found at {REFERENCE_DIR} (../shared is absent)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def reference(reference_dir) -> dict[str, np.ndarray]:
    """Every array of ddrnet23slim_ref.npz, checked against its published md5."""
    md5 = hashlib.md5(REFERENCE_NPZ.read_bytes()).hexdigest()
    assert md5 == REFERENCE_MD5, f"{REFERENCE_NPZ} has md5 {md5}, expected {REFERENCE_MD5}"
    with np.load(REFERENCE_NPZ, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def random_variables(shapes, seed: int = 0):
    """Numpy arrays of the given abstract variables tree, distinct values everywhere."""
    import jax

    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
