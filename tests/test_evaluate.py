"""The evaluator: metrics against scikit-learn, agreement statistics, both CLI modes and their files."""

from __future__ import annotations

import csv
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import stats as sp_stats
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from launch import build_dataset
from launch import evaluate as evaluate_cli
from vitijax import metrics
from vitijax.evaluate import summarize
from vitijax import agreement


def random_masks(n=6, shape=(24, 32), seed=0):
    r = np.random.default_rng(seed)
    out = []
    for i in range(n):
        true = (r.random(shape) < r.uniform(0.05, 0.4)).astype(np.uint8)
        pred = np.where(r.random(shape) < 0.8, true, 1 - true).astype(np.uint8)
        face = (r.random(shape) < 0.85).astype(np.uint8)
        out.append((pred, true, face))
    return out


def test_pooled_and_per_image_scores_equal_sklearn():
    masks = random_masks()
    counts = np.array([[((p == 1) & (t == 1) & (f == 1)).sum(), ((p == 1) & (t == 0) & (f == 1)).sum(),
                        ((p == 0) & (t == 1) & (f == 1)).sum(), ((p == 0) & (t == 0) & (f == 1)).sum()]
                       for p, t, f in masks])
    patients = np.array(["A", "A", "B", "B", "B", "C"])
    got = metrics.averaged(counts, patients)
    P = np.concatenate([p[f == 1] for p, _, f in masks])
    T = np.concatenate([t[f == 1] for _, t, f in masks])
    pooled = got["pooled"]
    assert pooled["dice"] == pytest.approx(f1_score(T, P))
    assert pooled["iou"] == pytest.approx(jaccard_score(T, P))
    assert pooled["precision"] == pytest.approx(precision_score(T, P))
    assert pooled["recall"] == pytest.approx(recall_score(T, P))
    assert pooled["miou"] == pytest.approx(jaccard_score(T, P, average="macro"))
    per = [(f1_score(t[f == 1], p[f == 1]), jaccard_score(t[f == 1], p[f == 1]),
            precision_score(t[f == 1], p[f == 1]), recall_score(t[f == 1], p[f == 1])) for p, t, f in masks]
    for k, col in zip(("dice", "iou", "precision", "recall"), zip(*per)):
        assert got["per_image"][k] == pytest.approx(np.mean(col)), k
    by_pat = []
    for pid in ("A", "B", "C"):
        idx = np.flatnonzero(patients == pid)
        pp = np.concatenate([masks[i][0][masks[i][2] == 1] for i in idx])
        tt = np.concatenate([masks[i][1][masks[i][2] == 1] for i in idx])
        by_pat.append(f1_score(tt, pp))
    assert got["per_patient"]["dice"] == pytest.approx(np.mean(by_pat))


def test_confusion_counts_jitted_equal_numpy():
    masks = random_masks(4)
    pred = np.stack([m[0] for m in masks])
    true = np.stack([m[1] for m in masks]).astype(np.int32)
    true[:, 0, :5] = 255  # ignored
    face = np.stack([m[2] for m in masks])
    got = np.asarray(jax.jit(metrics.confusion_counts)(pred, true, face))
    valid = (true != 255) & (face == 1)
    want = np.stack([((pred == 1) & (true == 1) & valid).sum((1, 2)), ((pred == 1) & (true == 0) & valid).sum((1, 2)),
                     ((pred == 0) & (true == 1) & valid).sum((1, 2)), ((pred == 0) & (true == 0) & valid).sum((1, 2))], 1)
    np.testing.assert_array_equal(got, want)


def test_undefined_scores_are_nan_not_zero():
    s = metrics.scores(0, 0, 0, 50)  # no lesion, none predicted
    assert np.isnan(s["dice"]) and np.isnan(s["precision"]) and s["iou_background"] == 1.0
    assert np.isnan(metrics.f_vitiligo(0, 0))


def test_icc_and_ccc_against_published_worked_examples():
    """ICC(2,1) on Shrout & Fleiss (1979), Table 2 (6 targets x 4 judges): they report ICC(2,1) = .29.
    Lin's CCC against Lin (1989)'s own decomposition rho_c = r x C_b, C_b = 2 / (v + 1/v + u^2),
    v = s_x / s_y, u = (mean x - mean y) / sqrt(s_x s_y) (a route through the paper's accuracy
    and precision factors, not the definition re-typed), and its limiting cases."""
    table2 = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    assert round(agreement.icc_2_1(table2), 2) == 0.29
    assert agreement.icc_2_1(table2) == pytest.approx(0.2898, abs=1e-4)
    r = np.random.default_rng(4)
    x = r.uniform(0, 20, 30)
    y = 0.8 * x + 2.0 + r.normal(0, 1.0, 30)
    sx, sy = x.std(), y.std()
    v, u = sx / sy, (x.mean() - y.mean()) / np.sqrt(sx * sy)
    cb = 2.0 / (v + 1.0 / v + u ** 2)
    assert agreement.lins_ccc(x, y) == pytest.approx(sp_stats.pearsonr(x, y)[0] * cb, rel=1e-12)
    assert agreement.lins_ccc(x, x) == pytest.approx(1.0) and agreement.lins_ccc(x, x + 1) < 1.0
    assert agreement.lins_ccc(x, -x) == pytest.approx(-1.0 / (1.0 + 2 * x.mean() ** 2 / sx ** 2))


def test_agreement_statistics_against_independent_computations():
    r = np.random.default_rng(1)
    true = r.uniform(0, 30, 40)
    pred = true + r.normal(0.5, 1.5, 40)
    pred[3] = np.nan  # an undefined ratio is left out
    ok = np.isfinite(pred)
    x, y = pred[ok], true[ok]
    ba = agreement.bland_altman(pred, true)
    d = x - y
    assert ba["bias"] == pytest.approx(d.mean()) and ba["left_out"] == 1 and ba["n"] == 39
    assert ba["loa_high"] - ba["loa_low"] == pytest.approx(2 * 1.96 * np.std(d, ddof=1))
    assert agreement.pearson_r(pred, true) == pytest.approx(sp_stats.pearsonr(x, y)[0])
    cov = np.cov(x, y, bias=True)
    assert agreement.lins_ccc(pred, true) == pytest.approx(2 * cov[0, 1] / (cov[0, 0] + cov[1, 1] + (x.mean() - y.mean()) ** 2))
    # ICC(A,1) from variance components of a two-way model (McGraw & Wong), a different route:
    n, k = len(x), 2
    data = np.stack([x, y], 1)
    msr = k * data.mean(1).var(ddof=1)
    msc = n * data.mean(0).var(ddof=1)
    resid = data - data.mean(1, keepdims=True) - data.mean(0, keepdims=True) + data.mean()
    mse = (resid ** 2).sum() / ((n - 1) * (k - 1))
    want = (msr - mse) / (msr + (k - 1) * mse + k / n * (msc - mse))
    assert agreement.icc_a1(pred, true) == pytest.approx(want)
    assert agreement.icc_a1(true, true) == pytest.approx(1.0)


def test_bootstrap_interval_contains_the_pooled_value():
    counts = np.array([[50, 10, 8, 400], [30, 5, 12, 500], [70, 20, 5, 300], [10, 2, 9, 600]])
    patients = np.array(["A", "B", "C", "D"])
    ci = metrics.patient_bootstrap(counts, patients, samples=300)
    pooled = metrics.scores(*counts.sum(0))["dice"]
    assert ci["dice"][0] <= pooled <= ci["dice"][1] and ci["dice"][0] < ci["dice"][1]


def _write(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def test_masks_on_disk_mode_writes_the_report_and_names_problems(tmp_path, capsys):
    masks = random_masks(6, shape=(40, 30))
    layout = [("P1", 0, "left"), ("P1", 0, "front"), ("P1", 0, "right"), ("P<2>", 1, "left"), ("P<2>", 1, "front"),
              ("P<2>", 1, "right")]
    for (p, t, f), (pid, visit, view) in zip(masks, layout):
        rel = os.path.join(pid, str(visit), f"{view}.png")
        _write(str(tmp_path / "pred" / rel), p * 255)
        _write(str(tmp_path / "gt" / rel), t * 255)
        _write(str(tmp_path / "face" / rel), f * 255)
    _write(str(tmp_path / "pred" / "P9" / "0" / "left.png"), masks[0][0] * 255)  # no ground truth
    _write(str(tmp_path / "gt" / "P1" / "0" / "right.png"), np.zeros((20, 30), np.uint8))  # wrong size vs pred
    rc = evaluate_cli.main(["--predictions", str(tmp_path / "pred"), "--ground-truth", str(tmp_path / "gt"),
                            "--face-masks", str(tmp_path / "face"), "--bootstrap", "50", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 0
    assert "P9/0/left.png: no ground truth" in err and "P1/0/right.png: mask is 30x40 (w x h) but its photo is 30x20" in err
    out = tmp_path / "out"
    for name in ("metrics.json", "per_image.csv", "per_patient.csv", "table1.md", "index.html", "bland_altman.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 5
    by_rel = {(r["patient"], r["view"]): r for r in rows}
    p, t, f = masks[3]
    r = by_rel[("P<2>", "left")]
    assert float(r["dice"]) == pytest.approx(f1_score(t[f == 1], p[f == 1]))
    assert int(r["tp"]) == int(((p == 1) & (t == 1) & (f == 1)).sum())
    assert float(r["ratio_error"]) == pytest.approx(float(r["ratio_pred"]) - float(r["ratio_true"]), abs=1e-9)
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["ratio"]["by_view"]) == {"left", "front", "right"} and m["images"] == 5
    html = (out / "index.html").read_text()
    assert "P&lt;2&gt;" in html and "P<2>" not in html  # names from the input are escaped
    assert len(os.listdir(out / "overlays")) == 5 and len(os.listdir(out / "patients")) == 2
    assert "| vitijax, pooled over pixels |" in (out / "table1.md").read_text()


def test_model_mode_on_a_built_data_set(tmp_path, capsys):
    assert build_dataset.main(["--name", "synthetic_uv_vitiligo", "--config", "tiny", "--data-dir",
                               str(tmp_path / "tfds")]) == 0
    # The model comes from the trainer, so its best/ holds what the evaluator needs (input size 64).
    from launch.configs.test import get_config
    from vitijax.train import train_and_evaluate

    c = get_config()
    c.num_steps, c.eval_every, c.checkpoint_every = 1, 1, 1
    train_and_evaluate(c, str(tmp_path / "run"))
    rc = evaluate_cli.main(["--checkpoint", str(tmp_path / "run"), "--data", "synthetic_uv_vitiligo:tiny/test",
                            "--data-dir", str(tmp_path / "tfds"), "--bootstrap", "20", "--out", str(tmp_path / "ev")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "F-Vitiligo: MAE" in out and "index.html" in out
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["images"] == 6 and set(m["face"]) >= {"pooled", "per_image", "per_patient", "pooled_ci95"}
    assert m["face_region"] == "synthetic truth" and "face region: synthetic truth" in out
    rows = list(csv.DictReader(open(tmp_path / "ev" / "per_image.csv")))
    assert sorted(int(r["index"]) for r in rows) == list(range(6))  # every image exactly once
    assert all(int(r["tp"]) + int(r["fp"]) + int(r["fn"]) + int(r["tn"]) > 0 for r in rows)
    assert all(int(r["crop_tp"]) + int(r["crop_fp"]) + int(r["crop_fn"]) + int(r["crop_tn"]) == 64 * 64 for r in rows)
    assert len(os.listdir(tmp_path / "ev" / "overlays")) == 6
    ov = np.asarray(Image.open(tmp_path / "ev" / "overlays" / sorted(os.listdir(tmp_path / "ev" / "overlays"))[0]))
    assert ov.shape[0] == 256 + 6 and ov.shape[1] > 4 * 256  # four panels: photo | pred | expert | agreement

    wrong = evaluate_cli.main(["--checkpoint", str(tmp_path / "nope"), "--data", "synthetic_uv_vitiligo:tiny/test",
                               "--data-dir", str(tmp_path / "tfds"), "--out", str(tmp_path / "ev2")])
    assert wrong == 2 and "no such checkpoint directory" in capsys.readouterr().err

    # A face-mask network's report speaks of the face class over the crop, with no F-Vitiligo and no lesion Table 1.
    c.task = "face_mask"
    del c.input["mask_input"]
    train_and_evaluate(c, str(tmp_path / "face_run"))
    capsys.readouterr()
    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "face_run"), "--data", "synthetic_uv_vitiligo:tiny/test",
                              "--data-dir", str(tmp_path / "tfds"), "--out", str(tmp_path / "ev_face")]) == 0
    out = capsys.readouterr().out
    page = (tmp_path / "ev_face" / "index.html").read_text()
    for text in (out, page, (tmp_path / "ev_face" / "table1.md").read_text()):
        assert "for the face class, over the whole face crop" in text
        assert "lesion" not in text and "F-Vitiligo" not in text and "Lee et al." not in text
    assert not (tmp_path / "ev_face" / "bland_altman.png").exists()


def test_summary_counts_undefined_ratios():
    rows = [{"patient": "A", "view": "front", "tp": 5, "fp": 1, "fn": 2, "tn": 20, "ratio_pred": 21.4,
             "ratio_true": 25.0},
            {"patient": "B", "view": "left", "tp": 0, "fp": 0, "fn": 0, "tn": 0, "ratio_pred": float("nan"),
             "ratio_true": float("nan")}]
    s = summarize(rows)
    assert s["ratio"]["undefined"] == 1 and s["ratio"]["mae"] == pytest.approx(3.6)
