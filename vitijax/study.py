"""The study record: what one ``launch.analyze`` run found, written once and read by everything after it.

It is ``OUT/results.json`` (the name ``analyze`` has always used), a JSON document::

    {"version": 2,
     "info": {...},                  the bundle, its networks, the options
     "photos": [                     one per photo given, analysed or not
        {"patient", "visit", "view", "shot", "file", "status", "reason", "ratio", "flags", ...,
         "files": {"face_mask": "photos/<patient>/v<visit>_<view>/face_mask.png", ...},   relative to OUT
         "follow_up": {...}}],       against the baseline of its patient and view (below)
     "not_analysed": [{"file", "reason"}],
     "follow_up": {"sdc_pp", "sdc_source", "repeatability": {...}}}

A photo is found by (patient, visit, view, shot): the tree patient -> visit -> view -> shot is
:meth:`Study.tree`. Every mask file is a full-resolution PNG (0 / 255) under ``OUT``.

``photo["follow_up"]`` (:mod:`vitijax.followup.visits`): for the baseline photo of a patient and
view (the earliest visit's first shot) its F-VASI estimate and the reference contrast; for every
other photo of that view, the registration onto the baseline (affine, quality, flag), the change of
F-Vitiligo on the common region and whether it is detectable, the lesion tracks with their events
and repigmentation patterns, the F-VASI estimate and the responder calls, and the change map's file.

JSON has no NaN: undefined numbers are written as null and read back as NaN for the fields in
:data:`NUMBERS`, so that a record read and written again is the same file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

RECORD = "results.json"
VERSION = 2
NUMBERS = ("ratio", "change_pp", "repigmentation_pct", "box_score")


def json_safe(obj):
    """``obj`` with every NaN or infinite float replaced by None and numpy scalars made Python ones, so
    the JSON written is standard (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclasses.dataclass
class Study:
    info: dict[str, Any]
    photos: list[dict[str, Any]]
    not_analysed: list[dict[str, str]] = dataclasses.field(default_factory=list)
    follow_up: dict[str, Any] = dataclasses.field(default_factory=dict)

    def tree(self) -> dict[str, dict[int, dict[str, dict[int, dict[str, Any]]]]]:
        """{patient: {visit: {view: {shot: photo}}}}."""
        out: dict = {}
        for p in self.photos:
            out.setdefault(str(p["patient"]), {}).setdefault(p["visit"], {}).setdefault(
                str(p["view"]), {})[p.get("shot", 0)] = p
        return out

    def photo(self, patient: str, visit: int, view: str, shot: int = 0) -> dict[str, Any]:
        try:
            return self.tree()[str(patient)][visit][str(view)][shot]
        except KeyError:
            raise KeyError(f"no photo of patient {patient!r}, visit {visit}, view {view!r}, shot {shot} "
                           "in the study record") from None

    def analysed(self) -> Iterator[dict[str, Any]]:
        """The photos that got masks."""
        return (p for p in self.photos if "face_mask" in (p.get("files") or {}))


def save(out: str, study: Study) -> str:
    """Writes ``OUT/results.json`` (atomically: a reader never sees half a record); returns its path."""
    path = os.path.join(out, RECORD)
    doc = {"version": VERSION, "info": study.info, "photos": study.photos, "not_analysed": study.not_analysed,
           "follow_up": study.follow_up}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(json_safe(doc), f, indent=2, default=str)
    os.replace(tmp, path)
    return path


def load(out: str) -> Study:
    """Reads the record of the ``launch.analyze`` output folder ``out``; a clear error when it is not one."""
    path = os.path.join(out, RECORD)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{out}: no {RECORD} (is it a launch.analyze output folder?)")
    try:
        with open(path) as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a readable study record ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("photos"), list):
        raise ValueError(f"{path}: not a study record (no list of photos)")
    for p in doc["photos"]:
        for k in NUMBERS:
            if k in p and p[k] is None:
                p[k] = math.nan
        p.setdefault("shot", 0)
    return Study(doc.get("info", {}), doc["photos"], doc.get("not_analysed", []), doc.get("follow_up", {}))


def from_rows(rows: Sequence[Mapping[str, Any]], problems: Sequence[tuple[str, str]], info: Mapping[str, Any],
              follow_up: Mapping[str, Any] | None = None) -> Study:
    return Study(dict(info), [dict(r) for r in rows], [{"file": p, "reason": why} for p, why in problems],
                 dict(follow_up or {}))
