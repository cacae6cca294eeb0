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

A photo where no face is found, whose face mask comes out empty or
implausible, or that is too small to hold a face, is a result with ``ratio``
NaN (undefined, not 0) and the reason in ``flags`` (:data:`RATIO_UNDEFINED`);
the other photos of the batch are analysed as usual.

Glare: a glare-aware lesion network (three classes, ``contract.unassessable``)
marks face pixels it cannot assess (``unassessable_mask``); they leave both
counts, so ``ratio`` = vitiligo / (face - unassessable) pixels, and their
share of the face is ``quality['unassessable_share']``.

Flags (in ``flags``): ``photo too small`` (a side under
:data:`MIN_PHOTO_SIDE`), ``no face`` (the face-box network's face-presence
score below its threshold, or RetinaFace found none), ``several faces``
(RetinaFace found more than one strong face), ``empty face mask``,
``implausible face mask`` (its shape, :func:`face_mask_shape`, outside
:data:`FACE_MASK_RANGE`), ``no assessable face`` (glare covers all of it),
``uncertain lesion pixels`` (share of face pixels whose lesion probability
is between 0.3 and 0.7), and each failed check of the photo quality gate
(:mod:`vitijax.quality`: exposure, clipping, sharpness, face size, head
pose, framing, unassessable share), whose full report is ``checks``.

"Needs review" (``review_reasons``, non-empty when the ratio should be looked
at before it is used): every failed quality check, and the quality signals
in ``quality`` checked against :data:`REVIEW_RULE`, or the rule calibrated
for a bundle (``launch.evaluate --calibrate``, ``launch.export
--review-rule``). How often each flag and "needs review" is right is
measured by ``launch.evaluate --bundle``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from vitijax import face as face_lib
from vitijax import quality as quality_lib
from vitijax import tasks
from vitijax.checkpoint import CheckpointError
from vitijax.metrics import f_vitiligo, foreground, unassessable
from vitijax.resize import resize_host

# What a face mask's shape must look like before its ratio is trusted (see face_mask_shape).
FACE_MASK_RANGE = {"face_fill": (0.3, 1.2), "face_in_box": (0.85, 1.0), "face_largest_part": (0.85, 1.0)}
# "Needs review": {quality signal: (">" or "<", threshold)}; a photo crossing any is flagged. This default
# is what `python -m launch.reproduce` calibrated on 96 held-out synthetic photos (16 new patients, half with
# varied acquisition; docs/results.md): saturated face pixels (glare and over-exposure hide lesions) or a
# face mask that fills more of its box than a face does (it has leaked into hair or background). A bundle
# exported with --review-rule carries its own.
REVIEW_RULE: dict[str, tuple[str, float]] = {"saturated_share": (">", 0.053), "face_fill": (">", 0.9089)}
RATIO_UNDEFINED = ("photo too small", "no face", "empty face mask", "implausible face mask",
                   "no assessable face")  # flags: no ratio
MIN_PHOTO_SIDE = 32  # pixels: a smaller picture cannot show a face worth measuring
QUALITY = {"saturated_level": 250, "uncertain_band": (0.3, 0.7), "uncertain_share": 0.10}


@dataclasses.dataclass
class PhotoResult:
    """What the analysis found in one photo. Masks are uint8 {0, 1} [h, w] at the photo's resolution."""

    height: int
    width: int
    ratio: float = math.nan  # F-Vitiligo in percent; NaN when undefined (no face, empty face mask)
    face_pixels: int = 0  # the whole face mask
    vitiligo_pixels: int = 0
    unassessable_pixels: int = 0  # face pixels a glare-aware network could not assess (out of the ratio)
    face_box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1, photo pixels
    box_score: float = math.nan  # RetinaFace's score, or the face-box network's face-presence score
    crop_box: tuple[int, int, int, int] | None = None
    flags: list[str] = dataclasses.field(default_factory=list)
    face_mask: np.ndarray | None = None
    lesion_mask: np.ndarray | None = None
    unassessable_mask: np.ndarray | None = None  # [h, w] {0, 1}, from a glare-aware lesion network only
    crop: np.ndarray | None = None  # the photo cut to crop_box [crop h, crop w, 3] uint8: cut once, reused by the overlay
    probability: np.ndarray | None = None  # lesion probability [crop h, crop w] float32 (on request)
    uncertainty: np.ndarray | None = None  # TTA std of the lesion probability [crop h, crop w] (with TTA)
    quality: dict[str, float] = dataclasses.field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # the quality gate's report
    review_reasons: list[str] = dataclasses.field(default_factory=list)  # why the ratio needs a look; [] = trusted

    @property
    def needs_review(self) -> bool:
        return bool(self.review_reasons)

    def summary(self) -> dict[str, Any]:
        """The scalar fields, for tables and JSON."""
        return {"ratio": self.ratio, "needs_review": self.needs_review, "review_reasons": list(self.review_reasons),
                "face_pixels": self.face_pixels, "vitiligo_pixels": self.vitiligo_pixels,
                "unassessable_pixels": self.unassessable_pixels,
                "face_box": None if self.face_box is None else [round(v, 1) for v in self.face_box],
                "box_score": self.box_score, "crop_box": self.crop_box, "flags": list(self.flags),
                "height": self.height, "width": self.width, **self.quality,
                "checks": {k: dict(v) for k, v in self.checks.items()}}


def review_reasons(quality: dict[str, float], rule: dict[str, tuple[str, float]] | None = None) -> list[str]:
    """Why a photo's ratio needs a person's look: each signal of ``rule`` ({signal: (">" or "<", threshold)};
    default :data:`REVIEW_RULE`) that ``quality`` crosses, as "signal 3.2 > 2.5"."""
    out = []
    for key, (op, threshold) in (REVIEW_RULE if rule is None else rule).items():
        v = quality.get(key)
        if v is not None and math.isfinite(v) and (v > threshold if op == ">" else v < threshold):
            out.append(f"{key} {v:.3g} {op} {threshold:g}")
    return out


def face_mask_shape(face: np.ndarray, box) -> dict[str, float]:
    """Shape statistics of a face mask [h, w] {0, 1} against the face box ``box`` (x0, y0, x1, y1) in the
    same pixels, on a copy shrunk to at most 256 pixels a side (enough for shares, and cheap):

    ``face_fill``: face pixels / box area (a synthetic face fills 0.80-0.81 of its true box);
    ``face_in_box``: share of face pixels inside the box grown by 10 % of its size on each side;
    ``face_largest_part``: share of face pixels in the largest 8-connected part.
    """
    from scipy import ndimage

    h, w = face.shape
    step = max(1, int(math.ceil(max(h, w) / 256)))
    small = face[::step, ::step] > 0
    n = int(small.sum())
    x0, y0, x1, y1 = (float(v) / step for v in box)
    bw, bh = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
    gx0, gy0, gx1, gy1 = x0 - 0.1 * bw, y0 - 0.1 * bh, x1 + 0.1 * bw, y1 + 0.1 * bh
    ys, xs = np.nonzero(small)
    inside = ((xs + 0.5 >= gx0) & (xs + 0.5 <= gx1) & (ys + 0.5 >= gy0) & (ys + 0.5 <= gy1)).sum()
    labels, count = ndimage.label(small, structure=np.ones((3, 3), bool))
    largest = np.bincount(labels.ravel())[1:].max() if count else 0
    return {"face_fill": n / (bw * bh), "face_in_box": float(inside / n) if n else 0.0,
            "face_largest_part": float(largest / n) if n else 0.0}


def face_mask_plausible(shape: dict[str, float], ranges: dict[str, tuple[float, float]] = FACE_MASK_RANGE) -> bool:
    """Whether a face mask's shape statistics (:func:`face_mask_shape`) fall in ``ranges``."""
    return all(lo <= shape[k] <= hi for k, (lo, hi) in ranges.items())


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

    ``lesion``: the lesion network (a Segmenter of the lesion task); its input contract's margin is the
    crop rule, and the face-mask and face-box networks must have been trained with the same one.
    ``face_mask``: a face-mask source (:mod:`vitijax.face_mask`).
    ``face_box``: the face-box network (:class:`face.FaceBoxModel`), or None for RetinaFace.
    ``flips`` / ``scales``: test-time augmentation of the lesion network.
    ``review_rule``: the "needs review" rule (default :data:`REVIEW_RULE`).
    ``face_mask_range``: the plausible face-mask shapes; None checks nothing (only for timing random networks).
    """

    def __init__(self, lesion, face_mask, face_box=None, *, flips: bool = False, scales: Sequence[float] = (1.0,),
                 keep_probability: bool = False, review_rule: dict[str, tuple[str, float]] | None = None,
                 face_mask_range: dict[str, tuple[float, float]] | None = FACE_MASK_RANGE):
        tasks.require(lesion.task.NAME, "lesion", lesion.where)
        # One crop feeds every network, so every network must have learnt the same crop rule.
        self.margin = lesion.contract.margin
        others = [getattr(face_mask, "segmenter", None), face_box]
        for other in (o for o in others if o is not None and o.contract.margin != self.margin):
            raise CheckpointError(f"{other.where} was trained on crops with margin {other.contract.margin:g}, "
                                  f"{lesion.where} on {self.margin:g}: export networks trained with one crop margin")
        self.lesion, self.face_mask, self.face_box = lesion, face_mask, face_box
        self.flips, self.scales = flips, tuple(scales)
        self.detect_long_side, self.keep_probability = lesion.contract.detect_long_side, keep_probability
        self.review_rule, self.face_mask_range = review_rule, face_mask_range

    @property
    def tta(self) -> bool:
        return self.flips or self.scales != (1.0,)

    def find_face(self, photo: np.ndarray, result: PhotoResult) -> face_lib.Detection | None:
        if min(photo.shape[:2]) < MIN_PHOTO_SIDE:
            result.flags.append("photo too small")
            return None
        if self.face_box is not None:
            det = self.face_box(photo)
            result.box_score = det.score
            if det.score < self.face_box.threshold:
                result.flags.append("no face")
                return None
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

    def faces(self, photos: Sequence[np.ndarray], truths: Sequence[np.ndarray | None] | None = None,
              boxes: Sequence[tuple[float, float, float, float]] | None = None,
              views: Sequence[str | None] | None = None
              ) -> tuple[list[PhotoResult], list[tuple[int, face_lib.Box, np.ndarray, np.ndarray]]]:
        """The face stages of :meth:`__call__`: (a result per photo, with its face box, crop box, flags,
        face size and pose and face-mask shape, and (index, crop box, crop [ch, cw, 3], face mask [ch, cw]
        {0, 1}) of each photo whose face mask is usable)."""
        results = [PhotoResult(p.shape[0], p.shape[1]) for p in photos]
        todo = []  # (index, detection, crop box)
        for i, (photo, res) in enumerate(zip(photos, results)):
            if boxes is not None:
                det = face_lib.Detection(tuple(float(v) for v in boxes[i]), 1.0, None)
                res.face_box, res.box_score = det.box, det.score
            else:
                det = self.find_face(photo, res)
            if det is not None:
                res.quality["face_width_px"] = float(det.box[2] - det.box[0])
                if det.landmarks is not None:  # RetinaFace's; the face-box network gives none
                    yaw = quality_lib.head_yaw(det.landmarks, photo.shape[:2])
                    res.quality["yaw_deg"] = yaw
                    view = views[i] if views is not None else None
                    if view in quality_lib.EXPECTED_YAW_DEG and math.isfinite(yaw):
                        res.quality["yaw_error_deg"] = abs(yaw - quality_lib.EXPECTED_YAW_DEG[view])
                res.crop_box = face_lib.crop_box(face_lib.int_box(det.box), self.margin)
                todo.append((i, det, res.crop_box))
        if not todo:
            return results, []
        idx = [i for i, _, _ in todo]
        crop_boxes = [b for _, _, b in todo]
        crops = [face_lib.crop(photos[i], b) for i, b in zip(idx, crop_boxes)]  # the one cut at full resolution
        faces = self.face_mask([photos[i] for i in idx], crop_boxes, [d for _, d, _ in todo],
                               None if truths is None else [truths[i] for i in idx], crops=crops)
        usable = []
        for i, box, crop, face, (_, det, _) in zip(idx, crop_boxes, crops, faces, todo):
            # The crop's zero-filled part beyond the photo's edge is not face, whatever a network says.
            face = face * _inside_photo(box, photos[i].shape[:2])
            if not face.any():
                results[i].flags.append("empty face mask")
                continue
            shape = face_mask_shape(face, np.asarray(det.box, np.float64) - [box[0], box[1], box[0], box[1]])
            results[i].quality.update(shape)
            if self.face_mask_range is not None and not face_mask_plausible(shape, self.face_mask_range):
                results[i].flags.append("implausible face mask")
                continue
            usable.append((i, box, crop, face))
        return results, usable

    def __call__(self, photos: Sequence[np.ndarray], truths: Sequence[np.ndarray | None] | None = None,
                 boxes: Sequence[tuple[float, float, float, float]] | None = None,
                 views: Sequence[str | None] | None = None) -> list[PhotoResult]:
        """Analyses a batch of RGB uint8 photos [h, w, 3]; ``truths``: annotated face masks, for the
        ``ground_truth`` face-mask source; ``boxes``: given face boxes (x0, y0, x1, y1, photo pixels)
        instead of the face finder's (the chain evaluator's "lesion only" reference); ``views``: each
        photo's view (left, front, right), against which its head pose is checked."""
        results, lesion_in = self.faces(photos, truths, boxes, views)
        if not lesion_in:
            return results
        probs = self.lesion.probabilities([c for _, _, c, _ in lesion_in], [f for _, _, _, f in lesion_in],
                                          flips=self.flips, scales=self.scales)
        for (i, box, crop, face), (p, std) in zip(lesion_in, probs):
            self._finish(results[i], photos[i].shape[:2], box, crop, face, p, std)
        return results

    def _finish(self, res: PhotoResult, photo_hw, box, crop, face, probs, std) -> None:
        """Full-resolution masks, counts, ratio, quality signals and checks of one photo from its crop's
        outputs (class probabilities [h', w', classes] at the network's output resolution)."""
        hw = crop.shape[:2]
        on_face = face > 0
        if probs.shape[-1] > 2:  # glare-aware: every class at the crop's size (the one decision needs all)
            full = resize_host(probs, hw)
            # lesion against skin, the choice foreground makes on assessable pixels: the uncertainty signals
            p_lesion = full[..., 1] / np.maximum(full[..., 0] + full[..., 1], 1e-12)
            glare = unassessable(full) & on_face
            lesion = foreground(full) & on_face
            del full
        else:  # the lesion probability alone, one channel at full resolution; the decision is foreground's
            p_lesion = resize_host(1.0 - probs[..., 0], hw)
            glare = None
            lesion = foreground(np.stack([1.0 - p_lesion], -1)) & on_face
        res.crop = crop
        res.face_mask = face_lib.paste_back(face, box, photo_hw)
        res.lesion_mask = face_lib.paste_back(lesion.astype(np.uint8), box, photo_hw)
        res.face_pixels = int(res.face_mask.sum())
        res.vitiligo_pixels = int(res.lesion_mask.sum())
        if glare is not None:
            res.unassessable_mask = face_lib.paste_back(glare.astype(np.uint8), box, photo_hw)
            res.unassessable_pixels = int(res.unassessable_mask.sum())
        assessable = res.face_pixels - res.unassessable_pixels
        res.ratio = f_vitiligo(res.vitiligo_pixels, assessable)
        if self.keep_probability:
            res.probability = np.where(on_face, p_lesion, 0).astype(np.float32)
        if std is not None:
            res.uncertainty = np.where(on_face, resize_host(std, hw), 0).astype(np.float32)
        # Quality, measured on the face only.
        pixels = crop[on_face]
        lo, hi = QUALITY["uncertain_band"]
        p_face = p_lesion[on_face if glare is None else on_face & ~glare]  # where the ratio is counted

        def share(sel):  # NaN when glare left nothing to count
            return float(sel.mean()) if sel.size else math.nan

        q = {"face_median_luminance": float(np.median(quality_lib.luma(pixels))),
             "saturated_share": float((pixels.max(axis=1) >= QUALITY["saturated_level"]).mean()),
             "uncertain_share": share((p_face > lo) & (p_face < hi)),
             # how far the ratio would move if the decision threshold moved from 0.5 to 0.25 or 0.75: pixels
             # the network is unsure of, in percentage points of the face
             "ratio_band_pp": 100.0 * share((p_face > 0.25) & (p_face <= 0.75)),
             "sharpness": quality_lib.sharpness(crop, face)}
        if glare is not None:
            q["unassessable_share"] = res.unassessable_pixels / res.face_pixels
        if std is not None:
            q["mean_uncertainty"] = float(res.uncertainty[on_face].mean())
        h, w = photo_hw
        fy, fx = np.nonzero(face)
        q["edge_touch"] = float(bool(fy.size) and (box[0] + fx.min() <= 0 or box[1] + fy.min() <= 0
                                                  or box[0] + fx.max() >= w - 1 or box[1] + fy.max() >= h - 1))
        res.quality.update(q)
        if q["uncertain_share"] > QUALITY["uncertain_share"]:
            res.flags.append("uncertain lesion pixels")
        res.checks = quality_lib.run_checks(res.quality)
        failed = quality_lib.failed(res.checks)
        res.flags += failed
        res.review_reasons = ([quality_lib.reason(f, res.checks) for f in failed]
                              + review_reasons(res.quality, self.review_rule))
        if assessable <= 0:
            res.flags.append("no assessable face")
