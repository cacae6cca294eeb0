"""The photos a user hands to ``launch.analyze``: files, folders or a CSV manifest, with patient, visit, view.

Folder layout (the one the data set builder reads under ``images/``)::

    FOLDER/<patient>/<visit>/<view>.<jpg|jpeg|png|tif|tiff>

``visit`` is a number, optionally prefixed ``v`` (``0``, ``1``, ``v2``);
``view`` is the file name, usually ``left``, ``front`` or ``right``; repeat
shots of one view at one visit (the patient re-seated and photographed again,
for ``launch.repeatability``) are ``<view>-shot<n>`` (``front-shot2.jpg``;
the plain name is shot 0). A photo
given by name (or found in a folder elsewhere than at that depth) is read the
same way when its last three path parts fit the layout; otherwise its patient
is its file name, its visit 0 and its view ``unknown``.

Manifest (``--manifest FILE.csv``): columns ``image, patient, visit, view``
and optionally ``shot`` (repeat shot number, 0 when empty) and ``face_mask``
(an annotated face mask, for the ``ground_truth`` face-mask source); paths
relative to the manifest's folder. A line with an unusable visit or shot is
reported, not analysed.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Sequence

from vitijax.data.folder import PHOTO_EXTS, parse_visit


@dataclasses.dataclass(frozen=True)
class PhotoInput:
    path: str
    patient: str
    visit: int
    view: str
    face_mask: str | None = None
    shot: int = 0  # repeat shot of this view at this visit (0: the first or only one)


_SHOT = re.compile(r"^(.+)-shot(\d+)$")


def parse_view(stem: str) -> tuple[str, int]:
    """(view, shot) from a photo's file name without extension: ``front`` -> (front, 0),
    ``front-shot2`` -> (front, 2)."""
    m = _SHOT.match(stem.lower())
    return (m.group(1), int(m.group(2))) if m else (stem.lower(), 0)


def _from_path(path: str) -> PhotoInput:
    # The whole absolute path, not the part below a given folder: a user may pass a patient's or a
    # visit's folder, and the layout still reads from the last three parts.
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    stem = os.path.splitext(parts[-1])[0]
    if len(parts) >= 3:
        visit = parse_visit(parts[-2])
        if visit is not None:
            view, shot = parse_view(stem)
            return PhotoInput(os.path.abspath(path), parts[-3], visit, view, shot=shot)
    return PhotoInput(os.path.abspath(path), stem, 0, "unknown")


def find_photos(paths: Sequence[str], manifest: str | None = None) -> tuple[list[PhotoInput], list[tuple[str, str]]]:
    """(photos to analyse, in order; problems as (file, reason)) from files, folders and/or a manifest.

    Files that do not exist are problems, not errors: the rest is analysed.
    Files are not opened here (an unreadable photo is found when it is read).
    """
    photos: list[PhotoInput] = []
    problems: list[tuple[str, str]] = []
    for p in paths:
        if os.path.isdir(p):
            found = 0
            for dirpath, dirnames, files in os.walk(p):
                dirnames.sort()
                for name in sorted(files):
                    if os.path.splitext(name)[1].lower() in PHOTO_EXTS:
                        photos.append(_from_path(os.path.join(dirpath, name)))
                        found += 1
            if not found:
                problems.append((p, f"folder holds no photos ({', '.join(PHOTO_EXTS)})"))
        elif os.path.isfile(p):
            photos.append(_from_path(p))
        else:
            problems.append((p, "no such file or folder"))
    if manifest:
        root = os.path.dirname(os.path.abspath(manifest))
        with open(manifest, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"image", "patient", "visit", "view"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{manifest}: missing columns {', '.join(sorted(missing))} "
                                 "(needs image, patient, visit, view; optional shot, face_mask)")
            for line, row in enumerate(reader, start=2):
                visit = parse_visit(row["visit"])
                if visit is None:
                    problems.append((f"{manifest}:{line}", f"visit {row['visit']!r} is not a number"))
                    continue
                shot = (row.get("shot") or "").strip() or "0"
                if not shot.isdigit():
                    problems.append((f"{manifest}:{line}", f"shot {row['shot']!r} is not a whole number"))
                    continue
                mask = (row.get("face_mask") or "").strip()
                photos.append(PhotoInput(os.path.join(root, row["image"].strip()), row["patient"].strip(), visit,
                                         row["view"].strip().lower(), os.path.join(root, mask) if mask else None,
                                         shot=int(shot)))
    # Two photos with one (patient, visit, view, shot) would write one folder and one record entry.
    first: dict[tuple, str] = {}
    unique = []
    for ph in photos:
        key = (ph.patient, ph.visit, ph.view, ph.shot)
        if key in first:
            problems.append((ph.path, f"the same patient, visit, view and shot as {first[key]} (name repeat shots "
                                      "<view>-shot<n> with n >= 1, or give a manifest 'shot' column)"))
            continue
        first[key] = ph.path
        unique.append(ph)
    return unique, problems
