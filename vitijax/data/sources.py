"""The examples a run trains and evaluates on, by split, from its config's ``data`` block.

``source = "tfds"``: a TFDS builder of ``vitijax/datasets/`` (built on first use if
``build_if_missing``), read with ``as_data_source``. ``source = "memory"``:
the synthetic generator rendered in-process (tests and quick checks; same
examples, no files).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import jax
import numpy as np

from vitijax.contract import CROP_MARGIN
from vitijax.data import synthetic, tfds_io
from vitijax.data.records import make_example
from vitijax.data.splits import fraction_split, withhold_labels

log = logging.getLogger(__name__)


def load_splits(data_cfg, splits: Sequence[str], margin: float = CROP_MARGIN) -> dict[str, Sequence[dict[str, Any]]]:
    """{split: random-access sequence of examples} for each split name asked for, cropped with ``margin``
    (the run's input contract; a data set built with another is another data set, see ``tfds_io.with_margin``)."""
    if data_cfg.source == "tfds":
        return _tfds_splits(data_cfg, splits, margin)
    if data_cfg.source == "memory":
        return _memory_splits(data_cfg, splits, margin)
    raise ValueError(f"data.source must be 'tfds' or 'memory', got {data_cfg.source!r}")


def _tfds_splits(data_cfg, splits, margin):
    builder = tfds_io.get_builder(data_cfg.name, data_dir=data_cfg.data_dir, config=data_cfg.get("config"),
                                  manual_dir=data_cfg.get("manual_dir"), crop_margin=margin)
    config_name = builder.builder_config.name
    if not tfds_io.is_prepared(builder):
        if not data_cfg.get("build_if_missing", False):
            raise FileNotFoundError(
                f"data set {data_cfg.name}/{config_name} is not built under {data_cfg.data_dir}; run "
                f"python -m launch.build_dataset --name {data_cfg.name} --config {data_cfg.get('config')} "
                f"--crop-margin {margin:g} --data-dir {data_cfg.data_dir}")
        if jax.process_index() == 0:
            print(f"building data set {data_cfg.name}/{config_name} in {data_cfg.data_dir} ...", flush=True)
            builder.download_and_prepare()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("vitijax data set built")
    tfds_io.check_margin(builder, margin)
    available = set(builder.info.splits.keys())
    missing = [s for s in splits if s.split("+")[0].split("[")[0] not in available]
    if missing:
        raise ValueError(f"data set {data_cfg.name} has splits {sorted(available)}, not {missing}")
    return {s: tfds_io.data_source(builder, s) for s in splits}


def _memory_splits(data_cfg, splits, margin):
    seed, n = int(data_cfg.seed), int(data_cfg.patients)
    ids = [synthetic.make_patient(seed, i).patient_id for i in range(n)]
    by_split = fraction_split(ids, val_fraction=data_cfg.val_fraction, test_fraction=data_cfg.test_fraction, seed=seed)
    if data_cfg.get("labelled_patients"):  # the other training patients' photos become the unlabelled split
        by_split = withhold_labels(by_split, int(data_cfg.labelled_patients), seed=seed)
    glare = data_cfg.get("glare")
    acquisition = None if glare is None else synthetic.Acquisition(glare=tuple(glare))
    out = {}
    for name in splits:
        if name not in by_split:
            raise ValueError(f"in-memory synthetic data has splits {sorted(by_split)}, not {name!r}")
        examples = []
        for pid in by_split[name]:
            patient = synthetic.make_patient(seed, ids.index(pid))
            for visit in range(int(data_cfg.visits)):
                for view in synthetic.VIEWS:
                    s = synthetic.render(patient, visit, view, tuple(data_cfg.photo_size), acquisition)
                    lesion = s.vitiligo_mask if name != "unlabelled" else np.zeros_like(s.vitiligo_mask)  # withheld
                    examples.append(make_example(s.image, s.face_mask, lesion, patient=s.patient_id,
                                                 visit=visit, view=view, face_box=s.face_box, margin=margin,
                                                 unassessable_mask=s.unassessable_mask))
        out[name] = examples
    return out
