"""The jitted batch evaluator, shared by training's validation and ``launch.evaluate``.

One jitted function per batch returns per-image confusion counts (inside the
face mask, and over the whole crop) and, on request, the predicted masks.
Batches are padded with a ``valid`` flag and sharded over the device mesh;
the host sums counts once. Every example is counted exactly once and one
compilation serves every batch (the input size is fixed).

Resolution: the network sees the crop resized to ``input_size``; its logits
(1/8) are upsampled bilinearly to the label size, which is the input size, and
the masks are resized to it with nearest neighbours. Ratios here are at that
resolution; ``ratio_true_full`` carries the full-photo truth where the data
set stores it.

The face-box network has its own step and rows (:func:`evaluate_boxes`): IoU
of the predicted and true face boxes, and whether the square crop around the
predicted box (:func:`vitijax.face.crop_box`) holds the whole true box.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vitijax import face as face_lib
from vitijax import metrics, sharding
from vitijax.data.pipeline import PipelineConfig, box_to_photo, eval_batches
from vitijax.models.ddrnet import DDRNet
from vitijax.models.facebox import FaceBoxNet
from vitijax.report.agreement import agreement
from vitijax.resize import resize_bilinear

ID_KEYS = ("patient", "visit", "view", "source_file", "ratio")


def eval_step(variables, batch: Mapping[str, jax.Array], *, model: DDRNet) -> dict[str, jax.Array]:
    """Per-image counts of the main head's decision (:func:`metrics.foreground` of its class probabilities,
    resized bilinearly to label size, as in analysis).

    Returns 'face' and 'crop' counts [b, 4] (tp, fp, fn, tn), 'pred' [b, h, w]
    uint8, and the batch's 'valid' [b] and 'index' [b] (its source positions).
    """
    out = model.apply(variables, batch["image"], train=False)
    main = out[0] if isinstance(out, tuple) else out
    probs = resize_bilinear(jax.nn.softmax(main.astype(jnp.float32), axis=-1), batch["label"].shape[1:3])
    pred = metrics.foreground(probs)
    return {"face": metrics.confusion_counts(pred, batch["label"], batch["face"]),
            "crop": metrics.confusion_counts(pred, batch["label"]), "pred": pred.astype(jnp.uint8),
            "valid": batch["valid"], "index": batch["index"]}


def box_eval_step(variables, batch: Mapping[str, jax.Array], *, model: FaceBoxNet) -> dict[str, jax.Array]:
    """The face-box network's boxes [b, 4] (fractions of the input side) and face-presence scores [b]
    (sigmoid of the presence logit), with 'valid' and 'index'."""
    box, presence = model.apply(variables, batch["image"], train=False)
    return {"box": box, "presence": jax.nn.sigmoid(presence), "valid": batch["valid"], "index": batch["index"]}


def compile_eval_step(model: DDRNet | FaceBoxNet, mesh):
    rep, bat = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    fn = box_eval_step if isinstance(model, FaceBoxNet) else eval_step
    return jax.jit(functools.partial(fn, model=model), in_shardings=(rep, bat), out_shardings=rep)


def evaluate(ev_step, variables, source: Sequence[dict], pcfg: PipelineConfig, global_batch: int, mesh,
             *, keep_predictions: bool = False) -> tuple[list[dict[str, Any]], dict[int, np.ndarray]]:
    """Runs the model over ``source`` once; returns (per-image rows, {index: predicted mask}).

    Every process gets the rows of *all* examples (counts come back
    replicated; identifiers of another host's examples are read from the
    source). Rows hold the identifiers, counts in the face region (tp, fp, fn,
    tn; the whole crop for the face-mask network) and over the crop
    (crop_tp ...), per-image scores and the predicted and true F-Vitiligo
    (percent). Predictions are kept only with ``keep_predictions`` (overlays).
    For the face-box network (``pcfg.label == "box"``) see :func:`evaluate_boxes`.
    """
    if pcfg.label == "box":
        return evaluate_boxes(ev_step, variables, source, pcfg, global_batch, mesh), {}
    local = global_batch // jax.process_count()
    rows: list[dict[str, Any]] = []
    preds: dict[int, np.ndarray] = {}
    for batch in eval_batches(source, pcfg, local, shard_index=jax.process_index(),
                              shard_count=jax.process_count(), keys=ID_KEYS):
        arrays = {k: batch[k] for k in ("image", "label", "face", "valid")}
        arrays["index"] = batch["index"].astype(np.int32)
        if pcfg.label == "face":
            # The face-mask network's label *is* the face mask: counting inside it would make every
            # prediction precise. Its region is the whole crop.
            arrays["face"] = np.ones_like(arrays["face"])
        # Outputs are replicated: every host sees the counts of the whole global batch, so every
        # host builds the same rows (identifiers of other hosts' examples are read from the source).
        out = jax.device_get(ev_step(variables, sharding.global_batch(arrays, mesh)))
        mine = {int(i): j for j, i in enumerate(batch["index"]) if batch["valid"][j]}
        for g in np.flatnonzero(out["valid"]):
            index = int(out["index"][g])
            if index in mine:
                ids = {k: _plain(batch[k][mine[index]]) for k in ID_KEYS}
            else:
                ex = source[index]
                ids = {k: _plain(ex.get(k)) for k in ID_KEYS}
            row = image_row(index, ids, out["face"][g], out["crop"][g])
            if pcfg.label == "face":  # a face network's ratios are face fractions: no F-Vitiligo truth applies
                row["ratio_true_full"] = float("nan")
            rows.append(row)
            if keep_predictions:
                preds[index] = out["pred"][g]
    rows.sort(key=lambda r: r["index"])
    return rows, preds


class NoFaceSource:
    """``source`` with every photo replaced by its fixed no-face negative (:mod:`vitijax.data.no_face`):
    what the face-box evaluation scores the presence head on."""

    def __init__(self, source: Sequence[dict]):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        from vitijax.data.no_face import evaluation_negative
        from vitijax.data.pipeline import photo_and_box

        ex = dict(self.source[index])
        photo, box = photo_and_box(ex)
        negative = evaluation_negative(photo, box, index)
        return {**ex, "photo": negative, "original_size": np.asarray(negative.shape[:2]), "face_present": 0}


def evaluate_boxes(ev_step, variables, source: Sequence[dict], pcfg: PipelineConfig, global_batch: int, mesh,
                   *, margin: float = 0.15) -> list[dict[str, Any]]:
    """Per-image rows of the face-box network over ``source`` and over its no-face negatives.

    Photos with a face (``face_present`` True): identifiers, the predicted and
    true boxes in the original photo's pixels, their IoU, ``crop_holds_face``
    (the square crop with ``margin`` around the predicted box contains the
    whole true box) and the face-presence score ``presence``. Each photo's
    fixed negative (:class:`NoFaceSource`, ``face_present`` False): its
    ``presence`` score and ``negative_kind``. As :func:`evaluate`, every
    process gets the rows of all examples (outputs are replicated).
    """
    from vitijax.data.no_face import KINDS

    local = global_batch // jax.process_count()
    side = pcfg.input_size[0]
    rows: list[dict[str, Any]] = []
    for src, positive in ((source, True), (NoFaceSource(source), False)):
        for batch in eval_batches(src, pcfg, local, shard_index=jax.process_index(), shard_count=jax.process_count(),
                                  keys=("patient", "visit", "view", "face_box", "original_size")):
            arrays = {"image": batch["image"], "valid": batch["valid"], "index": batch["index"].astype(np.int32)}
            out = jax.device_get(ev_step(variables, sharding.global_batch(arrays, mesh)))
            mine = {int(i): j for j, i in enumerate(batch["index"]) if batch["valid"][j]}
            for g in np.flatnonzero(out["valid"]):
                index = int(out["index"][g])
                j = mine.get(index)
                ex = None if j is not None else src[index]  # another host's example: read it from the source
                ids = {k: _plain(batch[k][j] if j is not None else ex.get(k)) for k in ("patient", "visit", "view")}
                row = {"index": index, **ids, "face_present": positive, "presence": float(out["presence"][g])}
                if not positive:
                    rows.append({**row, "negative_kind": KINDS[index % len(KINDS)]})
                    continue
                if j is not None:
                    coeffs, to_orig = batch["coeffs"][j], batch["to_original"][j]
                    true_box = np.asarray(batch["face_box"][j], np.float64)
                    size = np.asarray(batch["original_size"][j], np.float64)
                else:  # recompute its geometry from the source
                    from vitijax.data.pipeline import prepare

                    prepared = prepare(ex, pcfg)
                    coeffs, to_orig = prepared["coeffs"], prepared["to_original"]
                    true_box = np.asarray(ex["face_box"], np.float64)
                    size = np.asarray(ex["original_size"], np.float64)
                # in original pixels, clipped to the photo as FaceBoxModel clips it in analysis
                pred = np.clip(box_to_photo(out["box"][g], coeffs, side) * np.tile(to_orig, 2), 0,
                               np.tile(size[::-1], 2))
                iou = box_iou(pred, true_box)
                holds = face_lib.contains(face_lib.crop_box(face_lib.int_box(tuple(pred)), margin), true_box)
                rows.append({**row, "box_pred": [round(float(v), 1) for v in pred],
                             "box_true": [float(v) for v in true_box], "iou": iou, "crop_holds_face": holds})
    rows.sort(key=lambda r: (not r["face_present"], r["index"]))
    return rows


def box_iou(a, b) -> float:
    """IoU of two boxes (x0, y0, x1, y1)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


PRESENCE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def summarize_boxes(rows: Sequence[Mapping[str, Any]], presence_threshold: float = 0.5) -> dict[str, Any]:
    """Over the photos with a face: mean IoU, recall at IoU 0.5 and 0.75, the fraction of crops holding the
    whole face (overall and by view). Face presence at ``presence_threshold``: ``face_found`` (share of
    photos with a face scoring at or above it) and ``no_face_rejected`` (share of no-face photos scoring
    below it), per negative kind, and both over :data:`PRESENCE_THRESHOLDS` (the measurement a threshold
    is chosen from)."""
    pos = [r for r in rows if r.get("face_present", True)]
    neg = [r for r in rows if not r.get("face_present", True)]

    def block(rs):
        iou = np.array([r["iou"] for r in rs], np.float64)
        return {"images": len(rs), "iou": float(iou.mean()), "recall_50": float((iou >= 0.5).mean()),
                "recall_75": float((iou >= 0.75).mean()),
                "crop_holds_face": float(np.mean([r["crop_holds_face"] for r in rs]))}
    if not pos:
        return {"images": 0}
    views = sorted({str(r.get("view", "")) for r in pos})
    out = {**block(pos), "by_view": {v: block([r for r in pos if str(r.get("view", "")) == v]) for v in views}}
    if neg and all("presence" in r for r in rows):
        ps, ns = np.array([r["presence"] for r in pos]), np.array([r["presence"] for r in neg])
        out["presence_threshold"] = presence_threshold
        out["face_found"] = float((ps >= presence_threshold).mean())
        out["no_face_rejected"] = float((ns < presence_threshold).mean())
        out["no_face_images"] = len(neg)
        kinds = sorted({r["negative_kind"] for r in neg})
        out["no_face_rejected_by_kind"] = {
            k: float(np.mean([r["presence"] < presence_threshold for r in neg if r["negative_kind"] == k]))
            for k in kinds}
        out["presence_sweep"] = [{"threshold": t, "face_found": float((ps >= t).mean()),
                                  "no_face_rejected": float((ns < t).mean())} for t in PRESENCE_THRESHOLDS]
    return out


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
