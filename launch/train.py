"""Train a DDRNet: ``python -m launch.train --config launch/configs/NAME.py[:ARG] --workdir DIR``.

Any config field can be overridden on the command line, e.g.
``--config.batch_size=16 --config.optimizer.lr=5e-4``. Re-running with the same
workdir resumes from its latest checkpoint. Several hosts: start the same
command on each with ``--coordinator_address HOST:PORT --num_processes N
--process_id I`` (or under SLURM/Open MPI, with nothing extra).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

# Locked: --config.X=... with a misspelt X fails, naming it, instead of adding a key nobody reads.
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (launch/configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the resolved config.")
_COORD = flags.DEFINE_string("coordinator_address", None, "Multi-host: address of process 0, HOST:PORT.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_CPU_COLL = flags.DEFINE_bool("cpu_collectives", False, "Multi-host on CPUs: use gloo collectives.")


def main(argv):
    del argv
    if _CONFIG.value is None or _WORKDIR.value is None:
        print("usage: python -m launch.train --config launch/configs/NAME.py --workdir DIR", file=sys.stderr)
        return 2
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    from vitijax.train import NonFiniteLoss, train_and_evaluate

    config = _CONFIG.value
    if _COORD.value or _NPROC.value:
        config.distributed.update(coordinator_address=_COORD.value, num_processes=_NPROC.value,
                                  process_id=_PID.value, cpu_collectives=_CPU_COLL.value)
    try:
        train_and_evaluate(config, _WORKDIR.value)
    except ValueError as e:  # a config the task cannot take: the message names the key
        if "config." not in str(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
