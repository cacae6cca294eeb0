"""A researcher's folder of UV photos and masks: its layout, and a check of every file.

Layout (BUILD.md shows it with an example)::

    ROOT/
      images/<patient>/<visit>/<view>.<jpg|jpeg|png|tif|tiff>   view: left, front or right
      face_masks/<patient>/<visit>/<view>.png                   {0,1} or {0,255}, photo-sized
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

import csv
import dataclasses
import json
import os
from typing import Iterable

import numpy as np

from vitijax.data.io import ImageReadError, read_mask, read_photo, sha256_file

VIEWS = ("left", "front", "right")
PHOTO_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class Record:
    """One usable photo with its masks (paths absolute)."""

    image: str
    face_mask: str
    vitiligo_mask: str
    patient: str
    visit: int
    view: str
    sha256: str


@dataclasses.dataclass
class Problem:
    file: str
    problem: str
    action: str  # "skipped" (the image is left out) or "kept" (a warning)


@dataclasses.dataclass
class Report:
    root: str
    records: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)

    def add(self, file: str, problem: str, action: str) -> None:
        self.problems.append(Problem(file, problem, action))

    @property
    def skipped(self) -> list[Problem]:
        return [p for p in self.problems if p.action == "skipped"]

    def text(self) -> str:
        lines = [f"Validation of {self.root}: {self.records} usable photos, {len(self.skipped)} skipped, "
                 f"{len(self.problems) - len(self.skipped)} warnings."]
        for p in self.problems:
            lines.append(f"  [{p.action}] {p.file}: {p.problem}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"root": self.root, "records": self.records, "skipped": len(self.skipped),
                           "problems": [dataclasses.asdict(p) for p in self.problems]}, indent=2)


class UnusableDataset(ValueError):
    """Nothing in the folder can be used; the message carries the report."""


def parse_visit(text: str) -> int | None:
    """A visit number from ``0``, ``1``, ``v2`` or ``V3``; None if it is not one."""
    try:
        return int(str(text).strip().lstrip("vV") or "x")
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
            if ext.lower() not in PHOTO_EXTS:
                report.add(path, f"not a photo extension ({', '.join(PHOTO_EXTS)})", "skipped")
                continue
            if len(parts) != 3:
                report.add(path, "expected images/<patient>/<visit>/<view>.<ext>", "skipped")
                continue
            patient, visit_s, _ = parts
            visit = parse_visit(visit_s)
            if visit is None:
                report.add(path, f"visit folder {visit_s!r} is not a number (e.g. 0, 1, v2)", "skipped")
                continue
            mask_rel = os.path.join(patient, visit_s, stem + ".png")
            yield (path, os.path.join(root, "face_masks", mask_rel), os.path.join(root, "vitiligo_masks", mask_rel),
                   patient, visit, stem.lower())


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
                report.add(f"{path}:{line}", f"visit {row['visit']!r} is not a number", "skipped")
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


def scan(root: str | os.PathLike) -> tuple[list[Record], Report]:
    """Checks every photo and mask under ``root``; returns (usable records, report)."""
    root = os.path.abspath(os.fspath(root))
    report = Report(root)
    records: list[Record] = []
    hashes: dict[str, str] = {}
    for image, face_path, vit_path, patient, visit, view in entries(root, report):
        if view not in VIEWS:
            report.add(image, f"view {view!r} is not one of {', '.join(VIEWS)}", "skipped")
            continue
        try:
            photo = read_photo(image)
            face = read_mask(face_path, photo.shape[:2])
            vit = read_mask(vit_path, photo.shape[:2])
        except ImageReadError as e:
            report.add(e.path, e.problem, "skipped")
            continue
        digest = sha256_file(image)
        if digest in hashes:
            report.add(image, f"duplicate of {hashes[digest]} (same content)", "skipped")
            continue
        if not face.any():
            report.add(face_path, "face mask is empty (the ratio would be undefined)", "skipped")
            continue
        outside = int(((vit > 0) & (face == 0)).sum())
        if outside:
            report.add(vit_path, f"{outside} vitiligo pixels lie outside the face mask; they are not counted",
                       "kept")
        hashes[digest] = image
        records.append(Record(image, face_path, vit_path, patient, visit, view, digest))
    # Missing views: every (patient, visit) should have left, front and right.
    by_visit: dict[tuple[str, int], set[str]] = {}
    for r in records:
        by_visit.setdefault((r.patient, r.visit), set()).add(r.view)
    for (patient, visit), views in sorted(by_visit.items()):
        missing = [v for v in VIEWS if v not in views]
        if missing:
            report.add(f"{patient}/visit {visit}", f"missing view(s): {', '.join(missing)}", "kept")
    report.records = len(records)
    if not records:
        raise UnusableDataset(f"no usable photo under {root}\n{report.text()}")
    return records, report


def load_record(record: Record) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(photo [h, w, 3], face mask [h, w], vitiligo mask [h, w]) of a scanned record."""
    photo = read_photo(record.image)
    return photo, read_mask(record.face_mask, photo.shape[:2]), read_mask(record.vitiligo_mask, photo.shape[:2])
