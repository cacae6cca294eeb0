"""Face masks for a folder's photos that have none, predicted by a bundle's face networks.

``python -m launch.build_dataset --name uv_vitiligo --manual-dir ROOT --face-model BUNDLE`` runs the
analysis chain's face stages (:meth:`vitijax.pipeline.Analyzer.faces`: the face finder, then the
bundle's face-mask network on the crop) on every photo of ROOT without a face mask and writes what
they give as ``ROOT/predicted_face_masks/<patient>/<visit>/<view>.png`` ({0, 255}, at the photo's
size), with ``source.json`` saying which bundle made them and which photos had no face. The scan
(:func:`vitijax.data.folder.scan`) then takes a predicted mask where the annotated one is missing,
and says so per photo; a photo in which the networks found no face is skipped, never measured over
the whole photo. The masks are plain pictures, so they can be looked at, corrected, or moved into
``face_masks/`` to become annotations. Nothing under ``images/``, ``face_masks/`` or
``vitiligo_masks/`` is touched.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

PREDICTED_DIR = "predicted_face_masks"
SOURCE_FILE = "source.json"


def predicted_path(root: str, patient: str, visit: int, view: str) -> str:
    """Where the predicted face mask of one (patient, visit, view) lives."""
    return os.path.join(root, PREDICTED_DIR, patient.replace(os.sep, "_"), str(visit), view + ".png")


def read_source(root: str) -> dict[str, Any]:
    """The record of the last prediction ({'bundle', 'masks', 'no_face': {photo relative to root: why}}),
    or {}."""
    path = os.path.join(root, PREDICTED_DIR, SOURCE_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def predict_missing(root: str, analyzer, info: dict[str, Any], batch_size: int = 4, stream=None) -> dict[str, Any]:
    """Predicts the face mask of every photo under ``root`` that has no annotated one, with ``analyzer``'s
    face stages (``launch.analyze.build_analyzer`` of a bundle with a face-mask network; ``info`` its
    description). Masks already predicted by the same bundle are kept. Returns (and writes) the record
    :func:`read_source` reads."""
    from vitijax import face as face_lib
    from vitijax.data import folder
    from vitijax.data.io import ImageReadError, read_photo, write_png
    from vitijax.run_log import format_seconds

    stream = stream or sys.stderr
    if info.get("face_mask") != "network":
        raise ValueError(f"{info.get('bundle')}: the bundle has no face-mask network to predict face masks with "
                         "(export one with launch.export --face-mask-workdir)")
    same = read_source(root).get("bundle") == info["bundle"]
    record = {"bundle": info["bundle"], "vitijax_version": info["vitijax_version"], "detector": info["detector"],
              "masks": 0, "no_face": dict(read_source(root).get("no_face", {})) if same else {}}
    todo = []
    for image, face_path, _, patient, visit, view in folder.entries(root, folder.Report(root)):
        out = predicted_path(root, patient, visit, view)
        if os.path.isfile(face_path):
            continue
        if same and (os.path.isfile(out) or os.path.relpath(image, root) in record["no_face"]):
            record["masks"] += os.path.isfile(out)
            continue
        todo.append((image, out))
    start = time.perf_counter()
    for k in range(0, len(todo), batch_size):
        batch, photos = [], []
        for image, out in todo[k:k + batch_size]:
            try:
                photos.append(read_photo(image))
                batch.append((image, out))
            except ImageReadError:
                continue  # the scan reports an unreadable photo; there is nothing to predict from
        if not photos:
            continue
        results, usable = analyzer.faces(photos)
        masks = {i: face_lib.paste_back(face, box, photos[i].shape[:2]) for i, box, _, face in usable}
        for i, (image, out) in enumerate(batch):
            if os.path.isfile(out):
                os.remove(out)  # another bundle's mask
            if i in masks:
                write_png(out, masks[i] * 255)
                record["masks"] += 1
                record["no_face"].pop(os.path.relpath(image, root), None)
            else:
                record["no_face"][os.path.relpath(image, root)] = ", ".join(results[i].flags) or "no face"
        done = min(k + batch_size, len(todo))
        rate = done / max(time.perf_counter() - start, 1e-9)
        print(f"face masks: {done}/{len(todo)} photos  |  {rate:.2f} photos/s  ETA "
              f"{format_seconds((len(todo) - done) / rate)}", file=stream, flush=True)
    os.makedirs(os.path.join(root, PREDICTED_DIR), exist_ok=True)
    with open(os.path.join(root, PREDICTED_DIR, SOURCE_FILE), "w") as f:
        json.dump(record, f, indent=2)
    return record
