"""A researcher's folder of UV photos and masks: its layout, and a check of every file.

Layout (BUILD.md shows it with an example)::

    ROOT/
      images/<patient>/<visit>/<view>.<jpg|jpeg|png|tif|tiff|bmp|webp>
                              view: any name (left, front and right are the paper's);
                              visit: a number (0, 1, v2) or an ISO date (2024-03-15)
      face_masks/<patient>/<visit>/<view>.png                   {0,1} or {0,255} (or anti-aliased),
                              photo-sized; optional: without it the whole photo is the face region
      vitiligo_masks/<patient>/<visit>/<view>.png
      manifest.csv            optional; if present it replaces the layout above:
                              columns image, face_mask, vitiligo_mask, patient, visit, view
                              (paths relative to ROOT)
      splits/test.txt         optional: held-out patients, one per line (the paper's split)

``scan`` reads every photo and mask once and returns the usable records plus a
report. It stops only for what makes the data set unusable (no usable image
at all); everything it skips is listed with its reason and counted.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import json
import os
import re
from typing import Iterable, Sequence

import numpy as np

from vitijax.data import predicted_faces
from vitijax.data.io import MASK_THRESHOLD, ImageReadError, read_mask, read_photo, sha256_file

VIEWS = ("left", "front", "right")  # the paper's three views; any other name is accepted too
PHOTO_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
JUNK_FILES = ("thumbs.db", "desktop.ini")
AGGREGATE_OVER = 5  # more problems of one kind than this are summarised in one line of text (all in the JSON)


@dataclasses.dataclass(frozen=True)
class Record:
    """One usable photo with its masks (paths absolute)."""

    image: str
    face_mask: str  # "" when the photo has none (whole-image mode: the whole photo is the face region)
    vitiligo_mask: str  # "" when the photo has none: unlabelled, for semi-supervised training only
    patient: str
    visit: int
    view: str
    sha256: str
    face_source: str = "annotation"  # or "face-mask network" (predicted_faces) or "whole image"

    @property
    def labelled(self) -> bool:
        return bool(self.vitiligo_mask)


@dataclasses.dataclass
class Problem:
    file: str
    problem: str
    action: str  # "skipped" (the image is left out), "kept" (a warning) or "ignored" (not a photo)
    kind: str = ""  # problems of one kind are summarised together in the text when there are many


@dataclasses.dataclass
class Report:
    root: str
    records: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)

    def add(self, file: str, problem: str, action: str, kind: str = "") -> None:
        self.problems.append(Problem(file, problem, action, kind))

    @property
    def skipped(self) -> list[Problem]:
        return [p for p in self.problems if p.action == "skipped"]

    def text(self) -> str:
        lines = [f"Validation of {self.root}: {self.records} usable photos, {len(self.skipped)} skipped, "
                 f"{len(self.problems) - len(self.skipped)} warnings."]
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p.kind] = counts.get(p.kind, 0) + 1
        summarised = set()
        for p in self.problems:
            if p.kind and counts[p.kind] > AGGREGATE_OVER:
                if p.kind not in summarised:
                    summarised.add(p.kind)
                    lines.append(f"  [{p.action}] {counts[p.kind]} x {p.kind} (e.g. {p.file}: {p.problem}; every "
                                 "one is in the JSON report)")
                continue
            lines.append(f"  [{p.action}] {p.file}: {p.problem}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"root": self.root, "records": self.records, "skipped": len(self.skipped),
                           "problems": [dataclasses.asdict(p) for p in self.problems]}, indent=2)


def write_report(report: Report, directory: str, name: str) -> str:
    """Writes ``report`` as ``directory/<name>_validation.json``; returns the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}_validation.json")
    with open(path, "w") as f:
        f.write(report.to_json())
    return path


class UnusableDataset(ValueError):
    """Nothing in the folder can be used; the message carries the report."""


def parse_visit(text: str) -> int | None:
    """A visit from ``0``, ``1``, ``v2`` or ``V3`` (that number), or an ISO date ``2024-03-15`` (the number
    20240315, so that visits sort by date); None if it is neither."""
    text = str(text).strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        try:
            return int(datetime.date.fromisoformat(text).strftime("%Y%m%d"))
        except ValueError:
            return None
    try:
        return int(text.lstrip("vV") or "x")
    except ValueError:
        return None


def _from_layout(root: str, report: Report) -> Iterable[tuple[str, str, str, str, int, str]]:
    images_dir = os.path.join(root, "images")
    if not os.path.isdir(images_dir):
        raise UnusableDataset(f"{root}: neither manifest.csv nor an images/ folder (see BUILD.md for the layout)")
    for dirpath, _, files in sorted(os.walk(images_dir)):
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, images_dir)
            parts = rel.split(os.sep)
            if name.startswith(".") or name.lower() in JUNK_FILES:
                continue  # the file system's own files (.DS_Store, Thumbs.db): not the researcher's
            if ext.lower() not in PHOTO_EXTS:
                report.add(path, f"not a photo extension ({', '.join(PHOTO_EXTS)}): left out", "ignored",
                           kind="files that are not photos")
                continue
            if len(parts) != 3:
                report.add(path, "expected images/<patient>/<visit>/<view>.<ext>", "skipped")
                continue
            patient, visit_s, _ = parts
            visit = parse_visit(visit_s)
            if visit is None:
                report.add(path, f"visit folder {visit_s!r} is not a number (e.g. 0, 1, v2) or a date (2024-03-15)",
                           "skipped")
                continue
            mask_rel = os.path.join(patient, visit_s, stem + ".png")
            yield (path, os.path.join(root, "face_masks", mask_rel), os.path.join(root, "vitiligo_masks", mask_rel),
                   patient, visit, stem.lower())


def unassessable_mask_path(vitiligo_mask: str) -> str | None:
    """Where the layout keeps a photo's unassessable (glare) mask, beside its vitiligo mask:
    ``unassessable_masks/<patient>/<visit>/<view>.png`` (``launch.synthesize`` writes the truth there);
    None for a mask outside a ``vitiligo_masks/`` folder."""
    parts = os.path.normpath(vitiligo_mask).split(os.sep)
    if "vitiligo_masks" not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index("vitiligo_masks")
    return os.sep.join(parts[:i] + ["unassessable_masks"] + parts[i + 1:])


def _from_manifest(root: str, report: Report) -> Iterable[tuple[str, str, str, str, int, str]]:
    path = os.path.join(root, "manifest.csv")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        needed = {"image", "face_mask", "vitiligo_mask", "patient", "visit", "view"}
        missing = needed - set(reader.fieldnames or [])
        if missing:
            raise UnusableDataset(f"{path}: missing columns {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            visit = parse_visit(row["visit"])
            if visit is None:
                report.add(f"{path}:{line}", f"visit {row['visit']!r} is not a number or a date (2024-03-15)",
                           "skipped")
                continue
            yield (os.path.join(root, row["image"]), os.path.join(root, row["face_mask"]),
                   os.path.join(root, row["vitiligo_mask"]), row["patient"].strip(), visit, row["view"].strip().lower())


def entries(root: str, report: Report) -> Iterable[tuple[str, str, str, str, int, str]]:
    """(photo, face mask, vitiligo mask, patient, visit, view) of every photo the folder's manifest.csv or
    layout names, without opening a file; what cannot be read from the layout goes into ``report``."""
    if not os.path.isdir(root):
        raise UnusableDataset(f"{root}: no such folder")
    source = _from_manifest if os.path.isfile(os.path.join(root, "manifest.csv")) else _from_layout
    return source(root, report)


def scan(root: str | os.PathLike, predicted: bool = False) -> tuple[list[Record], Report]:
    """Checks every photo and mask under ``root``; returns (usable records, report).

    Every defect of a photo is reported (a duplicate does not hide an empty face mask); a second photo
    for one (patient, visit, view) is skipped, naming the first; a duplicate of another patient's photo
    is called out as such. A photo without a face mask file takes, with ``predicted``, the face-mask
    network's (:mod:`vitijax.data.predicted_faces`, written by ``build_dataset --face-model``; a photo
    it gave none for is skipped), else the whole photo as the face region (whole-image mode); both
    reported. Views may have any name; visits without all three of the paper's views are summarised,
    not listed line by line.
    """
    root = os.path.abspath(os.fspath(root))
    report = Report(root)
    records: list[Record] = []
    hashes: dict[str, tuple[str, str]] = {}  # sha256 -> (photo, patient)
    slots: dict[tuple[str, int, str], str] = {}
    # photos the face networks gave no face mask for
    no_face = predicted_faces.read_source(str(root)).get("no_face", {}) if predicted else {}
    for image, face_path, vit_path, patient, visit, view in entries(root, report):
        slot = (patient, visit, view)
        if slot in slots:
            report.add(image, f"a second photo for patient {patient}, visit {visit}, view {view} (the first is "
                              f"{slots[slot]})", "skipped", kind="second photo for one slot")
            continue
        face_source = "annotation"
        kept: list[tuple[str, str]] = []  # (note, kind): said once the photo is known to be kept
        if not os.path.isfile(face_path):
            guess = predicted_faces.predicted_path(str(root), patient, visit, view)
            if predicted and os.path.isfile(guess):
                face_path, face_source = guess, "face-mask network"
                kept.append((f"no face mask: the face-mask network's ({guess}) is used",
                             "face mask predicted by the face-mask network"))
            elif os.path.relpath(image, root) in no_face:
                report.add(image, f"no face mask, and the face networks gave none "
                                  f"({no_face[os.path.relpath(image, root)]})", "skipped")
                continue
            else:
                face_path, face_source = "", "whole image"
                kept.append(("no face mask: the whole photo is the face region (whole-image mode)",
                             "no face mask (whole-image mode)"))
        try:
            photo = read_photo(image)
            softened: list[int] = []
            face = read_mask(face_path, photo.shape[:2], softened) if face_path else np.ones(photo.shape[:2], np.uint8)
            if os.path.isfile(vit_path):
                vit = read_mask(vit_path, photo.shape[:2], softened)
            else:
                vit, vit_path = np.zeros(photo.shape[:2], np.uint8), ""
                kept.append(("no vitiligo mask: unlabelled, kept for semi-supervised training only (the "
                             "unlabelled split; never evaluated on)", "no vitiligo mask (unlabelled)"))
        except ImageReadError as e:
            report.add(e.path, e.problem, "skipped")
            continue
        if sum(softened):
            report.add(image, f"{sum(softened)} anti-aliased mask pixels (neither 0 nor 255) binarised at "
                              f"{MASK_THRESHOLD}", "kept", kind="anti-aliased masks binarised")
        usable = True
        if not face.any():
            report.add(face_path, "face mask is empty (the ratio would be undefined)", "skipped")
            usable = False
        outside = int(((vit > 0) & (face == 0)).sum())
        if outside:
            report.add(vit_path, f"{outside} vitiligo pixels lie outside the face mask; they are not counted",
                       "kept", kind="vitiligo outside the face mask")
        digest = sha256_file(image)
        if digest in hashes:
            first, first_patient = hashes[digest]
            other = f" of another patient ({first_patient}; one of them is mislabelled?)" \
                if first_patient != patient else ""
            report.add(image, f"duplicate of {first}{other} (same content)", "skipped")
            usable = False
        if not usable:
            continue
        hashes[digest] = (image, patient)
        slots[slot] = image
        for note, kind in kept:
            report.add(image, note, "kept", kind=kind)
        records.append(Record(image, face_path, vit_path, patient, visit, view, digest, face_source))
    # Visits without all of the paper's three views (only among patients photographed in those views).
    by_visit: dict[tuple[str, int], set[str]] = {}
    for r in records:
        by_visit.setdefault((r.patient, r.visit), set()).add(r.view)
    for (patient, visit), views in sorted(by_visit.items()):
        missing = [v for v in VIEWS if v not in views]
        if missing and views & set(VIEWS):
            report.add(f"{patient}/visit {visit}", f"has {', '.join(sorted(views))}; missing {', '.join(missing)}",
                       "kept", kind=f"visits with only {', '.join(sorted(views & set(VIEWS)))} of the three views")
    report.records = len(records)
    if not records:
        raise UnusableDataset(f"no usable photo under {root}\n{report.text()}")
    return records, report


def face_sources(records: Sequence[Record]) -> str:
    """Where the face masks of ``records`` came from, in words: "annotation", "whole image",
    "face-mask network", or e.g. "annotation (3 of 40 photos: face-mask network, 1: whole image)"."""
    counts = collections.Counter(r.face_source for r in records)
    if len(counts) == 1:
        return next(iter(counts))
    main = counts.most_common(1)[0][0] if "annotation" not in counts else "annotation"
    rest = [(k, n) for k, n in counts.most_common() if k != main]
    first, *others = rest
    return (f"{main} ({first[1]} of {len(records)} photos: {first[0]}"
            + "".join(f", {n}: {k}" for k, n in others) + ")")


def load_record(record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(photo [h, w, 3], face mask [h, w], vitiligo mask [h, w]) of a scanned record."""
    photo = read_photo(record.image)
    face = read_mask(record.face_mask, photo.shape[:2]) if record.face_mask else np.ones(photo.shape[:2], np.uint8)
    vit = read_mask(record.vitiligo_mask, photo.shape[:2]) if record.vitiligo_mask else np.zeros_like(face)
    return photo, face, vit
