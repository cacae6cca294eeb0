"""Evaluate a model on a data set, or score masks on disk; write the paper's table and figures.

Model on a built data set (the jitted batch evaluator, sharded over all devices)::

    python -m launch.evaluate --checkpoint runs/synthetic --data synthetic_uv_vitiligo:small/test --out eval/

Masks on disk, e.g. a second rater or another tool (PNG masks matched by relative path)::

    python -m launch.evaluate --predictions rater2/ --ground-truth rater1/ [--face-masks faces/] \
        [--photos photos/] --out eval_rater2/

The whole analysis chain of an inference bundle, on photos with true masks (the layout of
``launch.synthesize`` and of the ``uv_vitiligo`` folder), at full resolution::

    python -m launch.evaluate --bundle models/synthetic --photos runs/heldout [MORE_FOLDERS] --out runs/chain_eval [--tta]

runs exactly what ``launch.analyze`` runs (its own functions; its outputs land in
``OUT/analysis/``) and scores each stage and the whole chain against the truth, and the
same lesion network with the true face box and true face mask ("lesion only"); see
``vitijax/chain.py``. Writes metrics.json (``chain``, ``lesion_only``, ``needs_review``),
per_photo.csv, changes.csv and index.html (stages, Table 1 of the chain, overlays).

``--checkpoint`` takes a training workdir (its best/ model) or a model checkpoint
(e.g. launch.convert output). ``--data NAME[:CONFIG][/SPLIT]``; the
split defaults to test. Writes metrics.json, per_image.csv, per_patient.csv,
table1.md, overlays/, patients/, bland_altman.png and index.html in --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
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

    from vitijax import compile_cache, sharding, tasks
    from vitijax.checkpoint import load_model, resolve_model_dir
    from vitijax.data import tfds_io
    from vitijax.data.splits import split_names
    from vitijax.evaluate import compile_eval_step, summarize
    from vitijax.report.evaluation import write_report

    if "unlabelled" in split_names(_parse_data(a.data)[2]):
        raise ValueError(f"--data {a.data}: the unlabelled split has no lesion masks (it is for semi-supervised "
                         "training only); evaluate on test or validation")
    compile_cache.enable()
    model_dir = resolve_model_dir(a.checkpoint)
    variables, meta = load_model(model_dir)
    if meta.get("model") != "ddrnet":
        raise ValueError(f"{model_dir}: not a DDRNet checkpoint (model {meta.get('model')!r})")
    if a.input_size and not meta.get("input"):  # a launch.convert checkpoint: the user says what it takes
        meta = {**meta, "input": {"size": list(a.input_size), "mask_input": True}}
    task, model, contract = tasks.load(meta, model_dir)
    if a.input_size:
        contract = dataclasses.replace(contract, size=tuple(a.input_size))
    size = contract.size
    name, cfg, split = _parse_data(a.data)
    a.data_dir = a.data_dir or tfds_io.default_data_dir()
    builder = tfds_io.get_builder(name, data_dir=a.data_dir, config=cfg, crop_margin=contract.margin)
    if not tfds_io.is_prepared(builder):
        raise FileNotFoundError(f"data set {name}/{builder.builder_config.name} is not built under {a.data_dir} "
                                f"(python -m launch.build_dataset --name {name} --crop-margin {contract.margin:g})")
    tfds_io.check_margin(builder, contract.margin)
    source = tfds_io.data_source(builder, split)
    mesh = sharding.make_mesh()
    batch = a.batch_size * jax.device_count() if a.batch_size % jax.device_count() else a.batch_size
    ev = compile_eval_step(task, model, mesh)
    # where the data set's face masks came from: annotation, or the whole photo (folders without face masks)
    face_region = str((builder.info.metadata or {}).get("face_mask_source", "annotation"))
    print(f"evaluating {task.describe(meta)} ({task.NAME}) from {model_dir} on {name}/{split} ({len(source)} images, "
          f"input {size[0]}x{size[1]}, crop margin {contract.margin:g}, face region: {face_region}) ...", flush=True)
    rows, preds = task.evaluate(ev, jax.device_put(variables, sharding.replicated(mesh)), source, contract, batch,
                                mesh, keep_predictions=True)
    summary = {**summarize(rows, bootstrap=a.bootstrap), "face_region": face_region}

    def overlay(row):
        # the image, the prediction, the truth and the region scored, all at the input size, as evaluated
        ex = task.prepare(source[row["index"]], contract)
        img = np.asarray(Image.fromarray(source[row["index"]]["image"]).resize(size[::-1], Image.Resampling.BILINEAR))
        region = ex["face"]
        return img, preds[row["index"]], ex["label"].astype(np.uint8), (None if region.all() else region)

    paths = write_report(a.out, rows, summary, title=f"vitijax evaluation: {task.describe(meta)} ({task.NAME}) on "
                         f"{name}/{split}", overlay_source=overlay, max_overlays=a.max_overlays, report=task.REPORT,
                         extra_html=f"<p>Face region of the data set: {html.escape(face_region)}</p>")
    _print(summary, paths, task.REPORT)
    return 0


CHAIN_COLUMNS = ("patient", "visit", "view", "file", "status", "reason", "ratio_true", "ratio_pred", "ratio_error",
                 "lesion_only_ratio", "lesion_only_error", "box_iou", "crop_holds_face", "face_dice", "dice",
                 "precision", "recall", "needs_review", "flags")


def run_bundle(a) -> int:
    """The chain evaluator: analyze's code path on photos with truth, scored stage by stage."""
    import csv
    import json

    from launch.analyze import analyze_stream, build_analyzer
    from vitijax import chain, compile_cache, study
    from vitijax import face as face_lib
    from vitijax import face_mask as face_mask_lib
    from vitijax.data import folder
    from vitijax.data.io import downscale, read_mask
    from vitijax.data.photos import PhotoInput
    from vitijax.pipeline import Analyzer
    from vitijax.report.evaluation import write_report
    from vitijax.report.followup import csv_cell, write_results

    compile_cache.enable()
    roots = [os.path.abspath(p) for p in a.photos]
    report = folder.Report(", ".join(roots))
    items = [item for root in roots for item in folder.entries(root, report)]
    for img, face, vit, *_ in list(items):  # the chain is scored against truth: both masks are needed
        if not (os.path.isfile(face) and os.path.isfile(vit)):
            report.add(img, "no face mask or no vitiligo mask: nothing to score it against", "skipped")
            items.remove((img, face, vit, *_))
    for p in report.problems:
        print(f"skipped {p.file}: {p.problem}", file=sys.stderr)
    if not items:
        raise FileNotFoundError(f"{', '.join(roots)}: no photos with masks (images/<patient>/<visit>/<view>.png with "
                                "face_masks/ and vitiligo_masks/ beside it, or manifest.csv)")
    opts = argparse.Namespace(model=a.bundle, face_mask=a.face_mask, detector=a.detector, tta=a.tta,
                              probability=False, batch_size=a.batch_size)
    analyzer, info = build_analyzer(opts)
    reference = Analyzer(analyzer.lesion, face_mask_lib.make("ground_truth"), None, flips=analyzer.flips,
                         scales=analyzer.scales)
    inputs = [PhotoInput(img, patient, visit, view, face) for img, face, _, patient, visit, view in items]
    lesion_of = {img: vit for img, _, vit, *_ in items}
    out_analysis = os.path.join(a.out, "analysis")
    os.makedirs(out_analysis, exist_ok=True)
    chain_rows, ref_rows, small = [], [], {}

    def on_result(inp, photo, res, row):
        i = len(chain_rows)
        face_t = read_mask(inp.face_mask, photo.shape[:2])
        lesion_t = read_mask(lesion_of[inp.path], photo.shape[:2])
        true_box = face_lib.box_from_mask(face_t)
        if true_box is None:  # nothing to score against (the data set builder skips these too)
            print(f"not scored {inp.path}: its face mask {inp.face_mask} is empty", file=sys.stderr)
            return
        ids = {"patient": inp.patient, "visit": inp.visit, "view": inp.view, "source_file": inp.path}
        glare_path = folder.unassessable_mask_path(lesion_of[inp.path])
        glare_t = read_mask(glare_path, photo.shape[:2]) if glare_path and os.path.isfile(glare_path) else None
        r = chain.score_photo(i, ids, res, face_t, lesion_t, glare_t)
        r.update(file=inp.path, status=row["status"], reason=row["reason"], needs_review=row.get("needs_review"))
        chain_rows.append(r)
        ref = reference([photo], [face_t], boxes=[true_box])[0]
        ref_rows.append(chain.score_photo(i, ids, ref, face_t, lesion_t, glare_t))
        # a small picture of the true face's crop for the overlays
        cb = face_lib.crop_box(true_box, analyzer.margin)
        lesion_p = res.lesion_mask if res.lesion_mask is not None else np.zeros_like(lesion_t)
        face_p = res.face_mask if res.face_mask is not None else np.zeros_like(face_t)
        small[i] = [downscale(face_lib.crop(x, cb), 384, nearest=k > 0)
                    for k, x in enumerate((photo, lesion_p, lesion_t * face_t, face_p))]

    print(f"chain evaluation of {a.bundle} on {len(inputs)} photos under {', '.join(roots)} "
          f"(TTA {'on' if a.tta else 'off'})",
          flush=True)
    ana_rows = analyze_stream(analyzer, inputs, out_analysis, False, a.batch_size, on_result)
    write_results(out_analysis, ana_rows, [(p.file, p.problem) for p in report.problems], info)
    if not chain_rows:
        print("error: no photo could be read; nothing to score", file=sys.stderr)
        return 2
    sections = {"chain": chain.summarize_chain(chain_rows), "lesion_only": chain.summarize_chain(ref_rows)}
    review = chain.flag_report(chain_rows)
    for r, ref in zip(chain_rows, ref_rows):
        r["lesion_only_ratio"], r["lesion_only_error"] = ref["ratio_pred"], ref["ratio_error"]

    paths = write_report(a.out, chain_rows, sections["chain"], title=f"vitijax chain evaluation: {a.bundle}",
                         overlay_source=lambda row: small[row["index"]], max_overlays=a.max_overlays,
                         extra_html=chain.stages_html(sections, review))
    with open(paths["metrics"], "w") as f:
        json.dump(study.json_safe({"photos": len(chain_rows), "tta": bool(a.tta), "info": info, **sections,
                                   "needs_review": review}), f, indent=2, allow_nan=False, default=str)
    with open(os.path.join(a.out, "per_photo.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CHAIN_COLUMNS + tuple(chain.SIGNALS))
        for r in chain_rows:
            w.writerow([csv_cell(r.get(c)) for c in CHAIN_COLUMNS] + [csv_cell(r["quality"].get(k))
                                                                      for k in chain.SIGNALS])
    changes = chain.change_rows(chain_rows)
    with open(os.path.join(a.out, "changes.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["patient", "view", "from_visit", "visit", "change_true_pp",
                                          "change_pred_pp", "change_error_pp"])
        w.writeheader()
        w.writerows(changes)
    print(chain.stages_text(sections, review))
    if a.calibrate:
        calibration = chain.calibrate_review(chain_rows)
        with open(os.path.join(a.out, "review_rule.json"), "w") as f:
            json.dump(study.json_safe(calibration), f, indent=2, allow_nan=False, default=str)
        print(f"needs-review calibration: {calibration['why']}; written to {os.path.join(a.out, 'review_rule.json')}"
              + (" (give it to launch.export --review-rule)" if calibration["rule"] else ""))
    print(f"report: {paths['index']}  (analysis outputs: {out_analysis})")
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


def _print(summary, paths, report=None) -> None:
    from vitijax.report.html import LESION_REPORT, table1_markdown

    report = report or LESION_REPORT
    print(table1_markdown(summary, report))
    if not report["ratio"]:
        print(f"report: {paths['index']}")
        return
    ag, r = summary["agreement"], summary["ratio"]
    print(f"F-Vitiligo: MAE {r['mae']:.3f} pp, bias {ag['bland_altman_bias']:+.3f} pp, 95% LoA "
          f"{ag['bland_altman_loa_low']:+.3f} to {ag['bland_altman_loa_high']:+.3f}, ICC(2,1) {ag['icc_a1']:.4f}, "
          f"Lin's CCC {ag['lins_ccc']:.4f}, Pearson r {ag['pearson_r']:.4f}")
    print(f"report: {paths['index']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="training workdir or model checkpoint")
    p.add_argument("--bundle", help="inference bundle (launch.export): score the whole analysis chain on --photos")
    p.add_argument("--tta", action="store_true", help="with --bundle: test-time augmentation, as analyze --tta")
    p.add_argument("--calibrate", action="store_true", help="with --bundle: choose the 'needs review' rule on these "
                   "(held-out) photos and write OUT/review_rule.json for launch.export --review-rule")
    p.add_argument("--face-mask", choices=("network", "ellipse", "ground_truth"),
                   help="with --bundle: face-mask source, as in analyze")
    p.add_argument("--detector", choices=("auto", "face-box", "retinaface"), default="auto",
                   help="with --bundle: face finder, as in analyze")
    p.add_argument("--data", help="NAME[:CONFIG][/SPLIT] of a built TFDS data set")
    p.add_argument("--data-dir", help="where data sets are built (default: $VITIJAX_DATA_DIR, else data/tfds)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="override the model's input size")
    p.add_argument("--batch-size", type=int, default=None, help="default 8 (4 photos with --bundle)")
    p.add_argument("--predictions", help="folder of predicted PNG masks")
    p.add_argument("--ground-truth", help="folder of ground-truth PNG masks (same relative paths)")
    p.add_argument("--face-masks", help="folder of face masks: count only inside the face")
    p.add_argument("--photos", nargs="+", help="with --bundle: folders of photos with true masks (launch.synthesize's layout, "
                   "or the uv_vitiligo folder layout); with --predictions: one folder of photos for the overlays (same "
                   "relative paths, any extension)")
    p.add_argument("--bootstrap", type=int, default=1000, help="patient-level bootstrap samples (0: none)")
    p.add_argument("--max-overlays", type=int, default=200)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if sum(bool(x) for x in (a.checkpoint, a.predictions, a.bundle)) != 1:
        p.error("give one of --checkpoint with --data, --bundle with --photos, or --predictions with --ground-truth")
    a.batch_size = a.batch_size or (4 if a.bundle else 8)
    try:
        if a.bundle:
            if not a.photos:
                p.error("--bundle needs --photos FOLDER (photos with true masks; python -m launch.synthesize makes one)")
            return run_bundle(a)
        if a.checkpoint:
            if not a.data:
                p.error("--checkpoint needs --data NAME[:CONFIG][/SPLIT]")
            return run_model(a)
        if not a.ground_truth:
            p.error("--predictions needs --ground-truth")
        if a.photos and len(a.photos) > 1:
            p.error("--predictions takes one --photos folder")
        a.photos = a.photos[0] if a.photos else None
        return run_masks(a)
    except (FileNotFoundError, ValueError) as e:  # CheckpointError and UnusableDataset are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
