"""The face-mask network: the same trainer learning face vs background from the face masks.

    python -m launch.train --config launch/configs/face_mask.py:synthetic --workdir runs/face_mask

The input is the unmasked face crop; the label is the face mask. The argument
picks the data: ``synthetic`` (default, the bundled data set) or ``folder``
(your uv_vitiligo build).
"""

from launch.configs.common import base_config
from vitijax.contract import CROP_MARGIN


def get_config(data: str = "synthetic"):
    c = base_config()
    c.task = "face_mask"
    c.model.variant = "23-slim"
    if data == "synthetic":
        c.data.update(source="tfds", name="synthetic_uv_vitiligo", config="small")
        c.num_steps = 300
    elif data == "folder":
        c.data.update(source="tfds", name="uv_vitiligo", config="default", build_if_missing=False)
        c.num_epochs = 100
    else:
        raise ValueError(f"data must be 'synthetic' or 'folder', got {data!r}")
    c.input = dict(size=(256, 256), margin=CROP_MARGIN, worker_count=0)  # the unmasked crop
    c.optimizer.update(schedule="poly", warmup_steps=20)
    c.log_every = 25
    c.eval_every = 150
    c.checkpoint_every = 100
    return c
