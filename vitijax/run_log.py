"""What a long job tells its user: a progress line (step, loss, images/s, ETA) and metric files.

``MetricWriter`` writes every scalar to ``metrics.jsonl`` (one JSON object a
line: step, split, values) and to TensorBoard event files (tensorboardX, no
TensorFlow needed) in the same workdir. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping


def format_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


class Progress:
    """Throughput and ETA over a window of recent steps (so compile time does not skew them)."""

    def __init__(self, total_steps: int, start_step: int = 0, stream=None):
        self.total = total_steps
        self.stream = stream or sys.stderr
        self._marks: list[tuple[int, float, int]] = [(start_step, time.perf_counter(), 0)]
        self.images = 0

    def update(self, step: int, images: int) -> None:
        """Records that ``step`` steps are done (computed, not just dispatched) and ``images`` more were used."""
        self.images += images
        self._marks.append((step, time.perf_counter(), self.images))
        self._marks = self._marks[-50:]

    def rates(self) -> tuple[float, float]:
        """(images per second, seconds per step) over the recent window."""
        (s0, t0, i0), (s1, t1, i1) = self._marks[max(0, len(self._marks) - 20)], self._marks[-1]
        dt = t1 - t0
        if dt <= 0 or s1 == s0:
            return float("nan"), float("nan")
        return (i1 - i0) / dt, dt / (s1 - s0)

    def line(self, step: int, values: Mapping[str, float]) -> str:
        ips, sps = self.rates()
        eta = (self.total - step) * sps
        pct = 100.0 * step / max(self.total, 1)
        vals = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
        return f"step {step}/{self.total} ({pct:.0f}%)  {vals}  |  {ips:.1f} img/s  ETA {format_seconds(eta)}"

    def print(self, step: int, values: Mapping[str, float]) -> None:
        print(self.line(step, values), file=self.stream, flush=True)


class MetricWriter:
    """Scalars to ``<workdir>/metrics.jsonl`` and TensorBoard ``<workdir>/tensorboard/``."""

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
        """With ``resume_step``, rows logged after that step by the interrupted run are dropped."""
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "metrics.jsonl")
        if resume_step is not None and os.path.isfile(path):
            with open(path) as f:
                kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            with open(path, "w") as f:
                f.writelines(kept)
        self._jsonl = open(path, "a", buffering=1)
        try:
            from tensorboardX import SummaryWriter

            # purge_step: TensorBoard discards the interrupted run's events after the resume step.
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                     purge_step=None if resume_step is None else resume_step + 1)
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            self._tb = None

    def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if v is not None else None) for k, v in values.items()}
        self._jsonl.write(json.dumps({"step": int(step), "split": split, "time": time.time(), **clean},
                                     allow_nan=True) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if v is not None and math.isfinite(v):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
