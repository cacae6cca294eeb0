"""Build a TFDS data set (array_record files; no TensorFlow needed).

    python -m launch.build_dataset --name synthetic_uv_vitiligo --config small --data-dir data/tfds
    python -m launch.build_dataset --name uv_vitiligo --manual-dir /path/to/ROOT --data-dir data/tfds
    python -m launch.build_dataset --name uv_vitiligo --manual-dir /path/to/ROOT --check   # validate only
    python -m launch.build_dataset --name uv_vitiligo --manual-dir ROOT --face-model BUNDLE  # faces predicted

For ``uv_vitiligo`` the split options override the config's: ``--folds K`` for
grouped k-fold; otherwise ROOT/splits/test.txt if present, else fractions. They
keep the config's name (so the shipped training configs find the data set) and
are recorded in its metadata. Photos that fail a check stop the build (and make
``--check`` exit 1) unless ``--allow-skips``; either way the JSON report lands in
DATA_DIR/reports/.

Photos without a face mask are measured over the whole photo (whole-image mode) unless
``--face-model BUNDLE`` names a ``launch.export`` bundle with a face-mask network: its face stages then
predict those photos' face masks into ROOT/predicted_face_masks/ (pictures to look at and correct;
``vitijax/data/predicted_faces.py``) and the build uses them. The data set records which source its face
masks came from (``face_mask_source``).
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
    p.add_argument("--face-model", help="uv_vitiligo: a launch.export bundle whose face networks predict the face "
                   "masks of photos that have none (default: whole-image mode)")
    a = p.parse_args(argv)

    from vitijax.data import folder, splits, tfds_io

    a.data_dir = a.data_dir or tfds_io.default_data_dir()

    if a.name == "uv_vitiligo" and not a.manual_dir:
        p.error("uv_vitiligo needs --manual-dir (your folder of photos and masks; see BUILD.md)")
    try:
        config = a.config or ("small" if a.name == "synthetic_uv_vitiligo" else "default")
        if a.face_model:
            if a.name != "uv_vitiligo":
                p.error("--face-model is for uv_vitiligo (the synthetic data set has its faces' truth)")
            _predict_faces(a.manual_dir, a.face_model)
        if a.check:
            _, report = folder.scan(a.manual_dir, predicted=bool(a.face_model))
            print(report.text())
            path = folder.write_report(report, os.path.join(a.data_dir, "reports"), f"{a.name}_{config}_check")
            print(f"report: {path}")
            return 1 if report.skipped and not a.allow_skips else 0
        overrides = {k: v for k, v in dict(folds=a.folds, val_fraction=a.val_fraction, test_fraction=a.test_fraction,
                                            seed=a.seed, max_side=a.max_side).items() if v is not None}
        if a.name == "uv_vitiligo":
            overrides["allow_skips"] = a.allow_skips
            overrides["face_model"] = os.path.abspath(a.face_model) if a.face_model else ""
        builder = tfds_io.with_options(tfds_io.get_builder(a.name, data_dir=a.data_dir, config=config,
                                                           manual_dir=a.manual_dir, crop_margin=a.crop_margin),
                                       **overrides)
        builder.download_and_prepare()
    except (folder.UnusableDataset, splits.SplitLeak, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = builder.info
    print(f"built {a.name}/{builder.builder_config.name} in {builder.data_dir}:")
    for name, split in sorted(info.splits.items()):
        print(f"  {name}: {split.num_examples} examples")
    return 0


def _predict_faces(root: str, bundle: str) -> None:
    from launch.analyze import build_analyzer
    from vitijax import compile_cache
    from vitijax.data import predicted_faces

    compile_cache.enable()
    analyzer, info = build_analyzer(argparse.Namespace(model=bundle, face_mask="network", detector="auto", tta=False,
                                                        probability=False, batch_size=1))
    record = predicted_faces.predict_missing(root, analyzer, info)
    print(f"face masks predicted by {bundle} ({info['detector']}, face-mask network): {record['masks']} photos; "
          f"no face found in {len(record['no_face'])} (skipped); "
          f"{os.path.join(root, predicted_faces.PREDICTED_DIR)}")


if __name__ == "__main__":
    sys.exit(main())
