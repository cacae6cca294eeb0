"""Pictures of a data set: photos with their face (yellow) and vitiligo (green) mask outlines.

    python -m launch.preview --synthetic --patients 3 --visits 3 --out docs/synthetic_grid.png
    python -m launch.preview --data uv_vitiligo --split train --count 12 --out preview.png

Synthetic: each photo beside its masks (face grey, vitiligo green); one row per
patient with ``--view front`` (columns: visits), else one row per patient and
visit (columns: left, front, right). The true F-Vitiligo of each photo is
printed. ``--data``: the first ``--count`` examples of a built TFDS data set.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.preview", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="render synthetic patients")
    src.add_argument("--data", help="a built TFDS data set: synthetic_uv_vitiligo or uv_vitiligo")
    p.add_argument("--config", help="TFDS builder config")
    p.add_argument("--data-dir", help="default: $VITIJAX_DATA_DIR, else data/tfds")
    p.add_argument("--split", default="train")
    p.add_argument("--count", type=int, default=12)
    p.add_argument("--patients", type=int, default=3)
    p.add_argument("--visits", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--view", choices=["left", "front", "right", "all"], default="all",
                   help="synthetic: one view (rows = patients, columns = visits) or all (rows = visits)")
    p.add_argument("--size", type=int, nargs=2, default=(384, 256), metavar=("H", "W"), help="synthetic photo size")
    p.add_argument("--tile", type=int, default=256, help="tile height in pixels")
    p.add_argument("--out", required=True, help="PNG file to write")
    a = p.parse_args(argv)

    from vitijax.report.overlay import GREEN, YELLOW, fit_height, grid, outlines

    def tile(image, face, vit):
        return fit_height(outlines(image, [(face, YELLOW), (vit, GREEN)]), a.tile)

    def masks(face, vit):
        """The masks beside the photo: face grey, vitiligo green, background black."""
        pic = np.zeros((*face.shape, 3), np.uint8)
        pic[face > 0] = 110
        pic[vit > 0] = GREEN
        return fit_height(pic, a.tile, nearest=True)

    rows, lines = [], []
    if a.synthetic:
        from vitijax.data import synthetic

        views = synthetic.VIEWS if a.view == "all" else (a.view,)
        for i in range(a.patients):
            patient = synthetic.make_patient(a.seed, i)
            row = []
            for visit in range(a.visits):
                ratios = []
                for view in views:
                    s = synthetic.render(patient, visit, view, tuple(a.size))
                    row += [tile(s.image, s.face_mask, s.vitiligo_mask), masks(s.face_mask, s.vitiligo_mask)]
                    ratios.append(f"{view} {s.ratio:.2f}%")
                if a.view == "all":
                    rows.append(row)
                    row = []
                lines.append(f"{patient.patient_id} ({patient.subtype}, rate {patient.rate:+.2f}/visit) "
                             f"visit {visit}: " + ", ".join(ratios))
            if row:
                rows.append(row)
    else:
        from vitijax.data import tfds_io

        b = tfds_io.get_builder(a.data, data_dir=a.data_dir or tfds_io.default_data_dir(), config=a.config)
        src = tfds_io.DecodedSource(b.as_data_source(split=a.split))
        tiles = []
        for i in range(min(a.count, len(src))):
            ex = src[i]
            tiles.append(tile(ex["image"], ex["face_mask"], ex["vitiligo_mask"]))
            lines.append(f"{i}: {ex['patient']} visit {ex['visit']} {ex['view']}: F-Vitiligo {ex['ratio']:.2f}%")
        rows = [tiles[i:i + 4] for i in range(0, len(tiles), 4)]
    Image.fromarray(grid(rows)).save(a.out)
    print("\n".join(lines))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
