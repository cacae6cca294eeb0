"""Build a TFDS data set (array_record files; no TensorFlow needed).

    python -m launch.build_dataset --name synthetic_uv_vitiligo --config small --data-dir data/tfds
    python -m launch.build_dataset --name uv_vitiligo --manual-dir /path/to/ROOT --data-dir data/tfds
    python -m launch.build_dataset --name uv_vitiligo --manual-dir /path/to/ROOT --check   # validate only

For ``uv_vitiligo`` the split options override the config's: ``--folds K`` for
grouped k-fold; otherwise ROOT/splits/test.txt if present, else fractions. They
keep the config's name (so the shipped training configs find the data set) and
are recorded in its metadata. Photos that fail a check stop the build (and make
``--check`` exit 1) unless ``--allow-skips``; either way the JSON report lands in
DATA_DIR/reports/.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.build_dataset", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, choices=["synthetic_uv_vitiligo", "uv_vitiligo"])
    p.add_argument("--config", help="builder config (synthetic: tiny, small, medium, paper; folder: default, kfold5)")
    p.add_argument("--data-dir", help="where the data set is written (default: $VITIJAX_DATA_DIR, else data/tfds)")
    p.add_argument("--manual-dir", help="uv_vitiligo: the folder with images/, face_masks/, vitiligo_masks/")
    p.add_argument("--check", action="store_true", help="uv_vitiligo: only validate the folder, print the report "
                   "and write it as JSON; exit 1 when a photo would be skipped")
    p.add_argument("--allow-skips", action="store_true", help="uv_vitiligo: build without the photos that fail a "
                   "check (default: stop, so that nothing is left out unnoticed)")
    p.add_argument("--folds", type=int, help="uv_vitiligo: grouped k-fold by patient")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--test-fraction", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-side", type=int, help="downscale stored crops above this side (pixels)")
    p.add_argument("--crop-margin", type=float, help="the crop rule's margin, a fraction of the face box's larger "
                   "side (default: vitijax.contract.CROP_MARGIN); another margin is another data set, <config>_margin<m>, "
                   "which a run with input.margin=<m> finds")
    a = p.parse_args(argv)

    from vitijax.data import folder, splits, tfds_io

    a.data_dir = a.data_dir or tfds_io.default_data_dir()

    if a.name == "uv_vitiligo" and not a.manual_dir:
        p.error("uv_vitiligo needs --manual-dir (your folder of photos and masks; see BUILD.md)")
    try:
        config = a.config or ("small" if a.name == "synthetic_uv_vitiligo" else "default")
        if a.check:
            _, report = folder.scan(a.manual_dir)
            print(report.text())
            path = folder.write_report(report, os.path.join(a.data_dir, "reports"), f"{a.name}_{config}_check")
            print(f"report: {path}")
            return 1 if report.skipped and not a.allow_skips else 0
        overrides = {k: v for k, v in dict(folds=a.folds, val_fraction=a.val_fraction, test_fraction=a.test_fraction,
                                            seed=a.seed, max_side=a.max_side).items() if v is not None}
        if a.name == "uv_vitiligo":
            overrides["allow_skips"] = a.allow_skips
        builder = tfds_io.with_options(tfds_io.get_builder(a.name, data_dir=a.data_dir, config=config,
                                                           manual_dir=a.manual_dir, crop_margin=a.crop_margin),
                                       **overrides)
        builder.download_and_prepare()
    except (folder.UnusableDataset, splits.SplitLeak, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = builder.info
    print(f"built {a.name}/{builder.builder_config.name} in {builder.data_dir}:")
    for name, split in sorted(info.splits.items()):
        print(f"  {name}: {split.num_examples} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
