"""An F-VASI estimate from a UV photograph: lesion area times depigmentation degree, summed over the face.

The facial Vitiligo Area Scoring Index (F-VASI; Hamzavi et al. 2004, used as the primary endpoint of
recent trials as F-VASI75) sums, over the face, each lesion's area (% of the face) times its degree of
depigmentation, graded 100 % (no pigment), 90 % (specks of pigment), 75 % (depigmented area exceeds
pigmented), 50 % (equal), 25 % (pigmented exceeds depigmented) or 10 % (specks of depigmentation).

This module *estimates* it from a UV photograph, not as a dermatologist scores it:

* **area**: each lesion's pixels (the lesion mask's 8-connected components inside the face,
  :func:`vitijax.followup.lesions.lesions`) as a percentage of the face's pixels, the same
  measure as F-Vitiligo;
* **degree**: under UV light depigmented skin is bright. For each lesion, the contrast ratio ``c`` =
  the 75th percentile of its grey level (the upper quartile, so the soft border and any
  mis-segmented skin weigh little) over the median grey level of the patient's normal skin in a ring
  around it (:data:`RING` of the face's width, outside every lesion, off the unassessable region),
  so the face's shading cancels. The degree is ``(c - 1) / (R - 1)`` clipped to [0, 1], where ``R``
  is the contrast of complete depigmentation. A photo does not say what complete depigmentation
  looks like on this patient under this lamp, so ``R`` is the patient's own most depigmented
  lesion at baseline (:func:`reference_ratio`), which is taken as 100 %; the same ``R`` serves every
  later visit, so that a lesion that fades (diffuse repigmentation) is seen to fade. A patient whose
  every lesion is partial is over-graded by this convention.
* the degree is rounded to the nearest F-VASI grade (:func:`grade`).

Its error against the synthetic generator's true areas and degrees is measured by
``python -m launch.followup_study`` (README, "Follow-up across visits").
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

GRADES = (1.0, 0.9, 0.75, 0.5, 0.25, 0.1)  # F-VASI's degrees of depigmentation
RING = (0.005, 0.03)  # the normal-skin ring around a lesion: from this to this share of the face's width
MIN_REFERENCE_SHARE = 0.002  # lesions at least this share of the face may set the reference (0.2 %)


def grade(degree: float) -> float:
    """The F-VASI grade nearest ``degree`` in [0, 1]; 0 below half the smallest grade (no depigmentation)."""
    if not math.isfinite(degree) or degree < GRADES[-1] / 2:
        return 0.0
    return min(GRADES, key=lambda g: abs(g - degree))


def grey(photo: np.ndarray) -> np.ndarray:
    """[h, w] float32 grey level of an RGB photo [h, w, 3] uint8 (or a grey one [h, w])."""
    return (cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY) if photo.ndim == 3 else photo).astype(np.float32)


def contrasts(photo: np.ndarray, labels: np.ndarray, face: np.ndarray,
              unassessable: np.ndarray | None = None, lesion: np.ndarray | None = None) -> np.ndarray:
    """The contrast ratio of each lesion against its surrounding normal skin (module docstring).

    photo [h, w, 3] uint8; labels [h, w] int (lesions 1..n, :func:`lesions`); face [h, w] {0, 1};
    unassessable [h, w] {0, 1} or None; lesion: the whole lesion mask [h, w] (None: the labelled lesions),
    so that specks too small to be lesions are not taken for normal skin. Returns [n + 1] float64 (index 0 unused), NaN where a lesion
    has no normal skin around it or none of its own pixels can be assessed.
    """
    n = int(labels.max(initial=0))
    out = np.full(n + 1, np.nan)
    if not n:
        return out
    g = grey(photo)
    ys, xs = np.nonzero(face)
    width = float(xs.max() - xs.min() + 1)
    near, far = RING[0] * width, RING[1] * width
    pad = int(math.ceil(far)) + 1
    ok = face > 0
    if unassessable is not None:
        ok = ok & ~(unassessable > 0)
    skin = ok & ((labels == 0) if lesion is None else ~(lesion > 0))
    for b, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, dim)) for s, dim in zip(sl, labels.shape))
        mine = labels[sl] == b
        dist = ndimage.distance_transform_edt(~mine)
        ring = skin[sl] & (dist > near) & (dist <= far)
        inside = mine & ok[sl]
        if ring.sum() < 20 or not inside.any():
            continue
        out[b] = float(np.percentile(g[sl][inside], 75)) / max(float(np.median(g[sl][ring])), 1.0)
    return out


def reference_ratio(ratios: np.ndarray, areas: np.ndarray, face_pixels: int) -> float:
    """``R``, the contrast of complete depigmentation: the largest contrast among the lesions that cover at
    least :data:`MIN_REFERENCE_SHARE` of the face (all lesions when none does); NaN with no lesion.

    ratios, areas: [n + 1] per lesion as from :func:`contrasts` and a bincount of the labels."""
    r = np.asarray(ratios[1:], np.float64)
    a = np.asarray(areas[1:], np.float64)
    big = np.isfinite(r) & (a >= MIN_REFERENCE_SHARE * face_pixels)
    pool = r[big] if big.any() else r[np.isfinite(r)]
    return float(pool.max()) if len(pool) else float("nan")


def degrees(ratios: np.ndarray, reference: float) -> np.ndarray:
    """Depigmentation degree in [0, 1] per lesion from its contrast ratio and the reference ``R``."""
    if not math.isfinite(reference) or reference <= 1.0:
        return np.full(len(ratios), np.nan)
    return np.clip((np.asarray(ratios, np.float64) - 1.0) / (reference - 1.0), 0.0, 1.0)


def fvasi(areas: np.ndarray, lesion_degrees: np.ndarray, face_pixels: int) -> float:
    """F-VASI (0-100) from per-lesion areas [n + 1] (pixels; index 0 unused) and degrees [n + 1] (0..1):
    sum of area (% of the face's ``face_pixels``) x the degree's F-VASI grade. A lesion whose degree is
    unknown (NaN) counts at 100 %, the conservative side. NaN for an empty face."""
    if face_pixels <= 0:
        return float("nan")
    total = 0.0
    for area, d in zip(np.asarray(areas)[1:], np.asarray(lesion_degrees)[1:]):
        total += 100.0 * float(area) / face_pixels * (grade(float(d)) if math.isfinite(d) else 1.0)
    return total


def response(baseline: float, followup: float) -> dict[str, float | bool | None]:
    """F-VASI improvement from ``baseline`` to ``followup`` in % of the baseline, and the trials' responder
    calls F-VASI50 / F-VASI75 (an improvement of at least 50 / 75 %); None where the baseline is 0."""
    if not (math.isfinite(baseline) and math.isfinite(followup)) or baseline <= 0:
        return {"improvement_pct": None, "fvasi50": None, "fvasi75": None}
    imp = 100.0 * (baseline - followup) / baseline
    return {"improvement_pct": imp, "fvasi50": imp >= 50.0, "fvasi75": imp >= 75.0}
