"""The face-mask network: the same DDRNet and loss learning face vs background from the face masks.

    python -m launch.train --config launch/configs/face_mask.py:synthetic --workdir runs/face_mask

Input: the unmasked face crop, ImageNet-normalised. Label: the face mask.
Scored over the whole crop (counting inside the face mask would make every
prediction precise); its "ratios" are face fractions, with no F-Vitiligo
truth, so its summary speaks of the face only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vitijax.contract import CROP_MARGIN, InputContract
from vitijax.data.pipeline import crop_example
from vitijax.tasks.segmentation import (AUGMENT_KEYS, DEVICE_KEYS, HOST_KEYS, LOSS_KEYS, MODEL_KEYS,  # noqa: F401
                                        SELECTION_KEY, TRAIN_KEYS, blank, build_model, describe, eval_step,
                                        init_params, loss, model_meta)
from vitijax.tasks.segmentation import evaluate_task, segmentation_row, summarize_rows

NAME = "face_mask"
INPUT_KEYS = ("size", "margin")
# how launch.evaluate's report speaks of it: the face class over the crop; no F-Vitiligo, no lesion Table 1
REPORT = {"class": "face", "region": "over the whole face crop", "ratio": False, "paper_table": False}


def contract(input_cfg) -> InputContract:
    return InputContract(size=tuple(input_cfg["size"]), source="crop", margin=float(input_cfg.get("margin", CROP_MARGIN)),
                         mask_input=False, normalisation="imagenet")


def prepare(example: dict, contract: InputContract, aug=None, rng=None) -> dict[str, Any]:
    """{'image', 'label' (the face mask), 'face' (all ones: the region scored is the whole crop), 'view'}."""
    out = crop_example(example, contract, aug, rng)
    return {"image": out["image"], "label": out["face"].astype("int32"), "face": np.ones_like(out["face"]),
            "view": out["view"]}


def rows(index, out, ids) -> dict[str, Any]:
    row = segmentation_row(index, out, ids)
    row["ratio_true_full"] = float("nan")  # a face network's ratios are face fractions: no F-Vitiligo truth
    return row


def summarize(rows_, meta=None):
    return summarize_rows(rows_, meta)


def summary_line(title: str, s) -> str:
    return (f"{title}: face Dice {100 * s['dice']:.2f}  IoU {100 * s['iou']:.2f}  mIoU {100 * s['miou']:.2f}  "
            f"precision {100 * s['precision']:.2f}  recall {100 * s['recall']:.2f}  "
            f"({s['images']} crops; face vs background over the whole crop, pooled pixels, %)")


def evaluate(ev_step, variables, source, contract, global_batch: int, mesh, *, keep_predictions: bool = False):
    """(per-image rows: identifiers, counts, scores, ratios; {index: predicted mask} if kept)."""
    return evaluate_task(NAME, rows, ev_step, variables, source, contract, global_batch, mesh,
                         keep_predictions=keep_predictions)
