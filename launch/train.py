"""Training entry point: ``python -m launch.train --config launch/configs/NAME.py --workdir DIR``.

The trainer (OHEM loss, AdamW, data-parallel sharded steps, orbax checkpoints)
is the subject of the training issue and has not landed yet.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("vitijax: training is not implemented yet (it comes with the training issue). "
          "What works today: the DDRNet model (vitijax.models.ddrnet) and checkpoint conversion "
          "(python -m launch.convert --help).", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
