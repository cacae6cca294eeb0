"""The photo quality gate: named checks of a photo against the photography standard for vitiligo.

van Geel et al. (JAAD 2020, "Standard procedures for the photography of
vitiligo") ask for a controlled exposure, a sharp image, the face large in
the frame, a fixed head position per view and the whole face in the picture.
Each is a :class:`Check` here: a quality signal the analysis measures on the
face (:meth:`vitijax.pipeline.Analyzer`), a limit, and the flag a photo gets
when it crosses it. A failed check is a flag and a reason for "needs review";
a check whose signal could not be measured (no landmarks for the pose, no
view name) is reported as not measured and fails nothing.

Signals (all on the face, in :attr:`PhotoResult.quality`):

* ``face_median_luminance``: median luma (0.299 R + 0.587 G + 0.114 B) of the face pixels, grey levels;
* ``saturated_share``: share of face pixels with a channel at 250 or more (clipped: glare or over-exposure);
* ``sharpness``: how much of the face's edge energy survives at a fine scale: the variance of the
  Laplacian of the face's luma after a Gaussian of 1 pixel over that after a Gaussian of 3, each times
  its scale to the fourth (so a sharp step edge of any contrast gives one value), with the crop resized
  to :data:`SHARPNESS_SIDE` pixels and a 5x5 median filter first. Blur lowers it whatever the face
  shows; the plain variance of the Laplacian measured the face's content and the sensor noise more
  than the focus (synthetic faces: 4 to 20 when sharp, 1 to 6 at three times the blur; with noise of 15
  grey levels blurred photos read sharp). Measured on 6 synthetic faces at 1416x944, standard focus
  0.117-0.165, 1.5x blur 0.089-0.125, 2x 0.068-0.099, 3x 0.042-0.070, the same with noise 15; skimage's
  astronaut 0.120, after a Gaussian of 1 pixel 0.056;
* ``face_width_px``: the face box's width in photo pixels;
* ``yaw_deg`` / ``yaw_error_deg``: the head's yaw from RetinaFace's five landmarks (OpenCV's solvePnP on
  a generic face) and its distance from the view's expected yaw (:data:`EXPECTED_YAW_DEG`);
* ``edge_touch``: 1 when the face mask reaches the photo's border (the face is cut off);
* ``unassessable_share``: share of the face a glare-aware lesion network calls unassessable.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

SHARPNESS_SIDE = 256  # pixels: the crop's side when its sharpness is measured


@dataclasses.dataclass(frozen=True)
class Check:
    """A photo fails when ``signal op limit`` (op ">" or "<"); ``flag`` is what it is then called."""

    flag: str
    signal: str
    op: str
    limit: float
    why: str


# Limits: measured by `python -m launch.glare_study` (docs/glare.md) where a measure exists: the darkest
# standard synthetic face (skin tone 0.75, exposure 0.85) has a median luma of 38, the same faces at half the
# exposure 21-36; sharpness in its docstring. The yaw tolerance is half the angle between views; 256 pixels
# of face width, about 2 per millimetre; clipping and over-exposure as vitijax flagged them before (UV skin
# is dark: over-exposure clips lesions and highlights long before the face's median nears 215). Unassessable
# share: what glare hides could be all lesion or none, so 3 % of the face hidden leaves the ratio uncertain by
# up to 3 points; the flag fired on half the strongly glared photos and on none without glare (docs/glare.md).
CHECKS: tuple[Check, ...] = (
    Check("underexposed", "face_median_luminance", "<", 37, "face median luma below 37 of 255: lesions and skin merge"),
    Check("overexposed", "face_median_luminance", ">", 215, "face median luma above 215 of 255: lesions and skin merge"),
    Check("specular highlights", "saturated_share", ">", 0.01, "more than 1 % of the face clipped (a channel >= 250)"),
    Check("blurred", "sharpness", "<", 0.08, "fine-to-coarse Laplacian energy of the face below 0.08 (about twice "
          "the standard blur): lesion borders are smeared"),
    Check("face too small", "face_width_px", "<", 256, "face under 256 pixels wide (under about 2 pixels per "
          "millimetre of a 14 cm face): small lesions are lost"),
    Check("head turned", "yaw_error_deg", ">", 17.5, "head yaw more than 17.5 degrees (half the angle between "
          "views) from the view's expected yaw"),
    Check("face mask touches the photo edge", "edge_touch", ">", 0, "the face is cut off by the photo's border"),
    Check("unassessable region", "unassessable_share", ">", 0.03, "more than 3 % of the face unassessable (glare)"),
)
# The yaw a view is photographed at, degrees, the subject's left cheek towards the camera positive (as
# vitijax's synthetic views: 0.62 rad).
EXPECTED_YAW_DEG = {"front": 0.0, "left": 35.5, "right": -35.5}


def run_checks(quality: Mapping[str, float], checks=CHECKS) -> dict[str, dict[str, Any]]:
    """{flag: {'signal', 'value', 'op', 'limit', 'passed', 'why'}} of every check; ``passed`` is None (and
    value None) when the signal was not measured."""
    out = {}
    for c in checks:
        v = quality.get(c.signal)
        measured = v is not None and math.isfinite(v)
        failed = measured and (v > c.limit if c.op == ">" else v < c.limit)
        out[c.flag] = {"signal": c.signal, "value": float(v) if measured else None, "op": c.op, "limit": c.limit,
                       "passed": None if not measured else not failed, "why": c.why}
    return out


def failed(report: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The flags of the failed checks of a :func:`run_checks` report, in check order."""
    return [flag for flag, r in report.items() if r["passed"] is False]


def reason(flag: str, report: Mapping[str, Mapping[str, Any]]) -> str:
    """A failed check as a "needs review" reason: "blurred: sharpness 0.8 < 2"."""
    r = report[flag]
    return f"{flag}: {r['signal']} {r['value']:.3g} {r['op']} {r['limit']:g}"


def luma(pixels: np.ndarray) -> np.ndarray:
    """Luma [...] float32 of RGB pixels [..., 3] (ITU-R BT.601 weights)."""
    return np.asarray(pixels, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def sharpness(crop: np.ndarray, face: np.ndarray) -> float:
    """Fine-to-coarse Laplacian energy of the face (see the module docstring); ``crop`` [h, w, 3] uint8,
    ``face`` [h, w] {0, 1}. NaN (not measured) when the crop is smaller than :data:`SHARPNESS_SIDE` (an
    enlarged crop would read blurred whatever its focus) or too little face is left to measure."""
    import cv2

    s = SHARPNESS_SIDE
    if min(crop.shape[:2]) < s:
        return math.nan
    y = cv2.resize(luma(crop), (s, s), interpolation=cv2.INTER_AREA)
    f = cv2.resize(face.astype(np.uint8), (s, s), interpolation=cv2.INTER_NEAREST)
    inner = cv2.erode(f, np.ones((int(0.04 * s) | 1,) * 2, np.uint8)) > 0  # the outline is an edge at any focus
    if inner.sum() < 100:
        return math.nan
    median = float(np.median(y[inner]))
    if median <= 0:
        return math.nan
    y = cv2.medianBlur(np.clip(y * (100.0 / median), 0, 255).astype(np.uint8), 5).astype(np.float32)

    def energy(sigma: float) -> float:
        return float(cv2.Laplacian(cv2.GaussianBlur(y, (0, 0), sigma), cv2.CV_32F)[inner].var()) * sigma**4

    coarse = energy(3.0)
    return energy(1.0) / coarse if coarse > 0 else math.nan


# A generic face's five landmarks in RetinaFace's order (right eye, left eye, nose tip, right and left mouth
# corner; the subject's sides), millimetres, in the camera's axes for a face looking into the camera:
# x to the image's right (the subject's left), y down, z away from the camera (the nose tip nearest).
_FACE_3D = np.array([[-32.0, -35.0, 30.0], [32.0, -35.0, 30.0], [0.0, 0.0, 0.0], [-25.0, 30.0, 25.0],
                     [25.0, 30.0, 25.0]], np.float64)


def head_yaw(landmarks: np.ndarray, photo_hw: tuple[int, int]) -> float:
    """The head's yaw in degrees from five landmarks [5, 2] (x, y photo pixels, RetinaFace's order):
    OpenCV's solvePnP of a generic face seen by a camera of focal length the photo's long side. Positive
    when the subject's left cheek turns towards the camera (the nose points to the image's left)."""
    import cv2

    h, w = photo_hw
    f = float(max(h, w))
    camera = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], np.float64)
    ok, rvec, _ = cv2.solvePnP(_FACE_3D, np.asarray(landmarks, np.float64).reshape(5, 1, 2), camera, None,
                               flags=cv2.SOLVEPNP_EPNP)
    if not ok:
        return math.nan
    rot, _ = cv2.Rodrigues(rvec)
    facing = rot @ np.array([0.0, 0.0, -1.0])  # where the face looks, in the camera's axes
    return float(math.degrees(math.atan2(-facing[0], -facing[2])))
