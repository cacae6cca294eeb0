"""Runs launch/configs/test.py in this process and writes the final params (and with --semi the
teacher's params and batch statistics, as teacher/...) to OUT.npz.

Used by the multi-process and kill-and-resume tests:
    python -m tests.helpers.train_run WORKDIR OUT.npz [--steps N] [--ckpt-every K] [--hold-after STEP]
        [--eval-every E] [--coordinator HOST:PORT --num-processes N --process-id I]

``--hold-after STEP``: once the checkpoint of STEP is complete on disk, print "HOLD STEP" and block on
stdin, so that a test can kill the run at a known point (an event, not a guess of timing).
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np
from flax import traverse_util


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--ckpt-every", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--hold-after", type=int)
    p.add_argument("--coordinator")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    p.add_argument("--semi", action="store_true", help="launch/configs/test.py:semi; the teacher is saved too")
    a = p.parse_args()
    from launch.configs.test import get_config
    from vitijax import train

    c = get_config("semi" if a.semi else None)
    c.num_steps, c.checkpoint_every, c.log_every, c.eval_every = a.steps, a.ckpt_every, 1, a.eval_every
    if a.coordinator:
        c.distributed.update(coordinator_address=a.coordinator, num_processes=a.num_processes,
                             process_id=a.process_id, cpu_collectives=True)
    if a.hold_after:
        original = train.TrainCheckpoints.save

        def save_then_hold(self, step, *args, **kwargs):
            original(self, step, *args, **kwargs)
            if step == a.hold_after:
                self.wait()  # the step's directory is complete on disk
                print(f"HOLD {step}", flush=True)
                sys.stdin.readline()  # until the test kills this process

        train.TrainCheckpoints.save = save_then_hold
    result = train.train_and_evaluate(c, a.workdir)
    state = jax.device_get(result["state"])
    trees = {"": state.params, **({"teacher/": state.teacher} if a.semi else {})}
    flat = {prefix + "/".join(k): np.asarray(v) for prefix, tree in trees.items()
            for k, v in traverse_util.flatten_dict(tree).items()}
    np.savez(a.out, **flat)


if __name__ == "__main__":
    main()
