"""Confusion counts and segmentation scores; F-Vitiligo; the three ways of averaging.

Evaluators return *sums* (per-image confusion counts); the host adds them up
and divides once, so no average of per-batch means ever enters a figure.
Conventions: the positive class is vitiligo (label 1). Counts are taken inside
a region (the face mask, as the paper's ratio) or over the whole crop.

Averaging (every figure says which):
  * pooled: counts summed over all pixels of all images, then one division;
  * per image: the score of each image, averaged over images where it is
    defined (an image with no lesion and no predicted lesion has no Dice);
  * per patient: counts pooled within each patient, scored, averaged over patients.
mIoU is the mean of the lesion IoU and the non-lesion IoU over the same region.
"""

from __future__ import annotations


import chex
import jax
import jax.numpy as jnp
import numpy as np


UNASSESSABLE = 2  # the class "cannot be assessed" (glare) of a glare-aware lesion network


def unassessable(probabilities):
    """Where a glare-aware lesion network (3 classes) says the skin cannot be assessed: the probability
    of class :data:`UNASSESSABLE` exceeds one half. [..., 3] -> bool [...]."""
    return probabilities[..., UNASSESSABLE] > 0.5


def foreground(probabilities):
    """The one decision from class probabilities [..., classes] (numpy or jax) to a binary mask [...]:
    with two classes, a pixel is foreground (lesion, or face for the face-mask network) when the
    probability of class 1 (anything but class 0) exceeds one half; with a glare-aware lesion network's
    three, when it is assessable (:func:`unassessable`) and lesion is likelier than skin. Training's
    validation, ``launch.evaluate``, the face-mask stage and ``launch.analyze`` all decide here, on
    probabilities resized to the mask's size."""
    if probabilities.shape[-1] > UNASSESSABLE:
        return (probabilities[..., 1] > probabilities[..., 0]) & ~unassessable(probabilities)
    return (1.0 - probabilities[..., 0]) > 0.5


def confusion_counts(pred: jax.Array, label: jax.Array, region: jax.Array | None = None,
                     ignore_index: int = 255) -> jax.Array:
    """Per-image (tp, fp, fn, tn) of binary ``pred`` vs ``label``, both [b, h, w].

    Pixels where ``region`` [b, h, w] is 0, or ``label == ignore_index``, are
    not counted. Returns int32 [b, 4].
    """
    chex.assert_equal_shape([pred, label] + ([] if region is None else [region]))
    chex.assert_rank(pred, 3)
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


METRICS = ("dice", "iou", "miou", "precision", "recall")


def per_image_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of each image from counts [n, 4]; NaN where undefined."""
    return {k: np.array([scores(*c)[k] for c in np.asarray(counts, np.int64)], np.float64)
            for k in (*METRICS, "iou_background")}


def averaged(counts: np.ndarray, patients: np.ndarray) -> dict[str, dict[str, float]]:
    """{'pooled', 'per_image', 'per_patient'} -> {metric: value} from counts [n, 4] and patient ids [n]."""
    counts = np.asarray(counts, np.int64)
    patients = np.asarray(patients)
    per_img = per_image_scores(counts)
    by_patient = np.stack([counts[patients == p].sum(0) for p in np.unique(patients)]) if len(counts) else counts
    per_pat = per_image_scores(by_patient)
    mean = lambda a: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")  # noqa: E731
    return {"pooled": {k: v for k, v in scores(*counts.sum(0)).items() if k in METRICS},
            "per_image": {k: mean(per_img[k]) for k in METRICS},
            "per_patient": {k: mean(per_pat[k]) for k in METRICS}}


def patient_bootstrap(counts: np.ndarray, patients: np.ndarray, *, samples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals of the pooled scores, resampling *patients* with replacement."""
    counts = np.asarray(counts, np.int64)
    ids = np.unique(patients)
    per_patient = np.stack([counts[np.asarray(patients) == p].sum(0) for p in ids])
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in METRICS}
    for _ in range(samples):
        total = per_patient[rng.integers(0, len(ids), len(ids))].sum(0)
        sc = scores(*total)
        for k in METRICS:
            draws[k].append(sc[k])
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {k: (float(np.nanpercentile(v, lo)), float(np.nanpercentile(v, hi))) for k, v in draws.items()}
