"""The lesion network trained semi-supervised: a mean teacher's confident predictions on unlabelled crops.

    python -m launch.train --config launch/configs/semi.py --workdir runs/semi

What is trained is the lesion network (:mod:`vitijax.tasks.lesion`): same
model, input contract, labelled loss, evaluation and stored metadata
(``task: lesion``, so ``launch.export`` and ``launch.analyze`` take it as
it is; ``trained_as: lesion_semi`` says how). What differs is the step:

* the train state carries a **teacher**, an exponential moving average
  (``loss.ema_decay``, warmed up as min(decay, 1 - 1/(t + 1))) of the
  student's parameters and batch statistics, checkpointed and resumed with
  the rest;
* each step takes a labelled batch (the OHEM loss of the paper) and
  ``data.unlabelled_ratio`` times as many unlabelled crops, each in two views
  that share one geometric augmentation: a *weak* view (geometry only) and a
  *strong* one (photometric jitter ``augment.strong_factor`` times the
  labelled one's, blur, and ``augment.cutout``, a blanked square);
* the teacher labels the weak view; pixels of the face whose top class
  probability reaches ``loss.confidence`` supervise the student's prediction
  on the strong view with cross-entropy (FixMatch, Sohn et al. 2020, with
  the teacher of Tarvainen & Valpola 2017); less confident pixels and pixels
  outside the face carry no loss;
* with ``loss.class_balanced`` each pseudo-labelled class weighs the same
  (the mean of the per-class mean losses): confident pixels are mostly
  background skin, and an unbalanced loss teaches the student to miss lesions;
* the unlabelled loss is weighted by ``loss.unlabelled_weight`` times a ramp
  ``exp(-5 (1 - t/T)^2)`` over ``loss.rampup_steps`` (then 1);
* validation, the best model and the test figures use the teacher (the
  averaged weights are the better network, and the ones exported).

The student sees labelled and strong unlabelled crops in one forward pass,
so batch norm pools both, as in FixMatch. Everything is sharded over the
``data`` mesh like supervised training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from vitijax import inputs
from vitijax.data.pipeline import photometric, random_affine
from vitijax.losses import pseudo_label_loss
from vitijax.resize import resize_bilinear
from vitijax.tasks import segmentation
from vitijax.tasks.lesion import (DEVICE_KEYS, HOST_KEYS, INPUT_KEYS, REPORT, SELECTION_KEY,  # noqa: F401
                                  TRAIN_KEYS, blank, build_model, contract, describe, eval_step, evaluate,
                                  init_params, loss, model_meta, prepare, rows, summarize, summary_line)

NAME = "lesion_semi"
MODEL_TASK = "lesion"  # what the trained network is, in every checkpoint, bundle and analysis
MODEL_KEYS = segmentation.MODEL_KEYS
LOSS_KEYS = (*segmentation.LOSS_KEYS, "ema_decay", "confidence", "unlabelled_weight", "rampup_steps",
             "class_balanced")
AUGMENT_KEYS = (*segmentation.AUGMENT_KEYS, "strong_factor", "cutout")
UNLABELLED_KEYS = ("u_weak", "u_strong", "u_face")
REQUIRED_KEYS = {"loss": ("ema_decay", "confidence", "unlabelled_weight", "rampup_steps")}  # configure checks


def prepare_unlabelled(example: dict, contract, aug, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """An unlabelled example's face crop -> {'u_weak', 'u_strong': float32 [h, w, 3] network inputs of one
    geometric augmentation, 'u_face': uint8 [h, w] its face mask}. The weak view has no photometric
    change; the strong one has ``aug.strong_factor`` times the labelled jitter and a blanked square of
    ``aug.cutout`` of the side (where the teacher still sees the skin, the student must infer it)."""
    image = np.asarray(example["image"], np.uint8)
    face = np.asarray(example["face_mask"])
    face = (face[..., 0] if face.ndim == 3 else face).astype(np.uint8)
    size = contract.size
    coeffs, _ = random_affine(image.shape[:2], size, aug, rng)
    img = inputs.warp(image, coeffs, size, Image.Resampling.BILINEAR)
    face_r = inputs.warp(face, coeffs, size, Image.Resampling.NEAREST)
    k = float(aug.strong_factor)
    strong_aug = dataclasses.replace(aug, brightness=aug.brightness * k, contrast=aug.contrast * k,
                                     uv_tone=aug.uv_tone * k, blur_prob=min(1.0, aug.blur_prob * k))
    strong = photometric(img, strong_aug, rng)
    if aug.cutout > 0:
        side = max(1, int(round(aug.cutout * size[0])))
        y, x = rng.integers(0, size[0] - side + 1), rng.integers(0, size[1] - side + 1)
        strong[y:y + side, x:x + side] = 0
    weak = img.astype(np.float32)
    if contract.mask_input:
        weak, strong = weak * face_r[..., None], strong * face_r[..., None]
    return {"u_weak": inputs.normalise(weak, contract), "u_strong": inputs.normalise(strong, contract),
            "u_face": face_r}


def init_teacher(params, batch_stats) -> dict[str, Any]:
    """The teacher starts as the student."""
    return {"params": params, "batch_stats": batch_stats}


def eval_variables(state) -> dict[str, Any]:
    """What is validated, kept as the best model and exported: the teacher."""
    return {"params": state.teacher["params"], "batch_stats": state.teacher["batch_stats"]}


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
    """The teacher's decay at ``step``: min(decay, 1 - 1/(step + 1)) (Tarvainen & Valpola's warm-up), so
    that early on the teacher is the average of the steps so far rather than the random start."""
    return jnp.minimum(jnp.float32(decay), 1.0 - 1.0 / (step.astype(jnp.float32) + 1.0))


def rampup(step: jax.Array, rampup_steps: int) -> jax.Array:
    """exp(-5 (1 - t/T)^2) for t < T, then 1 (Laine & Aila's sigmoid ramp-up)."""
    if int(rampup_steps) <= 0:
        return jnp.float32(1.0)
    t = jnp.clip(step.astype(jnp.float32) / float(rampup_steps), 0.0, 1.0)
    return jnp.exp(-5.0 * (1.0 - t) ** 2)


def pseudo_labels(teacher_logits: jax.Array, face: jax.Array, confidence: float,
                  ignore_index: int = 255) -> tuple[jax.Array, jax.Array]:
    """(labels int32 [b, h, w]: the teacher's class where its probability reaches ``confidence`` inside
    the face, ``ignore_index`` elsewhere; the confident share of face pixels, a scalar).
    ``teacher_logits`` [b, h/8, w/8, c] are resized (as probabilities) to ``face`` [b, h, w]."""
    probs = resize_bilinear(jax.nn.softmax(teacher_logits.astype(jnp.float32), axis=-1), face.shape[1:3])
    conf, cls = jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1)
    keep = (conf >= confidence) & (face > 0)
    share = jnp.sum(keep) / jnp.maximum(jnp.sum(face > 0), 1)
    return jnp.where(keep, cls, ignore_index).astype(jnp.int32), share


def train_step(state, batch: Mapping[str, jax.Array], *, model, task_loss, tx: optax.GradientTransformation,
               loss_cfg, schedule):
    """One semi-supervised step: ``batch`` holds the labelled 'image' [b, h, w, 3] and 'label' [b, h, w],
    and the unlabelled 'u_weak', 'u_strong' [u, h, w, 3] and 'u_face' [u, h, w]."""
    teacher_out = model.apply({"params": state.teacher["params"], "batch_stats": state.teacher["batch_stats"]},
                              batch["u_weak"], train=False)
    teacher_main = teacher_out[0] if isinstance(teacher_out, tuple) else teacher_out
    targets, share = pseudo_labels(jax.lax.stop_gradient(teacher_main), batch["u_face"], loss_cfg.confidence,
                                   loss_cfg.ignore_index)
    n = batch["image"].shape[0]
    weight = loss_cfg.unlabelled_weight * rampup(state.step, loss_cfg.rampup_steps)

    def loss_fn(params):
        both = jnp.concatenate([batch["image"], batch["u_strong"]], axis=0)
        outputs, updated = model.apply({"params": params, "batch_stats": state.batch_stats}, both, train=True,
                                       mutable=["batch_stats"])
        main = outputs[0] if isinstance(outputs, tuple) else outputs
        labelled = jax.tree_util.tree_map(lambda o: o[:n], outputs)
        sup, parts = task_loss(labelled, batch, loss_cfg)
        unsup = pseudo_label_loss(main[n:], targets, ignore_index=loss_cfg.ignore_index,
                                  class_balanced=bool(loss_cfg.get("class_balanced", False)))
        return sup + weight * unsup, ({**parts, "loss_labelled": sup, "loss_unlabelled": unsup},
                                      updated.get("batch_stats", {}))

    (total, (parts, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    d = ema_decay(state.step, loss_cfg.ema_decay)
    ema = lambda t, s: jax.tree_util.tree_map(lambda a, b: d * a + (1.0 - d) * b, t, s)  # noqa: E731
    teacher = {"params": ema(state.teacher["params"], params),
               "batch_stats": ema(state.teacher["batch_stats"], batch_stats)}
    out = {"loss": total, **parts, "confident_share": share, "unlabelled_weight": weight,
           "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                         teacher=teacher), out
