"""Speed of vitijax's DDRNet on this machine: ``python -m launch.benchmark [--quick] [--out FILE.json]``.

Rows (medians over repeated runs after warm-up; compile time measured apart):
  * eval forward images/s at 4x512x512 and 1x1024x1024, per variant, and with
    ``--wide`` (default on a GPU) at 1x1024x2048, the paper's 102 FPS anchor;
  * train step (forward, backward, OHEM + 0.4 aux OHEM, AdamW) at 4x512x512, and
    with ``--bf16`` (default on a GPU) the same in bfloat16 activations;
  * achieved GFLOP/s from the official multiply-add counts (2 FLOP per MAC;
    36.28 / 143.06 / 281.12 GMAC at 1024x2048 for 23-slim / 23 / 39, scaled by
    pixels), and its share of this machine's float32 matrix-multiply rate,
    measured in the same run;
  * the input pipeline's images/s against what the train step consumes;
  * end-to-end analysis of one 2832x4240 PNG (read, face box, face mask,
    lesion network, full-resolution masks and overlay written), seconds and
    the peak RSS of the process that runs it;
  * with ``--ablation``: the train step with its exact rewrites (vitijax/models/custom_grads.py,
    losses.pick_class) switched on one after another, timed in turns, so the output says what
    each bought;
  * with ``--face-photos N`` (quick: 10): recall of RetinaFace and, with
    ``--face-box DIR``, of the face-box network on N synthetic photos per
    view, and their seconds per 2832x4240 photo.
The device, versions and XLA flags are printed and written to the JSON.
``--quick`` runs 23-slim only with fewer repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Sequence

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


def _paired_medians(fns: dict, repeats: int) -> dict[str, tuple[float, list[float]]]:
    """Each of ``fns`` timed once per round, in turn, ``repeats`` rounds: {name: (median s, times)}. Taking
    turns puts both sides of a ratio under the same load of a shared machine."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: (statistics.median(v), v) for k, v in times.items()}


def torch_threads() -> int | None:
    """PyTorch's intra-op threads for the PyTorch rows (as many as the cores this process may use, XLA's own
    count), or None when torch is not installed (the rows are then left out)."""
    try:
        import torch
    except ImportError:
        return None
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(n)
    return torch.get_num_threads()


def bench_variant(variant: str, repeats: int, sizes, train_dtypes=("float32",), with_torch: bool = False) -> list[dict]:
    """Eval-forward rows at each (b, h, w) of ``sizes``, then a 4x512x512 train-step row per dtype.

    bfloat16 computes activations in bfloat16 with float32 parameters, batch
    statistics and loss (``model.dtype`` of the training config). ``with_torch``: each float32 row is
    timed in turns with PyTorch eager running the same work (:mod:`vitijax.models.torch_ddrnet`: same
    network, OHEM(main) + 0.4 OHEM(aux), AdamW), which adds a "PyTorch eager" row and gives the vitijax
    row ``vs_pytorch`` = PyTorch seconds / vitijax seconds (above 1: vitijax is faster).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from launch.configs.common import base_config
    from vitijax.models.ddrnet import DDRNet, init_variables

    if with_torch:
        import torch

        from vitijax.models import torch_ddrnet

    def add(rows, what, b, med, times, gflop, first, pair=None):
        row = {"variant": variant, "what": what, "seconds": med, "images_per_s": b / med, "gflops": gflop / med,
               "first_call_s": first, "runs": len(times)}
        rows.append(row)
        if pair is not None:
            t_med, t_times = pair
            row["vs_pytorch"] = t_med / med
            rows.append({"variant": variant, "what": f"PyTorch eager: {what}", "seconds": t_med,
                         "images_per_s": b / t_med, "gflops": gflop / t_med, "first_call_s": math.nan,
                         "runs": len(t_times), "torch_threads": torch.get_num_threads()})

    rows = []
    model = DDRNet(variant, 2, aux_head=False)
    variables = init_variables(model, jax.random.key(0))
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
    if with_torch:
        t_model = torch_ddrnet.DDRNet(variant, 2, aux_head=False).eval()
    for b, h, w in sizes:
        x_np = np.random.default_rng(0).standard_normal((b, h, w, 3)).astype(np.float32)
        x = jnp.asarray(x_np)
        t = time.perf_counter()
        fwd(variables, x).block_until_ready()
        compile_s = time.perf_counter() - t
        fns = {"vitijax": lambda: fwd(variables, x).block_until_ready()}
        if with_torch:
            x_t = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())

            def torch_fwd():
                with torch.inference_mode():
                    t_model(x_t)

            torch_fwd()  # warm-up
            fns["torch"] = torch_fwd
        med = _paired_medians(fns, repeats)
        gflop = 2 * GMAC_1024x2048[variant] * (h * w) / (1024 * 2048) * b
        add(rows, f"eval forward {b}x{h}x{w}", b, *med["vitijax"], gflop, compile_s, med.get("torch"))
    # Train step at 4x512x512 with the trainer's own step (aux head on, OHEM, AdamW).
    r = np.random.default_rng(0)
    images = r.standard_normal((4, 512, 512, 3)).astype(np.float32)
    labels = r.integers(0, 2, (4, 512, 512)).astype(np.int32)
    c = base_config()
    for dtype in train_dtypes:
        one, compile_s, _ = _train_step(variant, dtype, images, labels)
        fns = {"vitijax": one}
        if with_torch and dtype == "float32":
            t_train = torch_ddrnet.DDRNet(variant, 2, aux_head=True)
            t_step = torch_ddrnet.train_step_fn(
                t_train, torch.optim.AdamW(t_train.parameters()), thresh=c.loss.thresh, min_kept=c.loss.min_kept,
                ignore_index=c.loss.ignore_index, aux_weight=c.loss.aux_weight)
            x_t = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
            y_t = torch.from_numpy(labels.astype(np.int64))
            t_step(x_t, y_t)  # warm-up
            fns["torch"] = lambda: t_step(x_t, y_t)
        med = _paired_medians(fns, repeats)
        gflop = 3 * 2 * GMAC_1024x2048[variant] * (512 * 512) / (1024 * 2048) * 4  # forward + ~2x for backward
        what = "train step 4x512x512" + ("" if dtype == "float32" else f" {dtype}")
        add(rows, what, 4, *med["vitijax"], gflop, compile_s, med.get("torch"))
    return rows


def _train_step(variant: str, dtype: str, images, labels, fingerprint: bool = False):
    """The trainer's own lesion train step (aux head, OHEM + 0.4 aux OHEM, AdamW) on one fixed batch.

    ``images`` [b, h, w, 3] float32, ``labels`` [b, h, w] int32. Returns (a function that runs one
    step to completion, the seconds of the first call (compilation included), that call's metrics
    as floats). Compiles at the first call, so module functions patched around this call are the
    ones traced. ``fingerprint``: the function also gets ``program``, a hash of the traced step's
    StableHLO (what the rewrites change).
    """
    import jax

    from launch.configs.common import base_config
    from vitijax import sharding, tasks
    from vitijax.optim import make_optimizer
    from vitijax.train import compile_steps, create_train_state

    c = base_config()
    c.model.variant, c.model.dtype = variant, dtype
    mesh = sharding.make_mesh(jax.devices()[:1])
    lesion = tasks.get("lesion")
    model = lesion.build_model(lesion.model_meta(c.model), dtype=dtype)
    tx, sched = make_optimizer(c.optimizer, 1000)
    state = create_train_state(model, tx, images.shape[1:3], 0, mesh)
    step, _ = compile_steps(lesion, model, tx, c.loss, sched, mesh)
    batch = sharding.global_batch({"image": images, "label": labels}, mesh)
    holder = {"state": state}

    def one():
        holder["state"], m = step(holder["state"], batch)
        return jax.block_until_ready(m)

    if fingerprint:
        one.program = hashlib.sha256(step.lower(holder["state"], batch).as_text().encode()).hexdigest()[:16]
    t = time.perf_counter()
    first = one()
    one.step = step  # for checks on what was compiled (bench_ablation)
    return one, time.perf_counter() - t, {k: float(v) for k, v in first.items()}


def _ablations():
    """The train step's exact rewrites, switched on one after another: (what, {(module, name): stand-in})
    where each stand-in is the plain formulation autodiff differentiates (the code before the rewrite)."""
    import jax.numpy as jnp
    from jax import lax

    from vitijax import losses
    from vitijax.models import custom_grads

    def bn_autodiff(x, scale, bias, epsilon):
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axes)
        var = jnp.mean(jnp.square(x - mean), axes)
        return (x - mean) * (scale * lax.rsqrt(var + epsilon)) + bias, mean, var

    before = {(custom_grads, "batch_norm_train"): bn_autodiff,
              (custom_grads, "conv3x3_stride2"): custom_grads._conv_s2,  # noqa: SLF001 (autodiff's own gradient)
              (custom_grads, "_channel_sum"): lambda v: jnp.sum(v, tuple(range(v.ndim - 1))),
              (losses, "pick_class"): lambda v, t: jnp.take_along_axis(v, t[..., None], axis=-1)[..., 0]}
    order = [("batch norm with the textbook gradient", (custom_grads, "batch_norm_train")),
             ("stride-2 input gradients as sub-pixel convolutions", (custom_grads, "conv3x3_stride2")),
             ("per-channel sums as row-then-column matrix-vector products", (custom_grads, "_channel_sum")),
             ("the true class's value by select-and-sum, not a gather", (losses, "pick_class"))]
    steps = [("before: autodiff of the plain formulas", dict(before))]
    for i, (what, _) in enumerate(order):
        steps.append((f"+ {what}", {key: before[key] for _, key in order[i + 1:]}))
    return steps


def bench_ablation(variant: str, repeats: int, size: tuple[int, int, int] = (4, 512, 512)) -> list[dict]:
    """What each exact rewrite of the train step bought: one compiled step per row of :func:`_ablations`
    (the rewrites switched on one after another), all timed in turns in this process on the same
    batch and initial state. Each row gives its median seconds, its speed against the first row,
    the first step's loss and gradient norm (the rewrites change rounding only) and a fingerprint of
    the traced program."""
    from unittest import mock

    import numpy as np

    b, h, w = size
    r = np.random.default_rng(0)
    images = r.standard_normal((b, h, w, 3)).astype(np.float32)
    labels = r.integers(0, 2, (b, h, w)).astype(np.int32)
    fns, firsts = {}, {}
    for what, stand_ins in _ablations():
        with contextlib.ExitStack() as stack:
            for (module, name), fn in stand_ins.items():
                stack.enter_context(mock.patch.object(module, name, fn))
            fns[what], _, firsts[what] = _train_step(variant, "float32", images, labels, fingerprint=True)
    med = _paired_medians(fns, repeats)
    # Each step must have been compiled once, inside its patches: a retrace after them would time the
    # shipped code under another row's name.
    retraced = [what for what, fn in fns.items() if fn.step._cache_size() != 1]  # noqa: SLF001
    if retraced:
        raise RuntimeError(f"the ablation's train steps were traced again after their patches: {retraced}")
    base = med[next(iter(med))][0]
    return [{"variant": variant, "what": f"train step {b}x{h}x{w}: {what}", "seconds": med[what][0],
             "speedup": base / med[what][0], "runs": len(med[what][1]), "loss": firsts[what]["loss"],
             "grad_norm": firsts[what]["grad_norm"], "program": fns[what].program} for what in fns]


def bench_pipeline(repeats: int) -> dict:
    """grain training pipeline on in-memory synthetic crops at 512x512 (no PNG decoding), images/s."""
    import numpy as np

    from vitijax.data import synthetic
    from vitijax.contract import InputContract
    from vitijax.data.pipeline import Augment, train_loader
    from vitijax.data.records import make_example

    src = []
    for i in range(8):
        s = synthetic.render(synthetic.make_patient(0, i), 0, synthetic.VIEWS[i % 3], (1024, 688))
        src.append(make_example(s.image, s.face_mask, s.vitiligo_mask, patient=s.patient_id, visit=0, view=s.view,
                                face_box=s.face_box))
    contract = InputContract(size=(512, 512), mask_input=True)
    rates = []
    for rep in range(repeats):
        it = iter(train_loader(src, "lesion", contract, Augment(), 4, seed=rep))
        next(it)
        t = time.perf_counter()
        for _ in range(8):
            next(it)
        rates.append(32 / (time.perf_counter() - t))
    return {"what": "input pipeline 512x512 (0 workers, in memory)", "images_per_s": float(np.median(rates)),
            "runs": repeats}


def _peak_rss_gb() -> float:
    """This process's peak resident memory in GiB.

    Linux's ``VmHWM`` is the high-water mark of this process's own address space. ``ru_maxrss`` is not:
    it survives ``exec``, so a child started by a large parent (the benchmark, after the DDRNet-39 rows)
    reports the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux; not on macOS


def analyze_probe(photo_path: str, out_dir: str, repeats: int) -> dict:
    """Runs in a fresh process (peak RSS is per process): one photo through launch.analyze's own steps
    (read, face box, crop, face mask, lesion network, paste back, write PNGs and overlay), DDRNet-23-slim
    at 512x512 for both segmenters, the face-box network for the box. Weights are random (speed does not
    depend on them; the face-box head starts at the centred box of half the photo, a realistic crop)."""
    import jax

    from launch.analyze import analyze_batch
    from vitijax import compile_cache, face, face_mask
    from vitijax.data.photos import PhotoInput
    from vitijax.models.ddrnet import DDRNet, init_variables
    from vitijax.models.facebox import FaceBoxNet
    from vitijax.pipeline import Analyzer
    from vitijax.contract import InputContract
    from vitijax.segmenter import Segmenter

    compile_cache.enable()

    def seg(task, mask_input):
        v = init_variables(DDRNet("23-slim", 2, True), jax.random.key(0), (64, 64))
        meta = {"model": "ddrnet", "variant": "23-slim", "num_classes": 2, "aux_head": True, "task": task,
                "input": InputContract(size=(512, 512), mask_input=mask_input).to_meta()}
        return Segmenter(v, meta, where=f"random {task} network")

    fb = FaceBoxNet()
    fb_vars = fb.init(jax.random.key(0), jax.numpy.zeros((1, 320, 320, 3)))
    # threshold 0: a random presence head must not stop the chain before the stages being timed
    box = face.FaceBoxModel(fb_vars, {"model": "facebox", "pool": 5, "hidden": 256, "presence_threshold": 0.0,
                                      "task": "face_box", "input": InputContract(
                                          size=(320, 320), source="photo", normalisation="retinaface").to_meta()},
                            where="random face-box network")
    # face_mask_range None: a random face-mask network draws no face shape, and every stage must be timed
    analyzer = Analyzer(seg("lesion", True), face_mask.make("network", seg("face_mask", False)), box, face_mask_range=None)
    inp = [PhotoInput(photo_path, "bench", 0, "front")]
    t0 = time.perf_counter()
    row = analyze_batch(analyzer, inp, out_dir, False)[0]
    first = time.perf_counter() - t0
    med, times = _median_time(lambda: analyze_batch(analyzer, inp, out_dir, False), repeats)
    return {"what": "analyze one 2832x4240 photo (23-slim, 512x512 inputs)", "seconds": med, "first_call_s": first,
            "runs": len(times), "peak_rss_gb": _peak_rss_gb(),
            "status": row["status"], "crop_box": row.get("crop_box")}


def bench_analyze(repeats: int) -> dict:
    """:func:`analyze_probe` in a subprocess on a synthetic 2832x4240 PNG."""
    import subprocess
    import tempfile

    from PIL import Image

    from vitijax.data import synthetic

    with tempfile.TemporaryDirectory() as tmp:
        photo = os.path.join(tmp, "front.png")
        Image.fromarray(synthetic.render(synthetic.make_patient(0, 0), 0, "front", synthetic.PAPER_SIZE).image).save(
            photo, compress_level=1)
        code = (f"import json; from launch.benchmark import analyze_probe; "
                f"print('RESULT', json.dumps(analyze_probe({photo!r}, {tmp!r}, {repeats})))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"what": "analyze one 2832x4240 photo", "status": f"failed: {proc.stderr.strip()[-500:]}"}
    return json.loads(lines[-1][len("RESULT "):])


def bench_archive(bundle: str, photos_dir: str, out_dir: str, processes: Sequence[int], repeats: int,
                  batch_size: int = 4) -> dict:
    """``launch.analyze`` over a folder of full-resolution photos, whole commands, with each process count
    of ``processes`` in turn for ``repeats`` rounds: wall seconds and photos/s (median), and whether every
    count gave the same results (each photo's ratio, flags and the bytes of its mask PNGs) as the first."""
    import csv
    import hashlib
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def results(out):
        with open(os.path.join(out, "results.csv")) as f:
            rows = {r["file"]: (r["ratio"], r["flags"], r["status"]) for r in csv.DictReader(f)}
        masks = {}
        for d, _, files in os.walk(os.path.join(out, "photos")):
            for name in files:
                if name.endswith("_mask.png"):
                    with open(os.path.join(d, name), "rb") as f:
                        masks[os.path.relpath(os.path.join(d, name), out)] = hashlib.md5(f.read()).hexdigest()
        return rows, masks

    seconds = {n: [] for n in processes}
    got = {}
    for rep in range(repeats):
        for n in processes:
            out = os.path.join(out_dir, f"processes{n}")
            cmd = [sys.executable, "-m", "launch.analyze", "--model", bundle, photos_dir, "--out", out,
                   "--processes", str(n), "--batch-size", str(batch_size)]
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
            seconds[n].append(time.perf_counter() - t)
            if proc.returncode:
                return {"what": "analyze a folder", "status": f"failed with {n} process(es): {proc.stderr[-500:]}"}
            got[n] = results(out)
    first = processes[0]
    count = len(got[first][0])
    return {"what": f"launch.analyze over {count} photos", "photos": count, "batch_size": batch_size,
            "by_processes": {str(n): {"seconds": statistics.median(v), "photos_per_s": count / statistics.median(v),
                                      "runs": len(v), "same_results_as_1": got[n] == got[first]}
                             for n, v in seconds.items()}}


def bench_face(face_box_dir: str | None, per_view: int, repeats: int) -> dict:
    """Face finders on synthetic photos: recall (IoU >= 0.5 with the true face box) on ``per_view`` photos
    per view at 1024x688, and seconds per full-resolution 2832x4240 photo (median of ``repeats``)."""
    from vitijax import face
    from vitijax.data import synthetic
    from vitijax.evaluate import box_iou

    finders = {"RetinaFace": lambda img: face.choose_face(face.detect(img))}
    if face_box_dir:
        model = face.FaceBoxModel.load(face_box_dir)
        finders["face-box network"] = model
    found = {k: {v: 0 for v in synthetic.VIEWS} for k in finders}
    for i in range(per_view):
        patient = synthetic.make_patient(1000, i)  # seed 1000: patients no data set config trains on
        for view in synthetic.VIEWS:
            s = synthetic.render(patient, i % 3, view, (1024, 688))
            for name, fn in finders.items():
                det = fn(s.image)
                found[name][view] += int(det is not None and box_iou(det.box, s.face_box) >= 0.5)
    full = synthetic.render(synthetic.make_patient(1000, 0), 0, "front", synthetic.PAPER_SIZE).image
    out = {}
    for name, fn in finders.items():
        fn(full)  # warm-up: compilation for this size
        med, _ = _median_time(lambda: fn(full), repeats)
        out[name] = {"recall_by_view": {v: n / per_view for v, n in found[name].items()}, "photos_per_view": per_view,
                     "seconds_per_2832x4240_photo": med}
    return out


def bench_review(results: str, repeats: int) -> dict:
    """The review server (launch.review) over HTTP on a copy of the analysis folder ``results`` (nothing is
    written to it): serving a photo (first, then from the server's cache), recomputing the figures from an
    edited lesion mask (the first time includes registering the photo onto its baseline) and saving a
    correction, on the first follow-up photo of the record (else the first with masks). Seconds."""
    import shutil
    import tempfile
    import urllib.request

    import numpy as np

    from vitijax.data.annotations import mask_to_runs
    from vitijax.review import corrections, server

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "analysis")
        shutil.copytree(results, out, ignore=shutil.ignore_patterns("review"))
        record = corrections.study_lib.load(out)
        for p in record.photos:  # an analysis already reviewed: its reviews' files were left behind
            p.pop("review", None)
        corrections.study_lib.save(out, record)
        app, token = server.make_app(out)
        sock = server.bind()
        srv = server.serve_in_thread(app, sock)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"

        def call(path, body=None):
            req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                         headers={"X-Review-Token": token, "Content-Type": "application/json"})
            with urllib.request.urlopen(req) as r:
                return r.read()

        try:
            c = corrections.Corrections(out)
            study = c.study()
            editable = [i for i, p in enumerate(study.photos) if "face_mask" in (p.get("files") or {})]
            follow = [i for i in editable if (study.photos[i].get("follow_up") or {}).get("role") == "follow-up"]
            i = (follow or editable)[0]
            row = study.photos[i]
            lesion = c.model_masks(row)["lesion"]
            ys, xs = np.nonzero(c.model_masks(row)["face"])
            cy, cx = int(ys.mean()), int(xs.mean())
            lesion[cy - 50:cy + 50, cx - 50:cx + 50] = 1  # a square painted in the middle of the face
            masks = {"lesion": {"size": list(lesion.shape), "counts": mask_to_runs(lesion)}}
            t = time.perf_counter()
            call(f"/api/photo/{i}/image")
            first_image = time.perf_counter() - t
            cached, _ = _median_time(lambda: call(f"/api/photo/{i}/image"), repeats)
            t = time.perf_counter()
            call(f"/api/photo/{i}/preview", {"masks": masks})
            first_preview = time.perf_counter() - t
            preview, _ = _median_time(lambda: call(f"/api/photo/{i}/preview", {"masks": masks}), repeats)
            revision = iter(range(repeats))
            save, _ = _median_time(lambda: call(f"/api/photo/{i}/review", {
                "reviewer": "benchmark", "base_revision": next(revision), "status": "corrected", "comment": "",
                "masks": masks}), repeats)
        finally:
            srv.should_exit = True
    return {"what": f"review server, {row['width']}x{row['height']} photo ({'follow-up' if follow else 'no follow-up'})",
            "photo_first_s": first_image, "photo_cached_s": cached, "recompute_first_s": first_preview,
            "recompute_s": preview, "save_s": save, "runs": repeats}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="23-slim only, 3 repeats")
    p.add_argument("--variants", nargs="+", choices=list(GMAC_1024x2048), help="default: all (quick: 23-slim)")
    p.add_argument("--repeats", type=int, help="timed runs per row (default 5; quick 3)")
    p.add_argument("--wide", action=argparse.BooleanOptionalAction, default=None,
                   help="also the forward at 1x1024x2048, the paper's speed anchor (default: on a GPU)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="also a bfloat16 train-step row (default: on a GPU)")
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=None,
                   help="PyTorch eager rows timed in turns with vitijax's float32 rows (default: when torch is "
                        "installed, as with the test extra)")
    p.add_argument("--ablation", action="store_true",
                   help="also the train step of the first variant with its exact rewrites switched on one by one")
    p.add_argument("--out", default="benchmark_out/benchmark.json")
    p.add_argument("--archive", metavar="BUNDLE", help="also time launch.analyze with 1 and 2 processes over "
                   "--archive-photos synthetic 2832x4240 photos (new patients) with this inference bundle")
    p.add_argument("--archive-photos", type=int, default=36, help="photos for --archive (3 views each patient)")
    p.add_argument("--review", metavar="RESULTS", help="also time the review server (launch.review) on a copy of "
                   "this launch.analyze output folder")
    p.add_argument("--face-box", help="a trained face-box network (workdir or checkpoint) for the face rows")
    p.add_argument("--face-photos", type=int,
                   help="synthetic photos per view for the face-finder recall rows (default: skipped; quick: 10)")
    a = p.parse_args(argv)
    if a.face_photos is not None and a.face_photos < 0:
        p.error(f"--face-photos must be 0 or more, got {a.face_photos}")

    import jax

    from vitijax import compile_cache

    cache = compile_cache.enable()
    repeats = a.repeats or (3 if a.quick else 5)
    variants = a.variants or (["23-slim"] if a.quick else list(GMAC_1024x2048))
    dev = jax.devices()[0]
    env = {"device": f"{dev.platform}: {getattr(dev, 'device_kind', '')}", "devices": jax.device_count(),
           "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "compilation_cache": cache or "off"}
    threads = torch_threads() if a.torch is not False else None
    if a.torch and threads is None:
        p.error("--torch: PyTorch is not installed (pip install -e '.[torch]')")
    env["torch_threads"] = threads
    print("  ".join(f"{k}: {v}" for k, v in env.items()), flush=True)
    on_gpu = dev.platform == "gpu"
    sizes = [(4, 512, 512), (1, 1024, 1024)] + ([(1, 1024, 2048)] if (on_gpu if a.wide is None else a.wide) else [])
    train_dtypes = ("float32", "bfloat16") if (on_gpu if a.bf16 is None else a.bf16) else ("float32",)
    env.update(rows_1x1024x2048=bool(sizes[-1] == (1, 1024, 2048)), train_dtypes=list(train_dtypes))
    peak = matmul_gflops(max(repeats, 25))  # ~20 ms a run: many runs steady the denominator of every share
    # Every row's share is against this one rate, the bfloat16 train row's too. On NVIDIA GPUs JAX's
    # default matmul precision for float32 is TF32, so there this is the TF32 rate.
    print(f"float32 matmul 2048^3: {peak:.1f} GFLOP/s (median of {max(repeats, 25)}"
          f"{'; default precision, TF32 on NVIDIA' if on_gpu else ''})", flush=True)
    rows = []
    for v in variants:
        for row in bench_variant(v, repeats, sizes, train_dtypes, with_torch=threads is not None):
            row["share_of_matmul_peak"] = row["gflops"] / peak
            rows.append(row)
            tail = (f"first call {row['first_call_s']:.1f} s" if math.isfinite(row["first_call_s"])
                    else f"{row['torch_threads']} threads")
            if "vs_pytorch" in row:
                tail += f"  {row['vs_pytorch']:.2f}x PyTorch eager's speed"
            print(f"{row['variant']:8s} {row['what']:50s} {row['seconds']:8.3f} s  {row['images_per_s']:7.2f} img/s  "
                  f"{row['gflops']:6.1f} GFLOP/s ({100 * row['share_of_matmul_peak']:4.1f}% of matmul)  {tail}",
                  flush=True)
    ablation = bench_ablation(variants[0], repeats) if a.ablation else []
    for row in ablation:
        print(f"{row['variant']:8s} {row['what']:110s} {row['seconds']:7.3f} s  {row['speedup']:.2f}x  "
              f"(first step: loss {row['loss']:.6f}, grad norm {row['grad_norm']:.4f})", flush=True)
    pipe = bench_pipeline(repeats)
    train = next(r for r in rows if r["what"] == "train step 4x512x512" and r["variant"] == variants[0])
    print(f"{pipe['what']}: {pipe['images_per_s']:.1f} img/s vs {train['images_per_s']:.2f} img/s consumed by the "
          f"{variants[0]} train step ({pipe['images_per_s'] / train['images_per_s']:.0f}x headroom)", flush=True)
    analyze = bench_analyze(repeats)
    if "seconds" in analyze:
        print(f"{analyze['what']}: {analyze['seconds']:.2f} s (median of {analyze['runs']}; first call "
              f"{analyze['first_call_s']:.1f} s), peak RSS {analyze['peak_rss_gb']:.2f} GB", flush=True)
    else:
        print(f"{analyze['what']}: {analyze['status']}", flush=True)
    per_view = a.face_photos if a.face_photos is not None else (10 if a.quick else 0)
    faces = bench_face(a.face_box, per_view, repeats) if per_view else {}
    for name, r in faces.items():
        recall = "  ".join(f"{v} {100 * x:.0f}%" for v, x in r["recall_by_view"].items())
        print(f"face finder {name:17s} recall@IoU0.5 on {r['photos_per_view']} synthetic photos/view: {recall}; "
              f"{r['seconds_per_2832x4240_photo']:.3f} s per 2832x4240 photo", flush=True)
    archive = {}
    if a.archive:
        import tempfile

        from launch import synthesize

        with tempfile.TemporaryDirectory() as tmp:
            patients = max(1, a.archive_photos // 3)
            synthesize.main(["--patients", str(patients), "--visits", "1", "--seed", "5000", "--out", os.path.join(tmp, "photos")])
            archive = bench_archive(a.archive, os.path.join(tmp, "photos", "images"), tmp, (1, 2),
                                    max(1, repeats // 2))
        for n, r in archive.get("by_processes", {}).items():
            print(f"{archive['what']} with {n} process(es): {r['seconds']:.1f} s, {r['photos_per_s']:.2f} photos/s "
                  f"(median of {r['runs']} whole commands); same results as 1 process: {r['same_results_as_1']}",
                  flush=True)
        if "status" in archive:
            print(archive["status"], flush=True)
    review = bench_review(a.review, repeats) if a.review else {}
    if review:
        print(f"{review['what']}: photo {review['photo_first_s']:.2f} s (then {review['photo_cached_s']:.3f} s), "
              f"figures recomputed from an edited mask {review['recompute_s']:.2f} s (first, with the registration: "
              f"{review['recompute_first_s']:.2f} s), correction saved {review['save_s']:.2f} s (medians of "
              f"{review['runs']})", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"environment": env, "matmul_gflops": peak, "rows": rows, "ablation": ablation, "pipeline": pipe, "analyze": analyze,
                   "face": faces, "archive": archive, "review": review}, f, indent=2)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
