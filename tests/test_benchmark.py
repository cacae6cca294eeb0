"""vitijax's XLA defaults take effect, and ``launch.benchmark --quick`` prints and writes every row."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from vitijax import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG = "xla_cpu_experimental_ynn_fusion_type"


def test_defaults_respect_the_users_flags_and_the_off_switch():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_flags.apply_defaults(env) == (
        f"--xla_force_host_platform_device_count=2 --{FLAG}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT")
    assert env["XLA_FLAGS"].endswith("INDIVIDUAL_DOT")
    mine = {"XLA_FLAGS": f"--{FLAG}=LIBRARY_FUSION_TYPE_DOT"}
    assert xla_flags.apply_defaults(mine) == f"--{FLAG}=LIBRARY_FUSION_TYPE_DOT"
    off = {"VITIJAX_XLA_DEFAULTS": "off"}
    assert xla_flags.apply_defaults(off) == "" and "XLA_FLAGS" not in off


def _python(args: list[str], timeout: int, **env: str) -> subprocess.CompletedProcess:
    """``python ARGS`` in the repository without this process's XLA_FLAGS (the child sets its own)."""
    clean = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**clean, "PYTHONPATH": ROOT, **env},
                          capture_output=True, text=True, timeout=timeout)


def _compiled(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


CONV_HLO = """
import jax, jax.numpy as jnp
from jax import lax
import vitijax
x, k = jnp.ones((1, 64, 64, 32)), jnp.ones((3, 3, 32, 32))
print(jax.jit(lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME",
              dimension_numbers=("NHWC", "HWIO", "NHWC"))).lower(x, k).compile().as_text())
"""


def test_convolutions_leave_ynnpack_and_matmuls_stay():
    """This process imported vitijax before its first computation (conftest), so the default is live:
    a DDRNet-sized convolution compiles to XLA's own kernel, and a matmul keeps YNNPACK. The control,
    a process with the defaults off, shows that this jaxlib would give that convolution to YNNPACK
    (which makes the DDRNet-23-slim forward 1.5x slower)."""
    if jax.devices()[0].platform != "cpu":
        pytest.skip("an XLA CPU option: nothing to check on another backend")
    x, k = jnp.ones((1, 64, 64, 32)), jnp.ones((3, 3, 32, 32))
    conv = _compiled(lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                           dimension_numbers=("NHWC", "HWIO", "NHWC")), x, k)
    assert "convolution(" in conv and "__ynn_fusion" not in conv
    a = jnp.ones((256, 256))
    assert "__ynn_fusion" in _compiled(lambda a: a @ a, a)
    control = _python(["-c", CONV_HLO], 300, VITIJAX_XLA_DEFAULTS="off")
    assert control.returncode == 0, control.stderr[-2000:]
    assert "__ynn_fusion" in control.stdout


def test_quick_benchmark_prints_and_writes_every_row(tmp_path):
    out = tmp_path / "bench.json"
    # The child gets no XLA_FLAGS of ours, so the flags it prints are the ones it set itself.
    r = _python(["-m", "launch.benchmark", "--quick", "--repeats", "1", "--face-photos", "2", "--no-wide",
                 "--no-bf16", "--out", str(out)], 900)
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout
    for row in ["xla_flags: ", "float32 matmul 2048^3", "eval forward 4x512x512", "eval forward 1x1024x1024",
                "train step 4x512x512", "input pipeline", "analyze one 2832x4240 photo", "face finder RetinaFace"]:
        assert row in text, f"{row!r} missing from:\n{text}"
    assert f"--{FLAG}=" in text  # the XLA flags in force are printed
    res = json.loads(out.read_text())
    whats = ["eval forward 4x512x512", "eval forward 1x1024x1024", "train step 4x512x512"]
    mine = [r for r in res["rows"] if not r["what"].startswith("PyTorch")]
    assert res["matmul_gflops"] > 0 and [r["what"] for r in mine] == whats
    assert all(row["seconds"] > 0 and row["share_of_matmul_peak"] > 0 for row in res["rows"])
    try:
        import torch  # noqa: F401  the test extra installs it: then each row has its PyTorch twin, timed in turns
    except ImportError:
        return
    torch_rows = {r["what"]: r for r in res["rows"] if r["what"].startswith("PyTorch eager: ")}
    assert sorted(torch_rows) == sorted(f"PyTorch eager: {w}" for w in whats)
    for r in mine:
        assert r["vs_pytorch"] == pytest.approx(torch_rows[f"PyTorch eager: {r['what']}"]["seconds"] / r["seconds"])
    assert "x PyTorch eager's speed" in text and res["environment"]["torch_threads"] >= 1
    assert res["analyze"]["status"] == "ok" and 0 < res["analyze"]["peak_rss_gb"] < 8
    assert res["face"]["RetinaFace"]["photos_per_view"] == 2


def test_ablation_switches_each_rewrite_on_in_turn_and_they_change_rounding_only():
    """``--ablation``: one train step per rewrite switched on, the first row autodiff of the plain
    formulas. A stand-in that failed to reach the traced step would leave two rows with the same
    program; a rewrite that changed the mathematics would move the first step's loss or gradient.
    (bench_ablation itself refuses steps that were traced again after their patches.)"""
    from launch.benchmark import bench_ablation
    from vitijax.models import custom_grads

    rows = bench_ablation("23-tiny", 1, (2, 64, 64))
    assert [r["what"].split(": ", 1)[1][:2] for r in rows] == ["be", "+ ", "+ ", "+ ", "+ "]
    assert rows[0]["speedup"] == 1.0 and all(r["seconds"] > 0 for r in rows)
    shipped = rows[-1]
    for r in rows[:-1]:
        assert r["loss"] == pytest.approx(shipped["loss"], rel=1e-5)
        assert r["grad_norm"] == pytest.approx(shipped["grad_norm"], rel=1e-4)
    # Every stand-in reached the traced step: each row's program differs from every other's.
    assert len({r["program"] for r in rows}) == len(rows)
    # And the patches are gone afterwards.
    assert custom_grads.batch_norm_train.__class__.__name__ == "custom_vjp"
