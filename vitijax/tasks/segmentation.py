"""What the lesion and face-mask tasks share: DDRNet, OHEM cross-entropy, confusion counts.

Not a task itself: :mod:`vitijax.tasks.lesion` and :mod:`vitijax.tasks.face_mask`
import it and say what differs (the label and the region counted).

Evaluation resolution: the network sees the crop resized to the input size;
its class probabilities (1/8) are resized bilinearly to the label size, which
is the input size, and :func:`vitijax.metrics.foreground` decides (as
analysis does, on probabilities). Ratios here are at that resolution;
``ratio_true_full`` carries the full-photo truth where the data set stores it.
"""

from __future__ import annotations

from typing import Any, Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np

from vitijax import metrics
from vitijax.evaluate import ID_KEYS, image_row, run_rows, summarize
from vitijax.losses import ddrnet_loss
from vitijax.models.ddrnet import DDRNet
from vitijax.resize import resize_bilinear

MODEL_KEYS = ("variant", "num_classes", "aux_head", "dtype")
LOSS_KEYS = ("thresh", "min_kept", "aux_weight", "ignore_index", "class_weights")
AUGMENT_KEYS = ("flip", "scale_range", "max_rotation_deg", "shift", "brightness", "contrast", "uv_tone",
                "blur_prob", "max_blur_sigma", "highlights")
TRAIN_KEYS = ("image", "label")
DEVICE_KEYS = ("image", "label", "face")
HOST_KEYS: tuple[str, ...] = ()
SELECTION_KEY = "dice"


def model_meta(model_cfg) -> dict[str, Any]:
    return {"model": "ddrnet", "variant": model_cfg["variant"], "num_classes": int(model_cfg["num_classes"]),
            "aux_head": bool(model_cfg["aux_head"])}


def build_model(meta: Mapping[str, Any], dtype: str = "float32") -> DDRNet:
    """The DDRNet of ``meta``; ``dtype`` is the compute precision (training may choose bfloat16; stored
    parameters are float32 either way, and inference computes in float32)."""
    return DDRNet(variant=meta["variant"], num_classes=int(meta["num_classes"]), aux_head=bool(meta["aux_head"]),
                  dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype])


def init_params(params, model_cfg, log=print):
    return params


def blank(contract) -> dict[str, np.ndarray]:
    h, w = contract.size
    return {"image": np.zeros((h, w, 3), np.float32), "label": np.zeros((h, w), np.int32),
            "face": np.zeros((h, w), np.uint8)}


def loss(outputs, batch, loss_cfg):
    """OHEM cross-entropy of the main (+ aux) head's logits [b, h/8, w/8, c] against 'label' [b, h, w]."""
    chex.assert_rank([batch["image"], batch["label"]], [4, 3])
    chex.assert_equal_shape_prefix([batch["image"], batch["label"]], 3)
    return ddrnet_loss(outputs, batch["label"], aux_weight=loss_cfg.aux_weight, thresh=loss_cfg.thresh,
                       min_kept=loss_cfg.min_kept, ignore_index=loss_cfg.ignore_index,
                       class_weights=loss_cfg.get("class_weights"))


def eval_step(variables, batch: Mapping[str, jax.Array], *, model: DDRNet) -> dict[str, jax.Array]:
    """Per-image counts of the main head's decision inside the batch's region 'face' [b, h, w] and over
    the crop: 'face' and 'crop' [b, 4] (tp, fp, fn, tn), 'pred' [b, h, w] uint8, 'valid', 'index'."""
    chex.assert_equal_shape([batch["label"], batch["face"]])
    chex.assert_equal_shape_prefix([batch["image"], batch["label"]], 3)
    out = model.apply(variables, batch["image"], train=False)
    main = out[0] if isinstance(out, tuple) else out
    probs = resize_bilinear(jax.nn.softmax(main.astype(jnp.float32), axis=-1), batch["label"].shape[1:3])
    pred = metrics.foreground(probs)
    label, region = batch["label"], batch["face"]
    extra = {}
    if probs.shape[-1] > metrics.UNASSESSABLE:
        # A glare-aware network: lesions are scored on the face the truth calls assessable, where a pixel the
        # network calls unassessable counts as "not lesion" (leaving those out too would reward calling hard
        # lesions glare, and the best model is chosen on this Dice); the unassessable class is scored against
        # the truth inside the face.
        un_pred, un_true = metrics.unassessable(probs), label == metrics.UNASSESSABLE
        extra["unassessable"] = metrics.confusion_counts(un_pred, un_true.astype(label.dtype), region)
        label = jnp.where(un_true, 255, label)
    return {"face": metrics.confusion_counts(pred, label, region),
            "crop": metrics.confusion_counts(pred, label), "pred": pred.astype(jnp.uint8),
            "valid": batch["valid"], "index": batch["index"], **extra}


def segmentation_row(index, out, ids) -> dict[str, Any]:
    row = image_row(index, ids, out["face"], out["crop"])
    if "unassessable" in out:  # shares of the face, percent: predicted and true
        tp, fp, fn, tn = (int(v) for v in out["unassessable"])
        n = max(tp + fp + fn + tn, 1)
        row["unassessable_pred_pct"], row["unassessable_true_pct"] = 100 * (tp + fp) / n, 100 * (tp + fn) / n
    return row


def summarize_rows(rows, meta=None) -> tuple[dict[str, float], dict[str, Any]]:
    """(flat: face-region pooled scores, crop_ scores, ratio_mae, images; the whole summary)."""
    if not rows:
        raise ValueError("the evaluation split is empty: nothing to evaluate")
    s = summarize(rows)
    flat = {**s["face"]["pooled"], **{f"crop_{k}": v for k, v in s["crop"]["pooled"].items()},
            "ratio_mae": s["ratio"]["mae"], "images": s["images"]}
    if "unassessable_pred_pct" in rows[0]:  # a glare-aware network: how far its unassessable share is off
        err = [abs(r["unassessable_pred_pct"] - r["unassessable_true_pct"]) for r in rows]
        flat["unassessable_share_mae"] = s["unassessable_share_mae_pp"] = float(np.mean(err))
    return flat, s


def summary_line(title: str, s: Mapping[str, float]) -> str:
    return (f"{title}: Dice {100 * s['dice']:.2f}  IoU {100 * s['iou']:.2f}  mIoU {100 * s['miou']:.2f}  "
            f"precision {100 * s['precision']:.2f}  recall {100 * s['recall']:.2f}  "
            f"F-Vitiligo MAE {s['ratio_mae']:.2f} pp  "
            + (f"unassessable share MAE {s['unassessable_share_mae']:.2f} pp  " if "unassessable_share_mae" in s else "")
            + f"({s['images']} images; face region, pooled pixels, %)")


def describe(meta: Mapping[str, Any]) -> str:
    return f"DDRNet-{meta['variant']}"


def evaluate_task(name: str, row, ev_step, variables, source, contract, global_batch: int, mesh, *,
                  keep_predictions: bool = False):
    """(per-image rows, {index: predicted mask [h, w] uint8} when ``keep_predictions``)."""
    return run_rows(ev_step, variables, source, name, contract, global_batch, mesh, row, ID_KEYS,
                    keep_predictions=keep_predictions)
