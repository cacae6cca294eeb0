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

Two kinds of model train here: DDRNet (``model.name = "ddrnet"``: the lesion
network, or the face-mask network with ``input.label = "face"``), with OHEM
cross-entropy, and the paper's face-box network (``model.name = "facebox"``,
``input.label = "box"``), with L1 + GIoU on the whole photo, its encoder
initialised from the pretrained RetinaFace.
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
from vitijax import evaluate as evaluation
from vitijax.checkpoint import TrainCheckpoints, load_model, read_meta, save_model
from vitijax.data.pipeline import PipelineConfig, train_loader
from vitijax.data.sources import load_splits
from vitijax.models.ddrnet import DDRNet
from vitijax.models.facebox import FaceBoxNet, with_pretrained_encoder
from vitijax.losses import box_loss, ddrnet_loss
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


# ----------------------------------------------------------------------------
# Model, state and steps
# ----------------------------------------------------------------------------

def make_model(model_cfg) -> DDRNet | FaceBoxNet:
    name = model_cfg.get("name", "ddrnet")
    if name == "facebox":
        return FaceBoxNet(pool=int(model_cfg.get("pool", 5)), hidden=int(model_cfg.get("hidden", 256)))
    if name != "ddrnet":
        raise ValueError(f"model.name must be 'ddrnet' or 'facebox', got {name!r}")
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[model_cfg.get("dtype", "float32")]
    return DDRNet(variant=model_cfg.variant, num_classes=int(model_cfg.num_classes),
                  aux_head=bool(model_cfg.aux_head), dtype=dtype)


def model_meta(model_cfg) -> dict[str, Any]:
    """The fields that identify a model in its checkpoints."""
    if model_cfg.get("name", "ddrnet") == "facebox":
        return {"model": "facebox", "pool": int(model_cfg.get("pool", 5)), "hidden": int(model_cfg.get("hidden", 256)),
                "presence_threshold": float(model_cfg.get("presence_threshold", 0.5))}
    return {"model": "ddrnet", "variant": model_cfg.variant, "num_classes": int(model_cfg.num_classes),
            "aux_head": bool(model_cfg.aux_head)}


def _state_init(model: DDRNet, tx: optax.GradientTransformation, input_hw: tuple[int, int]):
    def init(rng):
        variables = model.init(rng, jnp.zeros((1, *input_hw, 3), jnp.float32), train=False)
        params = variables["params"]
        # The face-box network has no batch norm (RetinaFace's is folded into its convs).
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                          opt_state=tx.init(params))

    return init


def create_train_state(model: DDRNet, tx: optax.GradientTransformation, input_hw: tuple[int, int],
                       seed: int, mesh) -> TrainState:
    """A fresh state, initialised directly into replicated placement on ``mesh``."""
    return jax.jit(_state_init(model, tx, input_hw), out_shardings=sharding.replicated(mesh))(jax.random.key(seed))


def abstract_train_state(model: DDRNet, tx: optax.GradientTransformation, input_hw: tuple[int, int], mesh):
    """The state's shapes, dtypes and (replicated) shardings, from ``jax.eval_shape``: nothing is allocated."""
    shapes = jax.eval_shape(_state_init(model, tx, input_hw), jax.random.key(0))
    rep = sharding.replicated(mesh)
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, model: DDRNet | FaceBoxNet,
               tx: optax.GradientTransformation, loss_cfg, schedule) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW step on the global batch ``{'image': [b, h, w, 3], 'label': [b, h, w]}`` (DDRNet) or
    ``{'image': [b, s, s, 3], 'box': [b, 4], 'present': [b]}`` (face-box network)."""
    def loss_fn(params):
        outputs, updated = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                       train=True, mutable=["batch_stats"])
        if isinstance(model, FaceBoxNet):
            box, presence = outputs
            loss, parts = box_loss(box, batch["box"], presence, batch["present"],
                                   l1_weight=loss_cfg.get("l1_weight", 5.0), giou_weight=loss_cfg.get("giou_weight", 2.0),
                                   presence_weight=loss_cfg.get("presence_weight", 1.0))
        else:
            loss, parts = ddrnet_loss(outputs, batch["label"], aux_weight=loss_cfg.aux_weight,
                                      thresh=loss_cfg.thresh, min_kept=loss_cfg.min_kept,
                                      ignore_index=loss_cfg.ignore_index, class_weights=loss_cfg.get("class_weights"))
        return loss, (parts, updated.get("batch_stats", {}))

    (loss, (parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    out = {"loss": loss, **parts, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
    return TrainState(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), out


def compile_steps(model, tx, loss_cfg, schedule, mesh):
    """(jitted train step with the state donated, jitted eval step), sharded over ``mesh``."""
    rep, bat = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    step = jax.jit(functools.partial(train_step, model=model, tx=tx, loss_cfg=loss_cfg, schedule=schedule),
                   in_shardings=(rep, bat), out_shardings=(rep, rep), donate_argnums=0)
    return step, evaluation.compile_eval_step(model, mesh)


# ----------------------------------------------------------------------------
# Evaluation (the evaluator itself is vitijax.evaluate)
# ----------------------------------------------------------------------------

def evaluate_split(ev_step, variables, source, pcfg, global_batch, mesh,
                   presence_threshold: float = 0.5) -> tuple[dict[str, float], list[dict]]:
    """(flat summary for logs: face-region pooled scores, crop_ scores, ratio_mae; per-image rows).

    For the face-mask network (label "face") the region is the whole crop (see vitijax.evaluate).
    For the face-box network: mean IoU, recall at IoU 0.5 / 0.75, crop_holds_face, and at
    ``presence_threshold`` face_found and no_face_rejected (see ``evaluate.summarize_boxes``).
    """
    rows, _ = evaluation.evaluate(ev_step, variables, source, pcfg, global_batch, mesh)
    if pcfg.label == "box":
        if not rows:
            raise ValueError("the evaluation split is empty: no face box to evaluate")
        s = evaluation.summarize_boxes(rows, presence_threshold)
        return {k: v for k, v in s.items() if isinstance(v, (int, float))}, rows
    s = evaluation.summarize(rows)
    flat = {**s["face"]["pooled"], **{f"crop_{k}": v for k, v in s["crop"]["pooled"].items()},
            "ratio_mae": s["ratio"]["mae"], "images": s["images"]}
    return flat, rows


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------

def _pipeline_config(config) -> PipelineConfig:
    inp = config.input
    return PipelineConfig(input_size=tuple(inp.size), label=inp.get("label", "vitiligo"),
                          mask_input=bool(inp.get("mask_input", True)), flip=bool(inp.get("flip", True)),
                          scale_range=tuple(inp.get("scale_range", (0.8, 1.25))),
                          max_rotation_deg=float(inp.get("max_rotation_deg", 10.0)),
                          no_face_prob=float(inp.get("no_face_prob", 0.0)))


def _check(values: Mapping[str, float], step: int, ckpts: TrainCheckpoints) -> None:
    if not all(math.isfinite(float(values[k])) for k in ("loss", "grad_norm")):
        last = ckpts.latest_step()
        where = f"the last good checkpoint (step {last}) is intact in {ckpts.directory}" if last is not None \
            else "no checkpoint was written yet"
        raise NonFiniteLoss(f"loss or gradient became non-finite at step {step} (loss {float(values['loss'])}, "
                            f"grad norm {float(values['grad_norm'])}); stopping without saving: {where}. Lower "
                            "the learning rate or enable gradient clipping (optimizer.grad_clip_norm).")


def _selection_key(pcfg: PipelineConfig) -> str:
    """The validation figure that picks the best model."""
    return "iou" if pcfg.label == "box" else "dice"


def _print_summary(title: str, s: Mapping[str, float]) -> str:
    if "recall_50" in s:
        line = (f"{title}: face box IoU {100 * s['iou']:.2f}  recall@0.5 {100 * s['recall_50']:.2f}  "
                f"recall@0.75 {100 * s['recall_75']:.2f}  crop holds the whole face {100 * s['crop_holds_face']:.2f} "
                f"({s['images']} photos, %)")
        if "face_found" in s:
            line += (f"; face presence at {s['presence_threshold']:g}: faces found {100 * s['face_found']:.2f}, "
                     f"no-face photos rejected {100 * s['no_face_rejected']:.2f} ({s['no_face_images']} photos, %)")
    else:
        line = (f"{title}: Dice {100 * s['dice']:.2f}  IoU {100 * s['iou']:.2f}  mIoU {100 * s['miou']:.2f}  "
                f"precision {100 * s['precision']:.2f}  recall {100 * s['recall']:.2f}  "
                f"F-Vitiligo MAE {s['ratio_mae']:.2f} pp  ({s['images']} images; face region, pooled pixels, %)")
    if jax.process_index() == 0:
        print(line, flush=True)
    return line


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Trains per ``config``, resuming from ``workdir`` if it holds checkpoints.

    Returns {'step', 'test': held-out summary, 'best_validation_dice' ('best_validation_iou' for the
    face-box network), 'state': the final TrainState}.
    """
    # --- Set-up ------------------------------------------------------------
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
    splits = load_splits(d, [d.train_split, d.eval_split, d.test_split])
    train_src, eval_src, test_src = splits[d.train_split], splits[d.eval_split], splits[d.test_split]
    pcfg = _pipeline_config(config)
    steps_per_epoch = max(1, len(train_src) // gbs)
    total_steps = int(config.num_steps) if config.get("num_steps") is not None \
        else int(config.num_epochs) * steps_per_epoch
    loader = train_loader(train_src, pcfg, gbs // jax.process_count(), seed=int(config.seed),
                          worker_count=int(config.input.get("worker_count", 0)),
                          shard_index=jax.process_index(), shard_count=jax.process_count())
    iterator = iter(loader)

    # --- Model, optimiser, state ------------------------------------------
    model = make_model(config.model)
    tx, schedule = make_optimizer(config.optimizer, total_steps)
    meta = model_meta(config.model)
    presence_threshold = float(meta.get("presence_threshold", 0.5))
    # What a model needs besides its weights to be applied: stored with the best model.
    input_meta = {"size": list(pcfg.input_size), "mask_input": pcfg.mask_input, "label": pcfg.label}
    ckpts = TrainCheckpoints(workdir, keep=int(config.get("keep_checkpoints", 3)))
    start = ckpts.latest_step()
    best = -1.0
    if start is not None:
        abstract = abstract_train_state(model, tx, pcfg.input_size, mesh)
        state, data_state = ckpts.restore(start, abstract, expect=meta)
        if data_state is not None:
            iterator.set_state(data_state)
        # Keep the best so far: a worse later model must not replace it. A best/ without a complete
        # step (killed while writing it) counts as none.
        best_meta = read_meta(os.path.join(workdir, "best"))
        if best_meta is not None:
            best = float(best_meta.get(f"validation_{_selection_key(pcfg)}", -1.0))
        if is_main:
            print(f"resumed from {ckpts.directory}/{start} (step {start} of {total_steps})", flush=True)
    else:
        state = create_train_state(model, tx, pcfg.input_size, int(config.seed), mesh)
        if isinstance(model, FaceBoxNet) and config.model.get("pretrained_encoder", True):
            from vitijax.models import retinaface

            params = with_pretrained_encoder(jax.device_get(state.params), retinaface.pretrained_variables()["params"])
            params = jax.device_put(params, sharding.replicated(mesh))
            state = state.replace(params=params,
                                  opt_state=jax.jit(tx.init, out_shardings=sharding.replicated(mesh))(params))
            if is_main:
                print("face-box network: encoder initialised from the pretrained RetinaFace MobileNet-0.25", flush=True)
    if start is None and config.get("init_from"):
        variables, _ = load_model(config.init_from, expect=meta)
        params = jax.device_put(variables["params"], sharding.replicated(mesh))
        state = state.replace(params=params, batch_stats=jax.device_put(variables["batch_stats"],
                                                                        sharding.replicated(mesh)),
                              opt_state=jax.jit(tx.init, out_shardings=sharding.replicated(mesh))(params))
        if is_main:
            print(f"initialised from {config.init_from}", flush=True)
    start = int(start or 0)
    step_fn, ev_fn = compile_steps(model, tx, config.loss, schedule, mesh)

    # --- Loop --------------------------------------------------------------
    writer = MetricWriter(workdir, enabled=is_main, resume_step=start)
    progress = Progress(total_steps, start)
    log_every, eval_every = int(config.log_every), int(config.eval_every or total_steps)
    ckpt_every = int(config.checkpoint_every or total_steps)
    try:
        if is_main:
            what = "the face-box network" if meta["model"] == "facebox" else f"DDRNet-{meta['variant']}"
            print(f"training {what} on {len(train_src)} images ({steps_per_epoch} steps/epoch), "
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
                variables = {"params": state.params, "batch_stats": state.batch_stats}
                summary, _ = evaluate_split(ev_fn, variables, eval_src, pcfg, gbs, mesh, presence_threshold)
                writer.write(done, "validation", summary)
                _print_summary(f"validation at step {done}", summary)
                key = _selection_key(pcfg)
                if math.isfinite(summary[key]) and summary[key] > best:
                    best = summary[key]
                    # collective: every process calls it. replace: a resumed run may re-reach a step whose
                    # best model the interrupted run had already written.
                    save_model(os.path.join(workdir, "best"), variables,
                               {**meta, "input": input_meta, "step": done, f"validation_{key}": best}, step=done,
                               keep=1, replace=True)
            if done % ckpt_every == 0 or done == total_steps:
                _check({k: float(v) for k, v in jax.device_get(values).items()}, done, ckpts)
                ckpts.save(done, state, iterator.get_state(), meta)

        # --- Final evaluation on held-out patients ---------------------------
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        summary, rows = evaluate_split(ev_fn, variables, test_src, pcfg, gbs, mesh, presence_threshold)
        writer.write(total_steps, "test", summary)
        _print_summary(f"test ({d.test_split}, held-out patients)", summary)
        result = {"step": total_steps, "test": summary, f"best_validation_{_selection_key(pcfg)}": best}
        if pcfg.label == "box":  # by view, by kind of no-face photo, and the threshold sweep
            result["test_details"] = evaluation.summarize_boxes(rows, presence_threshold)
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
