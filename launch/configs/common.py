"""Defaults shared by every training config; each config file overrides what it changes.

Configs are strict: ``vitijax.train.configure`` refuses a key the task does
not take, naming it, and ``launch.train`` locks the config so that a misspelt
``--config.X=...`` fails too. Fields that may be unset are declared with their
type (``placeholder``), so ``--config.num_steps=N`` works on every config.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from vitijax.contract import CROP_MARGIN
from vitijax.data.tfds_io import default_data_dir


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "lesion"  # a module of vitijax/tasks/: lesion, face_mask or face_box
    c.seed = 0
    c.model = dict(variant="23-slim", num_classes=2, aux_head=True, dtype="float32")
    # data_dir: $VITIJAX_DATA_DIR, else data/tfds (the default of build_dataset and evaluate too)
    c.data = dict(source="tfds", name="synthetic_uv_vitiligo", config="small", data_dir=default_data_dir(),
                  manual_dir=placeholder(str), build_if_missing=True, train_split="train", eval_split="validation",
                  test_split="test",
                  # photos without lesion masks, for task lesion_semi (never evaluated on); crops per labelled one
                  unlabelled_split=placeholder(str), unlabelled_ratio=1,
                  # only for source="memory": the synthetic generator rendered in-process
                  seed=0, patients=10, labelled_patients=placeholder(int), visits=2, photo_size=(192, 128),
                  val_fraction=0.2, test_fraction=0.2, glare=placeholder(tuple))
    # The input contract (vitijax/contract.py): the face crop (face box + `margin` of its larger side on every
    # side, square) x face mask, resized to `size` (multiples of 8), ImageNet mean/std.
    c.input = dict(size=(256, 256), margin=CROP_MARGIN, mask_input=True, worker_count=0)
    # Training augmentation (vitijax.data.pipeline.Augment).
    c.augment = dict(flip=True, scale_range=(0.8, 1.25), max_rotation_deg=10.0, shift=0.08, brightness=0.15,
                     contrast=0.2, uv_tone=0.08, blur_prob=0.3, max_blur_sigma=1.2)
    # OHEM (HRNet's defaults) on the main head + 0.4 x on the auxiliary head (the paper's alpha).
    c.loss = dict(thresh=0.7, min_kept=100_000, aux_weight=0.4, ignore_index=255, class_weights=placeholder(tuple))
    # The paper: AdamW, lr 1e-3, weight decay 0.01.
    c.optimizer = dict(lr=1e-3, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, schedule="constant",
                       warmup_steps=0, poly_power=0.9, end_lr_factor=0.0, grad_clip_norm=placeholder(float),
                       weight_decay_on="all")
    c.batch_size = 8  # global: split over all devices of all hosts
    c.num_epochs = 500
    c.num_steps = placeholder(int)  # overrides num_epochs when set
    c.log_every = 10
    c.eval_every = 0  # steps; 0 = only at the end
    c.checkpoint_every = 0  # steps; 0 = only at the end
    c.keep_checkpoints = 3
    c.init_from = placeholder(str)  # an orbax model checkpoint (launch.convert) or an inference bundle (its network)
    c.num_devices = placeholder(int)  # None = all devices
    c.compilation_cache_dir = placeholder(str)  # None = ~/.cache/vitijax/jax or $VITIJAX_JAX_CACHE
    c.distributed = dict(coordinator_address=placeholder(str), num_processes=placeholder(int),
                         process_id=placeholder(int), cpu_collectives=False)
    return c


def study_config(dataset_config: str) -> ml_collections.ConfigDict:
    """The recipe of vitijax's measured comparisons (semi.py, glare.py): DDRNet-23-slim on 160x160 masked
    crops of ``synthetic_uv_vitiligo/<dataset_config>``, 600 steps of 8, AdamW with a poly decay; small
    enough that several settings and seeds train in minutes each on a CPU."""
    c = base_config()
    c.model.variant = "23-slim"
    c.data.update(source="tfds", name="synthetic_uv_vitiligo", config=dataset_config)
    c.input.size = (160, 160)
    c.loss.min_kept = 20_000  # ~10 % of a batch's pixels, as 100k is of the paper's 1024x1024 crops
    c.batch_size = 8
    c.num_steps = 600
    c.optimizer.update(schedule="poly", warmup_steps=20)
    c.log_every = 50
    c.eval_every = 200
    c.checkpoint_every = 200
    return c
