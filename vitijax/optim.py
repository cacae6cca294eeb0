"""The optimiser: optax AdamW with the schedules DDRNet and the paper use.

Paper: AdamW, lr 1e-3, weight decay 0.01, 500 epochs (schedule unstated: we
default to constant, as PyTorch's AdamW without a scheduler). DDRNet's own
recipe uses a poly schedule (power 0.9). Weight decay applies to every
parameter by default, as ``torch.optim.AdamW(model.parameters())`` does;
``weight_decay_on="kernels"`` restricts it to conv kernels (no BN, no biases).
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax import traverse_util


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
    """``cfg``: lr, schedule ("constant" | "poly" | "cosine"), warmup_steps, poly_power, end_lr_factor."""
    warmup = int(cfg.get("warmup_steps", 0) or 0)
    decay_steps = max(1, total_steps - warmup)
    end = cfg.lr * float(cfg.get("end_lr_factor", 0.0))
    kind = cfg.get("schedule", "constant")
    if kind == "constant":
        main = optax.constant_schedule(cfg.lr)
    elif kind == "poly":
        main = optax.polynomial_schedule(cfg.lr, end, float(cfg.get("poly_power", 0.9)), decay_steps)
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=float(cfg.get("end_lr_factor", 0.0)))
    else:
        raise ValueError(f"unknown schedule {kind!r}: use constant, poly or cosine")
    if warmup:
        return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), main], [warmup])
    return main


def weight_decay_mask(params: Any, which: str) -> Any:
    """True where weight decay applies: "all" parameters or conv "kernels" only."""
    if which == "all":
        return jax.tree_util.tree_map(lambda _: True, params)
    if which == "kernels":
        flat = traverse_util.flatten_dict(params)
        return traverse_util.unflatten_dict({k: k[-1] == "kernel" for k in flat})
    raise ValueError(f"weight_decay_on must be 'all' or 'kernels', got {which!r}")


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(AdamW transformation, its learning-rate schedule), with optional global-norm clipping."""
    schedule = learning_rate_schedule(cfg, total_steps)
    which = cfg.get("weight_decay_on", "all")
    adamw = optax.adamw(schedule, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999), eps=cfg.get("eps", 1e-8),
                        weight_decay=cfg.weight_decay, mask=lambda p: weight_decay_mask(p, which))
    clip = cfg.get("grad_clip_norm")
    tx = optax.chain(optax.clip_by_global_norm(clip), adamw) if clip else adamw
    return tx, schedule
