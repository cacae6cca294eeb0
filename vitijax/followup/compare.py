"""One follow-up photo against the same view of the baseline: everything a clinician asks of the pair.

:func:`measure` reads one photo on its own (its lesions, their contrast and degree, its F-VASI
estimate); :func:`compare` registers nothing itself: given the :class:`Registration` of the
follow-up onto the baseline, it carries the follow-up's masks and photo onto the baseline's pixels
and computes

* the **common region**: baseline face pixels that the follow-up also shows as face (and neither
  photo's unassessable region covers);
* the **F-Vitiligo change on the common region** (pp): the follow-up's vitiligo share of it minus the
  baseline's, both counted in baseline pixels, so that face pixels entering or leaving the
  picture with a turn of the head do not read as a change of the disease;
* the **change map** and **lesion tracks** with their repigmentation patterns
  (:mod:`vitijax.followup.lesions`); the diffuse measure is the fall of the depigmentation degree
  from a baseline lesion to the follow-up lesion that continues it;
* each photo's **F-VASI estimate**, each on its own photo with the baseline's reference contrast, and
  the responder calls (:mod:`vitijax.followup.fvasi`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from vitijax.followup import fvasi as fvasi_lib
from vitijax.followup import lesions as lesions_lib
from vitijax.followup.registration import Registration


@dataclasses.dataclass
class Measured:
    """One photo's lesions, read on their own. labels [h, w] int32 (lesions 1..n); areas, ratios,
    degrees [n + 1] per lesion (index 0 unused; ratios: contrast to the surrounding skin; degrees 0..1
    against the patient's reference); face_pixels; fvasi (0-100)."""

    labels: np.ndarray
    areas: np.ndarray
    ratios: np.ndarray
    degrees: np.ndarray
    face_pixels: int
    reference: float
    fvasi: float


def measure(photo: np.ndarray, face: np.ndarray, lesion: np.ndarray, unassessable: np.ndarray | None = None,
            reference: float | None = None) -> Measured:
    """Lesions, contrasts, degrees and F-VASI of one photo [h, w, 3] with its masks [h, w] {0, 1}.

    ``reference``: the patient's contrast of complete depigmentation (:func:`fvasi.reference_ratio`,
    from the baseline); None: this photo's own (what the baseline itself uses)."""
    ok_face = (face > 0) if unassessable is None else (face > 0) & ~(unassessable > 0)
    labels, n = lesions_lib.lesions(lesion, ok_face)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    ratios = fvasi_lib.contrasts(photo, labels, face, unassessable, lesion)
    face_px = int(ok_face.sum())
    if reference is None:
        reference = fvasi_lib.reference_ratio(ratios, areas, face_px)
    degrees = fvasi_lib.degrees(ratios, reference)
    return Measured(labels, areas, ratios, degrees, face_px, float(reference),
                    fvasi_lib.fvasi(areas, degrees, face_px))


@dataclasses.dataclass
class Comparison:
    """A follow-up photo against the baseline, in baseline pixels (module docstring).

    common, codes [h, w] (baseline photo's size); change_pp on the common region (NaN when it is empty);
    events: the lesion tracks; base, follow: each photo measured in baseline pixels (the follow-up's on
    its warped photo and masks, with the baseline's reference: its lesions are what is tracked);
    fvasi_followup: the follow-up's F-VASI estimate on its own photo (the same measure as the
    baseline's); response: F-VASI improvement and calls; warped_photo [h, w, 3]: the follow-up photo
    registered onto the baseline.
    """

    common: np.ndarray
    codes: np.ndarray
    change_pp: float
    common_share: float
    events: list[lesions_lib.Track]
    base: Measured
    follow: Measured
    fvasi_followup: float
    response: dict
    registration_ok: bool
    registration_reason: str
    warped_photo: np.ndarray

    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for ev in self.events:
            counts[ev.event] = counts.get(ev.event, 0) + 1
        return {"change_common_pp": None if math.isnan(self.change_pp) else self.change_pp,
                "common_share": self.common_share, "events": counts,
                "fvasi_baseline": self.base.fvasi, "fvasi_followup": self.fvasi_followup, **self.response,
                "registration_ok": self.registration_ok, "registration_reason": self.registration_reason,
                "change_map_pixels": {lesions_lib.CHANGE_CODES[k]: int((self.codes == k).sum())
                                      for k in lesions_lib.CHANGE_CODES}}


def compare(base_photo: np.ndarray, base_face: np.ndarray, base_lesion: np.ndarray,
            follow_photo: np.ndarray, follow_face: np.ndarray, follow_lesion: np.ndarray, reg: Registration,
            base_unassessable: np.ndarray | None = None, follow_unassessable: np.ndarray | None = None,
            base: Measured | None = None) -> Comparison:
    """The pair's change, tracks, patterns and F-VASI (module docstring). Photos [h, w, 3] uint8, masks
    [h, w] {0, 1} at each photo's own size; ``reg`` maps baseline pixels to follow-up pixels;
    ``base``: the baseline already measured (it is the same for every follow-up)."""
    maps = reg.maps()
    warp = lambda m: reg.warp(m.astype(np.uint8), nearest=True, maps=maps) > 0  # noqa: E731
    face_f, lesion_f = warp(follow_face), warp(follow_lesion)
    unass_f = warp(follow_unassessable) if follow_unassessable is not None else None
    photo_f = reg.warp(follow_photo, maps=maps)
    face_b = base_face > 0
    common = face_b & face_f
    if base_unassessable is not None:
        common &= ~(base_unassessable > 0)
    if unass_f is not None:
        common &= ~unass_f
    n_common = int(common.sum())
    lesion_b = base_lesion > 0
    change = (100.0 * (float(np.count_nonzero(lesion_f & common)) - float(np.count_nonzero(lesion_b & common)))
              / n_common if n_common else math.nan)
    codes = lesions_lib.change_map(lesion_b, lesion_f, common)
    if base is None:
        base = measure(base_photo, base_face, base_lesion, base_unassessable)
    follow = measure(photo_f, face_f, lesion_f, unass_f, reference=base.reference)
    own = measure(follow_photo, follow_face, follow_lesion, follow_unassessable, reference=base.reference).fvasi
    events = lesions_lib.track(base.labels, follow.labels, common)
    lesions_lib.patterns(events, base.labels, lesion_f, common)
    for ev in events:  # the diffuse measure: the degree's fall along each continued identity
        falls = [(base.degrees[b] - follow.degrees[f]) * base.areas[b] for b, f in ev.continues.items()
                 if math.isfinite(base.degrees[b]) and math.isfinite(follow.degrees[f])]
        weight = sum(base.areas[b] for b, f in ev.continues.items()
                     if math.isfinite(base.degrees[b]) and math.isfinite(follow.degrees[f]))
        lesions_lib.name_pattern(ev, sum(falls) / weight if weight else None)
    return Comparison(common, codes, change, n_common / max(int(face_b.sum()), 1), events, base, follow, own,
                      fvasi_lib.response(base.fvasi, own), reg.ok, reg.reason, photo_f)

