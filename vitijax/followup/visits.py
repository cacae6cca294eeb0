"""Follow-up over an analysis: every photo of a patient and view against its baseline, for ``launch.analyze``.

For each patient and view, the *baseline* is the photo of the earliest visit (its first shot) that
got masks. Every other photo of that view is registered onto it
(:func:`vitijax.followup.registration.register`, with the analysis's own face and lesion masks)
and compared with it (:func:`vitijax.followup.compare.compare`). What is found goes into each photo's
row of the study record (``row["follow_up"]``, :mod:`vitijax.study`) and, as pictures, into the
photo's folder: ``aligned.jpg`` (the face region of the baseline's framing; for a follow-up photo,
the photo registered onto it) and ``change_map.png`` (same framing, :data:`lesions.CHANGE_COLOURS`).

**Detectable change.** A change of F-Vitiligo on the common region smaller than the smallest
detectable change (SDC) is reported as "no detectable change"; where the registration is flagged
as doubtful no call is made. The SDC comes from the analysis's own
repeat shots when it has them (at least :data:`MIN_REPEAT_SUBJECTS` patient-view-visits photographed
twice or more: ``<view>-shot<n>`` files, :mod:`vitijax.data.photos`), from the *registered* ratios
(each shot's change on the common region added to the baseline's ratio, the measure a follow-up
change is made of; shots whose registration is doubtful are left out); otherwise it is :data:`DEFAULT_SDC_PP`, measured by ``launch.followup_study`` on
synthetic patients through the whole chain, and the record says which.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np
from PIL import Image

from vitijax.data.io import downscale
from vitijax.followup import repeatability
from vitijax.followup.compare import compare, measure
from vitijax.followup.lesions import change_picture
from vitijax.followup.registration import register

# The smallest detectable change of registered F-Vitiligo (pp) of the synthetic follow-up study through
# the chain: 1.918 pp from 12 patient-views x 3 shots at 2832x4240 (python -m launch.followup_study
# --model models/synthetic; README, "Follow-up across visits"). A user's own repeat shots replace it.
DEFAULT_SDC_PP = 1.9
DEFAULT_SDC_SOURCE = "launch.followup_study (synthetic patients, chain masks, registered F-Vitiligo)"
MIN_REPEAT_SUBJECTS = 3
PICTURE_SIDE = 720  # the long side of aligned.jpg and change_map.png, pixels (at most)


def _frame(face: np.ndarray, border: float = 0.06) -> tuple[slice, slice]:
    """The baseline face's bounding box grown by ``border`` of its size on each side: the framing of the
    report's pictures (not the networks' crop, whose margin the input contract holds)."""
    ys, xs = np.nonzero(face)
    h, w = face.shape
    my, mx = int(border * (np.ptp(ys) + 1)), int(border * (np.ptp(xs) + 1))
    return slice(max(ys.min() - my, 0), min(ys.max() + 1 + my, h)), slice(max(xs.min() - mx, 0), min(xs.max() + 1 + mx, w))


def _save(path: str, image: np.ndarray, nearest: bool = False) -> None:
    Image.fromarray(downscale(image, PICTURE_SIDE, nearest)).save(path, quality=88)  # quality: for the .jpg


def _read(out: str, row: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    from vitijax.data.io import read_mask, read_photo

    photo = read_photo(row["file"])
    files = row["files"]
    face = read_mask(os.path.join(out, files["face_mask"]), photo.shape[:2])
    lesion = read_mask(os.path.join(out, files["lesion_mask"]), photo.shape[:2])
    unass = (read_mask(os.path.join(out, files["unassessable_mask"]), photo.shape[:2])
             if "unassessable_mask" in files else None)
    return photo, face, lesion, unass


def follow_up(out: str, rows: list[dict[str, Any]], log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fills ``row["follow_up"]`` (and the picture files) of every analysed row; returns the study-level
    follow-up information (the SDC used and where it came from, the repeatability when measured)."""
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r.get("status") == "ok" and "face_mask" in r.get("files", {}):
            groups.setdefault((str(r["patient"]), str(r["view"])), []).append(r)
    total = sum(len(g) - 1 for g in groups.values())
    done, t0 = 0, time.perf_counter()
    pairs = []
    for (patient, view), group in sorted(groups.items()):
        group.sort(key=lambda r: (r["visit"], r.get("shot", 0)))
        base_row = group[0]
        try:
            b_photo, b_face, b_lesion, b_unass = _read(out, base_row)
        except (OSError, ValueError) as e:
            for r in group:
                r["follow_up"] = {"error": f"baseline unreadable: {e}"}
            done += len(group) - 1
            continue
        frame = _frame(b_face)
        base = measure(b_photo, b_face, b_lesion, b_unass)
        folder = os.path.join(out, base_row["files"]["outputs"])
        _save(os.path.join(folder, "aligned.jpg"), b_photo[frame])
        base_row["files"]["aligned"] = os.path.join(base_row["files"]["outputs"], "aligned.jpg")
        base_row["follow_up"] = {"role": "baseline", "fvasi": base.fvasi, "reference_contrast": base.reference,
                                 "lesions": int(len(base.areas) - 1)}
        for r in group[1:]:
            t = time.perf_counter()
            try:
                photo, face, lesion, unass = _read(out, r)
            except (OSError, ValueError) as e:
                r["follow_up"] = {"error": f"unreadable: {e}"}
                done += 1
                continue
            reg = register(b_photo, b_face, photo, face, b_lesion, lesion)
            cmp = compare(b_photo, b_face, b_lesion, photo, face, lesion, reg, b_unass, unass, base=base)
            folder = os.path.join(out, r["files"]["outputs"])
            _save(os.path.join(folder, "aligned.jpg"), cmp.warped_photo[frame])
            _save(os.path.join(folder, "change_map.png"), change_picture(cmp.codes[frame], b_photo[frame]), nearest=True)
            r["files"]["aligned"] = os.path.join(r["files"]["outputs"], "aligned.jpg")
            r["files"]["change_map"] = os.path.join(r["files"]["outputs"], "change_map.png")
            r["follow_up"] = {"role": "follow-up",
                              "baseline": {"visit": base_row["visit"], "shot": base_row.get("shot", 0),
                                           "file": base_row["file"]},
                              "registration": {"affine": reg.affine.tolist(), "ecc": reg.ecc, "face_iou": reg.face_iou,
                                               "ok": reg.ok, "reason": reg.reason},
                              "baseline_ratio": base_row["ratio"],
                              **cmp.summary(), "tracks": [ev.row() for ev in cmp.events]}
            pairs.append(r)
            done += 1
            rate = done / (time.perf_counter() - t0)
            log(f"follow-up {done}/{total}: patient {patient} {view} visit {r['visit']} shot {r.get('shot', 0)}: "
                f"change {cmp.change_pp:+.2f} pp on {100 * cmp.common_share:.0f} % of the face"
                f"{'' if reg.ok else ' (' + reg.reason + ')'}; {time.perf_counter() - t:.1f} s; "
                f"ETA {(total - done) / rate:.0f} s")
    info = {"pairs": len(pairs), **smallest_detectable_change(rows)}
    for r in pairs:
        fu = r["follow_up"]
        change = fu["change_common_pp"] if fu["change_common_pp"] is not None else math.nan
        # a doubtful registration makes no call: its change may be the misalignment's
        fu["detectable"] = repeatability.detectable(change, info["sdc_pp"]) if fu["registration_ok"] else None
        fu["sdc_pp"] = info["sdc_pp"]
    return info


def smallest_detectable_change(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{"sdc_pp", "sdc_source", "repeatability"} for rows whose ``follow_up`` is filled: from the repeat
    shots, registered (the baseline's ratio plus each shot's change on the common region; doubtful
    registrations left out), when at least :data:`MIN_REPEAT_SUBJECTS` patient-view-visits have two or
    more; else :data:`DEFAULT_SDC_PP`."""
    shots = repeatability.record_groups(rows, trusted_only=True)["f_vitiligo_registered"]
    repeats = {k: v for k, v in shots.items() if len(v) >= 2}
    if len(repeats) < MIN_REPEAT_SUBJECTS:
        return {"sdc_pp": DEFAULT_SDC_PP, "sdc_source": DEFAULT_SDC_SOURCE, "repeatability": None}
    rep = repeatability.summarise(repeats)
    return {"sdc_pp": rep["sdc"], "repeatability": rep,
            "sdc_source": f"this analysis's repeat shots ({rep['subjects']} patient-view-visits, {rep['photos']} "
                          "photos), registered F-Vitiligo"}
