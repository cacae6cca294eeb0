"""Trusting what analyze ships: the chain evaluator, "no face", the needs-review calibration, change statistics
and the exit status."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from vitijax import chain


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory):
    """launch.synthesize's own layout: 2 new patients x 2 visits x 3 views at 360x240."""
    from launch import synthesize

    out = tmp_path_factory.mktemp("synth") / "set"
    assert synthesize.main(["--patients", "2", "--visits", "2", "--size", "360", "240", "--seed", "31",
                            "--out", str(out)]) == 0
    return out


def test_synthesize_writes_photos_masks_and_a_truth_table_that_agree(synthesized):
    rows = list(csv.DictReader(open(synthesized / "truth.csv")))
    assert len(rows) == 12 and {r["view"] for r in rows} == {"left", "front", "right"}
    for r in rows[:3]:
        rel = os.path.join(r["patient"], r["visit"], r["view"] + ".png")
        photo = np.asarray(Image.open(synthesized / "images" / rel))
        face = np.asarray(Image.open(synthesized / "face_masks" / rel)) > 0
        lesion = np.asarray(Image.open(synthesized / "vitiligo_masks" / rel)) > 0
        glare = np.asarray(Image.open(synthesized / "unassessable_masks" / rel)) > 0
        assert photo.shape == (360, 240, 3)
        assert int(r["face_pixels"]) == face.sum() and int(r["vitiligo_pixels"]) == lesion.sum()
        assert int(r["unassessable_pixels"]) == glare.sum() and not (glare & ~face).any() and r["glare"] == "1.0"
        assert float(r["ratio"]) == pytest.approx(100 * lesion.sum() / face.sum(), abs=1e-5)
        ys, xs = np.nonzero(face)
        assert r["face_box"] == f"{xs.min()} {ys.min()} {xs.max() + 1} {ys.max() + 1}"
    from launch import synthesize

    assert synthesize.main(["--patients", "1", "--out", str(synthesized)]) == 2  # never over an existing set


def test_chain_evaluator_scores_exactly_what_analyze_ships(bundle, synthesized, tmp_path):
    """launch.evaluate --bundle runs analyze's own path: its ratios equal analyze's photo by photo, its MAE
    is the mean |analyze's ratio - truth.csv ratio|, and the lesion-only reference has the true box and mask."""
    from launch import analyze, evaluate

    out = tmp_path / "eval"
    assert evaluate.main(["--bundle", bundle, "--photos", str(synthesized), "--out", str(out), "--calibrate"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    per_photo = list(csv.DictReader(open(out / "per_photo.csv")))
    assert len(per_photo) == 12
    ana = tmp_path / "ana"
    assert analyze.main(["--model", bundle, str(synthesized / "images"), "--out", str(ana)]) == 0
    ana_rows = {(r["patient"], r["visit"], r["view"]): r for r in csv.DictReader(open(ana / "results.csv"))}
    truth = {(r["patient"], r["visit"], r["view"]): float(r["ratio"])
             for r in csv.DictReader(open(synthesized / "truth.csv"))}
    errors = []
    for r in per_photo:
        key = (r["patient"], r["visit"], r["view"])
        assert r["ratio_pred"] == ana_rows[key]["ratio"], key  # same string: same number, same path
        assert float(r["ratio_true"]) == pytest.approx(truth[key], abs=1e-4)
        if r["ratio_pred"]:
            errors.append(abs(float(r["ratio_pred"]) - truth[key]))
    assert metrics["chain"]["f_vitiligo_mae_pp"] == pytest.approx(np.mean(errors), abs=1e-4)
    lo = metrics["lesion_only"]["stages"]
    assert lo["face_box"]["iou"] == 1.0 and lo["face_mask"]["dice"] == 1.0 and lo["face_box"]["crop_holds_face"] == 1.0
    assert 0.0 < metrics["chain"]["stages"]["face_mask"]["dice"] < 1.0
    assert metrics["chain"]["stages"]["change"]["pairs"] == 6  # 2 patients x 3 views, visit 1 against visit 0
    assert math.isfinite(metrics["lesion_only"]["f_vitiligo_mae_pp"])
    # the glare truth is read beside the masks: the true share from truth.csv; a glare-blind network predicts none
    glare = metrics["chain"]["stages"]["unassessable"]
    shares = [100 * int(r["unassessable_pixels"]) / int(r["face_pixels"]) for r in csv.DictReader(open(synthesized / "truth.csv"))]
    assert glare["photos"] == 12 and glare["true_mean_pct"] == pytest.approx(np.mean(shares), abs=1e-6)
    assert glare["pred_mean_pct"] == 0.0 and glare["share_mae_pp"] == pytest.approx(np.mean(shares), abs=1e-6)
    assert "needs review" in metrics["needs_review"]["flags"]
    calibration = json.loads((out / "review_rule.json").read_text())
    assert calibration["photos"] == sum(1 for r in per_photo if r["ratio_pred"])
    index = (out / "index.html").read_text()
    assert "Stage by stage" in index and "lesion only" in index and (out / "analysis" / "index.html").is_file()
    assert len(list((out / "overlays").glob("*.png"))) == 12


def _row(err, **quality):
    return {"ratio_pred": 10.0 + err, "ratio_true": 10.0, "ratio_error": err, "quality": quality, "flags": []}


def test_review_calibration_picks_the_signal_that_separates_large_errors():
    """'band' rises with the error, 'noise' does not: the rule is band, its threshold halfway between the
    smallest flagged big-error value and the next value below; the flag report counts it right."""
    rows = [_row(e, band=b, noise=n) for e, b, n in (
        (3.0, 5.0, 0.1), (-2.5, 4.0, 0.9), (4.0, 6.0, 0.5), (0.2, 1.0, 0.8), (0.5, 2.0, 0.2), (-0.3, 0.5, 0.7),
        (1.5, 3.0, 0.4))]
    cal = chain.calibrate_review(rows, signals=("band", "noise"))
    assert cal["rule"] == {"band": [">", 3.5]} and cal["big_error_photos"] == 3 and cal["small_error_photos"] == 3
    best = cal["candidates"][0]
    assert best["recall_big_error"] == 1.0 and best["false_alarm_small_error"] == 0.0
    from vitijax.pipeline import review_reasons

    for r in rows:
        r["needs_review"] = bool(review_reasons(r["quality"], {"band": (">", 3.5)}))
    report = chain.flag_report(rows)["flags"]["needs review"]
    assert report == {"fires": 3, "recall_big_error": 1.0, "false_alarm_small_error": 0.0, "precision": 1.0}
    # two signals, each catching a different big error: only their "or" reaches the recall
    pair = [_row(e, glare=g, blur=b) for e, g, b in (
        (3.0, 0.9, 0.1), (-2.5, 0.1, 0.8), (0.2, 0.2, 0.2), (0.5, 0.3, 0.1), (-0.3, 0.1, 0.3))]
    cal = chain.calibrate_review(pair, signals=("glare", "blur"))
    assert cal["rule"] == {"glare": [">", 0.6], "blur": [">", 0.55]}, cal["rule"]
    assert cal["candidates"][0]["false_alarm_small_error"] == 0.0
    # the quality gate already flags one big error (a failed check): the rule need only catch the other, and
    # every figure is of the two together
    gated = [_row(e, band=b) for e, b in ((3.0, 5.0), (-2.5, 0.4), (0.2, 1.0), (0.5, 2.0), (-0.3, 0.5))]
    gated[1]["flags"] = ["blurred"]
    cal = chain.calibrate_review(gated, signals=("band",))
    assert cal["rule"] == {"band": [">", 3.5]} and cal["gate"]["recall_big_error"] == 0.5
    assert cal["candidates"][0]["recall_big_error"] == 1.0 and cal["candidates"][0]["false_alarm_small_error"] == 0.0
    assert "or a failed quality check" in cal["why"]
    # nothing to calibrate on: said, not guessed
    assert chain.calibrate_review([_row(0.1, band=1.0)], signals=("band",))["rule"] is None


def test_relative_change_only_from_a_baseline_that_can_carry_it():
    from vitijax.report.followup import REPIGMENTATION_FLOOR_PP, add_changes

    rows = [{"patient": "a", "view": "front", "visit": 0, "ratio": 1.0},
            {"patient": "a", "view": "front", "visit": 1, "ratio": 2.24},
            {"patient": "b", "view": "front", "visit": 0, "ratio": 20.0},
            {"patient": "b", "view": "front", "visit": 1, "ratio": 15.0}]
    add_changes(rows)
    assert rows[1]["change_pp"] == pytest.approx(1.24)
    assert math.isnan(rows[1]["repigmentation_pct"])  # never -124 % from a 1 % baseline
    assert rows[1]["repigmentation_note"] == f"not applicable: first visit 1.00 % < {REPIGMENTATION_FLOOR_PP:g} %"
    assert rows[3]["repigmentation_pct"] == pytest.approx(25.0) and rows[3]["repigmentation_note"] == ""


def test_no_ratio_for_any_photo_without_a_face(bundle, tmp_path, capsys):
    """The hostile photos of the reliability checks through the bundle's face-box network: not one gets a
    ratio, each says why, and analyze exits non-zero because nothing got a ratio."""
    from launch import analyze

    from launch.reproduce import write_hostile_photos

    write_hostile_photos(tmp_path / "hostile" / "0")
    out = tmp_path / "out"
    assert analyze.main(["--model", bundle, str(tmp_path / "hostile"), "--out", str(out)]) == 1
    err = capsys.readouterr()
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 13
    for r in rows:
        assert r["status"] != "ok" and r["ratio"] == "", r
        assert r["reason"], r
        assert r["file"] not in r["reason"]
    reasons = {os.path.basename(r["file"]): r["reason"] for r in rows}
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert "unreadable or truncated" in reasons["truncated.jpg"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert reasons["tiny.png"] == "ratio undefined: photo too small"
    for name in ("noise.png", "white.png", "black.png", "grey.png", "rgba.png", "sixteen.png", "tiff.tif",
                 "exif.jpg", "<script>x'\"&.png"):
        assert reasons[name].startswith("ratio undefined: "), (name, reasons[name])
    assert "0 of 13 photos analysed with a ratio" in err.out
    index = (out / "index.html").read_text()
    assert "<script>x" not in index and "&lt;script&gt;x" in index


def test_build_predicts_missing_face_masks_with_the_bundle(bundle, synthesized, tmp_path, capsys):
    """A folder where half the photos lack a face mask and one shows no face: --face-model predicts the
    missing masks into predicted_face_masks/ (close to the truth), the photo without a face is skipped
    and named, the data set says where its face masks came from, and a rerun reuses the predictions."""
    import shutil

    from launch import build_dataset
    from vitijax.data import predicted_faces, tfds_io

    root = tmp_path / "root"
    shutil.copytree(synthesized, root, ignore=shutil.ignore_patterns("*.csv"))
    removed = sorted((root / "face_masks").glob("*/1/*.png"))  # every visit-1 photo loses its face mask
    truth = {p.relative_to(root / "face_masks"): np.asarray(Image.open(p)) > 0 for p in removed}
    for p in removed:
        p.unlink()
    blank = root / "images" / "P0900" / "0"
    blank.mkdir(parents=True)
    Image.fromarray(np.full((360, 240, 3), 128, np.uint8)).save(blank / "front.png")
    (root / "vitiligo_masks" / "P0900" / "0").mkdir(parents=True)
    Image.fromarray(np.zeros((360, 240), np.uint8)).save(root / "vitiligo_masks" / "P0900" / "0" / "front.png")
    data_dir = str(tmp_path / "tfds")
    args = ["--name", "uv_vitiligo", "--manual-dir", str(root), "--data-dir", data_dir, "--face-model", bundle,
            "--val-fraction", "0", "--test-fraction", "0.4"]
    assert build_dataset.main(args) == 2  # the photo without a face is a skip: the build stops and says so
    out = capsys.readouterr()
    assert "face masks: 7/7 photos" in out.err and "no face found in 1 (skipped)" in out.out
    assert "P0900/0/front.png: no face mask, and the face networks gave none (no face)" in out.out
    assert build_dataset.main([*args, "--allow-skips"]) == 0
    out = capsys.readouterr()
    assert "face masks:" not in out.err  # the bundle's predictions are reused, not made again
    assert "[kept] 6 x face mask predicted by the face-mask network" in out.out
    ious = []
    for rel, want in truth.items():
        got = np.asarray(Image.open(root / predicted_faces.PREDICTED_DIR / rel)) > 0
        ious.append((got & want).sum() / (got | want).sum())
    assert len(ious) == 6 and np.median(ious) > 0.6, ious  # the tiny networks' face, not a box or the photo
    builder = tfds_io.get_builder("uv_vitiligo", data_dir=data_dir)
    assert builder.info.metadata["face_mask_source"] == "annotation (6 of 12 photos: face-mask network)"
    assert builder.info.metadata["build_options"]["face_model"] == os.path.abspath(bundle)
    from vitijax.data import folder

    # without --face-model the predictions are not used: whole-image mode, and no photo is skipped for them
    assert folder.face_sources(folder.scan(root)[0]) == "annotation (7 of 13 photos: whole image)"
    # building again without the face model would silently change the face masks: refused, naming both
    assert build_dataset.main(args[:6] + args[8:] + ["--allow-skips"]) == 2
    assert "built with" in capsys.readouterr().err
