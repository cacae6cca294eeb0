"""Several processes sharing one job on JAX's distributed runtime: ``launch.analyze --processes N``.

Each process analyses its own share of the photos; the processes form one JAX cluster (the coordinator is
process 0), check that they were given the same job, and hand their rows to process 0 through the
output folder, which every process must see (one machine, or a shared file system across hosts).
Process 0 merges them in the order of the inputs and writes the one report.

On one machine ``--processes N`` starts processes 1..N-1 itself, each pinned to its own share of the CPU
cores this process may use (so XLA, OpenCV and ONNX Runtime each size their thread pools to it). On
several hosts each host starts its own with ``--coordinator HOST:PORT --num-processes N --process-id I``.
Within one process, reading and writing already overlap the networks (``launch.analyze.analyze_stream``),
which keeps 2 cores busy: measured on a 2-core machine, a second process added nothing (docs/benchmarks.md).
Processes pay where one process cannot fill the cores, and across hosts.

On CPU the cross-process collectives are gloo's (the one implementation jaxlib's CPU client ships);
every process must reach the coordinator's port.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any, Sequence

ROWS_DIR = ".processes"  # under the output folder: each process's rows, until process 0 has merged them


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def core_shares(n: int) -> list[set[int]]:
    """The CPU cores this process may run on, dealt into ``n`` shares (round robin when there are fewer
    cores than processes, so every process gets one)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cores) >= n:
        return [set(cores[i::n]) for i in range(n)]
    return [{cores[i % len(cores)]} for i in range(n)]


def spawn_local(module: str, argv: Sequence[str], n: int) -> tuple[str, list[subprocess.Popen]]:
    """Starts processes 1..n-1 of ``python -m module argv --coordinator ... --num-processes n --process-id i``,
    each on its share of the cores, and pins this process (process 0) to the first share; returns the
    coordinator's address and the children. Call before JAX starts (its thread pools size to the cores)."""
    address = f"127.0.0.1:{free_port()}"
    shares = core_shares(n)
    children = []
    for i in range(1, n):
        cmd = [sys.executable, "-m", module, *argv, "--coordinator", address, "--num-processes", str(n),
               "--process-id", str(i)]
        children.append(subprocess.Popen(cmd, preexec_fn=_pin(shares[i]) if hasattr(os, "sched_setaffinity") else None))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, shares[0])
    return address, children


def _pin(cores: set[int]):
    return lambda: os.sched_setaffinity(0, cores)


def join(coordinator: str, n: int, process_id: int, timeout_s: int = 300) -> None:
    """Joins the JAX cluster of ``n`` processes whose process 0 listens at ``coordinator`` (HOST:PORT)."""
    import jax

    # The CPU client's collectives; GPU clients bring their own and ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # Leaving the cluster is a barrier of all processes (:func:`leave`); one that finished its share early
    # waits there for the slowest, so that wait may be long.
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=n, process_id=process_id,
                               initialization_timeout=timeout_s, shutdown_timeout_seconds=24 * 3600)


def leave() -> None:
    """Leaves the cluster: every process calls this once its rows are handed in (process 0: collected), so
    all arrive together. Left to exit time, process 0 (which waits for its local children first) and
    the children would wait for each other until the barrier timed out."""
    import jax

    jax.distributed.shutdown()


def same_everywhere(what: str, value: Any) -> None:
    """Raises ValueError on every process unless all of them hold the same ``value`` (JSON-able): the
    processes must have been given one job. Also forms the processes' collective context now, while they
    are all here (a collective first set up at the end would time out waiting for a slower process)."""
    import numpy as np
    from jax.experimental import multihost_utils

    digest = np.frombuffer(hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).digest(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(digest))
    differ = [i for i in range(every.shape[0]) if not np.array_equal(every[i], every[0])]
    if differ:
        raise ValueError(f"process(es) {', '.join(map(str, differ))} were given other {what} than process 0; "
                         "start every process with the same photos, options and output folder")


def shard(items: Sequence[Any], n: int, process_id: int) -> list[tuple[int, Any]]:
    """(index, item) of this process's share: every n-th item, starting at its id."""
    return [(i, items[i]) for i in range(process_id, len(items), n)]


def hand_in(out: str, process_id: int, indexed_rows: Sequence[tuple[int, dict]]) -> str:
    """Writes this process's (input index, row) pairs under ``out`` for process 0; returns the file."""
    folder = os.path.join(out, ROWS_DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{process_id}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump([[i, r] for i, r in indexed_rows], f, default=str)  # NaN ratios stay NaN (json allows them)
    os.replace(tmp, path)  # whole or absent: process 0 never reads half a file
    return path


def collect(out: str, n: int, children: Sequence[subprocess.Popen] = (), poll_s: float = 0.5) -> list[dict]:
    """Process 0: waits for every process's rows (:func:`hand_in`) and returns them in input order; the folder
    of rows is removed. A local child that exits before handing in its rows stops the wait with an error."""
    folder = os.path.join(out, ROWS_DIR)
    paths = [os.path.join(folder, f"{i}.json") for i in range(n)]
    while not all(os.path.isfile(p) for p in paths):
        for i, child in enumerate(children, start=1):
            if child.poll() not in (None, 0) and not os.path.isfile(paths[i]):
                raise RuntimeError(f"process {i} stopped (exit status {child.returncode}) before handing in its rows")
        time.sleep(poll_s)
    indexed = []
    for p in paths:
        with open(p) as f:
            indexed += [(i, r) for i, r in json.load(f)]
        os.remove(p)
    try:
        os.rmdir(folder)
    except OSError:
        pass
    return [r for _, r in sorted(indexed, key=lambda ir: ir[0])]
