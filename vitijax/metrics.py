"""Confusion counts and segmentation scores; F-Vitiligo.

Evaluators return *sums* (per-image confusion counts); the host adds them up
and divides once, so no average of per-batch means ever enters a figure.
Conventions: the positive class is vitiligo (label 1). Counts are taken inside
a region (the face mask, as the paper's ratio) or over the whole crop.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np


def confusion_counts(pred: jax.Array, label: jax.Array, region: jax.Array | None = None,
                     ignore_index: int = 255) -> jax.Array:
    """Per-image (tp, fp, fn, tn) of binary ``pred`` vs ``label``, both [b, h, w].

    Pixels where ``region`` [b, h, w] is 0, or ``label == ignore_index``, are
    not counted. Returns int32 [b, 4].
    """
    valid = label != ignore_index
    if region is not None:
        valid = valid & (region > 0)
    p = (pred > 0) & valid
    t = (label == 1) & valid
    axes = tuple(range(1, pred.ndim))
    tp = jnp.sum(p & t, axes)
    fp = jnp.sum(p & ~t, axes)
    fn = jnp.sum(~p & t, axes)
    tn = jnp.sum(valid & ~p & ~t, axes)
    return jnp.stack([tp, fp, fn, tn], -1).astype(jnp.int32)


def _div(a, b):
    return float(a) / float(b) if b else float("nan")


def scores(tp: float, fp: float, fn: float, tn: float) -> dict[str, float]:
    """Dice (= F1), IoU (lesion), background IoU, mIoU (mean of both), precision, recall; fractions.

    An undefined ratio (0/0) is NaN, never 0.
    """
    iou = _div(tp, tp + fp + fn)
    iou_bg = _div(tn, tn + fp + fn)
    return {
        "dice": _div(2 * tp, 2 * tp + fp + fn),
        "iou": iou,
        "iou_background": iou_bg,
        "miou": (iou + iou_bg) / 2,
        "precision": _div(tp, tp + fp),
        "recall": _div(tp, tp + fn),
    }


def f_vitiligo(vitiligo_pixels, face_pixels) -> float:
    """F-Vitiligo in percent: 100 * vitiligo / face; NaN (undefined) for an empty face mask."""
    return 100.0 * float(vitiligo_pixels) / float(face_pixels) if face_pixels else float("nan")


def summarize(per_image_counts: np.ndarray, ratio_pred: np.ndarray, ratio_true: np.ndarray) -> Mapping[str, float]:
    """Pooled scores over images [n, 4] plus the mean absolute F-Vitiligo error (percentage points)."""
    tp, fp, fn, tn = np.asarray(per_image_counts, np.int64).sum(0)
    out = dict(scores(tp, fp, fn, tn))
    err = np.abs(np.asarray(ratio_pred, np.float64) - np.asarray(ratio_true, np.float64))
    err = err[np.isfinite(err)]
    out["ratio_mae"] = float(err.mean()) if err.size else float("nan")
    out["images"] = int(len(per_image_counts))
    return out
