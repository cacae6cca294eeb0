"""Full-resolution photo -> face box -> crop -> face mask -> masked crop -> lesion mask -> F-Vitiligo.

:class:`Analyzer` runs the whole chain on a batch of photos [h, w, 3] uint8
of any size (2832x4240 and larger) and returns one :class:`PhotoResult` per
photo, with both masks at the photo's full resolution. Each stage is the
function the rest of vitijax uses (``face.detect`` / ``face.FaceBoxModel``,
``face.crop_box``, the face-mask sources of :mod:`vitijax.face_mask`,
``segmenter.Segmenter``, ``face.paste_back``, ``metrics.f_vitiligo``).

Memory stays bounded whatever the photo size: the networks see fixed-size
inputs; only the face crop is handled at full resolution (its class
probabilities, float32, one channel at a time), and masks are uint8.

A photo where no face is found, or whose face mask comes out empty, is a
result with ``ratio`` NaN (undefined, not 0) and the reason in ``flags``;
the other photos of the batch are analysed as usual.

Quality flags (in ``flags``; thresholds in :data:`QUALITY`):
  ``no face``, ``several faces`` (RetinaFace found more than one strong
  face), ``empty face mask``, ``face mask touches the photo edge``,
  ``underexposed`` / ``overexposed`` (median luminance of the face),
  ``specular highlights`` (share of saturated face pixels),
  ``uncertain lesion pixels`` (share of face pixels whose lesion
  probability is between 0.3 and 0.7).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from vitijax import face as face_lib
from vitijax.metrics import f_vitiligo
from vitijax.segmenter import resize_channels

QUALITY = {"underexposed_median": 40, "overexposed_median": 215, "saturated_level": 250,
           "specular_share": 0.01, "uncertain_band": (0.3, 0.7), "uncertain_share": 0.10}


@dataclasses.dataclass
class PhotoResult:
    """What the analysis found in one photo. Masks are uint8 {0, 1} [h, w] at the photo's resolution."""

    height: int
    width: int
    ratio: float = math.nan  # F-Vitiligo in percent; NaN when undefined (no face, empty face mask)
    face_pixels: int = 0
    vitiligo_pixels: int = 0
    face_box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1, photo pixels
    box_score: float = math.nan  # RetinaFace's score; NaN for the face-box network
    crop_box: tuple[int, int, int, int] | None = None
    flags: list[str] = dataclasses.field(default_factory=list)
    face_mask: np.ndarray | None = None
    lesion_mask: np.ndarray | None = None
    probability: np.ndarray | None = None  # lesion probability [crop h, crop w] float32 (on request)
    uncertainty: np.ndarray | None = None  # TTA std of the lesion probability [crop h, crop w] (with TTA)
    quality: dict[str, float] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The scalar fields, for tables and JSON."""
        return {"ratio": self.ratio, "face_pixels": self.face_pixels, "vitiligo_pixels": self.vitiligo_pixels,
                "face_box": None if self.face_box is None else [round(v, 1) for v in self.face_box],
                "box_score": self.box_score, "crop_box": self.crop_box, "flags": list(self.flags),
                "height": self.height, "width": self.width, **self.quality}


def _inside_photo(box: face_lib.Box, photo_hw: tuple[int, int]) -> np.ndarray:
    """uint8 [crop h, crop w]: 1 where the crop ``box`` lies inside the photo (an outer product of
    row and column ranges, not a photo-sized array)."""
    x0, y0, x1, y1 = box
    h, w = photo_hw
    rows = ((np.arange(y0, y1) >= 0) & (np.arange(y0, y1) < h)).astype(np.uint8)
    cols = ((np.arange(x0, x1) >= 0) & (np.arange(x0, x1) < w)).astype(np.uint8)
    return rows[:, None] * cols[None, :]


class Analyzer:
    """The analysis chain with its networks.

    ``lesion``: the lesion network (a Segmenter trained with label "vitiligo").
    ``face_mask``: a face-mask source (:mod:`vitijax.face_mask`).
    ``face_box``: the face-box network (:class:`face.FaceBoxModel`), or None for RetinaFace.
    ``flips`` / ``scales``: test-time augmentation of the lesion network.
    """

    def __init__(self, lesion, face_mask, face_box=None, *, flips: bool = False, scales: Sequence[float] = (1.0,),
                 margin: float = 0.15, detect_long_side: int = face_lib.DEFAULT_LONG_SIDE,
                 keep_probability: bool = False):
        if lesion.label != "vitiligo":
            from vitijax.checkpoint import CheckpointError

            raise CheckpointError(f"{lesion.where}: a network trained to segment {lesion.label!r}, not 'vitiligo'")
        self.lesion, self.face_mask, self.face_box = lesion, face_mask, face_box
        self.flips, self.scales, self.margin = flips, tuple(scales), margin
        self.detect_long_side, self.keep_probability = detect_long_side, keep_probability

    @property
    def tta(self) -> bool:
        return self.flips or self.scales != (1.0,)

    def find_face(self, photo: np.ndarray, result: PhotoResult) -> face_lib.Detection | None:
        if self.face_box is not None:
            det = self.face_box(photo)
        else:
            dets = face_lib.detect(photo, long_side=self.detect_long_side)
            det = face_lib.choose_face(dets)
            if det is not None and sum(d.score >= 0.8 * dets[0].score for d in dets) > 1:  # dets: best first
                result.flags.append("several faces")
        if det is None or det.box[2] - det.box[0] < 2 or det.box[3] - det.box[1] < 2:
            result.flags.append("no face")
            return None
        result.face_box, result.box_score = det.box, det.score
        return det

    def __call__(self, photos: Sequence[np.ndarray], truths: Sequence[np.ndarray | None] | None = None
                 ) -> list[PhotoResult]:
        """Analyses a batch of RGB uint8 photos [h, w, 3]; ``truths``: annotated face masks, for the
        ``ground_truth`` face-mask source."""
        results = [PhotoResult(p.shape[0], p.shape[1]) for p in photos]
        todo = []  # (index, detection, crop box)
        for i, (photo, res) in enumerate(zip(photos, results)):
            det = self.find_face(photo, res)
            if det is not None:
                res.crop_box = face_lib.crop_box(face_lib.int_box(det.box), self.margin)
                todo.append((i, det, res.crop_box))
        if not todo:
            return results
        idx = [i for i, _, _ in todo]
        boxes = [b for _, _, b in todo]
        faces = self.face_mask([photos[i] for i in idx], boxes, [d for _, d, _ in todo],
                               None if truths is None else [truths[i] for i in idx])
        lesion_in = []
        for i, box, face in zip(idx, boxes, faces):
            # The crop's zero-filled part beyond the photo's edge is not face, whatever a network says.
            face = face * _inside_photo(box, photos[i].shape[:2])
            if not face.any():
                results[i].flags.append("empty face mask")
                continue
            lesion_in.append((i, box, face))
        if not lesion_in:
            return results
        crops = [face_lib.crop(photos[i], box) for i, box, _ in lesion_in]
        probs = self.lesion.probabilities(crops, [f for _, _, f in lesion_in], flips=self.flips, scales=self.scales)
        for (i, box, face), crop, (p, std) in zip(lesion_in, crops, probs):
            self._finish(results[i], photos[i].shape[:2], box, crop, face, p, std)
        return results

    def _finish(self, res: PhotoResult, photo_hw, box, crop, face, probs, std) -> None:
        """Full-resolution masks, counts, ratio and quality flags of one photo from its crop's outputs."""
        hw = crop.shape[:2]
        p_lesion = resize_channels(1.0 - probs[..., 0], hw)  # every non-background class is lesion
        lesion = ((p_lesion > 0.5) & (face > 0)).astype(np.uint8)
        res.face_mask = face_lib.paste_back(face, box, photo_hw)
        res.lesion_mask = face_lib.paste_back(lesion, box, photo_hw)
        res.face_pixels = int(res.face_mask.sum())
        res.vitiligo_pixels = int(res.lesion_mask.sum())
        res.ratio = f_vitiligo(res.vitiligo_pixels, res.face_pixels)
        if self.keep_probability:
            res.probability = np.where(face > 0, p_lesion, 0).astype(np.float32)
        if std is not None:
            res.uncertainty = np.where(face > 0, resize_channels(std, hw), 0).astype(np.float32)
        # Quality, measured on the face only.
        on_face = face > 0
        pixels = crop[on_face].astype(np.float32)
        luminance = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
        lo, hi = QUALITY["uncertain_band"]
        q = {"face_median_luminance": float(np.median(luminance)),
             "saturated_share": float((pixels.max(axis=1) >= QUALITY["saturated_level"]).mean()),
             "uncertain_share": float(((p_lesion[on_face] > lo) & (p_lesion[on_face] < hi)).mean())}
        if std is not None:
            q["mean_uncertainty"] = float(res.uncertainty[on_face].mean())
        res.quality = q
        if q["face_median_luminance"] < QUALITY["underexposed_median"]:
            res.flags.append("underexposed")
        if q["face_median_luminance"] > QUALITY["overexposed_median"]:
            res.flags.append("overexposed")
        if q["saturated_share"] > QUALITY["specular_share"]:
            res.flags.append("specular highlights")
        if q["uncertain_share"] > QUALITY["uncertain_share"]:
            res.flags.append("uncertain lesion pixels")
        h, w = photo_hw
        fy, fx = np.nonzero(face)
        if fy.size and (box[0] + fx.min() <= 0 or box[1] + fy.min() <= 0 or box[0] + fx.max() >= w - 1
                        or box[1] + fy.max() >= h - 1):
            res.flags.append("face mask touches the photo edge")
