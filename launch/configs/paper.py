"""The paper's recipe on your own data: 500 epochs, AdamW 1e-3 / 0.01, OHEM + 0.4 aux, held-out patients.

    python -m launch.build_dataset --name uv_vitiligo --manual-dir /path/to/ROOT
    python -m launch.train --config launch/configs/paper.py:23-slim --workdir runs/paper_23slim

The argument picks the DDRNet variant: 23-slim (default), 23 or 39. The held-out
patients are ROOT/splits/test.txt (the paper held out 6 of 87). On GPUs add
``--config.model.dtype=bfloat16`` for mixed precision (float32 parameters).
"""

from launch.configs.common import base_config


def get_config(variant: str = "23-slim"):
    if variant not in ("23-slim", "23", "39"):
        raise ValueError(f"variant must be 23-slim, 23 or 39, got {variant!r}")
    c = base_config()
    c.model.variant = variant
    c.data.update(source="tfds", name="uv_vitiligo", config="default", build_if_missing=False)
    c.input.update(size=(512, 512), worker_count=4)
    c.batch_size = 16
    c.num_epochs = 500
    c.optimizer.update(lr=1e-3, weight_decay=0.01, schedule="constant")
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    return c
