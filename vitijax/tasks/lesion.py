"""The lesion network (the paper's task): DDRNet segmenting vitiligo in the masked face crop.

    python -m launch.train --config launch/configs/synthetic.py --workdir runs/synthetic

Input: the square face crop, multiplied by the face mask (the paper's masked
crop; ``input.mask_input``), ImageNet-normalised. Label: the vitiligo mask;
with ``input.unassessable`` (and ``model.num_classes = 3``), class 2 where the
data set's unassessable (glare) mask says the skin cannot be judged
(launch/configs/glare.py).
Loss: OHEM cross-entropy on the main head + ``aux_weight`` x on the auxiliary
head. Scored inside the face mask (the region of F-Vitiligo); the best model
is the one with the highest validation Dice.
"""

from __future__ import annotations

from typing import Any

from vitijax.contract import CROP_MARGIN, InputContract
from vitijax.data.pipeline import crop_example
from vitijax.tasks.segmentation import (AUGMENT_KEYS, DEVICE_KEYS, HOST_KEYS, LOSS_KEYS, MODEL_KEYS,  # noqa: F401
                                        SELECTION_KEY, TRAIN_KEYS, blank, build_model, describe, eval_step,
                                        init_params, loss, model_meta, summary_line)
from vitijax.tasks.segmentation import evaluate_task, segmentation_row, summarize_rows

NAME = "lesion"
INPUT_KEYS = ("size", "margin", "mask_input", "unassessable")
REPORT = {"class": "lesion", "region": "inside the face mask", "ratio": True, "paper_table": True}


def contract(input_cfg) -> InputContract:
    return InputContract(size=tuple(input_cfg["size"]), source="crop", margin=float(input_cfg.get("margin", CROP_MARGIN)),
                         mask_input=bool(input_cfg.get("mask_input", True)), normalisation="imagenet",
                         unassessable=bool(input_cfg.get("unassessable", False)))


def prepare(example: dict, contract: InputContract, aug=None, rng=None) -> dict[str, Any]:
    """{'image' [h, w, 3] float32, 'label' [h, w] int32 (vitiligo 1; with ``contract.unassessable``,
    unassessable face pixels 2: the data set's glare truth and, in training, painted highlights
    (``augment.highlights``)), 'face' [h, w] uint8 (the region scored: the face mask), 'view'}."""
    out = crop_example(example, contract, aug, rng)
    label = out["lesion"].astype("int32")
    if contract.unassessable and "unassessable" in out:  # a data set without glare truth: none marked
        label[(out["unassessable"] > 0) & (out["face"] > 0)] = 2
    return {"image": out["image"], "label": label, "face": out["face"], "view": out["view"]}


def rows(index, out, ids) -> dict[str, Any]:
    return segmentation_row(index, out, ids)


def summarize(rows_, meta=None):
    return summarize_rows(rows_, meta)


def evaluate(ev_step, variables, source, contract, global_batch: int, mesh, *, keep_predictions: bool = False):
    """(per-image rows: identifiers, counts, scores, ratios; {index: predicted mask} if kept). A glare-aware
    network's unassessable shares are reported only where the data set holds the glare truth."""
    out, preds = evaluate_task(NAME, rows, ev_step, variables, source, contract, global_batch, mesh,
                               keep_predictions=keep_predictions)
    if len(source) and "unassessable_mask" not in source[0]:
        for r in out:
            r.pop("unassessable_pred_pct", None)
            r.pop("unassessable_true_pct", None)
    return out, preds
