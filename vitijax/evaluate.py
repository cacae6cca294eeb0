"""The jitted batch evaluator, shared by training's validation and ``launch.evaluate``.

:func:`run_rows` runs a task's jitted eval step (``vitijax/tasks/``) over a
source once and turns each example's outputs into a row with the task's row
function. Batches are padded with a ``valid`` flag and sharded over the device
mesh; outputs come back replicated, so every process builds the rows of all
examples (another host's identifiers are read from the source), and sums are
divided once on the host (:func:`summarize`). Every example is counted exactly
once and one compilation serves every batch (the input size is fixed).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from vitijax import metrics, sharding
from vitijax import tasks
from vitijax.agreement import agreement
from vitijax.data.pipeline import eval_batches

ID_KEYS = ("patient", "visit", "view", "source_file", "ratio")


def compile_eval_step(task, model, mesh):
    """The task's eval step, jitted, the variables replicated and the batch sharded over ``mesh``."""
    rep, bat = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(functools.partial(task.eval_step, model=model), in_shardings=(rep, bat), out_shardings=rep)


def run_rows(ev_step, variables, source: Sequence[dict], task_name: str, contract, global_batch: int, mesh,
             row: Callable[[int, dict, dict], dict], keys: Sequence[str], *, keep_predictions: bool = False
             ) -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
    """Runs ``ev_step`` over ``source`` once; returns (rows sorted by index, {index: 'pred'} if kept).

    ``row(index, out, item)`` makes one row from the example's outputs ``out``
    (each output of the step at that example) and ``item``: the example fields
    ``keys`` and the task's ``HOST_KEYS`` of its prepared arrays.
    """

    task = tasks.get(task_name)
    local = global_batch // jax.process_count()
    rows: list[dict[str, Any]] = []
    preds: dict[int, np.ndarray] = {}
    for batch in eval_batches(source, task, contract, local, shard_index=jax.process_index(),
                              shard_count=jax.process_count(), keys=keys):
        arrays = {k: batch[k] for k in (*task.DEVICE_KEYS, "valid")}
        arrays["index"] = batch["index"].astype(np.int32)
        out = jax.device_get(ev_step(variables, sharding.global_batch(arrays, mesh)))
        mine = {int(i): j for j, i in enumerate(batch["index"]) if batch["valid"][j]}
        for g in np.flatnonzero(out["valid"]):
            index = int(out["index"][g])
            j = mine.get(index)
            if j is not None:
                item = {k: batch[k][j] for k in (*keys, *task.HOST_KEYS)}
            else:  # another host's example: read it from the source
                ex = source[index]
                item = {k: ex.get(k) for k in keys}
                if task.HOST_KEYS:
                    prepared = task.prepare(ex, contract)
                    item.update({k: prepared[k] for k in task.HOST_KEYS})
            item = {k: _plain(v) for k, v in item.items()}
            rows.append(row(index, {k: v[g] for k, v in out.items()}, item))
            if keep_predictions and "pred" in out:
                preds[index] = out["pred"][g]
    rows.sort(key=lambda r: r["index"])
    return rows, preds


def box_iou(a, b) -> float:
    """IoU of two boxes (x0, y0, x1, y1)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def image_row(index: int, ids: Mapping[str, Any], face_counts, crop_counts) -> dict[str, Any]:
    """One per-image row: identifiers (``ID_KEYS``; ``ratio`` is the stored full-resolution truth),
    counts in the region (tp, fp, fn, tn) and over the crop (crop_*), scores, ratios and their errors."""
    tp, fp, fn, tn = (int(v) for v in face_counts)
    ctp, cfp, cfn, ctn = (int(v) for v in crop_counts)
    face_px = tp + fp + fn + tn
    row = {"index": index, **{k: ids.get(k) for k in ID_KEYS if k != "ratio"},
           "tp": tp, "fp": fp, "fn": fn, "tn": tn, "crop_tp": ctp, "crop_fp": cfp, "crop_fn": cfn, "crop_tn": ctn,
           **{k: v for k, v in metrics.scores(tp, fp, fn, tn).items() if k in metrics.METRICS},
           "ratio_pred": metrics.f_vitiligo(tp + fp, face_px),
           "ratio_true": metrics.f_vitiligo(tp + fn, face_px),
           "ratio_true_full": float(ids["ratio"]) if ids.get("ratio") is not None else float("nan")}
    return add_ratio_errors(row)


def add_ratio_errors(row: dict[str, Any]) -> dict[str, Any]:
    """Adds the signed (predicted - true) and absolute F-Vitiligo errors, percentage points."""
    row["ratio_error"] = row["ratio_pred"] - row["ratio_true"]
    row["ratio_abs_error"] = abs(row["ratio_error"])
    return row


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def summarize(rows: Sequence[Mapping[str, Any]], *, bootstrap: int = 0, seed: int = 0) -> dict[str, Any]:
    """Every figure of an evaluation from per-image rows: scores three ways, ratio errors, agreement.

    Scores are fractions (not percent). With ``bootstrap`` > 0, patient-level
    95 % intervals of the pooled scores.
    """
    if not rows:
        return {"images": 0}
    counts = np.array([[r["tp"], r["fp"], r["fn"], r["tn"]] for r in rows], np.int64)
    crop = np.array([[r.get("crop_tp", 0), r.get("crop_fp", 0), r.get("crop_fn", 0), r.get("crop_tn", 0)]
                     for r in rows], np.int64)
    patients = np.array([str(r.get("patient", "")) for r in rows])
    pred = np.array([r["ratio_pred"] for r in rows], np.float64)
    true = np.array([r["ratio_true"] for r in rows], np.float64)
    err = pred - true
    ok = np.isfinite(err)
    out: dict[str, Any] = {
        "images": len(rows), "patients": int(len(np.unique(patients))),
        "face": metrics.averaged(counts, patients),
        "crop": metrics.averaged(crop, patients),
        "ratio": {"mae": float(np.abs(err[ok]).mean()) if ok.any() else float("nan"),
                  "mean_signed_error": float(err[ok].mean()) if ok.any() else float("nan"),
                  "undefined": int((~ok).sum())},
        "agreement": agreement(pred, true),
    }
    view_of = np.array([str(r.get("view", "")) for r in rows])
    out["ratio"]["by_view"] = {
        v: {"mae": float(np.nanmean(np.abs(err[view_of == v]))), "mean_signed_error": float(np.nanmean(err[view_of == v])),
            "images": int((view_of == v).sum())}
        for v in sorted(set(view_of)) if np.isfinite(err[view_of == v]).any()}
    if bootstrap:
        out["face"]["pooled_ci95"] = metrics.patient_bootstrap(counts, patients, samples=bootstrap, seed=seed)
    return out


def per_patient(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per patient: pooled counts and scores, mean true and predicted ratio, mean abs. error."""
    out = []
    for pid in sorted({str(r["patient"]) for r in rows}):
        rs = [r for r in rows if str(r["patient"]) == pid]
        c = np.array([[r["tp"], r["fp"], r["fn"], r["tn"]] for r in rs], np.int64).sum(0)
        err = np.array([r["ratio_pred"] - r["ratio_true"] for r in rs], np.float64)
        out.append({"patient": pid, "images": len(rs), "tp": int(c[0]), "fp": int(c[1]), "fn": int(c[2]),
                    "tn": int(c[3]),
                    **{k: v for k, v in metrics.scores(*c).items() if k in metrics.METRICS},
                    "ratio_pred_mean": float(np.nanmean([r["ratio_pred"] for r in rs])),
                    "ratio_true_mean": float(np.nanmean([r["ratio_true"] for r in rs])),
                    "ratio_mae": float(np.nanmean(np.abs(err))) if np.isfinite(err).any() else float("nan"),
                    "ratio_mean_signed_error": float(np.nanmean(err)) if np.isfinite(err).any() else float("nan")})
    return out
