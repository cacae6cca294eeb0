"""Shared test set-up: the compilation cache, and the ../shared reference files (skip when absent)."""

from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import pytest

import launch  # noqa: F401  first: the entry points' XLA default, set before JAX starts, as in every command
from vitijax import compile_cache

compile_cache.enable()

# The slow tier: whatever trains a network (the tiny networks of a session, launch.train's own runs,
# multi-device and multi-process training), the benchmark, and full-resolution rendering. `pytest -m "not slow"`
# is the fast tier for an edit-test loop; README's command runs both.
SLOW_MODULES = ("test_train.py", "test_benchmark.py")
SLOW_FIXTURES = ("tiny_runs", "bundle")
SLOW_TESTS = ("test_full_paper_resolution_render", "test_imported_folder_builds_and_trains_with_grain_workers",
              "test_semi_supervised_run_resumes_the_teacher_bit_for_bit")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.path.name in SLOW_MODULES or item.originalname in SLOW_TESTS
                or any(f in item.fixturenames for f in SLOW_FIXTURES)):
            item.add_marker(pytest.mark.slow)

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


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, str]:
    """Training workdirs of the three tiny networks, trained once per session by launch.train's own function:
    'lesion' and 'face_mask' (DDRNet test width at 64x64, 40 and 150 steps) and 'face_box' (the face-box
    network's `tiny` config: pretrained encoder, 120 steps at 160x160)."""
    from launch.configs import face_box, test
    from vitijax.train import train_and_evaluate

    root = tmp_path_factory.mktemp("tiny_runs")
    runs = {}
    for name in ("lesion", "face_mask"):
        c = test.get_config()
        c.num_steps, c.eval_every, c.checkpoint_every = 40, 40, 40
        if name == "face_mask":  # long enough to learn the face (crop IoU ~0.8; all-face would score ~0.5)
            c.task = "face_mask"
            del c.input["mask_input"]  # the face-mask task takes the unmasked crop (and refuses the key)
            c.data.patients = 12
            c.num_steps, c.eval_every, c.checkpoint_every = 150, 150, 150
            c.optimizer.update(schedule="poly", warmup_steps=10, lr=3e-3)
        runs[name] = str(root / name)
        train_and_evaluate(c, runs[name])
    runs["face_box"] = str(root / "face_box")
    runs["face_box_result"] = train_and_evaluate(face_box.get_config("tiny"), runs["face_box"])
    return runs


@pytest.fixture(scope="session")
def bundle(tiny_runs, tmp_path_factory) -> str:
    """An inference bundle of the three tiny networks (launch.export's own function)."""
    from launch import export

    out = str(tmp_path_factory.mktemp("bundle") / "model")
    assert export.main(["--workdir", tiny_runs["lesion"], "--face-mask-workdir", tiny_runs["face_mask"],
                        "--face-box-workdir", tiny_runs["face_box"], "--out", out]) == 0
    return out
