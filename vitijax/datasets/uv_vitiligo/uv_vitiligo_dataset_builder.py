"""TFDS builder of a researcher's own UV photographs with face and vitiligo masks.

The folder layout is in BUILD.md and ``vitijax.data.folder``. Build::

    python -m launch.build_dataset --name uv_vitiligo --manual-dir /path/to/ROOT --data-dir data/tfds

Every photo and mask is checked first; the report (what was skipped and why)
is printed and written beside the data set. Splits are by patient only: the
held-out list ``ROOT/splits/test.txt`` when present (the paper's split; with
``ROOT/splits/validation.txt`` for a fixed validation set), else
a seeded fraction; the ``kfold5`` config makes five grouped folds.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow_datasets as tfds

from vitijax.data import folder, splits as splits_lib, tfds_io
from vitijax.contract import CROP_MARGIN
from vitijax.data.records import make_example


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
    test_patients_file: str = "splits/test.txt"  # relative to the manual dir; used when it exists
    validation_patients_file: str = "splits/validation.txt"  # optional, with the test list
    val_fraction: float = 0.1
    test_fraction: float = 0.1  # when there is no held-out list
    folds: int = 0  # > 0: grouped k-fold splits fold0..fold{k-1} instead of train/validation/test
    seed: int = 0
    crop_margin: float = CROP_MARGIN  # the crop rule (vitijax.contract)
    max_side: int | None = 1536  # downscale crops above this side (full photos are 2832x4240)
    allow_skips: bool = False  # build even when photos were skipped (launch.build_dataset --allow-skips)
    face_model: str = ""  # the bundle that predicted missing face masks (launch.build_dataset --face-model)


class Builder(tfds_io.QuietBuilder, tfds.core.GeneratorBasedBuilder):
    """UV photographs of vitiligo patients from a local folder (face-cropped, with masks); photos without a
    vitiligo mask form the ``unlabelled`` split (semi-supervised training; never evaluated on)."""

    name = "uv_vitiligo"
    VERSION = tfds.core.Version("1.4.0")
    RELEASE_NOTES = {"1.0.0": "First release.", "1.1.0": "Adds the whole photo (long side <= 1024).",
                     "1.2.0": "Records the crop margin and the face-mask source; another margin is another config.",
                     "1.3.0": "A photo without a face mask is cropped to the square holding it, with no margin.",
                     "1.4.0": "Photos without a vitiligo mask form the unlabelled split (semi-supervised training)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Lay out your photos and masks as described in vitijax's BUILD.md."
    BUILDER_CONFIGS = [
        FolderConfig(name="default", description="held-out list if present, else seeded 80/10/10 by patient"),
        FolderConfig(name="kfold5", description="five grouped folds by patient", folds=5),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=tfds_io.features(), supervised_keys=None,
                                              metadata=tfds_io.info_metadata(self.builder_config, "annotation"))

    def _split_generators(self, dl_manager):
        c = self.builder_config
        root = os.fspath(dl_manager.manual_dir)
        records, report = folder.scan(root, predicted=bool(c.face_model))
        print(report.text())
        report_path = folder.write_report(report, os.path.join(os.fspath(self.data_dir_root), "reports"),
                                          f"{self.name}_{c.name}")
        if report.skipped and not c.allow_skips:
            raise folder.UnusableDataset(f"{len(report.skipped)} photos were skipped (listed above and in "
                                         f"{report_path}); fix them, or build without them with --allow-skips")
        self.info.metadata["face_mask_source"] = folder.face_sources(records)
        # Photos without a vitiligo mask are the "unlabelled" split (semi-supervised training): those of
        # patients with no labelled photo, and of training patients; a held-out patient's are left out
        # (training on them, even without labels, would leak the patient into the test).
        unlabelled = [r for r in records if not r.labelled]
        records = [r for r in records if r.labelled]
        if not records:
            raise folder.UnusableDataset(f"{root}: no photo has a vitiligo mask; a data set needs labelled photos "
                                         "to evaluate on")
        patients = sorted({r.patient for r in records})
        held_out = os.path.join(root, c.test_patients_file)
        if c.folds:
            splits = splits_lib.kfold_split(patients, c.folds, seed=c.seed)
        elif os.path.isfile(held_out):
            val_file = os.path.join(root, c.validation_patients_file)
            val = splits_lib.read_patient_list(val_file) if os.path.isfile(val_file) else None
            splits = splits_lib.held_out_split(patients, splits_lib.read_patient_list(held_out),
                                               validation_patients=val, val_fraction=c.val_fraction, seed=c.seed)
        else:
            splits = splits_lib.fraction_split(patients, val_fraction=c.val_fraction,
                                               test_fraction=c.test_fraction, seed=c.seed)
        out = {name: self._generate_examples([r for r in records if r.patient in set(ids)])
               for name, ids in splits.items() if ids}
        # with k folds every labelled patient is held out once: only patients without any label are kept
        held_out = set(patients) if c.folds else {p for name in ("validation", "test") for p in splits.get(name, [])}
        kept = [r for r in unlabelled if r.patient not in held_out]
        if len(kept) < len(unlabelled):
            print(f"{len(unlabelled) - len(kept)} unlabelled photos of validation or test patients are left out "
                  "(training on them would leak those patients)", flush=True)
        if kept:
            out["unlabelled"] = self._generate_examples(kept)
        return out

    def _generate_examples(self, records):
        for r in records:
            photo, face, vit = folder.load_record(r)
            ex = make_example(photo, face, vit, patient=r.patient, visit=r.visit, view=r.view,
                              source_file=r.image, source_sha256=r.sha256, max_side=self.builder_config.max_side,
                              # whole-image mode: the photo is the region; a margin around it would be black padding
                              margin=self.builder_config.crop_margin if r.face_mask else 0.0)
            yield f"{r.patient}_v{r.visit}_{r.view}_{r.sha256[:8]}", tfds_io.encode(ex)
