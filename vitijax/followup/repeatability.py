"""Test-retest repeatability of a measurement from repeat photographs of one visit.

A *subject* here is one patient in one view at one visit, photographed ``k >= 2`` times (the patient
re-seated, the camera re-aimed); each photo is measured on its own. With subjects ``i`` and their
repeat values ``x_ij``:

* **within-subject SD** ``S_w`` = sqrt(MSW), the pooled within-subject mean square (with equal
  repeats per subject, the mean of the subjects' sample variances): the standard error of
  measurement, SEM;
* **coefficient of variation**, two ways, in %: ``cv_pct``, the root mean square over subjects of
  SD_i / mean_i (the within-subject CV; subjects with a mean above zero), which small values
  dominate (a 2 % ratio that moves 0.3 pp is 15 %); and ``cv_pooled_pct`` = S_w / the grand mean, the
  measurement's spread relative to the typical value. Vitil-IA reports "< 3 % repeat variation"
  without saying which;
* **ICC(1,1)**: one-way random-effects intraclass correlation, (MSB - MSW) / (MSB + (k0 - 1) MSW)
  (Shrout and Fleiss 1979), ``k0`` = (N - sum n_i^2 / N) / (g - 1) for ``g`` subjects with ``n_i``
  repeats, ``N`` in all (``k`` when every subject has ``k``): the share of the values' spread that is
  between subjects, not between repeats;
* **smallest detectable change** SDC = 1.96 x sqrt(2) x SEM: a change between two photos smaller
  than this is within what re-photographing the same face produces, at 95 %.

:func:`detectable` is the rule the reports use: a change with an absolute value below the SDC is
"no detectable change"; one above it is detectable.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def summarise(groups: Mapping[object, Sequence[float]]) -> dict[str, float]:
    """Repeatability figures of ``groups`` {subject: repeat values} (subjects with fewer than 2 finite
    values are left out); NaN where too few subjects remain (ICC needs 2)."""
    values = [np.asarray([v for v in vals if v is not None and math.isfinite(v)], np.float64)
              for vals in groups.values()]
    values = [v for v in values if len(v) >= 2]
    out = {"subjects": len(values), "photos": int(sum(len(v) for v in values)), "mean": math.nan,
           "within_sd": math.nan, "cv_pct": math.nan, "cv_pooled_pct": math.nan, "icc": math.nan, "sdc": math.nan}
    if not values:
        return out
    variances = np.array([v.var(ddof=1) for v in values])
    means = np.array([v.mean() for v in values])
    n = np.array([len(v) for v in values], np.float64)
    msw = float(sum(((v - v.mean()) ** 2).sum() for v in values) / (n.sum() - len(values)))
    sw = math.sqrt(msw)
    positive = means > 0
    grand = float(np.concatenate(values).mean())
    out.update(mean=grand, within_sd=sw, sdc=1.96 * math.sqrt(2.0) * sw,
               cv_pooled_pct=100.0 * sw / grand if grand > 0 else math.nan)
    if positive.any():
        out["cv_pct"] = float(100.0 * np.sqrt(np.mean(variances[positive] / means[positive] ** 2)))
    if len(values) >= 2:
        msb = float((n * (means - grand) ** 2).sum() / (len(values) - 1))
        k0 = float((n.sum() - (n ** 2).sum() / n.sum()) / (len(values) - 1))
        denom = msb + (k0 - 1) * msw
        out["icc"] = (msb - msw) / denom if denom > 0 else math.nan
    return out


def detectable(change: float, sdc: float) -> bool | None:
    """True when ``|change| > sdc`` (a real change, at 95 %), False otherwise ("no detectable change"),
    None when either is undefined."""
    if not (math.isfinite(change) and math.isfinite(sdc)):
        return None
    return abs(change) > sdc


MEASURES = ("f_vitiligo", "f_vitiligo_registered", "fvasi")


def record_groups(photos: Sequence[Mapping], trusted_only: bool = False) -> dict[str, dict[tuple, list[float]]]:
    """{measure: {(patient, view, visit): [value per shot]}} of :data:`MEASURES` from study-record photos
    (:mod:`vitijax.study`) with their ``follow_up``: each photo's F-Vitiligo; registered F-Vitiligo (the
    baseline's ratio, or the baseline's ratio plus the shot's change on their common region); the F-VASI
    estimate. ``trusted_only``: registered values only from registrations that were not flagged."""
    out: dict[str, dict[tuple, list[float]]] = {m: {} for m in MEASURES}
    for p in photos:
        if p.get("status", "ok") != "ok":  # every record row has one; no ratio, nothing to repeat
            continue
        key = (str(p["patient"]), str(p["view"]), p["visit"])
        out["f_vitiligo"].setdefault(key, []).append(p["ratio"])
        fu = p.get("follow_up") or {}
        if fu.get("role") == "baseline":
            out["f_vitiligo_registered"].setdefault(key, []).append(p["ratio"])
            out["fvasi"].setdefault(key, []).append(fu.get("fvasi"))
        elif fu.get("role") == "follow-up":
            if fu.get("change_common_pp") is not None and (fu.get("registration_ok") or not trusted_only):
                out["f_vitiligo_registered"].setdefault(key, []).append(fu["baseline_ratio"] + fu["change_common_pp"])
            out["fvasi"].setdefault(key, []).append(fu.get("fvasi_followup"))
    return out
