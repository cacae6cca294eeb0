"""Annotations in and out: other tools' formats <-> the ``uv_vitiligo`` folder layout.

Importers read a tool's annotations of a set of photos and give, per photo, a
binary mask [h, w] per label (:class:`Annotation`); :func:`roles` maps the
labels onto vitijax's two masks (face, lesion) with a :class:`LabelMap`, and
:func:`write_layout` writes the folder that ``launch.build_dataset --name
uv_vitiligo`` reads. Formats (a 5-line example of each is in BUILD.md):

* ``coco``: a COCO instances JSON; polygons (several pieces, holes as
  separate crowd RLE) and RLE, compressed or not, decoded by pycocotools;
* ``cvat``: CVAT for images 1.1 XML; ``<polygon>`` and ``<mask>`` (CVAT's
  run lengths over the mask's box, starting with background);
* ``labelstudio``: a Label Studio JSON export; ``polygonlabels`` (points in
  percent of the image) and ``brushlabels`` (Label Studio's bit-packed RLE);
* ``labelme``: LabelMe JSON files; polygons, rectangles, circles;
* ``yolo``: YOLO-seg text files, one line per polygon, ``class x y x y ...``
  normalised to [0, 1], with the class names in order;
* ``labelmap``: label-map PNGs (a face-parsing map, a colour-coded mask) with
  a class table from an index (``3``) or a colour (``#ff0000``) to a label.

Exporters write the masks of ``launch.analyze`` (``results.json`` and each
photo's ``face_mask.png`` / ``lesion_mask.png``) as COCO (RLE), CVAT
(``<mask>``) or Label Studio (brush ``predictions``) pre-annotations, which a clinician corrects in the tool and
imports back: the round trip gives the same masks bit for bit.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from vitijax.data.folder import PHOTO_EXTS, parse_visit
from vitijax.data.io import ImageReadError, write_png

FORMATS = ("coco", "cvat", "labelstudio", "labelme", "yolo", "labelmap")


@dataclasses.dataclass
class Annotation:
    """One photo's annotations: ``masks`` {label: bool [h, w]} at the photo's size (``size`` (h, w))."""

    photo: str
    size: tuple[int, int]
    name: str = ""  # the photo as the annotation file names it (maybe a relative path <patient>/<visit>/<view>.jpg)
    masks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)  # what was read but left out, and why
    skip: str = ""  # why this photo is not imported at all (e.g. nobody annotated it)

    def add(self, label: str, mask: np.ndarray) -> None:
        mask = np.asarray(mask, bool)
        if mask.shape != self.size:
            raise ValueError(f"{self.photo}: a {label!r} mask of {mask.shape[1]}x{mask.shape[0]} for a photo of "
                             f"{self.size[1]}x{self.size[0]}")
        self.masks[label] = self.masks[label] | mask if label in self.masks else mask


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Which annotation labels make the face mask and which the lesion mask (case-insensitive). Labels in
    ``ignore`` are known and left out; any other label is left out and reported by name."""

    face: tuple[str, ...]
    lesion: tuple[str, ...]
    ignore: tuple[str, ...] = ()

    def roles(self, label: str) -> set[str]:
        """The roles of ``label``: a lesion label may also be part of the face (lesions lie on it)."""
        key = label.strip().lower()
        return {role for role, names in (("face", self.face), ("lesion", self.lesion), ("ignore", self.ignore))
                if key in {n.strip().lower() for n in names}}


def roles(ann: Annotation, labels: LabelMap) -> tuple[np.ndarray | None, np.ndarray, list[str]]:
    """(face mask, lesion mask) uint8 {0, 1} [h, w] of one photo, and notes on the labels left out.

    The face mask is the union of the face labels; with no face label given it is None (the layout
    then holds no face mask and the build treats the whole photo as the face region, its whole-image
    mode). The lesion mask is the union of the lesion labels.
    """
    h, w = ann.size
    face = np.zeros((h, w), bool)
    lesion = np.zeros((h, w), bool)
    notes = list(ann.notes)
    for label, mask in sorted(ann.masks.items()):
        role = labels.roles(label)
        if "face" in role:
            face |= mask
        if "lesion" in role:
            lesion |= mask
        if not role:
            notes.append(f"label {label!r} is neither face, lesion nor ignore: left out ({int(mask.sum())} pixels)")
    return (face.astype(np.uint8) if labels.face else None), lesion.astype(np.uint8), notes


# ----------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------

def polygon_mask(size: tuple[int, int], points: Sequence[Sequence[float]], rule: str = "coco") -> np.ndarray:
    """bool [h, w]: the polygon ``points`` [(x, y), ...] in pixel coordinates, filled by ``rule``: "coco"
    (pycocotools, the rule of COCO and CVAT: a 10x10 square has 100 pixels) or "pil" (PIL's, which also
    fills the outline: LabelMe draws its masks so)."""
    h, w = size
    if len(points) < 3:
        return np.zeros((h, w), bool)
    if rule == "pil":
        img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in points], fill=1)
        return np.asarray(img, bool)
    from pycocotools import mask as mask_utils

    flat = [float(v) for xy in points for v in xy]
    return mask_utils.decode(mask_utils.frPyObjects([flat], h, w))[..., 0] > 0


def runs_to_mask(runs: Sequence[int], shape: tuple[int, int], order: str = "C") -> np.ndarray:
    """Alternating run lengths (background first) -> bool ``shape``, read row-major ("C") or column-major ("F")."""
    runs = np.asarray(runs, np.int64).reshape(-1)
    total, size = int(runs.sum()), int(np.prod(shape))
    if total != size or (runs < 0).any():
        raise ValueError(f"run lengths cover {total} pixels, the mask has {size}" if total != size
                         else "negative run length")
    flat = np.repeat(np.arange(runs.size) % 2 == 1, runs)  # background first, then alternating
    return flat.reshape(shape, order=order)


def mask_to_runs(mask: np.ndarray, order: str = "C") -> list[int]:
    """The inverse of :func:`runs_to_mask`: alternating run lengths, background first."""
    flat = np.asarray(mask, bool).reshape(-1, order=order)
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


# ----------------------------------------------------------------------------
# Readers: each yields Annotations
# ----------------------------------------------------------------------------

def _photo_size(path: str) -> tuple[int, int]:
    """(h, w) of the photo as vitijax reads it: upright, after its EXIF orientation (as ``io.read_photo``)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by a quarter turn
                w, h = h, w
    except (OSError, ValueError) as e:
        raise ImageReadError(path, f"cannot read the photo ({e})") from e
    return h, w


def _find_photo(images: str, name: str, *alternatives: str) -> str:
    """The photo an annotation file names: ``name`` (absolute, or under ``images``), its file name under
    ``images``, or one of ``alternatives`` under ``images``."""
    path = name if os.path.isabs(name) else os.path.join(images, name)
    for candidate in (path, os.path.join(images, os.path.basename(name)),
                      *(os.path.join(images, a) for a in alternatives)):
        if os.path.isfile(candidate):
            return candidate
    raise ImageReadError(path, "the annotated photo is not there (give --images, the folder holding it)")


def read_coco(path: str, images: str) -> Iterator[Annotation]:
    """A COCO instances JSON: polygons and RLE (compressed or not) of each image, by category name."""
    from pycocotools import mask as mask_utils

    with open(path) as f:
        data = json.load(f)
    cats = {c["id"]: c["name"] for c in data.get("categories", [])}
    by_image: dict[int, list[dict]] = {}
    for a in data.get("annotations", []):
        by_image.setdefault(a["image_id"], []).append(a)
    for im in data.get("images", []):
        h, w = int(im["height"]), int(im["width"])
        ann = Annotation(_find_photo(images, im["file_name"]), (h, w), im["file_name"])
        for a in by_image.get(im["id"], []):
            seg = a.get("segmentation")
            label = cats.get(a.get("category_id"), str(a.get("category_id")))
            if isinstance(seg, list):  # polygons: one list of x, y per piece (a piece needs 3 points)
                seg = [piece for piece in seg if len(piece) >= 6]
                rles = mask_utils.frPyObjects(seg, h, w) if seg else []
                m = mask_utils.decode(mask_utils.merge(rles)) if rles else np.zeros((h, w), np.uint8)
            elif isinstance(seg, dict):
                rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg.get("counts"), list) else seg
                if isinstance(rle.get("counts"), str):
                    rle = {**rle, "counts": rle["counts"].encode()}
                m = mask_utils.decode(rle)
            else:
                ann.notes.append(f"annotation {a.get('id')} has no segmentation: left out")
                continue
            ann.add(label, m > 0)
        yield ann


def read_labelme(folder: str, images: str | None = None) -> Iterator[Annotation]:
    """LabelMe JSON files (one per photo): polygon, rectangle and circle shapes, by label."""
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        with open(path) as f:
            data = json.load(f)
        photo = _find_photo(images or folder, data["imagePath"])
        h, w = int(data["imageHeight"]), int(data["imageWidth"])
        ann = Annotation(photo, (h, w), data["imagePath"])
        for shape in data.get("shapes", []):
            kind, pts = shape.get("shape_type", "polygon"), shape.get("points", [])
            if kind == "polygon":
                m = polygon_mask((h, w), pts, rule="pil")
            elif kind == "rectangle":
                (x0, y0), (x1, y1) = pts
                m = polygon_mask((h, w), [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], rule="pil")
            elif kind == "circle":
                (cx, cy), (px, py) = pts
                r = float(np.hypot(px - cx, py - cy))
                img = Image.new("L", (w, h), 0)
                ImageDraw.Draw(img).ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
                m = np.asarray(img, bool)
            else:
                ann.notes.append(f"{path}: a {kind!r} shape labelled {shape.get('label')!r} is not an area: left out")
                continue
            ann.add(shape["label"], m)
        yield ann


def _photos_with(images: str, folder_: str, ext: str, what: str) -> Iterator[tuple[Annotation, str | None]]:
    """(an empty Annotation of each photo in ``images``, its ``folder_/<stem><ext>`` or None when absent,
    which is noted as "no <what>")."""
    photos = {os.path.splitext(n)[0]: os.path.join(images, n) for n in sorted(os.listdir(images))
              if os.path.splitext(n)[1].lower() in PHOTO_EXTS}
    for stem, photo in sorted(photos.items()):
        ann = Annotation(photo, _photo_size(photo))
        path = os.path.join(folder_, stem + ext)
        if not os.path.isfile(path):
            ann.notes.append(f"no {what}: the photo has no annotation")
            path = None
        yield ann, path


def read_yolo(labels: str, images: str, class_names: Sequence[str]) -> Iterator[Annotation]:
    """YOLO-seg text files (``<stem>.txt`` beside ``images/<stem>.<ext>``): ``class x1 y1 x2 y2 ...`` in [0, 1]."""
    for ann, txt in _photos_with(images, labels, ".txt", "label file"):
        h, w = ann.size
        if txt is None:
            yield ann
            continue
        for line_no, line in enumerate(open(txt), 1):
            parts = line.split()
            if not parts:
                continue
            cls, coords = int(parts[0]), np.asarray(parts[1:], np.float64)
            if cls >= len(class_names) or coords.size < 6 or coords.size % 2:
                ann.notes.append(f"{txt}:{line_no}: class {cls} or {coords.size} coordinates is not a polygon of a "
                                 f"known class ({len(class_names)} given): left out")
                continue
            ann.add(class_names[cls], polygon_mask((h, w), coords.reshape(-1, 2) * [w, h]))
        yield ann


def read_cvat(path: str, images: str) -> Iterator[Annotation]:
    """CVAT for images 1.1 XML: ``<polygon points="x,y;x,y...">`` and ``<mask rle left top width height>``."""
    root = ET.parse(path).getroot()
    for im in root.iter("image"):
        h, w = int(im.get("height")), int(im.get("width"))
        ann = Annotation(_find_photo(images, im.get("name")), (h, w), im.get("name"))
        for el in im:
            label = el.get("label", "")
            if el.tag == "polygon":
                pts = [tuple(float(v) for v in p.split(",")) for p in el.get("points", "").split(";") if p]
                ann.add(label, polygon_mask((h, w), pts))
            elif el.tag == "mask":
                left, top = int(float(el.get("left"))), int(float(el.get("top")))
                bw, bh = int(float(el.get("width"))), int(float(el.get("height")))
                box = runs_to_mask([int(v) for v in el.get("rle", "").split(",") if v.strip()], (bh, bw))
                m = np.zeros((h, w), bool)
                m[top:top + bh, left:left + bw] = box[: h - top, : w - left]
                ann.add(label, m)
            elif el.tag in ("box", "polyline", "points", "tag", "ellipse", "cuboid", "skeleton"):
                ann.notes.append(f"a CVAT <{el.tag}> labelled {label!r} is not an area: left out")
        yield ann


# Label Studio's brush masks: the rle-pack bit stream of an RGBA image flattened [h * w * 4] (the mask is
# the alpha channel). Header: the value count (32 bits), the word size - 1 (5 bits), four run-length
# field sizes - 1 (4 bits each). Then blocks: a flag bit (1: one word repeated, 0: literal words), 2 bits
# choosing the field size, the block length - 1 in that many bits, then the word(s). Bits are read most
# significant first.
_BRUSH_WORD = 8
_BRUSH_SIZES = (3, 4, 8, 16)


def brush_to_mask(rle: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """Label Studio brush RLE (a list of byte values) -> bool ``shape`` (h, w): the alpha channel > 0."""
    bits = "".join(f"{int(b) & 0xFF:08b}" for b in rle)
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise ValueError(f"brush RLE ends early (bit {pos} of {len(bits)})")
        pos += n
        return int(bits[pos - n:pos], 2)

    num = read(32)
    h, w = shape
    if num != h * w * 4:
        raise ValueError(f"brush RLE holds {num} values, an RGBA image of {w}x{h} has {h * w * 4}")
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(num, np.uint32)
    i = 0
    while i < num:
        repeated = read(1)
        j = i + 1 + read(sizes[read(2)])
        if j > num:
            raise ValueError(f"brush RLE runs past its {num} values")
        if repeated:
            out[i:j] = read(word)
        else:
            out[i:j] = [read(word) for _ in range(j - i)]
        i = j
    return out.reshape(h, w, 4)[..., 3] > 0


def mask_to_brush(mask: np.ndarray) -> list[int]:
    """bool [h, w] -> Label Studio brush RLE (byte values): every channel of a masked pixel 255, as
    Label Studio draws it; :func:`brush_to_mask` inverts it."""
    flat = np.repeat(np.asarray(mask, bool).reshape(-1), 4).astype(np.uint8) * 255
    parts = [f"{flat.size:032b}", f"{_BRUSH_WORD - 1:05b}", *(f"{s - 1:04b}" for s in _BRUSH_SIZES)]
    change = np.flatnonzero(np.diff(flat)) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    longest = 1 << _BRUSH_SIZES[-1]
    for start, length in zip(starts.tolist(), lengths.tolist()):
        value = f"{int(flat[start]):0{_BRUSH_WORD}b}"
        while length:
            n = min(length, longest)
            k = next(k for k, s in enumerate(_BRUSH_SIZES) if n - 1 < (1 << s))
            parts.append(f"1{k:02b}{n - 1:0{_BRUSH_SIZES[k]}b}{value}")
            length -= n
    bits = "".join(parts)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]


def read_labelstudio(path: str, images: str) -> Iterator[Annotation]:
    """A Label Studio JSON export: ``polygonlabels`` (points in percent of the image) and ``brushlabels``
    (brush RLE) results of each task's latest annotation. A task that holds only pre-annotations
    (predictions nobody reviewed) is skipped and reported, never taken for the truth."""
    with open(path) as f:
        tasks = json.load(f)
    if not isinstance(tasks, list):
        raise ValueError(f"{path}: expected a list of tasks (Label Studio's JSON export)")
    for task in tasks:
        name = urllib.parse.unquote(str(task.get("data", {}).get("image", "")))
        name = name.split("?d=")[-1].lstrip("/")  # local-files URLs carry the path after ?d=
        # uploaded files are renamed "<8 hex digits>-<name>"
        photo = _find_photo(images, name, re.sub(r"^[0-9a-f]{8}-", "", os.path.basename(name)))
        h, w = _photo_size(photo)
        ann = Annotation(photo, (h, w), os.path.relpath(photo, images))
        done = sorted((a for a in task.get("annotations", []) if not a.get("was_cancelled")),
                      key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), int(a.get("id") or 0)))
        if not done:
            ann.skip = ("every annotation was cancelled (skipped in Label Studio)" if task.get("annotations")
                        else "no annotation, only pre-annotations nobody reviewed" if task.get("predictions")
                        else "no annotation")
            yield ann
            continue
        if len(done) > 1:
            ann.notes.append(f"{len(done)} annotations of this photo: the latest (id {done[-1].get('id')}) is read")
        for r in done[-1].get("result", []):
            value = r.get("value", {})
            if r.get("type") == "polygonlabels":
                pts = [(x / 100.0 * w, y / 100.0 * h) for x, y in value.get("points", [])]
                for label in value.get("polygonlabels", []):
                    ann.add(label, polygon_mask((h, w), pts))
            elif r.get("type") == "brushlabels" and value.get("format") == "rle":
                size = (int(r.get("original_height", h)), int(r.get("original_width", w)))
                if size != (h, w):
                    raise ValueError(f"{path}: a brush mask of {size[1]}x{size[0]} for {photo}, which is {w}x{h}")
                try:
                    mask = brush_to_mask(value.get("rle", []), size)
                except ValueError as e:
                    raise ValueError(f"{path}: {photo}: {e}") from e
                for label in value.get("brushlabels", []):
                    ann.add(label, mask)
            else:
                ann.notes.append(f"a Label Studio {r.get('type')!r} result is not an area (polygons and brush "
                                 "masks are read): left out")
        yield ann


def parse_class_table(spec: str) -> dict[object, str]:
    """``"1=face,2=face,10=lesion,#ff0000=lesion"`` -> {1: 'face', ..., (255, 0, 0): 'lesion'}."""
    table: dict[object, str] = {}
    for item in [s for s in spec.split(",") if s.strip()]:
        key, _, label = item.partition("=")
        key = key.strip()
        if not label:
            raise ValueError(f"class table entry {item!r}: expected VALUE=LABEL (e.g. 3=face or #ff0000=lesion)")
        if key.startswith("#") and len(key) == 7:
            table[tuple(int(key[i:i + 2], 16) for i in (1, 3, 5))] = label.strip()
        elif key.isdigit():
            table[int(key)] = label.strip()
        else:
            raise ValueError(f"class table key {key!r}: an index (3) or a colour (#ff0000)")
    return table


def read_label_maps(maps: str, images: str, table: Mapping[object, str]) -> Iterator[Annotation]:
    """Label-map PNGs (``<stem>.png`` per photo ``<stem>.<ext>``): each pixel's index or colour is looked up
    in ``table``; values not in it are counted and reported."""
    for ann, path in _photos_with(images, maps, ".png", "label map"):
        h, w = ann.size
        if path is None:
            yield ann
            continue
        with Image.open(path) as im:
            # a palette map is compared by colour when the table names colours, by index otherwise
            colour = im.mode not in ("1", "L", "P", "I", "I;16") or (
                im.mode == "P" and any(isinstance(k, tuple) for k in table))
            arr = np.asarray(im.convert("RGB") if colour else (im.convert("L") if im.mode == "1" else im))
        if arr.shape[:2] != (h, w):
            raise ImageReadError(path, f"label map of {arr.shape[1]}x{arr.shape[0]} for a photo of {w}x{h}")
        keys = arr.reshape(-1, 3) if colour else arr.reshape(-1)
        known = np.zeros(h * w, bool)
        for key, label in table.items():
            if isinstance(key, tuple) != colour:
                continue
            hit = (keys == np.asarray(key)).all(-1) if colour else keys == key
            known |= hit
            ann.add(label, hit.reshape(h, w))
        values = keys[~known & ((keys != 0).any(-1) if colour else keys != 0)]
        if values.size:
            shown = np.unique(values, axis=0)[:5]
            ann.notes.append(f"{path}: {len(values)} pixels of values not in the class table "
                             f"({', '.join(map(str, shown.tolist()))}): left out")
        yield ann


# ----------------------------------------------------------------------------
# Photo identities and the layout
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Slot:
    patient: str
    visit: int
    view: str


def slot_finder(pattern: str | None = None, ids_csv: str | None = None):
    """A function photo path -> :class:`Slot`.

    ``ids_csv``: columns file, patient, visit, view (file: the photo's name). ``pattern``: a regular
    expression searched in the file name, with named groups ``patient`` and optionally ``visit`` and
    ``view`` (e.g. ``(?P<patient>P\\d+)_v(?P<visit>\\d+)_(?P<view>left|front|right)``): augmented copies
    of one photo named after it stay with one patient. Default: a name ``<patient>/<visit>/<view>.<ext>``
    (what ``export_annotations`` writes for a layout) gives those; any other name's file stem is the
    patient, visit 0, view front.
    """
    table = {}
    if ids_csv:
        with open(ids_csv, newline="") as f:
            for line, row in enumerate(csv.DictReader(f), 2):
                try:
                    table[os.path.basename(row["file"])] = Slot(row["patient"].strip(), int(row["visit"]),
                                                                row["view"].strip().lower())
                except (KeyError, ValueError) as e:
                    raise ValueError(f"{ids_csv}:{line}: expected columns file, patient, visit (a number), view "
                                     f"({e})") from e
    regex = re.compile(pattern) if pattern else None
    if regex is not None and "patient" not in regex.groupindex:
        raise ValueError(f"--pattern {pattern!r} needs a named group (?P<patient>...)")

    def find(ann: Annotation) -> Slot:
        photo = ann.photo
        name = os.path.basename(photo)
        if table:
            if name not in table:
                raise ValueError(f"{photo}: not in {ids_csv}")
            return table[name]
        if regex is not None:
            m = regex.search(name)
            if m is None:
                raise ValueError(f"{photo}: its name does not match --pattern {pattern!r}")
            g = m.groupdict()
            visit = parse_visit(g.get("visit") or "0")
            if visit is None:
                raise ValueError(f"{photo}: visit {g.get('visit')!r} is not a number or a date (2024-03-15)")
            return Slot(g["patient"], visit, (g.get("view") or "front").lower())
        parts = (ann.name or name).replace("\\", "/").split("/")
        if len(parts) >= 3 and parse_visit(parts[-2]) is not None:
            return Slot(parts[-3], parse_visit(parts[-2]), os.path.splitext(parts[-1])[0].lower())
        return Slot(os.path.splitext(name)[0], 0, "front")

    return find


def write_layout(out: str, items: Iterable[Annotation], labels: LabelMap, find_slot) -> dict:
    """Writes ``out/images|face_masks|vitiligo_masks/<patient>/<visit>/<view>`` (masks {0, 255} PNG; photos
    copied). Returns the report:
    {'photos': n, 'notes': {photo: [...]}, 'skipped': {photo: why}, 'face_masks': whether face masks were
    written (not without face labels)}. Two photos for one slot stop the
    import, naming both."""
    seen: dict[Slot, str] = {}
    report = {"photos": 0, "notes": {}, "skipped": {}, "face_masks": bool(labels.face)}
    if os.path.exists(out) and os.listdir(out):
        raise ValueError(f"{out} exists and is not empty; choose a new folder")
    for ann in items:
        if ann.skip:
            report["skipped"][ann.photo] = ann.skip
            continue
        slot = find_slot(ann)
        if slot in seen:
            raise ValueError(f"{ann.photo} and {seen[slot]} are both patient {slot.patient}, visit {slot.visit}, "
                             f"view {slot.view}: give --pattern or --ids that tell them apart")
        seen[slot] = ann.photo
        face, lesion, notes = roles(ann, labels)
        rel = os.path.join(slot.patient, str(slot.visit))
        ext = os.path.splitext(ann.photo)[1].lower()
        if ext not in PHOTO_EXTS:
            raise ImageReadError(ann.photo, f"not a photo extension the layout takes ({', '.join(PHOTO_EXTS)})")
        os.makedirs(os.path.join(out, "images", rel), exist_ok=True)
        shutil.copyfile(ann.photo, os.path.join(out, "images", rel, slot.view + ext))
        if face is not None:
            write_png(os.path.join(out, "face_masks", rel, slot.view + ".png"), face * 255)
        write_png(os.path.join(out, "vitiligo_masks", rel, slot.view + ".png"), lesion * 255)
        report["photos"] += 1
        if notes:
            report["notes"][ann.photo] = notes
    if not report["photos"]:
        if report["skipped"]:
            first = next(iter(report["skipped"].items()))
            raise ValueError(f"no photo was imported: all {len(report['skipped'])} were skipped ({first[0]}: "
                             f"{first[1]})")
        raise ValueError("no annotated photo was found (check --annotations and --images)")
    return report


# ----------------------------------------------------------------------------
# Exporters: launch.analyze's masks as pre-annotations
# ----------------------------------------------------------------------------

def analysis_photos(results_dir: str) -> tuple[str, list[dict]]:
    """(the folder holding all of them, the rows) of the photos of a ``launch.analyze`` output folder
    that got masks."""
    from vitijax import study

    rows = list(study.load(results_dir).analysed())
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p["file"])) for p in rows]) if rows else ""
    return root, rows


def analysis_masks(results_dir: str, root: str, rows: Sequence[dict]) -> Iterator[tuple[str, str, dict[str, np.ndarray]]]:
    """(photo path, its name relative to ``root``, {'face': bool [h, w], 'lesion': bool [h, w]}) of each
    of ``rows`` (:func:`analysis_photos` of a ``launch.analyze`` output folder). Relative names keep
    ``<patient>/<visit>/<view>.jpg`` apart (every patient has a front.jpg) and bring the slot back."""
    for p in rows:
        masks = {k: np.asarray(Image.open(os.path.join(results_dir, p["files"][f"{k}_mask"]))) > 0
                 for k in ("face", "lesion")}
        yield p["file"], os.path.relpath(os.path.abspath(p["file"]), root).replace(os.sep, "/"), masks


CATEGORIES = ("face", "lesion")


def write_coco(path: str, items: Iterable[tuple[str, str, dict[str, np.ndarray]]]) -> int:
    """A COCO instances JSON with one RLE annotation per photo and category (face 1, lesion 2)."""
    from pycocotools import mask as mask_utils

    images, anns = [], []
    for i, (_, name, masks) in enumerate(items, 1):
        h, w = next(iter(masks.values())).shape
        images.append({"id": i, "file_name": name, "height": h, "width": w})
        for c, cat in enumerate(CATEGORIES, 1):
            rle = mask_utils.encode(np.asfortranarray(masks[cat].astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "iscrowd": 1,
                         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                         "area": int(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": c, "name": n} for c, n in enumerate(CATEGORIES, 1)]}, f)
    return len(images)


def write_cvat(path: str, items: Iterable[tuple[str, str, dict[str, np.ndarray]]]) -> int:
    """CVAT for images 1.1 XML with one ``<mask>`` per photo and label (run lengths over the mask's box)."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    meta = ET.SubElement(ET.SubElement(root, "meta"), "task")
    labels_el = ET.SubElement(meta, "labels")
    for name in CATEGORIES:
        ET.SubElement(ET.SubElement(labels_el, "label"), "name").text = name
    n = 0
    for i, (_, name, masks) in enumerate(items):
        h, w = next(iter(masks.values())).shape
        im = ET.SubElement(root, "image", id=str(i), name=name, width=str(w), height=str(h))
        for cat in CATEGORIES:
            m = masks[cat]
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            if rows.size == 0:
                continue
            top, left, bottom, right = rows[0], cols[0], rows[-1] + 1, cols[-1] + 1
            runs = mask_to_runs(m[top:bottom, left:right])
            ET.SubElement(im, "mask", label=cat, source="auto", occluded="0", z_order="0",
                          rle=", ".join(str(r) for r in runs), left=str(left), top=str(top),
                          width=str(right - left), height=str(bottom - top))
        n += 1
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return n


def write_labelstudio(path: str, items: Iterable[tuple[str, str, dict[str, np.ndarray]]]) -> int:
    """Label Studio tasks (JSON) with the masks as brush pre-annotations (``predictions``), one task per
    photo; the photo is ``/data/local-files/?d=<name>``, served by Label Studio's local storage from the
    folder the names are relative to. The labelling config must name the brush tag ``tag`` and the image
    ``image`` with labels face and lesion (BUILD.md shows it)."""
    from vitijax import __version__

    tasks = []
    for _, name, masks in items:
        h, w = next(iter(masks.values())).shape
        result = [{"id": f"{cat}{len(tasks)}", "from_name": "tag", "to_name": "image", "type": "brushlabels",
                   "original_width": w, "original_height": h, "image_rotation": 0,
                   "value": {"format": "rle", "rle": mask_to_brush(masks[cat]), "brushlabels": [cat]}}
                  for cat in CATEGORIES if masks[cat].any()]
        tasks.append({"data": {"image": "/data/local-files/?d=" + urllib.parse.quote(name)},
                      "predictions": [{"model_version": f"vitijax {__version__}", "result": result}]})
    with open(path, "w") as f:
        json.dump(tasks, f)
    return len(tasks)
