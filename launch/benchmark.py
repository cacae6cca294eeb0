"""Speed of vitijax's DDRNet on this machine: ``python -m launch.benchmark [--quick] [--out FILE.json]``.

Rows (medians over repeated runs after warm-up; compile time measured apart):
  * eval forward images/s at 4x512x512 and 1x1024x1024, per variant;
  * train step (forward, backward, OHEM + 0.4 aux OHEM, AdamW) at 4x512x512;
  * achieved GFLOP/s from the official multiply-add counts (2 FLOP per MAC;
    36.28 / 143.06 / 281.12 GMAC at 1024x2048 for 23-slim / 23 / 39, scaled by
    pixels), and its share of this machine's float32 matrix-multiply rate,
    measured in the same run;
  * the input pipeline's images/s against what the train step consumes;
  * end-to-end analysis of one 2832x4240 photo: reported as not available
    until ``launch.analyze`` exists.
The device, versions and XLA flags are printed and written to the JSON.
``--quick`` runs 23-slim only with fewer repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

# Official conv MACs at 1024x2048 (nc=19, no aux), from the project's reference notes.
GMAC_1024x2048 = {"23-slim": 36.28, "23": 143.06, "39": 281.12}


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def matmul_gflops(repeats: int) -> float:
    """float32 GEMM rate of this device: 2048^3 multiply-adds, median of ``repeats``."""
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    med, _ = _median_time(lambda: f(a).block_until_ready(), repeats)
    return 2 * n**3 / med / 1e9


def bench_variant(variant: str, repeats: int, sizes) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from launch.configs.common import base_config
    from vitijax import sharding
    from vitijax.models.ddrnet import DDRNet, init_variables
    from vitijax.optim import make_optimizer
    from vitijax.train import compile_steps, create_train_state, make_model

    rows = []
    model = DDRNet(variant, 2, aux_head=False)
    variables = init_variables(model, jax.random.key(0))
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
    for b, h, w in sizes:
        x = jnp.asarray(np.random.default_rng(0).standard_normal((b, h, w, 3)), jnp.float32)
        t = time.perf_counter()
        fwd(variables, x).block_until_ready()
        compile_s = time.perf_counter() - t
        med, times = _median_time(lambda: fwd(variables, x).block_until_ready(), repeats)
        gflop = 2 * GMAC_1024x2048[variant] * (h * w) / (1024 * 2048) * b
        rows.append({"variant": variant, "what": f"eval forward {b}x{h}x{w}", "seconds": med,
                     "images_per_s": b / med, "gflops": gflop / med, "first_call_s": compile_s,
                     "runs": len(times)})
    # Train step at 4x512x512 with the trainer's own step (aux head on, OHEM, AdamW).
    c = base_config()
    c.model.variant = variant
    mesh = sharding.make_mesh(jax.devices()[:1])
    tm = make_model(c.model)
    tx, sched = make_optimizer(c.optimizer, 1000)
    state = create_train_state(tm, tx, (512, 512), 0, mesh)
    step, _ = compile_steps(tm, tx, c.loss, sched, mesh)
    r = np.random.default_rng(0)
    batch = sharding.global_batch({"image": r.standard_normal((4, 512, 512, 3)).astype(np.float32),
                                   "label": r.integers(0, 2, (4, 512, 512)).astype(np.int32)}, mesh)
    holder = {"state": state}

    def one():
        holder["state"], m = step(holder["state"], batch)
        jax.block_until_ready(m)

    t = time.perf_counter()
    one()
    compile_s = time.perf_counter() - t
    med, times = _median_time(one, repeats)
    gflop = 3 * 2 * GMAC_1024x2048[variant] * (512 * 512) / (1024 * 2048) * 4  # forward + ~2x for backward
    rows.append({"variant": variant, "what": "train step 4x512x512", "seconds": med, "images_per_s": 4 / med,
                 "gflops": gflop / med, "first_call_s": compile_s, "runs": len(times)})
    return rows


def bench_pipeline(repeats: int) -> dict:
    """grain training pipeline on in-memory synthetic crops at 512x512 (no PNG decoding), images/s."""
    import numpy as np

    from vitijax.data import synthetic
    from vitijax.data.pipeline import PipelineConfig, train_loader
    from vitijax.data.records import make_example

    src = []
    for i in range(8):
        s = synthetic.render(synthetic.make_patient(0, i), 0, synthetic.VIEWS[i % 3], (1024, 688))
        src.append(make_example(s.image, s.face_mask, s.vitiligo_mask, patient=s.patient_id, visit=0, view=s.view,
                                face_box=s.face_box))
    cfg = PipelineConfig(input_size=(512, 512))
    rates = []
    for rep in range(repeats):
        it = iter(train_loader(src, cfg, 4, seed=rep))
        next(it)
        t = time.perf_counter()
        for _ in range(8):
            next(it)
        rates.append(32 / (time.perf_counter() - t))
    return {"what": "input pipeline 512x512 (0 workers, in memory)", "images_per_s": float(np.median(rates)),
            "runs": repeats}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="23-slim only, 3 repeats")
    p.add_argument("--variants", nargs="+", choices=list(GMAC_1024x2048), help="default: all (quick: 23-slim)")
    p.add_argument("--repeats", type=int, help="timed runs per row (default 5; quick 3)")
    p.add_argument("--out", default="benchmark_out/benchmark.json")
    a = p.parse_args(argv)

    import jax

    from vitijax import compile_cache

    cache = compile_cache.enable()
    repeats = a.repeats or (3 if a.quick else 5)
    variants = a.variants or (["23-slim"] if a.quick else list(GMAC_1024x2048))
    dev = jax.devices()[0]
    env = {"device": f"{dev.platform}: {getattr(dev, 'device_kind', '')}", "devices": jax.device_count(),
           "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "compilation_cache": cache or "off"}
    print("  ".join(f"{k}: {v}" for k, v in env.items()), flush=True)
    peak = matmul_gflops(repeats)
    print(f"float32 matmul 2048^3: {peak:.1f} GFLOP/s (median of {repeats})", flush=True)
    rows = []
    for v in variants:
        for row in bench_variant(v, repeats, [(4, 512, 512), (1, 1024, 1024)]):
            row["share_of_matmul_peak"] = row["gflops"] / peak
            rows.append(row)
            print(f"{row['variant']:8s} {row['what']:26s} {row['seconds']:8.3f} s  {row['images_per_s']:7.2f} img/s  "
                  f"{row['gflops']:6.1f} GFLOP/s ({100 * row['share_of_matmul_peak']:4.1f}% of matmul)  "
                  f"first call {row['first_call_s']:.1f} s", flush=True)
    pipe = bench_pipeline(repeats)
    train = next(r for r in rows if r["what"].startswith("train") and r["variant"] == variants[0])
    print(f"{pipe['what']}: {pipe['images_per_s']:.1f} img/s vs {train['images_per_s']:.2f} img/s consumed by the "
          f"{variants[0]} train step ({pipe['images_per_s'] / train['images_per_s']:.0f}x headroom)", flush=True)
    analyze = {"what": "analyze one 2832x4240 photo", "status": "not available: launch.analyze is not built yet"}
    print(f"{analyze['what']}: {analyze['status']}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"environment": env, "matmul_gflops": peak, "rows": rows, "pipeline": pipe, "analyze": analyze},
                  f, indent=2)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
