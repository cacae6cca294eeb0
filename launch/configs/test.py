"""A tiny run for tests and smoke checks: DDRNet at test width on in-memory synthetic faces.

    python -m launch.train --config launch/configs/test.py --workdir /tmp/vitijax_test
"""

from launch.configs.common import base_config


def get_config():
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
    return c
