"""A reviewer's corrections of an analysis: stored beside the model's output, audited, scored, exported.

Everything lives in the ``launch.analyze`` output folder ``OUT`` (the server writes nowhere else):

* the study record (``results.json``, :mod:`vitijax.study`) keeps the model's output untouched and adds
  ``photo["review"]``: ``{"status": "approved" | "rejected" | "corrected", "comment", "reviewer",
  "time", "revision", "files": {"face_mask", "lesion_mask"}, "sha256": {...}, "corrected": {...},
  "dice": {"lesion", "face"}}``. ``corrected`` is the F-Vitiligo, the change on the common region
  and the F-VASI estimate recomputed from the corrected masks (:meth:`Corrections.recompute`);
  ``dice`` is model-vs-corrected;
* every saved revision's masks: ``review/<the photo's output folder>/r<revision>_{face,lesion}_mask.png``
  (full resolution, 0 / 255); a revision's files are never overwritten, so the audit log's hashes
  can always be checked against them;
* ``review/audit.jsonl``, append-only: one JSON line per save (who, when, what, the masks' hashes
  before and after, how many pixels changed). Each line carries the SHA-256 of the line before it
  and of itself, so an edited or deleted line breaks the chain (:func:`verify_audit`);
* ``review/report.html``: model-vs-corrected Dice per photo and overall, rewritten at every save.

A mask's hash is SHA-256 of ``b"<h>x<w>:"`` followed by its pixels packed 8 to a byte
(``np.packbits``, row-major): it names the mask's content, whatever PNG coder wrote the file.

Concurrent saves: a save names the revision it started from (``base_revision``); when the photo has
been saved since (another reviewer, another tab), it is refused with :class:`Conflict`, naming who
saved what, and nothing is written: the second reviewer's edits stay in their browser to merge or
to save over on purpose. Saves are serialised by an exclusive lock on ``review/.lock``, so two
servers on one folder cannot interleave either.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import fcntl
import hashlib
import html
import json
import math
import os
import threading
from typing import Any, Iterator, Mapping

import numpy as np

from vitijax import study as study_lib
from vitijax.data.io import read_mask, read_photo, write_png
from vitijax.metrics import f_vitiligo, scores

REVIEW_DIR = "review"
AUDIT = "audit.jsonl"
STATUSES = ("corrected", "approved", "rejected")  # corrected: saved without a decision yet
MASKS = ("face", "lesion")
MAX_COMMENT = 2000  # characters
MAX_NAME = 100  # a reviewer's name, characters


class Conflict(Exception):
    """The photo was saved by someone else since the revision this save started from."""

    def __init__(self, current: Mapping[str, Any]):
        self.current = dict(current)
        super().__init__(f"saved meanwhile by {current.get('reviewer')!r} at {current.get('time')} (revision "
                         f"{current.get('revision')}); reload it, or save over it on purpose")


class Invalid(ValueError):
    """A save that cannot be taken: a bad mask, status, name or comment; the message says which."""


def mask_sha256(mask: np.ndarray) -> str:
    m = np.asarray(mask) > 0
    return hashlib.sha256(f"{m.shape[0]}x{m.shape[1]}:".encode() + np.packbits(m).tobytes()).hexdigest()


def overlap(model: np.ndarray, corrected: np.ndarray) -> list[int]:
    """[both, model, corrected]: the pixel counts of two binary masks from which Dice follows, per photo and
    pooled over photos (:func:`dice`)."""
    a, b = np.asarray(model) > 0, np.asarray(corrected) > 0
    return [int(np.count_nonzero(a & b)), int(np.count_nonzero(a)), int(np.count_nonzero(b))]


def dice(counts) -> float:
    """Dice of the model against the corrected mask from :func:`overlap` counts (the corrected one as the
    reference), by the project's one scorer; NaN when both are empty (nothing to agree on)."""
    both, model, corrected = counts
    return scores(both, model - both, corrected - both, 0)["dice"]


def photo_id(row: Mapping[str, Any]) -> str:
    """A photo's key: its output folder relative to OUT (``photos/<patient>/v<visit>_<view>[-shot<n>]``)."""
    return (row.get("files") or {}).get("outputs") or row.get("outputs") or ""


def needs_look(row: Mapping[str, Any]) -> list[str]:
    """Why a photo should be looked at first: the analysis's review reasons and flags, a missing ratio, a
    doubtful registration onto the baseline."""
    why = list(row.get("review_reasons") or [])
    why += [f for f in row.get("flags") or [] if not any(w == f or w.startswith(f + ":") for w in why)]
    if row.get("status") != "ok":
        why.append(row.get("reason") or row.get("status") or "no ratio")
    reg = ((row.get("follow_up") or {}).get("registration") or {})
    if reg and not reg.get("ok", True):
        reason = str(reg.get("reason") or "")
        why.append(reason if reason.startswith("registration") else f"registration doubtful: {reason}")
    return why


def queue(study: study_lib.Study) -> list[int]:
    """Indices of ``study.photos`` in review order: undecided before decided (approved or rejected),
    then photos with more reasons to look first, then patient, visit, view, shot."""
    def key(i):
        p = study.photos[i]
        decided = (p.get("review") or {}).get("status") in ("approved", "rejected")
        return (decided, -len(needs_look(p)), str(p["patient"]), p["visit"], str(p["view"]), p.get("shot", 0))

    return sorted(range(len(study.photos)), key=key)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Corrections:
    """The review of one ``launch.analyze`` output folder (module docstring). Thread-safe: one instance
    serves every request of the review server."""

    def __init__(self, out: str):
        self.out = os.path.realpath(out)
        study_lib.load(self.out)  # a clear error now when it is not an analysis folder
        self.dir = os.path.join(self.out, REVIEW_DIR)
        self._lock = threading.Lock()
        self._registrations: dict[str, Any] = {}  # photo id -> Registration onto its baseline (model masks)
        # what every recomputation of a follow-up would otherwise read and measure again: the last few photos
        # decoded, and each baseline's masks and measurement at its current revision
        self._photos: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._baselines: dict[tuple[str, int], tuple] = {}
        self._cache_lock = threading.Lock()

    # --- reading ----------------------------------------------------------------
    def study(self) -> study_lib.Study:
        return study_lib.load(self.out)

    def row(self, study: study_lib.Study, index: int) -> dict[str, Any]:
        if not 0 <= index < len(study.photos):
            raise KeyError(f"no photo {index} in the study record ({len(study.photos)} photos)")
        return study.photos[index]

    def model_masks(self, row: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The model's {face, lesion} [h, w] uint8 {0, 1} of an analysed photo."""
        files, hw = row["files"], (row["height"], row["width"])
        return {k: read_mask(os.path.join(self.out, files[f"{k}_mask"]), hw) for k in MASKS}

    def masks(self, row: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The current {face, lesion}: the last saved correction, else the model's."""
        review = row.get("review") or {}
        if review.get("files"):
            hw = (row["height"], row["width"])
            return {k: read_mask(os.path.join(self.out, review["files"][f"{k}_mask"]), hw) for k in MASKS}
        return self.model_masks(row)

    def photo(self, path: str, keep: int = 4) -> np.ndarray:
        """The photo at ``path`` [h, w, 3] uint8, upright, read-only; the last ``keep`` are kept decoded."""
        with self._cache_lock:
            if path in self._photos:
                self._photos.move_to_end(path)
                return self._photos[path]
        photo = read_photo(path)
        photo.setflags(write=False)  # shared between requests
        with self._cache_lock:
            self._photos[path] = photo
            while len(self._photos) > keep:
                self._photos.popitem(last=False)
        return photo

    def _baseline(self, row: Mapping[str, Any]):
        """(photo, current masks, unassessable, Measured) of a baseline, kept per revision of its review."""
        from vitijax.followup.compare import measure

        key = (photo_id(row), int((row.get("review") or {}).get("revision", 0)))
        with self._cache_lock:
            hit = self._baselines.get(key)
        if hit is None:
            photo, masks, unass = self.photo(row["file"]), self.masks(row), self.unassessable(row)
            hit = (photo, masks, unass, measure(photo, masks["face"], masks["lesion"], unass))
            with self._cache_lock:
                self._baselines[key] = hit
        return hit

    def unassessable(self, row: Mapping[str, Any]) -> np.ndarray | None:
        f = (row.get("files") or {}).get("unassessable_mask")
        return read_mask(os.path.join(self.out, f), (row["height"], row["width"])) if f else None

    # --- recomputing ------------------------------------------------------------
    def baseline_of(self, study: study_lib.Study, row: Mapping[str, Any]) -> dict[str, Any] | None:
        """The row this photo was registered onto (None for a baseline or without a follow-up)."""
        base = ((row.get("follow_up") or {}).get("baseline")) or None
        if not base:
            return None
        try:
            return study.photo(row["patient"], base["visit"], row["view"], base.get("shot", 0))
        except KeyError:
            return None

    def recompute(self, study: study_lib.Study, row: dict[str, Any],
                  masks: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
        """F-Vitiligo, the F-VASI estimate and, for a follow-up photo, the change on the common region and
        whether it is detectable, from the current masks of the photo and of its baseline (``masks``:
        this photo's, if not yet saved). The registration is the analysis's own (made with the model's
        masks: a correction of the segmentation does not move the photos)."""
        from vitijax.followup import repeatability
        from vitijax.followup.compare import compare, measure

        masks = dict(masks) if masks is not None else self.masks(row)
        unass = self.unassessable(row)
        ok_face = masks["face"] > 0 if unass is None else (masks["face"] > 0) & ~(unass > 0)
        lesion = (masks["lesion"] > 0) & ok_face
        out: dict[str, Any] = {"face_pixels": int(np.count_nonzero(masks["face"])),
                               "vitiligo_pixels": int(np.count_nonzero(lesion)),
                               "ratio": f_vitiligo(np.count_nonzero(lesion), np.count_nonzero(ok_face))}
        fu = row.get("follow_up") or {}
        if not fu or "error" in fu:
            return out
        photo = self.photo(row["file"])
        base_row = self.baseline_of(study, row)
        if base_row is None:  # the baseline itself: F-VASI on its own contrast reference
            out["fvasi"] = measure(photo, masks["face"], masks["lesion"], unass).fvasi
            return out
        b_photo, b_masks, b_unass, b_measured = self._baseline(base_row)
        reg = self._registration(row, base_row, photo, b_photo)
        cmp = compare(b_photo, b_masks["face"], b_masks["lesion"], photo, masks["face"], masks["lesion"], reg,
                      b_unass, unass, base=b_measured)
        sdc = fu.get("sdc_pp", study.follow_up.get("sdc_pp", math.nan))
        out.update(change_common_pp=cmp.change_pp, fvasi=cmp.fvasi_followup, fvasi_baseline=cmp.base.fvasi,
                   improvement_pct=cmp.response["improvement_pct"], fvasi50=cmp.response["fvasi50"],
                   fvasi75=cmp.response["fvasi75"],
                   detectable=repeatability.detectable(cmp.change_pp, sdc if sdc is not None else math.nan)
                   if reg.ok else None)
        return out

    def _registration(self, row, base_row, photo, b_photo):
        from vitijax.followup.registration import register

        key = photo_id(row)
        if key not in self._registrations:
            m, b = self.model_masks(row), self.model_masks(base_row)
            self._registrations[key] = register(b_photo, b["face"], photo, m["face"], b["lesion"], m["lesion"])
        return self._registrations[key]

    # --- saving -----------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, locked(self.out):
            yield

    def check_masks(self, row: Mapping[str, Any], masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``masks`` as {face, lesion} uint8 {0, 1} at the photo's size; :class:`Invalid` otherwise."""
        hw = (row["height"], row["width"])
        unknown = set(masks) - set(MASKS)
        if unknown:
            raise Invalid(f"unknown mask {sorted(unknown)[0]!r}; masks are {', '.join(MASKS)}")
        out = {}
        for k, m in masks.items():
            m = np.asarray(m)
            if m.dtype not in (np.bool_, np.uint8):
                raise Invalid(f"{k} mask: dtype {m.dtype}, expected bool or uint8")
            if m.shape != hw:
                raise Invalid(f"{k} mask: {m.shape[1] if m.ndim > 1 else '?'}x{m.shape[0]} for a photo of "
                              f"{hw[1]}x{hw[0]}")
            if m.dtype == np.uint8 and m.size and int(m.max()) > 1:
                raise Invalid(f"{k} mask: values other than 0 and 1 (max {int(m.max())})")
            out[k] = m.astype(np.uint8)
        return out

    def save(self, index: int, reviewer: str, base_revision: int, status: str, comment: str = "",
             masks: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Saves a review of photo ``index`` of the record (module docstring) and returns its ``review``
        entry. ``masks``: the corrected {face and/or lesion} uint8 {0, 1} [h, w] (a lesion outside the
        face is cut off: F-Vitiligo counts lesions on the face); None keeps the current ones."""
        reviewer, comment = str(reviewer).strip(), str(comment)
        if not reviewer or len(reviewer) > MAX_NAME:
            raise Invalid(f"a reviewer's name of 1 to {MAX_NAME} characters is required")
        if status not in STATUSES:
            raise Invalid(f"status {status!r}: expected one of {', '.join(STATUSES)}")
        if status == "rejected" and not comment.strip():
            raise Invalid("a rejection needs a comment saying why")
        if len(comment) > MAX_COMMENT:
            raise Invalid(f"comment of {len(comment)} characters; at most {MAX_COMMENT}")
        if isinstance(base_revision, bool) or not isinstance(base_revision, int):
            raise Invalid("base_revision must be the revision number the edit started from")
        with self._locked():
            study = self.study()  # read again under the lock: another server may have saved
            row = self.row(study, index)
            if "face_mask" not in (row.get("files") or {}):
                raise Invalid(f"photo {index} ({row.get('file')}) has no masks to review: {row.get('reason')}")
            old = row.get("review") or {}
            revision = int(old.get("revision", 0))
            if base_revision != revision:
                raise Conflict(old)
            before = self.masks(row)
            new = {**before, **self.check_masks(row, masks or {})}
            new["lesion"] = (new["lesion"] & new["face"]).astype(np.uint8)
            revision += 1
            folder = os.path.join(REVIEW_DIR, photo_id(row))
            files = dict(old.get("files") or {})
            changed = {k: int(np.count_nonzero(before[k] != new[k])) for k in MASKS}
            if any(changed.values()) or not files:
                for k in MASKS:  # a new revision's files, never over an old one's
                    files[f"{k}_mask"] = os.path.join(folder, f"r{revision}_{k}_mask.png")
                    write_png(os.path.join(self.out, files[f"{k}_mask"]), new[k] * 255)
            model = before if not old.get("files") else self.model_masks(row)
            counts = {k: overlap(model[k], new[k]) for k in MASKS}
            hashes = {k: mask_sha256(new[k]) for k in MASKS}
            review = {"status": status, "comment": comment, "reviewer": reviewer, "time": _now(),
                      "revision": revision, "files": files, "sha256": hashes,
                      "pixels_changed_from_model": {k: int(np.count_nonzero(model[k] != new[k])) for k in MASKS},
                      "dice": {k: dice(counts[k]) for k in MASKS},
                      "overlap": counts,  # [both, model, corrected] pixels: the pooled Dice over photos (summary)
                      "corrected": self.recompute(study, row, new)}
            row["review"] = review
            # a corrected baseline changes every follow-up's comparison with it
            for other in study.photos:
                if other is not row and (other.get("review") or {}).get("corrected") and \
                        self.baseline_of(study, other) is row:
                    other["review"]["corrected"] = self.recompute(study, other)
            study_lib.save(self.out, study)
            self._audit({"photo": photo_id(row), "index": index, "file": row["file"], "reviewer": reviewer,
                         "time": review["time"], "status": status, "comment": comment, "revision": revision,
                         "sha256_before": {k: mask_sha256(before[k]) for k in MASKS}, "sha256_after": hashes,
                         "pixels_changed": changed, "files": files})
            write_report(self.out, study)
        return review

    def _audit(self, entry: dict[str, Any]) -> None:
        path = os.path.join(self.dir, AUDIT)
        prev = "0" * 64
        if os.path.isfile(path):
            with open(path, "rb") as f:
                lines = f.read().splitlines()
            if lines:
                prev = json.loads(lines[-1])["hash"]
        entry = {"seq": _count_lines(path) + 1, **entry, "prev": prev}
        entry["hash"] = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()
        with open(path, "a") as f:  # append only
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # --- exporting --------------------------------------------------------------
    def export(self, dest: str) -> dict[str, Any]:
        """Writes the approved photos with their corrected masks (the model's where a reviewer approved
        without editing) in the ``uv_vitiligo`` layout (``images|face_masks|vitiligo_masks/<patient>/
        <visit>/<view>``; a repeat shot's view is ``<view>-shot<n>``) and ``dest/review_export.json``
        (each photo's source, reviewer, revision, mask hashes and Dice). Returns write_layout's report."""
        from vitijax.data import annotations as ann_lib
        from vitijax.report.followup import safe_name

        study = self.study()
        approved = [p for p in study.photos if (p.get("review") or {}).get("status") == "approved"]
        if not approved:
            raise ValueError(f"{self.out}: no approved photo to export (approve photos in the review first)")
        slots = {}

        def items():
            for p in approved:
                masks = self.masks(p)
                name = f"{p['patient']}/{p['visit']}/{p['view']}{os.path.splitext(p['file'])[1]}"
                ann = ann_lib.Annotation(p["file"], (p["height"], p["width"]), name)
                for k in MASKS:
                    ann.add(k, masks[k] > 0)
                view = str(p["view"]) + (f"-shot{p['shot']}" if p.get("shot") else "")
                slots[p["file"]] = ann_lib.Slot(safe_name(p["patient"]), int(p["visit"]), safe_name(view))
                yield ann

        report = ann_lib.write_layout(dest, items(), ann_lib.LabelMap(face=("face",), lesion=("lesion",)),
                                      lambda ann: slots[ann.photo])
        with open(os.path.join(dest, "review_export.json"), "w") as f:
            json.dump(study_lib.json_safe({"source": self.out, "photos": [
                {"file": p["file"], "slot": vars(slots[p["file"]]), **{k: p["review"].get(k) for k in (
                    "reviewer", "time", "revision", "sha256", "dice", "comment")}} for p in approved]}), f, indent=2)
        return report


@contextlib.contextmanager
def locked(out: str) -> Iterator[None]:
    """The exclusive lock on ``OUT/review/.lock``: one save at a time, across threads and processes, and
    no audit check halfway through a save (the record is written before the log line)."""
    folder = os.path.join(out, REVIEW_DIR)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _count_lines(path: str) -> int:
    if not os.path.isfile(path):
        return 0
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def verify_audit(out: str) -> tuple[int, list[str]]:
    """(entries, problems) of ``OUT/review/audit.jsonl``: every line's own hash, its link to the line
    before, its sequence number, that the mask files it names are there and hold the hashed masks, and
    that each photo's review in the study record is the last entry the log holds for it (which also
    finds lines cut off the end, and a status edited in the record)."""
    with locked(out):
        return _verify_audit(out)


def _verify_audit(out: str) -> tuple[int, list[str]]:
    path = os.path.join(out, REVIEW_DIR, AUDIT)
    if not os.path.isfile(path):
        reviewed = [photo_id(p) for p in study_lib.load(out).photos if p.get("review")]
        return 0, [f"{path} is missing but {len(reviewed)} photos have reviews"] if reviewed else []
    problems, prev, n, last = [], "0" * 64, 0, {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                problems.append(f"{path}:{n}: not a JSON line")
                continue
            claimed = entry.pop("hash", None)
            if hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest() != claimed:
                problems.append(f"{path}:{n}: the entry does not match its hash (edited)")
            if entry.get("prev") != prev:
                problems.append(f"{path}:{n}: does not follow the line before it (a line was removed or moved)")
            if entry.get("seq") != n:
                problems.append(f"{path}:{n}: sequence number {entry.get('seq')}, expected {n}")
            for k, rel in (entry.get("files") or {}).items():
                kind = k.replace("_mask", "")
                want = (entry.get("sha256_after") or {}).get(kind)
                f_path = os.path.join(out, rel)
                if want and f"r{entry.get('revision')}_" in os.path.basename(rel):
                    if not os.path.isfile(f_path):
                        problems.append(f"{path}:{n}: {rel} is missing")
                    elif mask_sha256(read_mask(f_path)) != want:
                        problems.append(f"{path}:{n}: {rel} no longer holds the {kind} mask it hashed")
            last[entry.get("photo")] = entry
            prev = claimed
    # the record against the log: each review is its photo's last entry (a cut-off log, an edited status)
    for p in study_lib.load(out).photos:
        review, entry = p.get("review"), last.pop(photo_id(p), None)
        if review is None and entry is None:
            continue
        if review is None or entry is None or any(review.get(k) != entry.get(k) for k in ("revision", "status",
                                                                                          "reviewer", "comment")) \
                or review.get("sha256") != entry.get("sha256_after"):
            problems.append(f"{out}/{study_lib.RECORD}: the review of {photo_id(p)} is not the last one the audit "
                            "log holds for it")
    problems += [f"{path}: entries for {k}, which the record does not have" for k in last]
    return n, problems


def summary(study: study_lib.Study) -> dict[str, Any]:
    """Model-vs-corrected agreement over the reviewed photos, rejected ones left out: counts by status, mean Dice per photo and
    pooled Dice (from the pixel counts of the record) for the lesion and the face masks."""
    reviewed = [p for p in study.photos if p.get("review")]
    out: dict[str, Any] = {"reviewed": len(reviewed), "photos": len(study.photos),
                           "status": {s: sum(p["review"]["status"] == s for p in reviewed) for s in STATUSES}}
    rows = [p for p in reviewed if p["review"]["status"] != "rejected"]  # a rejected photo has no reference masks
    for k in MASKS:
        d = [p["review"]["dice"][k] for p in rows if p["review"]["dice"].get(k) is not None
             and math.isfinite(p["review"]["dice"][k])]
        out[f"{k}_dice_mean"] = float(np.mean(d)) if d else math.nan
        out[f"{k}_dice_pooled"] = dice(np.sum([p["review"]["overlap"][k] for p in rows], axis=0) if rows else (0, 0, 0))
    return out


def write_report(out: str, study: study_lib.Study) -> str:
    """``OUT/review/report.html``: each reviewed photo's status, reviewer, comment, model and corrected
    F-Vitiligo and change, and model-vs-corrected Dice, with the overall figures. Every name is escaped."""
    esc = lambda v: html.escape(str(v))  # noqa: E731
    fmt = lambda v, d=2: "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{d}f}"  # noqa: E731
    s = summary(study)
    rows = []
    for p in study.photos:
        r = p.get("review")
        if not r:
            continue
        c, fu = r.get("corrected") or {}, p.get("follow_up") or {}
        rows.append("<tr>" + "".join(f"<td>{v}</td>" for v in (
            esc(p["patient"]), esc(p["visit"]), esc(p["view"]) + (f" shot {p['shot']}" if p.get("shot") else ""),
            esc(r["status"]), esc(r["reviewer"]), esc(r["time"]), fmt(p.get("ratio")), fmt(c.get("ratio")),
            fmt(fu.get("change_common_pp")), fmt(c.get("change_common_pp")), fmt(fu.get("fvasi_followup", fu.get("fvasi"))),
            fmt(c.get("fvasi")), fmt(r["dice"].get("lesion"), 3), fmt(r["dice"].get("face"), 3), esc(r["comment"]))) + "</tr>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Review of the analysis</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.25em .6em}}th{{background:#f3f3f3}}</style></head><body>
<h1>Review: model against corrected masks</h1>
<p>{s['reviewed']} of {s['photos']} photos reviewed: {s['status']['approved']} approved, {s['status']['rejected']}
rejected, {s['status']['corrected']} corrected without a decision. Rejected photos have no reference masks and are
left out of the Dice. Mean Dice of the model's masks against the
reviewed ones, per photo: lesion {fmt(s['lesion_dice_mean'], 3)}, face {fmt(s['face_dice_mean'], 3)} (a photo with no
lesion in either is left out of the lesion mean); pooled over the pixels of all of them: lesion
{fmt(s['lesion_dice_pooled'], 3)}, face {fmt(s['face_dice_pooled'], 3)}.</p>
<table><tr><th>patient</th><th>visit</th><th>view</th><th>status</th><th>reviewer</th><th>time (UTC)</th>
<th>F-Vitiligo model %</th><th>corrected %</th><th>change model pp</th><th>corrected pp</th><th>F-VASI model</th>
<th>corrected</th><th>lesion Dice</th><th>face Dice</th><th>comment</th></tr>
{''.join(rows)}</table><p><small>The audit log of every save is review/audit.jsonl.</small></p></body></html>"""
    path = os.path.join(out, REVIEW_DIR, "report.html")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(page)
    return path
