"""TFDS builder of synthetic UV facial-vitiligo photographs (``vitijax.data.synthetic``).

Build (no TensorFlow needed)::

    python -m launch.build_dataset --name synthetic_uv_vitiligo --config small --data-dir data/tfds

Configs: ``tiny`` (tests), ``small`` (the CPU main job), ``medium``, ``paper``
(the paper's 87 patients at 2832x4240: slow, several GB), and for
semi-supervised training ``semi`` (6 labelled training patients, 40 in an
``unlabelled`` split whose lesion masks no run reads) and ``semi_full`` (the
same 46 all labelled, the same held-out patients), and ``glare`` (every photo
with a glare gain drawn from none to strong, ``synthetic.GLARE``) with its twin
``glare_standard`` (the same patients, standard highlights, and no glare truth,
as a clinic's own data). Every other config stores the unassessable (glare)
truth beside the masks. Splits are by
patient: train / validation / test (/ unlabelled).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from vitijax.data import synthetic, tfds_io
from vitijax.contract import CROP_MARGIN
from vitijax.data.records import make_example
from vitijax.data.splits import fraction_split, withhold_labels


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    photo_size: tuple[int, int] = (512, 344)  # (h, w), portrait like the paper's 4240x2832
    patients: int = 30
    visits: int = 3
    seed: int = 0
    crop_margin: float = CROP_MARGIN  # the crop rule (vitijax.contract)
    max_side: int | None = None  # downscale crops above this side
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    labelled_patients: int | None = None  # keep the labels of this many training patients; the rest: "unlabelled"
    glare: tuple[float, float] | None = None  # a glare gain per photo drawn from this range (synthetic.Acquisition)
    glare_truth: bool = True  # store the unassessable (glare) truth; False: as a clinic's data, none annotated


class Builder(tfds_io.QuietBuilder, tfds.core.GeneratorBasedBuilder):
    """Synthetic UV photographs: face crops, face and vitiligo masks, exact ratios."""

    name = "synthetic_uv_vitiligo"
    VERSION = tfds.core.Version("1.3.0")
    RELEASE_NOTES = {"1.0.0": "First release.", "1.1.0": "Adds the whole photo (long side <= 1024).",
                     "1.2.0": "Records the crop margin and the face-mask source; another margin is another config.",
                     "1.3.0": "Stores the unassessable (glare) truth; adds the glare config."}
    BUILDER_CONFIGS = [
        SyntheticConfig(name="tiny", description="6 patients x 2 visits x 3 views at 192x128 (tests)",
                        photo_size=(192, 128), patients=6, visits=2, val_fraction=0.2, test_fraction=0.2),
        SyntheticConfig(name="small", description="30 patients x 3 visits x 3 views at 512x344 (CPU main job)"),
        SyntheticConfig(name="medium", description="48 patients x 4 visits x 3 views at 1060x708",
                        photo_size=(1060, 708), patients=48, visits=4),
        SyntheticConfig(name="paper", description="87 patients x 1 visit x 3 views at 4240x2832, crops <= 1024",
                        photo_size=synthetic.PAPER_SIZE, patients=87, visits=1, max_side=1024,
                        val_fraction=0.1, test_fraction=0.07),
        SyntheticConfig(name="semi", description="56 patients x 2 visits x 3 views at 384x256: 5 validation, 5 test, "
                        "6 labelled training patients and 40 unlabelled", photo_size=(384, 256), patients=56, visits=2,
                        val_fraction=5 / 56, test_fraction=5 / 56, labelled_patients=6),
        SyntheticConfig(name="semi_full", description="semi with all 46 training patients labelled (the ceiling)",
                        photo_size=(384, 256), patients=56, visits=2, val_fraction=5 / 56, test_fraction=5 / 56),
        SyntheticConfig(name="glare", description="40 patients x 2 visits x 3 views at 384x256, glare gain 0-3 per "
                        "photo (none to strong)", photo_size=(384, 256), patients=40, visits=2, glare=(0.0, 3.0)),
        SyntheticConfig(name="glare_standard", description="the glare config's 40 patients with the standard "
                        "highlights only (what lesion networks were trained on before) and, as a clinic's own "
                        "data, no glare truth", photo_size=(384, 256), patients=40, visits=2, glare_truth=False),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=tfds_io.features(unassessable=self.builder_config.glare_truth), supervised_keys=None,
                                              metadata=tfds_io.info_metadata(self.builder_config, "synthetic truth"))

    def _split_generators(self, dl_manager):
        c = self.builder_config
        ids = [synthetic.make_patient(c.seed, i).patient_id for i in range(c.patients)]
        splits = fraction_split(ids, val_fraction=c.val_fraction, test_fraction=c.test_fraction, seed=c.seed)
        if c.labelled_patients:
            splits = withhold_labels(splits, c.labelled_patients, seed=c.seed)
        index = {pid: i for i, pid in enumerate(ids)}
        return {name: self._generate_examples([index[p] for p in patients], labelled=name != "unlabelled")
                for name, patients in splits.items()}

    def _generate_examples(self, patient_indices, labelled: bool = True):
        """The photos of these patients; unlabelled ones are stored with an empty lesion mask (withheld)."""
        c = self.builder_config
        acquisition = None if c.glare is None else synthetic.Acquisition(glare=tuple(c.glare))
        for i in patient_indices:
            patient = synthetic.make_patient(c.seed, i)
            for visit in range(c.visits):
                for view in synthetic.VIEWS:
                    s = synthetic.render(patient, visit, view, c.photo_size, acquisition)
                    lesion = s.vitiligo_mask if labelled else np.zeros_like(s.vitiligo_mask)
                    ex = make_example(s.image, s.face_mask, lesion, patient=s.patient_id, visit=visit,
                                      view=view, source_file=f"synthetic:{c.name}:seed{c.seed}",
                                      face_box=s.face_box, max_side=c.max_side, margin=c.crop_margin,
                                      unassessable_mask=s.unassessable_mask if c.glare_truth else None)
                    yield f"{s.patient_id}_v{visit}_{view}", tfds_io.encode(ex)
