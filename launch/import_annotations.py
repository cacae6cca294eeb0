"""Bring annotations from another tool into the folder layout ``launch.build_dataset`` reads.

    python -m launch.import_annotations --format coco --annotations instances.json --images photos/ \
        --face face --lesion vitiligo --pattern '(?P<patient>P\\d+)_v(?P<visit>\\d+)_(?P<view>left|front|right)' \
        --out ROOT
    python -m launch.build_dataset --name uv_vitiligo --manual-dir ROOT

Formats (``vitijax/data/annotations.py``; an example of each in BUILD.md): ``coco`` (JSON, polygons and
RLE), ``cvat`` (CVAT for images 1.1 XML, polygons and masks), ``labelstudio`` (JSON export, polygons
and brush masks; tasks nobody annotated are skipped and reported),
``labelme`` (a folder of JSON files), ``yolo`` (a folder of YOLO-seg .txt files; --classes names them in
order), ``labelmap`` (a folder of label-map PNGs; --class-table maps indices or colours to labels).
``--face`` and ``--lesion`` name the labels that make each mask (several, comma-separated: e.g. a
face-parsing map's skin,nose,lips); ``--ignore`` names labels to leave out quietly. Without --face no
face mask is written and the build treats each whole photo as the face region (whole-image mode). Every label left out, and why, is reported and
written to ROOT/import_report.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from vitijax.data.annotations import FORMATS


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in (text or "").split(",") if s.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.import_annotations", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--annotations", required=True, help="the annotation file (coco, cvat, labelstudio) or folder "
                   "(labelme, yolo, labelmap)")
    p.add_argument("--images", help="the folder of the annotated photos (needed for yolo and labelmap; default for "
                   "the others: the annotation file's folder)")
    p.add_argument("--face", help="label(s) whose union is the face mask, comma-separated")
    p.add_argument("--lesion", required=True, help="label(s) whose union is the lesion (vitiligo) mask")
    p.add_argument("--ignore", help="label(s) to leave out without a warning")
    p.add_argument("--classes", help="yolo: the class names in index order, comma-separated")
    p.add_argument("--class-table", help="labelmap: VALUE=LABEL,... with VALUE an index (3) or a colour (#ff0000)")
    p.add_argument("--pattern", help="regular expression on the photo's file name with named groups patient "
                   "(and visit, view)")
    p.add_argument("--ids", help="CSV with columns file, patient, visit, view")
    p.add_argument("--out", required=True, help="a new folder in the uv_vitiligo layout")
    a = p.parse_args(argv)

    from vitijax.data import annotations as ann_lib
    from vitijax.data.io import ImageReadError

    if a.format in ("yolo", "labelmap") and (not a.images or os.path.abspath(a.images) == os.path.abspath(a.annotations)):
        p.error(f"--format {a.format} needs --images, a folder of photos other than the {a.format} files' folder")
    images = a.images or (a.annotations if os.path.isdir(a.annotations) else os.path.dirname(a.annotations))
    created = not os.path.exists(a.out)
    try:
        readers = {
            "coco": lambda: ann_lib.read_coco(a.annotations, images),
            "cvat": lambda: ann_lib.read_cvat(a.annotations, images),
            "labelstudio": lambda: ann_lib.read_labelstudio(a.annotations, images),
            "labelme": lambda: ann_lib.read_labelme(a.annotations, a.images),
            "yolo": lambda: ann_lib.read_yolo(a.annotations, images, _names(a.classes)),
            "labelmap": lambda: ann_lib.read_label_maps(a.annotations, images,
                                                        ann_lib.parse_class_table(a.class_table or "")),
        }
        if a.format == "yolo" and not a.classes:
            raise ValueError("--format yolo needs --classes (the class names in index order)")
        if a.format == "labelmap" and not a.class_table:
            raise ValueError("--format labelmap needs --class-table (e.g. 1=skin,10=nose,255=vitiligo)")
        labels = ann_lib.LabelMap(face=_names(a.face), lesion=_names(a.lesion), ignore=_names(a.ignore))
        report = ann_lib.write_layout(a.out, readers[a.format](), labels, ann_lib.slot_finder(a.pattern, a.ids))
    except (ImageReadError, ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        if created and os.path.isdir(a.out):
            shutil.rmtree(a.out)  # nothing half-written is left to block the rerun
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(os.path.join(a.out, "import_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    for photo, notes in report["notes"].items():
        for note in notes:
            print(f"  {photo}: {note}", file=sys.stderr)
    for photo, why in report["skipped"].items():
        print(f"  {photo}: skipped: {why}", file=sys.stderr)
    if not report["face_masks"]:
        print("no --face given: no face masks written; launch.build_dataset takes each whole photo as the face "
              "region (whole-image mode, cropped with no margin) and records so in the data set", file=sys.stderr)
    skipped = f"{len(report['skipped'])} skipped, " if report["skipped"] else ""
    print(f"imported {report['photos']} photos into {a.out} ({skipped}{len(report['notes'])} with notes; "
          f"{os.path.join(a.out, 'import_report.json')}). Next: python -m launch.build_dataset --name uv_vitiligo "
          f"--manual-dir {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
