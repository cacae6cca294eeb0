"""A tiny run for tests and smoke checks: DDRNet at test width on in-memory synthetic faces.

    python -m launch.train --config launch/configs/test.py --workdir /tmp/vitijax_test
    python -m launch.train --config launch/configs/test.py:semi --workdir /tmp/vitijax_semi

``semi``: task lesion_semi, 2 labelled training patients and 2 unlabelled (the memory source's
``unlabelled`` split), a teacher with decay 0.9 and no ramp-up, so a few steps exercise every part.
"""

from launch.configs.common import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.variant = "23-tiny"
    c.data.source = "memory"
    c.data.patients, c.data.visits, c.data.photo_size = 5, 1, (160, 112)
    c.input.size = (64, 64)
    c.loss.min_kept = 2000
    c.batch_size = 8
    c.num_steps = 6
    c.log_every = 2
    c.eval_every = 3
    c.checkpoint_every = 2
    if arg == "semi":
        c.task = "lesion_semi"
        c.data.update(patients=8, labelled_patients=2, unlabelled_split="unlabelled", unlabelled_ratio=1)
        c.loss.update(ema_decay=0.9, confidence=0.6, unlabelled_weight=1.0, rampup_steps=0)
        c.augment.update(strong_factor=2.0, cutout=0.25)
    elif arg:
        raise ValueError(f"launch/configs/test.py takes no argument or 'semi', got {arg!r}")
    return c
