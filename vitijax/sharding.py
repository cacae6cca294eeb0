"""Device mesh, batch placement and multi-host start-up for data parallelism.

One mesh axis, ``data``: the batch is sharded over it (``P('data')``) and the
train state replicated (``P()``). ``jax.jit`` then runs the step on every
device and reduces gradients and batch-norm statistics over the global batch
(synchronised BN for free). The same code serves one CPU, all GPUs of a host,
and several hosts started with :func:`initialize_distributed`.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, cpu_collectives: bool = False) -> None:
    """Joins a multi-host JAX cluster when asked to, else does nothing.

    Explicit arguments win; otherwise ``jax.distributed.initialize()`` reads
    the cluster's usual environment (SLURM, Open MPI, Kubernetes/GKE, or
    ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID``).
    ``cpu_collectives`` selects gloo so that CPU processes can form a cluster
    (used by the tests on localhost).
    """
    # A single SLURM/MPI task (e.g. srun -n1 with 4 GPUs) is not a cluster: initialising would limit it to
    # one local GPU. Run one task per host (all its GPUs) or one per GPU to go multi-process.
    env_cluster = "JAX_COORDINATOR_ADDRESS" in os.environ or any(
        int(os.environ.get(k, "1")) > 1 for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"))
    if coordinator_address is None and num_processes is None and not env_cluster:
        return
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if coordinator_address is not None:
        kwargs = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    elif "JAX_COORDINATOR_ADDRESS" in os.environ:
        kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def make_mesh(devices=None) -> Mesh:
    """A 1-D ``data`` mesh over ``devices`` (default: all devices of all hosts).

    ``AxisType.Auto``: with the Explicit default, sort/top_k (the OHEM
    selection) on a sharded batch raises ShardingTypeError.
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each host's part of the batch into global arrays sharded over ``data``.

    Every host passes its own ``[local_b, ...]`` arrays; the global batch is
    their concatenation in process order. ``local_b`` must be divisible by the
    host's device count.
    """
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
