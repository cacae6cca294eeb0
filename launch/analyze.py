"""Analyse new photographs: masks, F-Vitiligo and a treatment follow-up report, offline.

    python -m launch.analyze --model models/vitijax_synthetic PHOTOS_OR_FOLDERS... --out results/

``--model`` is an inference bundle from ``launch.export``. Photos: files or
folders laid out ``<patient>/<visit>/<view>.<ext>`` (JPEG, PNG, TIFF; any
size; EXIF orientation applied; 8 or 16 bit; grey and RGBA converted), or
``--manifest FILE.csv`` (columns image, patient, visit, view[, face_mask]);
see ``vitijax/data/photos.py``. For each photo: face box (the bundle's
face-box network, else RetinaFace), crop, face mask (the bundle's face-mask
network, else an ellipse in the RetinaFace box; or ``--face-mask
ground_truth`` with the manifest's masks), the lesion network on the masked
crop, masks pasted back at full resolution, F-Vitiligo in percent, quality
flags. Then, per patient, the change from the first visit, a plot over
visits and before/after overlays. What is written where: ``vitijax/report/followup.py``.

A file that cannot be read, a photo without a face, an empty face mask: the
photo is listed with the reason (ratio undefined) and the rest is analysed.
``--tta`` runs the lesion network on the crop and its mirror image, keeps a
lesion either sees (see ``vitijax/segmenter.py`` for the measurement behind
this), and writes a per-pixel uncertainty map.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time


def build_analyzer(a):
    """(Analyzer, description of the networks) from the bundle and the options."""
    from vitijax import face as face_lib
    from vitijax import face_mask as face_mask_lib
    from vitijax.checkpoint import load_bundle
    from vitijax.pipeline import Analyzer
    from vitijax.segmenter import Segmenter

    parts, info = load_bundle(a.model)
    lesion = Segmenter(*parts["lesion"], where=f"{a.model} (lesion)", expect="lesion")
    mask_kind = a.face_mask or ("network" if "face_mask" in parts else "ellipse")
    if mask_kind == "network" and "face_mask" not in parts:
        raise ValueError(f"{a.model}: the bundle has no face-mask network; export one with "
                         "launch.export --face-mask-workdir, or choose --face-mask ellipse")
    seg = Segmenter(*parts["face_mask"], where=f"{a.model} (face mask)", expect="face_mask") \
        if mask_kind == "network" else None
    detector = a.detector
    if detector == "auto":
        detector = "face-box" if "face_box" in parts else "retinaface"
    if detector == "face-box" and "face_box" not in parts:
        raise ValueError(f"{a.model}: the bundle has no face-box network; export one with "
                         "launch.export --face-box-workdir, or choose --detector retinaface")
    box_model = face_lib.FaceBoxModel(*parts["face_box"], where=f"{a.model} (face box)") \
        if detector == "face-box" else None
    review_rule = info.get("review_rule")  # calibrated for this bundle (launch.evaluate --calibrate), if any
    analyzer = Analyzer(lesion, face_mask_lib.make(mask_kind, seg), box_model, flips=a.tta,
                        keep_probability=a.probability,
                        review_rule={k: (op, float(t)) for k, (op, t) in review_rule.items()} if review_rule else None)
    nets = {"lesion": {k: parts["lesion"][1].get(k) for k in ("variant", "input", "step", "validation_dice")},
            "face_mask": mask_kind if seg is None else {"source": "network", **{
                k: parts["face_mask"][1].get(k) for k in ("variant", "input", "step", "validation_dice")}},
            "face_box": "RetinaFace MobileNet-0.25 (pretrained)" if box_model is None else {
                "source": "face-box network", **{k: parts["face_box"][1].get(k) for k in ("step", "validation_iou")}},
            "tta": {"flips": analyzer.flips, "scales": list(analyzer.scales)}}
    return analyzer, {"bundle": os.path.abspath(a.model), "vitijax_version": info.get("vitijax_version"),
                      "networks": nets, "face_mask": mask_kind, "detector": detector, "crop_margin": analyzer.margin}


def analyze_batch(analyzer, batch, out, needs_truth, on_result=None):
    """Rows of one batch of PhotoInputs: read, analyse, write. One bad photo never stops the others.

    ``on_result(inp, photo, result, row)`` is called for every photo that was analysed (the chain
    evaluator scores it there, on exactly what ``analyze`` computed). Reasons do not repeat the path:
    the row's ``file`` holds it."""
    from vitijax.data.io import ImageReadError, read_mask, read_photo
    from vitijax.pipeline import RATIO_UNDEFINED
    from vitijax.report.followup import write_photo

    rows, photos, truths, keep = [], [], [], []
    for inp in batch:
        row = {"patient": inp.patient, "visit": inp.visit, "view": inp.view, "file": inp.path, "status": "failed",
               "reason": "", "ratio": math.nan, "flags": [], "files": {}}
        rows.append(row)
        try:
            photo = read_photo(inp.path)
            truth = None
            if needs_truth:
                if not inp.face_mask:
                    raise ImageReadError(inp.path, "no face_mask for it in the manifest (--face-mask ground_truth)")
                truth = read_mask(inp.face_mask, photo.shape[:2])
        except ImageReadError as e:
            row["reason"] = e.problem if e.path == inp.path else str(e)
            continue
        except (OSError, ValueError) as e:
            row["reason"] = str(e)
            continue
        photos.append(photo)
        truths.append(truth)
        keep.append((inp, row))
    if not photos:
        return rows
    try:
        results = analyzer(photos, truths if needs_truth else None, views=[inp.view for inp, _ in keep])
    except Exception:  # noqa: BLE001  one photo's failure must not take the batch: retry one by one
        results = []
        for photo, truth, (inp, row) in zip(photos, truths, keep):
            try:
                results.append(analyzer([photo], [truth] if needs_truth else None, views=[inp.view])[0])
            except Exception as e:  # noqa: BLE001
                row["reason"] = f"analysis failed: {type(e).__name__}: {e}"
                results.append(None)
    for photo, (inp, row), res in zip(photos, keep, results):
        if res is None:
            continue
        row.update(res.summary())
        try:
            row["files"] = write_photo(out, inp, photo, res)
        except OSError as e:
            row["reason"] = f"could not write its outputs: {e}"
            continue
        row["outputs"] = row["files"]["outputs"]
        if math.isfinite(res.ratio):
            row["status"] = "ok"
        else:
            row["status"] = "no ratio"
            row["reason"] = "ratio undefined: " + "; ".join(f for f in res.flags if f in RATIO_UNDEFINED)
        if on_result is not None:
            on_result(inp, photo, res, row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.analyze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="*", help="photo files and/or folders")
    p.add_argument("--model", required=True, help="inference bundle (python -m launch.export)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--manifest", help="CSV with columns image, patient, visit, view[, face_mask]")
    p.add_argument("--face-mask", choices=("network", "ellipse", "ground_truth"),
                   help="face-mask source (default: the bundle's network, else ellipse)")
    p.add_argument("--detector", choices=("auto", "face-box", "retinaface"), default="auto",
                   help="face finder (auto: the bundle's face-box network, else RetinaFace)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (the mirrored crop; a lesion either "
                   "view sees is kept) and an uncertainty map")
    p.add_argument("--probability", action="store_true", help="also write the lesion probability map")
    p.add_argument("--batch-size", type=int, default=4, help="photos per network batch")
    a = p.parse_intermixed_args(argv)  # photos may come before, between or after the options
    if not a.photos and not a.manifest:
        p.error("give photos, folders or --manifest")

    from vitijax import compile_cache
    from vitijax.checkpoint import CheckpointError
    from vitijax.data.photos import find_photos
    from vitijax.report.followup import write_results
    from vitijax.run_log import format_seconds

    compile_cache.enable()
    try:
        inputs, problems = find_photos(a.photos, a.manifest)
        analyzer, info = build_analyzer(a)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, why in problems:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if not inputs:
        print("error: no photos to analyse", file=sys.stderr)
        return 2
    print(f"analysing {len(inputs)} photos with {a.model} (lesion {info['networks']['lesion'].get('variant')}, "
          f"face mask {info['face_mask']}, face box {info['detector']}) -> {a.out}", flush=True)
    os.makedirs(a.out, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    for start in range(0, len(inputs), a.batch_size):
        batch = inputs[start:start + a.batch_size]
        rows += analyze_batch(analyzer, batch, a.out, a.face_mask == "ground_truth")
        done = len(rows)
        rate = done / (time.perf_counter() - t0)
        for r in rows[-len(batch):]:
            if r["status"] != "ok":
                print(f"  {r['file']}: {r['reason'] or r['status']}", file=sys.stderr, flush=True)
        print(f"photo {done}/{len(inputs)} ({100 * done / len(inputs):.0f}%)  {rate:.2f} photos/s  "
              f"ETA {format_seconds((len(inputs) - done) / rate if rate > 0 else math.nan)}", file=sys.stderr,
              flush=True)
    paths = write_results(a.out, rows, problems, info)
    print(summary_line(rows, problems) + f"  Report: {paths['index']}  Table: {paths['csv']}")
    # Non-zero when nothing got a ratio: a script or a person must not mistake an empty analysis for a result.
    return 0 if any(r["status"] == "ok" for r in rows) else 1


def summary_line(rows, problems) -> str:
    """One line: how many photos got a ratio, how many of those need review, and why the others got none."""
    ok = [r for r in rows if r["status"] == "ok"]
    no_face = sum(bool({"no face", "photo too small"} & set(r.get("flags", []))) for r in rows)
    no_ratio = sum(r["status"] == "no ratio" for r in rows) - no_face
    unreadable = sum(r["status"] == "failed" for r in rows) + len(problems)
    review = sum(bool(r.get("needs_review")) for r in ok)
    return (f"{len(ok)} of {len(rows) + len(problems)} photos analysed with a ratio ({review} need review); "
            f"no face: {no_face}; face mask unusable: {no_ratio}; unreadable or failed: {unreadable}.")


if __name__ == "__main__":
    sys.exit(main())
