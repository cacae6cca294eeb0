"""orbax checkpoints of vitijax models.

A *model checkpoint* is an orbax ``CheckpointManager`` directory whose steps
hold two items: ``variables`` (``{'params', 'batch_stats'}``, float32 arrays)
and ``meta`` (JSON: which model it is and where it came from). ``launch.convert``
writes one at step 0; training reads it through ``config.init_from``. The
``meta`` lets a loader refuse a checkpoint of another variant or class count
with a message instead of a shape error deep inside JAX.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

import vitijax

# The meta fields that identify each kind of model (see vitijax.train.model_meta).
MODEL_FIELDS = {"ddrnet": ("model", "variant", "num_classes", "aux_head"), "facebox": ("model", "pool", "hidden")}


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or of another model; the message names the directory."""


def save_model(directory: str | os.PathLike, variables: Mapping[str, Any], meta: Mapping[str, Any],
               step: int = 0, keep: int | None = None, replace: bool = False) -> str:
    """Writes ``variables`` and ``meta`` (plus the vitijax version) as step ``step`` of ``directory``.

    orbax writes into a temporary directory and renames it when complete, so a
    crash never leaves a half-written step that a later load would take.
    ``keep`` bounds how many steps stay (oldest deleted first). An existing
    step at or after ``step`` is an error, unless ``replace`` (then those
    steps are deleted first: a resumed run replacing what an interrupted one
    left). Returns the absolute directory.
    """
    directory = os.path.abspath(os.fspath(directory))
    meta = {**dict(meta), "vitijax_version": vitijax.__version__}
    kind = meta.get("model", "ddrnet")
    if kind not in MODEL_FIELDS:
        raise ValueError(f"model checkpoint meta: model must be one of {sorted(MODEL_FIELDS)}, got {kind!r}")
    missing = [f for f in MODEL_FIELDS[kind] if f not in meta]
    if missing:
        raise ValueError(f"model checkpoint meta needs {missing}")
    variables = jax.tree_util.tree_map(np.asarray, jax.device_get(dict(variables)))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep)
    with ocp.CheckpointManager(directory, options=options) as mngr:
        latest = mngr.latest_step()
        if replace:
            for old in [s for s in mngr.all_steps() if s >= step]:
                mngr.delete(old)
            latest = mngr.latest_step()
        # orbax skips (returns False) a step at or before the latest: never report a write that did not happen.
        if latest is not None and step <= latest:
            raise CheckpointError(f"{directory} already holds a checkpoint at step {latest}; "
                                  "choose another directory or remove it")
        if not mngr.save(step, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables),
                                                       meta=ocp.args.JsonSave(meta))):
            raise CheckpointError(f"{directory}: orbax did not write step {step}")
        mngr.wait_until_finished()
    return directory


def load_model(directory: str | os.PathLike, *, expect: Mapping[str, Any] | None = None,
               step: int | None = None, part: str = "lesion") -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads (variables, meta) from a model checkpoint (the latest step unless ``step``), or from an
    inference bundle (``launch.export``): its network ``part`` (lesion, face_mask or face_box), which
    is how ``config.init_from`` fine-tunes a bundle's network on new annotations.

    ``expect`` maps meta fields (e.g. ``variant``, ``num_classes``) to required
    values; any difference raises ``CheckpointError`` naming the directory and
    each differing field.
    """
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    with ocp.CheckpointManager(directory) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{directory}: holds no complete orbax checkpoint step")
        is_bundle = os.path.isdir(os.path.join(directory, str(step), "bundle"))
    if is_bundle:
        parts, _ = load_bundle(directory)
        if part not in parts:
            raise CheckpointError(f"{directory}: the bundle has no {part} network (it has {', '.join(parts)})")
        variables, meta = parts[part]
        check_meta(meta, expect or {}, directory)
        return variables, meta
    with ocp.CheckpointManager(directory) as mngr:
        try:
            meta = dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
        except Exception as e:
            raise CheckpointError(f"{directory}: step {step} has no readable vitijax 'meta' item ({e})") from e
        check_meta(meta, expect or {}, directory)
        restored = mngr.restore(step, args=ocp.args.Composite(variables=ocp.args.StandardRestore()))
    return dict(restored.variables), meta


def resolve_model_dir(path: str | os.PathLike) -> str:
    """A model checkpoint directory from ``path``: itself, or ``path/best`` for a training workdir."""
    path = os.path.abspath(os.fspath(path))
    best = os.path.join(path, "best")
    if os.path.isdir(best):
        return best
    if os.path.isdir(os.path.join(path, "checkpoints")):
        raise CheckpointError(f"{path}: a training workdir without best/ (no validation ran yet); "
                              "use a model checkpoint (its best/, or launch.convert output)")
    return path


def read_meta(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The ``meta`` of a model checkpoint's latest complete step, or None if it has none (nothing loaded)."""
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        return None
    with ocp.CheckpointManager(directory) as mngr:
        step = mngr.latest_step()
        if step is None:
            return None
        return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)


def check_meta(meta: Mapping[str, Any], expect: Mapping[str, Any], where: str) -> None:
    """Raises ``CheckpointError`` naming every field where ``meta`` differs from ``expect``."""
    diffs = [f"{k}: checkpoint has {meta.get(k)!r}, expected {v!r}" for k, v in expect.items() if meta.get(k) != v]
    if diffs:
        raise CheckpointError(f"{where}: checkpoint of another model ({'; '.join(diffs)})")


def _gather_strings(text: str) -> list[str]:
    """Every process's ``text``, in process order (a collective when there are several processes)."""
    if jax.process_count() == 1:
        return [text]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(text.encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int64))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:raw.size] = raw
    everyone = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [bytes(everyone[i, :n]).decode() for i, n in enumerate(lengths)]


class TrainCheckpoints:
    """The training run's checkpoints: ``<workdir>/checkpoints/<step>/{state, data, meta}``.

    ``state`` is the whole train state (params, batch stats, optimiser state,
    step), ``data`` the input pipeline's position (grain iterator state, JSON)
    and ``meta`` the model fields. The last ``keep`` steps stay. Saving is
    asynchronous: orbax copies the arrays off the devices before ``save``
    returns and writes in the background, atomically (a step directory appears
    only when complete, so a killed run resumes from the last complete one).
    """

    def __init__(self, workdir: str, keep: int = 3):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: bytes | None, meta: Mapping[str, Any]) -> None:
        """Saves ``state`` and every process's ``data_state`` (orbax's JSON is written by process 0 only,
        so the positions of all hosts are gathered into it)."""
        data = {"iterators": _gather_strings(data_state.decode() if data_state is not None else "")}
        meta = {**dict(meta), "vitijax_version": vitijax.__version__}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=ocp.args.JsonSave(data),
                                                        meta=ocp.args.JsonSave(meta)))

    def restore(self, step: int, abstract_state: Any, expect: Mapping[str, Any]) -> tuple[Any, bytes | None]:
        """(state, iterator state) of ``step``; refuses a checkpoint whose meta differs from ``expect``."""
        where = os.path.join(self.directory, str(step))
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        check_meta(meta, expect, where)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        its = restored.data.get("iterators")
        if its is None and "iterator" in restored.data:  # checkpoints written before per-process positions
            its = [restored.data["iterator"]]
        its = its or []
        if len(its) != jax.process_count():
            raise CheckpointError(f"{where}: saved by {len(its)} process(es), resumed with {jax.process_count()}; "
                                  "resume with the same number of hosts")
        it = its[jax.process_index()]
        return restored.state, (it.encode() if it else None)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


# ----------------------------------------------------------------------------
# Inference bundles (launch.export -> launch.analyze)
# ----------------------------------------------------------------------------

BUNDLE_FORMAT = "vitijax-inference-bundle"
BUNDLE_PARTS = ("lesion", "face_mask", "face_box")  # lesion is required; the other two are optional


def save_bundle(directory: str | os.PathLike, parts: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]],
                extra: Mapping[str, Any]) -> str:
    """Writes an inference bundle: one orbax step holding each network's variables and a ``bundle``
    JSON item (format, vitijax version, each part's meta, ``extra``: configs and preprocessing constants).

    ``parts`` maps a name of :data:`BUNDLE_PARTS` to (variables, meta). The
    directory must not exist yet (a bundle is written once, atomically by orbax).
    """
    directory = os.path.abspath(os.fspath(directory))
    if "lesion" not in parts:
        raise ValueError("an inference bundle needs the lesion network")
    unknown = set(parts) - set(BUNDLE_PARTS)
    if unknown:
        raise ValueError(f"unknown bundle parts {sorted(unknown)}; expected {BUNDLE_PARTS}")
    if os.path.exists(directory) and os.listdir(directory):
        raise CheckpointError(f"{directory} exists and is not empty; choose a new directory for the bundle")
    info = {"format": BUNDLE_FORMAT, "vitijax_version": vitijax.__version__,
            "parts": {k: dict(meta) for k, (_, meta) in parts.items()}, **dict(extra)}
    items = {k: ocp.args.StandardSave(jax.tree_util.tree_map(np.asarray, jax.device_get(dict(v))))
             for k, (v, _) in parts.items()}
    with ocp.CheckpointManager(directory) as mngr:
        if not mngr.save(0, args=ocp.args.Composite(bundle=ocp.args.JsonSave(info), **items)):
            raise CheckpointError(f"{directory}: orbax did not write the bundle")
        mngr.wait_until_finished()
    return directory


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


def load_bundle(directory: str | os.PathLike) -> tuple[dict[str, tuple[dict, dict]], dict[str, Any]]:
    """({part: (variables, meta)}, bundle info) of an inference bundle.

    Refuses, naming the directory: a folder that is not a bundle (e.g. a
    training workdir or a single model checkpoint, with what to do instead),
    and a bundle written by another vitijax major.minor version.
    """
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such bundle directory")
    if os.path.isdir(os.path.join(directory, "checkpoints")) or os.path.isdir(os.path.join(directory, "best")):
        raise CheckpointError(f"{directory}: a training workdir, not an inference bundle; make one with "
                              f"python -m launch.export --workdir {directory} --out BUNDLE_DIR")
    with ocp.CheckpointManager(directory) as mngr:
        step = mngr.latest_step()
        if step is None:
            raise CheckpointError(f"{directory}: holds no complete orbax checkpoint (not an inference bundle)")
        try:
            info = dict(mngr.restore(step, args=ocp.args.Composite(bundle=ocp.args.JsonRestore())).bundle)
        except Exception as e:
            raise CheckpointError(f"{directory}: not an inference bundle (no 'bundle' item: a single model "
                                  "checkpoint? export one with python -m launch.export)") from e
        if info.get("format") != BUNDLE_FORMAT:
            raise CheckpointError(f"{directory}: bundle format {info.get('format')!r}, expected {BUNDLE_FORMAT!r}")
        if _major_minor(info.get("vitijax_version", "?")) != _major_minor(vitijax.__version__):
            raise CheckpointError(f"{directory}: bundle written by vitijax {info.get('vitijax_version')}, this is "
                                  f"vitijax {vitijax.__version__}; re-export it with this version "
                                  "(python -m launch.export) or install the version that wrote it")
        names = list(info.get("parts", {}))
        restored = mngr.restore(step, args=ocp.args.Composite(**{k: ocp.args.StandardRestore() for k in names}))
    return {k: (dict(restored[k]), dict(info["parts"][k])) for k in names}, info
