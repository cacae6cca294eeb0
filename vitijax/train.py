"""Training: the train state, the sharded train step, periodic evaluation, checkpoints.

``train_and_evaluate(config, workdir)`` is the whole run; ``launch/train.py``
only parses flags. One readable loop, in the manner of big_vision's trainer:
a resumed state restored into shapes from ``jax.eval_shape`` (nothing allocated
twice), a jitted step with the state donated, the loss checked for NaN/Inf before anything is saved, evaluation
that returns sums which the host divides once.

Data parallelism: ``jax.jit`` over a 1-D ``data`` mesh; the state is
replicated and the batch sharded, so BatchNorm and the OHEM selection see the
global batch. The same code runs on one CPU, all GPUs of a host, and several
hosts (each host feeds its own shard of the data).

What is trained is ``config.task``, a module of :mod:`vitijax.tasks` (the
lesion network, the face-mask network, the face-box network): it builds the
model, prepares the examples, gives the loss, the eval step and the figure
that picks the best model. This module knows none of them by name. Configs
are strict (:func:`configure`): a key the task does not take is an error
naming it, and the input contract the task builds from ``config.input`` is
stored whole with every checkpoint and best model.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from vitijax import compile_cache, sharding
from vitijax import tasks
from vitijax.contract import check_keys
from vitijax import evaluate as evaluation
from vitijax.checkpoint import TrainCheckpoints, load_model, read_meta, save_model
from vitijax.data.pipeline import Augment, train_loader
from vitijax.data.sources import load_splits
from vitijax.data.splits import split_names
from vitijax.optim import make_optimizer
from vitijax.run_log import MetricWriter, Progress


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or Inf; the message says where the last good checkpoint is."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimiser steps taken
    params: Any
    batch_stats: Any
    opt_state: Any
    teacher: Any = flax.struct.field(default_factory=dict)  # a task's averaged weights (lesion_semi), else {}


# ----------------------------------------------------------------------------
# Config -> task, input contract, augmentation
# ----------------------------------------------------------------------------

TOP_KEYS = ("task", "seed", "model", "data", "input", "augment", "loss", "optimizer", "batch_size", "num_epochs",
            "num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "init_from",
            "num_devices", "compilation_cache_dir", "distributed")
DATA_KEYS = ("source", "name", "config", "data_dir", "manual_dir", "build_if_missing", "train_split", "eval_split",
             "test_split", "unlabelled_split", "unlabelled_ratio", "seed", "patients", "labelled_patients", "visits",
             "photo_size", "val_fraction", "test_fraction", "glare")
OPTIMIZER_KEYS = ("lr", "weight_decay", "b1", "b2", "eps", "schedule", "warmup_steps", "poly_power", "end_lr_factor",
                  "grad_clip_norm", "weight_decay_on")


def configure(config):
    """(task module, InputContract, Augment) of a training config, after checking every key: one the
    task does not take (a misspelling, or a setting of another task) raises ``ValueError`` naming it."""

    check_keys(config, TOP_KEYS, "config")
    task = tasks.get(config.task)
    check_keys(config.model, task.MODEL_KEYS, "config.model")
    check_keys(config.loss, task.LOSS_KEYS, "config.loss")
    check_keys(config.input, (*task.INPUT_KEYS, "worker_count"), "config.input")
    check_keys(config.augment, task.AUGMENT_KEYS, "config.augment")
    check_keys(config.data, DATA_KEYS, "config.data")
    check_keys(config.optimizer, OPTIMIZER_KEYS, "config.optimizer")
    unlabelled = config.data.get("unlabelled_split")
    if unlabelled and not hasattr(task, "prepare_unlabelled"):
        raise ValueError(f"config.data.unlabelled_split: the {task.NAME} task does not train on unlabelled photos "
                         "(task lesion_semi does)")
    if hasattr(task, "prepare_unlabelled") and not unlabelled:
        raise ValueError(f"the {task.NAME} task needs config.data.unlabelled_split (the split of photos without "
                         "lesion masks, e.g. unlabelled)")
    if unlabelled:
        for key in ("train_split", "eval_split", "test_split"):
            if unlabelled in split_names(config.data[key]):
                raise ValueError(f"config.data.{key}: the unlabelled split {unlabelled!r} cannot be "
                                 f"{'trained on with labels' if key == 'train_split' else 'evaluated on'} (it has "
                                 "no lesion masks)")
        if int(config.data.get("unlabelled_ratio") or 0) < 1:
            raise ValueError(f"config.data.unlabelled_ratio must be >= 1 (unlabelled crops per labelled one), got "
                             f"{config.data.get('unlabelled_ratio')}")
    for block, keys in getattr(task, "REQUIRED_KEYS", {}).items():
        missing = [k for k in keys if config[block].get(k) is None]
        if missing:
            raise ValueError(f"config.{block}: the {task.NAME} task needs {', '.join(missing)} (see "
                             f"launch/configs/semi.py)")
    aug = Augment(**config.augment)  # Augment makes scale_range a tuple
    contract = task.contract(config.input)
    classes = int(config.model.get("num_classes", 2))
    if task.NAME.startswith("lesion") and classes != contract.lesion_classes:
        raise ValueError(f"config.input.unassessable={contract.unassessable} with config.model.num_classes={classes}: "
                         "a lesion network with the unassessable (glare) class has 3 classes (skin, vitiligo, "
                         "unassessable), one without it 2")
    return task, contract, aug


# ----------------------------------------------------------------------------
# State and steps
# ----------------------------------------------------------------------------

def fresh_state(task, tx: optax.GradientTransformation, params, batch_stats) -> TrainState:
    """A state of ``params`` and ``batch_stats`` with a new optimiser state (and the task's teacher, if it
    has one, started from them)."""
    teacher = task.init_teacher(params, batch_stats) if hasattr(task, "init_teacher") else {}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=batch_stats, opt_state=tx.init(params), teacher=teacher)


def _state_init(model, tx: optax.GradientTransformation, input_hw: tuple[int, int], task=None):
    def init(rng):
        variables = model.init(rng, jnp.zeros((1, *input_hw, 3), jnp.float32), train=False)
        # The face-box network has no batch norm (RetinaFace's is folded into its convs).
        return fresh_state(task, tx, variables["params"], variables.get("batch_stats", {}))

    return init


def create_train_state(model, tx: optax.GradientTransformation, input_hw: tuple[int, int],
                       seed: int, mesh, task=None) -> TrainState:
    """A fresh state, initialised directly into replicated placement on ``mesh``."""
    return jax.jit(_state_init(model, tx, input_hw, task), out_shardings=sharding.replicated(mesh))(
        jax.random.key(seed))


def abstract_train_state(model, tx: optax.GradientTransformation, input_hw: tuple[int, int], mesh, task=None):
    """The state's shapes, dtypes and (replicated) shardings, from ``jax.eval_shape``: nothing is allocated."""
    shapes = jax.eval_shape(_state_init(model, tx, input_hw, task), jax.random.key(0))
    rep = sharding.replicated(mesh)
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, model, task_loss,
               tx: optax.GradientTransformation, loss_cfg, schedule) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on the global batch (the task's ``TRAIN_KEYS``, e.g. ``{'image': [b, h, w, 3],
    'label': [b, h, w]}``); ``task_loss(outputs, batch, loss_cfg)`` is the task's loss."""
    def loss_fn(params):
        outputs, updated = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                       train=True, mutable=["batch_stats"])
        loss, parts = task_loss(outputs, batch, loss_cfg)
        return loss, (parts, updated.get("batch_stats", {}))

    (loss, (parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {"loss": loss, **parts, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), out


def compile_steps(task, model, tx, loss_cfg, schedule, mesh):
    """(jitted train step with the state donated, jitted eval step) of ``task``, sharded over ``mesh``.
    A task with its own ``train_step`` (same signature) uses it."""
    rep, bat = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    step = jax.jit(functools.partial(getattr(task, "train_step", train_step), model=model, task_loss=task.loss,
                                     tx=tx, loss_cfg=loss_cfg, schedule=schedule),
                   in_shardings=(rep, bat), out_shardings=(rep, rep), donate_argnums=0)
    return step, evaluation.compile_eval_step(task, model, mesh)


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------

def _check(values: Mapping[str, float], step: int, ckpts: TrainCheckpoints) -> None:
    if not all(math.isfinite(float(values[k])) for k in ("loss", "grad_norm")):
        last = ckpts.latest_step()
        where = f"the last good checkpoint (step {last}) is intact in {ckpts.directory}" if last is not None \
            else "no checkpoint was written yet"
        raise NonFiniteLoss(f"loss or gradient became non-finite at step {step} (loss {float(values['loss'])}, "
                            f"grad norm {float(values['grad_norm'])}); stopping without saving: {where}. Lower "
                            "the learning rate or enable gradient clipping (optimizer.grad_clip_norm).")


def _print(line: str) -> str:
    if jax.process_index() == 0:
        print(line, flush=True)
    return line


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Trains per ``config``, resuming from ``workdir`` if it holds checkpoints.

    Returns {'step', 'test': held-out summary, 'best_validation_dice' ('best_validation_iou' for the
    face-box network), 'state': the final TrainState}.
    """
    # --- Set-up ------------------------------------------------------------
    task, contract, aug = configure(config)  # first: a misspelt key fails before anything is written
    dist = config.get("distributed", {})
    sharding.initialize_distributed(dist.get("coordinator_address"), dist.get("num_processes"),
                                    dist.get("process_id"), bool(dist.get("cpu_collectives", False)))
    compile_cache.enable(config.get("compilation_cache_dir"))
    devices = jax.devices()[: config.num_devices] if config.get("num_devices") else jax.devices()
    mesh = sharding.make_mesh(devices)
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    gbs = int(config.batch_size)
    if gbs % len(devices) or gbs % jax.process_count():
        raise ValueError(f"batch_size {gbs} must be divisible by the {len(devices)} devices and "
                         f"{jax.process_count()} processes")

    # --- Data --------------------------------------------------------------
    d = config.data
    unlabelled = d.get("unlabelled_split")
    splits = load_splits(d, [d.train_split, d.eval_split, d.test_split, *([unlabelled] if unlabelled else [])],
                         margin=contract.margin)
    train_src, eval_src, test_src = splits[d.train_split], splits[d.eval_split], splits[d.test_split]
    if contract.unassessable and not aug.highlights and len(train_src) and "unassessable_mask" not in train_src[0]:
        raise ValueError(f"config.input.unassessable: the {d.train_split} split of {d.name} has no unassessable "
                         "(glare) masks to learn the class from; paint highlights on its crops "
                         "(config.augment.highlights, e.g. 0.5) or train on a data set with glare truth")
    steps_per_epoch = max(1, len(train_src) // gbs)
    total_steps = int(config.num_steps) if config.get("num_steps") is not None \
        else int(config.num_epochs) * steps_per_epoch
    iterator = iter(train_loader(train_src, task.NAME, contract, aug, gbs // jax.process_count(),
                                 seed=int(config.seed), worker_count=int(config.input.get("worker_count", 0)),
                                 shard_index=jax.process_index(), shard_count=jax.process_count(),
                                 unlabelled=splits[unlabelled] if unlabelled else None,
                                 unlabelled_ratio=int(d.get("unlabelled_ratio") or 1)))  # >= 1: configure

    # --- Model, optimiser, state ------------------------------------------
    # What identifies the model and what it consumes: stored with every checkpoint and the best model, and
    # checked on resume (a changed contract must not continue an old run).
    model_task = getattr(task, "MODEL_TASK", task.NAME)  # lesion_semi trains the lesion network
    meta = {**task.model_meta(config.model), "task": model_task, "input": contract.to_meta(),
            **({"trained_as": task.NAME} if model_task != task.NAME else {})}
    model = task.build_model(meta, dtype=config.model.get("dtype", "float32"))
    tx, schedule = make_optimizer(config.optimizer, total_steps)
    key = task.SELECTION_KEY
    ckpts = TrainCheckpoints(workdir, keep=int(config.get("keep_checkpoints", 3)))
    start = ckpts.latest_step()
    best = -1.0
    if start is not None:
        abstract = abstract_train_state(model, tx, contract.size, mesh, task)
        # trained_as: a lesion_semi checkpoint (with a teacher) is not resumed as plain lesion training, nor
        # the other way round; checkpoints without the field were supervised
        state, data_state = ckpts.restore(start, abstract, expect={**meta, "trained_as": meta.get("trained_as")})
        if data_state is not None:
            iterator.set_state(data_state)
        # Keep the best so far: a worse later model must not replace it. A best/ without a complete
        # step (killed while writing it) counts as none.
        best_meta = read_meta(os.path.join(workdir, "best"))
        if best_meta is not None:
            best = float(best_meta.get(f"validation_{key}", -1.0))
        if is_main:
            print(f"resumed from {ckpts.directory}/{start} (step {start} of {total_steps})", flush=True)
    else:
        state = create_train_state(model, tx, contract.size, int(config.seed), mesh, task)
        host_params = jax.device_get(state.params)
        params = task.init_params(host_params, config.model, log=lambda m: print(m, flush=True) if is_main else None)
        if params is not host_params:  # the task put pretrained weights in
            state = jax.jit(functools.partial(fresh_state, task, tx), out_shardings=sharding.replicated(mesh))(
                params, state.batch_stats)
    if start is None and config.get("init_from"):
        part = {"face_mask": "face_mask", "face_box": "face_box"}.get(config.task, "lesion")  # of a bundle
        variables, _ = load_model(config.init_from, expect=task.model_meta(config.model), part=part)
        state = jax.jit(functools.partial(fresh_state, task, tx), out_shardings=sharding.replicated(mesh))(
            variables["params"], variables["batch_stats"])
        if is_main:
            print(f"initialised from {config.init_from}", flush=True)
    start = int(start or 0)
    step_fn, ev_fn = compile_steps(task, model, tx, config.loss, schedule, mesh)

    def eval_variables(state):  # what is validated, kept as the best model and tested (lesion_semi: the teacher)
        if hasattr(task, "eval_variables"):
            return task.eval_variables(state)
        return {"params": state.params, "batch_stats": state.batch_stats}

    # --- Loop --------------------------------------------------------------
    writer = MetricWriter(workdir, enabled=is_main, resume_step=start)
    progress = Progress(total_steps, start)
    log_every, eval_every = int(config.log_every), int(config.eval_every or total_steps)
    ckpt_every = int(config.checkpoint_every or total_steps)
    try:
        if is_main:
            what = task.describe(meta)
            extra = f" and {len(splits[unlabelled])} unlabelled ({task.NAME})" if unlabelled else ""
            print(f"training {what} on {len(train_src)} images{extra} ({steps_per_epoch} steps/epoch), "
                  f"{total_steps} steps of {gbs} on {len(devices)} device(s) ({jax.devices()[0].platform}); "
                  f"workdir {workdir}", flush=True)
        t_compile = time.perf_counter()
        logged = start
        for step in range(start, total_steps):
            batch = next(iterator)
            state, values = step_fn(state, sharding.global_batch(batch, mesh))
            done = step + 1
            if step == start:
                values = jax.device_get(values)
                if is_main:
                    print(f"first step (compilation included): {time.perf_counter() - t_compile:.1f} s", flush=True)
                progress = Progress(total_steps, done)  # throughput from here on: compilation excluded
                logged = done
            if done % log_every == 0 or done == total_steps:
                # device_get blocks until this step is computed, so the rate below is compute, not dispatch.
                values = {k: float(v) for k, v in jax.device_get(values).items()}
                progress.update(done, gbs * (done - logged))
                logged = done
                _check(values, done, ckpts)
                writer.write(done, "train", values)
                if is_main:
                    progress.print(done, {k: values[k] for k in ("loss", "grad_norm", "lr")})
            if done % eval_every == 0 or done == total_steps:
                variables = eval_variables(state)
                rows, _ = task.evaluate(ev_fn, variables, eval_src, contract, gbs, mesh)
                summary, _ = task.summarize(rows, meta)
                writer.write(done, "validation", summary)
                _print(task.summary_line(f"validation at step {done}", summary))
                if math.isfinite(summary[key]) and summary[key] > best:
                    best = summary[key]
                    # collective: every process calls it. replace: a resumed run may re-reach a step whose
                    # best model the interrupted run had already written.
                    save_model(os.path.join(workdir, "best"), variables,
                               {**meta, "step": done, f"validation_{key}": best}, step=done,
                               keep=1, replace=True)
            if done % ckpt_every == 0 or done == total_steps:
                _check({k: float(v) for k, v in jax.device_get(values).items()}, done, ckpts)
                ckpts.save(done, state, iterator.get_state(), meta)

        # --- Final evaluation on held-out patients ---------------------------
        variables = eval_variables(state)
        rows, _ = task.evaluate(ev_fn, variables, test_src, contract, gbs, mesh)
        summary, details = task.summarize(rows, meta)
        writer.write(total_steps, "test", summary)
        _print(task.summary_line(f"test ({d.test_split}, held-out patients)", summary))
        result = {"step": total_steps, "test": summary, f"best_validation_{key}": best, "test_details": details}
        if is_main:
            with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
                json.dump({**result, "per_image": rows}, f, indent=2, default=float)
    finally:
        # Also on errors (a NaN, Ctrl-C): let pending asynchronous saves finish, so the last
        # checkpoint on disk is complete.
        ckpts.wait()
        ckpts.close()
        writer.close()
    return {**result, "state": state}
