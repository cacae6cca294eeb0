"""Semi-supervised training of the lesion network on few labelled and many unlabelled patients.

    python -m launch.build_dataset --name synthetic_uv_vitiligo --config semi
    python -m launch.train --config launch/configs/semi.py:semi --workdir runs/semi
    python -m launch.train --config launch/configs/semi.py:labelled_only --workdir runs/labelled_only
    python -m launch.train --config launch/configs/semi.py:all_labelled --workdir runs/all_labelled

The three settings of ``python -m launch.semi_study`` (which runs them over seeds and writes the table of
docs/semi_supervised.md), on the same held-out patients of ``synthetic_uv_vitiligo``:

* ``semi``: 6 labelled training patients and 40 whose masks are withheld (the ``unlabelled`` split of
  the ``semi`` data set), with the mean teacher and pseudo-labels of :mod:`vitijax.tasks.lesion_semi`;
* ``labelled_only``: the same 6 labelled patients, supervised (what a clinic without the method gets);
* ``all_labelled``: all 46 patients labelled (``semi_full``), supervised: the ceiling.

Same network (DDRNet-23-slim), input (160x160 masked crops), steps and labelled batch in all three.
For your own folder, put the photos without vitiligo masks in the layout (they become its
``unlabelled`` split, see BUILD.md) and point ``data`` at ``uv_vitiligo``.
"""

from launch.configs.common import study_config

SETTINGS = ("semi", "labelled_only", "all_labelled")


def get_config(setting: str = "semi"):
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    c = study_config("semi_full" if setting == "all_labelled" else "semi")
    if setting == "semi":
        c.task = "lesion_semi"
        c.data.unlabelled_split = "unlabelled"
        c.data.unlabelled_ratio = 1  # unlabelled crops per labelled one in a step
        # EMA teacher; pseudo-labels where its top class reaches 0.9; weight ramped up over the first 200 steps
        c.loss.update(ema_decay=0.99, confidence=0.9, unlabelled_weight=1.0, rampup_steps=200, class_balanced=True)
        c.augment.update(strong_factor=2.0, cutout=0.25)
    return c
