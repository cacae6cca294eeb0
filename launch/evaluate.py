"""Evaluate a model on a data set, or score masks on disk; write the paper's table and figures.

Model on a built data set (the jitted batch evaluator, sharded over all devices)::

    python -m launch.evaluate --checkpoint runs/synthetic --data synthetic_uv_vitiligo:small/test --out eval/

Masks on disk, e.g. a second rater or another tool (PNG masks matched by relative path)::

    python -m launch.evaluate --predictions rater2/ --ground-truth rater1/ [--face-masks faces/] \
        [--photos photos/] --out eval_rater2/

``--checkpoint`` takes a training workdir (its best/ model) or a model checkpoint
(e.g. launch.convert output). ``--data NAME[:CONFIG][/SPLIT]``; the
split defaults to test. Writes metrics.json, per_image.csv, per_patient.csv,
table1.md, overlays/, patients/, bland_altman.png and index.html in --out.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image


def _parse_data(spec: str) -> tuple[str, str | None, str]:
    name_cfg, _, split = spec.partition("/")
    name, _, cfg = name_cfg.partition(":")
    return name, (cfg or None), (split or "test")


def run_model(a) -> int:
    import jax

    from vitijax import compile_cache, sharding
    from vitijax.checkpoint import load_model, resolve_model_dir
    from vitijax.data import tfds_io
    from vitijax.data.pipeline import PipelineConfig
    from vitijax.evaluate import compile_eval_step, evaluate, summarize
    from vitijax.models.ddrnet import DDRNet
    from vitijax.report.evaluation import write_report

    compile_cache.enable()
    model_dir = resolve_model_dir(a.checkpoint)
    variables, meta = load_model(model_dir)
    if meta.get("model") != "ddrnet":
        raise ValueError(f"{model_dir}: not a DDRNet checkpoint (model {meta.get('model')!r})")
    inp = meta.get("input", {})
    size = tuple(a.input_size or inp.get("size") or (512, 512))
    pcfg = PipelineConfig(input_size=size, mask_input=inp.get("mask_input", True), label=inp.get("label", "vitiligo"))
    model = DDRNet(meta["variant"], meta["num_classes"], meta["aux_head"])
    name, cfg, split = _parse_data(a.data)
    builder = tfds_io.get_builder(name, data_dir=a.data_dir, config=cfg)
    if not tfds_io.is_prepared(builder):
        raise FileNotFoundError(f"data set {name}/{builder.builder_config.name} is not built under {a.data_dir} "
                                "(python -m launch.build_dataset)")
    source = tfds_io.data_source(builder, split)
    mesh = sharding.make_mesh()
    batch = a.batch_size * jax.device_count() if a.batch_size % jax.device_count() else a.batch_size
    ev = compile_eval_step(model, mesh)
    print(f"evaluating DDRNet-{meta['variant']} from {model_dir} on {name}/{split} ({len(source)} images, "
          f"input {size[0]}x{size[1]}) ...", flush=True)
    rows, preds = evaluate(ev, jax.device_put(variables, sharding.replicated(mesh)), source, pcfg, batch, mesh,
                           keep_predictions=True)
    summary = summarize(rows, bootstrap=a.bootstrap)

    def overlay(row):
        ex = source[row["index"]]
        img = np.asarray(Image.fromarray(ex["image"]).resize(size[::-1], Image.Resampling.BILINEAR))
        rs = lambda m: np.asarray(Image.fromarray(m).resize(size[::-1], Image.Resampling.NEAREST))  # noqa: E731
        face = rs(ex["face_mask"])
        true = rs(ex["vitiligo_mask"] if pcfg.label == "vitiligo" else ex["face_mask"])
        return img, preds[row["index"]], true, (face if pcfg.label == "vitiligo" else None)

    paths = write_report(a.out, rows, summary, title=f"vitijax evaluation: {name}/{split}",
                         overlay_source=overlay, max_overlays=a.max_overlays)
    _print(summary, paths)
    return 0


def _read_masks(root: str) -> dict[str, str]:
    found = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.lower().endswith(".png"):
                full = os.path.join(dirpath, f)
                found[os.path.relpath(full, root)] = full
    return found


def run_masks(a) -> int:
    from vitijax import metrics
    from vitijax.data.io import ImageReadError, read_mask, read_photo
    from vitijax.evaluate import image_row, summarize
    from vitijax.report.evaluation import write_report

    preds, truths = _read_masks(a.predictions), _read_masks(a.ground_truth)
    faces = _read_masks(a.face_masks) if a.face_masks else {}
    problems, rows, arrays = [], [], {}
    for rel in sorted(set(preds) - set(truths)):
        problems.append(f"{preds[rel]}: no ground truth at {os.path.join(a.ground_truth, rel)}")
    for rel in sorted(set(truths) - set(preds)):
        problems.append(f"{truths[rel]}: no prediction at {os.path.join(a.predictions, rel)}")
    for i, rel in enumerate(sorted(set(preds) & set(truths))):
        try:
            true = read_mask(truths[rel])
            pred = read_mask(preds[rel], true.shape)
            face = read_mask(faces[rel], true.shape) if rel in faces else np.ones_like(true)
            if a.face_masks and rel not in faces:
                problems.append(f"{rel}: no face mask in {a.face_masks}; counted over the whole image")
        except ImageReadError as e:
            problems.append(str(e))
            continue
        counts = np.asarray(metrics.confusion_counts(pred[None], true[None], face[None]))[0]
        crop = np.asarray(metrics.confusion_counts(pred[None], true[None]))[0]
        parts = os.path.splitext(rel)[0].split(os.sep)
        patient, visit, view = (parts + ["", "", ""])[:3] if len(parts) >= 3 else (parts[0], 0, parts[-1])
        tp, _, fn, _ = counts
        ids = {"patient": patient, "visit": visit, "view": view, "source_file": preds[rel],
               "ratio": metrics.f_vitiligo(tp + fn, counts.sum())}  # the masks' own resolution is the full one
        rows.append(image_row(i, ids, counts, crop))
        arrays[i] = (rel, pred, true, face if rel in faces else None)
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    if not rows:
        print("error: no prediction has a ground truth to compare with", file=sys.stderr)
        return 2

    def overlay(row):
        rel, pred, true, face = arrays[row["index"]]
        photo = None
        if a.photos:
            for ext in (".jpg", ".jpeg", ".png", ".tif", ".tiff"):
                cand = os.path.join(a.photos, os.path.splitext(rel)[0] + ext)
                if os.path.isfile(cand):
                    photo = read_photo(cand)
                    break
        if photo is None or photo.shape[:2] != true.shape:
            photo = np.full((*true.shape, 3), 60, np.uint8)
        return photo, pred, true, face

    summary = summarize(rows, bootstrap=a.bootstrap)
    summary["problems"] = problems
    paths = write_report(a.out, rows, summary, title=f"vitijax: {a.predictions} vs {a.ground_truth}",
                         overlay_source=overlay, max_overlays=a.max_overlays)
    _print(summary, paths)
    return 0


def _print(summary, paths) -> None:
    from vitijax.report.html import table1_markdown

    print(table1_markdown(summary))
    ag, r = summary["agreement"], summary["ratio"]
    print(f"F-Vitiligo: MAE {r['mae']:.3f} pp, bias {ag['bland_altman_bias']:+.3f} pp, 95% LoA "
          f"{ag['bland_altman_loa_low']:+.3f} to {ag['bland_altman_loa_high']:+.3f}, ICC(2,1) {ag['icc_a1']:.4f}, "
          f"Lin's CCC {ag['lins_ccc']:.4f}, Pearson r {ag['pearson_r']:.4f}")
    print(f"report: {paths['index']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="training workdir or model checkpoint")
    p.add_argument("--data", help="NAME[:CONFIG][/SPLIT] of a built TFDS data set")
    p.add_argument("--data-dir", default="data/tfds")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="override the model's input size")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--predictions", help="folder of predicted PNG masks")
    p.add_argument("--ground-truth", help="folder of ground-truth PNG masks (same relative paths)")
    p.add_argument("--face-masks", help="folder of face masks: count only inside the face")
    p.add_argument("--photos", help="folder of photos for the overlays (same relative paths, any extension)")
    p.add_argument("--bootstrap", type=int, default=1000, help="patient-level bootstrap samples (0: none)")
    p.add_argument("--max-overlays", type=int, default=200)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if bool(a.checkpoint) == bool(a.predictions):
        p.error("give either --checkpoint with --data, or --predictions with --ground-truth")
    try:
        if a.checkpoint:
            if not a.data:
                p.error("--checkpoint needs --data NAME[:CONFIG][/SPLIT]")
            return run_model(a)
        if not a.ground_truth:
            p.error("--predictions needs --ground-truth")
        return run_masks(a)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
