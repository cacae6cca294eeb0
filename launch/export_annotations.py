"""Export launch.analyze's masks as pre-annotations for correction in COCO-, CVAT- or Label Studio-based tools.

    python -m launch.export_annotations results/ --format cvat --out preannotations.xml
    python -m launch.export_annotations results/ --format coco --out preannotations.json
    python -m launch.export_annotations results/ --format labelstudio --out tasks.json

Each photo that got masks gives a ``face`` and a ``lesion`` mask (COCO: RLE annotations, categories 1
and 2; CVAT for images 1.1: ``<mask>`` elements; Label Studio: brush ``predictions`` of tasks whose
photos are served by local storage). Load them with the photos into the tool, correct them, export in
the same format and bring them back with ``python -m launch.import_annotations --format
coco|cvat|labelstudio --face face --lesion lesion``: unchanged masks come back bit for bit.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.export_annotations", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a launch.analyze output folder (with results.json)")
    p.add_argument("--format", required=True, choices=("coco", "cvat", "labelstudio"))
    p.add_argument("--out", required=True, help="the file to write (.xml for cvat, .json for the others)")
    a = p.parse_args(argv)

    from vitijax.data import annotations as ann_lib

    try:
        root, rows = ann_lib.analysis_photos(a.results)
    except (FileNotFoundError, ValueError) as e:  # not an analysis folder, or a broken study record
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: {a.results}: no photo with masks to export", file=sys.stderr)
        return 1
    write = {"coco": ann_lib.write_coco, "cvat": ann_lib.write_cvat, "labelstudio": ann_lib.write_labelstudio}[a.format]
    n = write(a.out, ann_lib.analysis_masks(a.results, root, rows))
    print(f"wrote {n} photos' face and lesion masks to {a.out} ({a.format}), named relative to {root}; bring the "
          f"corrected file back with python -m launch.import_annotations --format {a.format} --annotations FILE "
          f"--images {root} --face face --lesion lesion --out ROOT")
    if a.format == "labelstudio":
        print(f"Label Studio serves the photos from local storage: start it with "
              f"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}, "
              f"add a local storage at {root}, and use a labelling config with <BrushLabels name=\"tag\" "
              f"toName=\"image\"> holding the labels face and lesion (BUILD.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
