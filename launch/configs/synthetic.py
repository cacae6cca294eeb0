"""The main job: DDRNet-23-slim on the bundled synthetic UV data set, on a CPU laptop in minutes.

    python -m launch.train --config launch/configs/synthetic.py --workdir runs/synthetic

Builds ``synthetic_uv_vitiligo/small`` under data/tfds if absent (30 patients x
3 visits x 3 views at 512x344), trains 500 steps of 8 masked face crops at
256x256 with the paper's loss and optimiser (OHEM + 0.4 aux, AdamW 1e-3 /
0.01) and evaluates on the held-out synthetic patients.
"""

from launch.configs.common import base_config


def get_config():
    c = base_config()
    c.model.variant = "23-slim"
    c.data.update(source="tfds", name="synthetic_uv_vitiligo", config="small")
    c.input.size = (256, 256)
    c.batch_size = 8
    c.num_steps = 500
    c.optimizer.update(schedule="poly", warmup_steps=20)  # a short run decays to the end
    c.log_every = 25
    c.eval_every = 250
    c.checkpoint_every = 100
    return c
