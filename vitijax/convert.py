"""Official PyTorch DDRNet state dicts <-> vitijax Flax variables.

The Flax module tree mirrors the official one, so the mapping is a table built
from the model itself (:func:`torch_key_table`): each official key
``<module path>.<leaf>`` corresponds to the Flax path ``module/path/leaf`` with
four leaf renames and one transpose:

=========================  ===================================  ==================
official (PyTorch)         Flax                                 layout
=========================  ===================================  ==================
conv ``weight``            ``params/.../kernel``                OIHW <-> HWIO
conv ``bias``              ``params/.../bias``
BN ``weight`` / ``bias``   ``params/.../scale`` / ``bias``
BN ``running_mean/var``    ``batch_stats/.../mean`` / ``var``
BN ``num_batches_tracked`` (not kept; written as 0 on export)
=========================  ===================================  ==================

Loading is strict by default: a missing, unexpected or misshapen key is a
``CheckpointMismatch`` that names the key. Two deliberate relaxations, both
reported key by key through ``logging`` (never silent):

* ``reinit_classifier=True`` drops only the two classifier convs
  (``final_layer.conv2.*``, ``seghead_extra.conv2.*``) so a 19-class Cityscapes
  checkpoint starts a 2-class model;
* ``partial=True`` loads every key that matches by name and shape and starts the
  rest fresh: for the official ImageNet-pretrained backbones, which lack DAPPM
  and the heads and carry an ImageNet classifier.

A ``module.`` (DDP) or ``model.`` (some official releases) prefix on every key
is stripped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from vitijax.models.ddrnet import DDRNet, init_variables, variable_shapes

log = logging.getLogger(__name__)

StateDict = Mapping[str, np.ndarray]

CLASSIFIER_PREFIXES = ("final_layer.conv2.", "seghead_extra.conv2.")
_STRIPPABLE_PREFIXES = ("module.", "model.")


class CheckpointMismatch(ValueError):
    """A checkpoint does not fit the model; the message names each offending key."""


@dataclasses.dataclass(frozen=True)
class TableEntry:
    """Where one official key lives in the Flax variables."""

    collection: str  # "params" or "batch_stats"; "" for num_batches_tracked (not stored)
    path: tuple[str, ...]
    is_conv_kernel: bool
    shape: tuple[int, ...]  # the official (PyTorch-layout) shape


def torch_key_table(variables_shapes: Mapping[str, Any]) -> dict[str, TableEntry]:
    """The official ``state_dict`` key of every Flax variable, built from the model's own tree.

    ``variables_shapes`` is the (abstract) variables tree of a DDRNet, e.g.
    :func:`vitijax.models.ddrnet.variable_shapes`. Keys come out in a stable order.
    """
    table: dict[str, TableEntry] = {}
    params = traverse_util.flatten_dict(variables_shapes["params"])
    stats = traverse_util.flatten_dict(variables_shapes.get("batch_stats", {}))
    for path, leaf in params.items():
        module, name = path[:-1], path[-1]
        prefix = ".".join(module)
        shape = tuple(leaf.shape)
        if name == "kernel":  # HWIO -> OIHW
            table[f"{prefix}.weight"] = TableEntry("params", path, True, (shape[3], shape[2], shape[0], shape[1]))
        elif name == "scale":
            table[f"{prefix}.weight"] = TableEntry("params", path, False, shape)
        elif name == "bias":
            table[f"{prefix}.bias"] = TableEntry("params", path, False, shape)
        else:
            raise AssertionError(f"unexpected parameter {'/'.join(path)}")
        if name == "scale":  # a BatchNorm: its buffers follow its weight and bias, as in PyTorch
            table[f"{prefix}.running_mean"] = TableEntry("batch_stats", (*module, "mean"), False, shape)
            table[f"{prefix}.running_var"] = TableEntry("batch_stats", (*module, "var"), False, shape)
            table[f"{prefix}.num_batches_tracked"] = TableEntry("", (), False, ())
    n_bn = sum(1 for k in table if k.endswith(".running_mean"))
    assert n_bn == len(stats) // 2, "every BatchNorm must have mean and var"
    return table


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a state dict from ``.pth``/``.pt``, ``.npz`` or ``.safetensors`` into numpy arrays.

    ``.pth`` needs PyTorch and is read with ``torch.load(weights_only=True)``,
    which refuses arbitrary pickled objects. A checkpoint that wraps its weights
    (``{'state_dict': ...}`` or ``{'model': ...}``) is unwrapped.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pth", ".pt", ".bin"):
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"{path}: reading a PyTorch checkpoint needs torch (pip install 'vitijax[torch]'), "
                "or convert it to .safetensors or .npz first") from e
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for corrupt or unsafe files
            raise CheckpointMismatch(f"{path}: not a readable weights-only PyTorch checkpoint ({e})") from e
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
                obj = obj[wrapper]
        if not isinstance(obj, dict):
            raise CheckpointMismatch(f"{path}: holds a {type(obj).__name__}, not a state dict")
        return {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v) for k, v in obj.items()}
    if ext == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:
            raise CheckpointMismatch(f"{path}: not a readable .npz file ({e})") from e
    if ext == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except Exception as e:
            raise CheckpointMismatch(f"{path}: not a readable .safetensors file ({e})") from e
    raise CheckpointMismatch(f"{path}: unknown checkpoint format {ext!r}; use .pth, .npz or .safetensors")


def save_state_dict(state_dict: StateDict, path: str | os.PathLike) -> None:
    """Writes a state dict as ``.pth`` (needs torch), ``.npz`` or ``.safetensors``."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    if ext in (".pth", ".pt"):
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    elif ext == ".npz":
        np.savez(path, **arrays)
    elif ext == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, path)
    else:
        raise ValueError(f"{path}: unknown state-dict format {ext!r}; use .pth, .npz or .safetensors")


def _strip_prefixes(state_dict: StateDict) -> dict[str, np.ndarray]:
    sd = dict(state_dict)
    for prefix in _STRIPPABLE_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def infer_model(state_dict: StateDict) -> tuple[int | None, bool]:
    """(num_classes, has aux head) read off an official segmentation state dict."""
    sd = _strip_prefixes(state_dict)
    w = sd.get("final_layer.conv2.weight")
    return (None if w is None else int(np.shape(w)[0])), any(k.startswith("seghead_extra.") for k in sd)


def ddrnet_variables_from_torch(
    state_dict: StateDict | str | os.PathLike,
    variant: str,
    *,
    num_classes: int | None = None,
    aux_head: bool | None = None,
    reinit_classifier: bool = False,
    partial: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Flax variables ``{'params', 'batch_stats'}`` of ``DDRNet(variant, ...)`` from an official state dict.

    Args:
      state_dict: key -> array (numpy or anything ``np.asarray`` takes), or a
        path to ``.pth``/``.npz``/``.safetensors``.
      variant: "23-slim", "23" or "39".
      num_classes, aux_head: the model to build; by default read off the
        checkpoint (its classifier's output channels; whether it has
        ``seghead_extra``).
      reinit_classifier: start the classifier convs fresh (e.g. 19 -> 2 classes).
      partial: load what matches by name and shape, start the rest fresh.
      seed: PRNG seed of the fresh layers.

    Raises:
      CheckpointMismatch: naming each missing, unexpected or misshapen key.
    """
    source = os.fspath(state_dict) if isinstance(state_dict, (str, os.PathLike)) else "state dict"
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = load_state_dict(state_dict)
    sd = _strip_prefixes(state_dict)
    ckpt_classes, ckpt_aux = infer_model(sd)
    if num_classes is None:
        if ckpt_classes is None:
            raise CheckpointMismatch(
                f"{source}: has no final_layer.conv2.weight, so the class count is unknown; pass num_classes")
        num_classes = ckpt_classes
    aux_head = ckpt_aux if aux_head is None else aux_head
    model = DDRNet(variant=variant, num_classes=num_classes, aux_head=aux_head)
    table = torch_key_table(variable_shapes(model))

    dropped = [k for k in sd if reinit_classifier and k.startswith(CLASSIFIER_PREFIXES)]
    candidates = {k: v for k, v in sd.items() if k not in dropped}
    unexpected = [k for k in candidates if k not in table]
    missing = [k for k, e in table.items() if e.collection and k not in candidates
               and not (reinit_classifier and k.startswith(CLASSIFIER_PREFIXES))]
    misshapen = [k for k, v in candidates.items()
                 if k in table and table[k].collection and tuple(np.shape(v)) != table[k].shape]
    if not partial and (unexpected or missing or misshapen):
        lines = [f"{source} does not fit DDRNet-{variant} (num_classes={num_classes}, aux_head={aux_head}):"]
        lines += [f"  misshapen key {k}: checkpoint {tuple(np.shape(candidates[k]))}, model {table[k].shape}"
                  for k in misshapen]
        lines += [f"  missing key {k}" for k in missing]
        lines += [f"  unexpected key {k}" for k in unexpected]
        if misshapen and all(k.startswith(CLASSIFIER_PREFIXES) for k in misshapen):
            lines.append("  (only the classifier differs: reinit_classifier / --reinit-classifier starts it fresh)")
        raise CheckpointMismatch("\n".join(lines))

    loaded = [k for k, e in table.items() if e.collection and k in candidates and k not in misshapen]
    fresh = [k for k, e in table.items() if e.collection and k not in loaded]
    flat: dict[tuple[str, ...], Any] = {}
    if fresh:
        init = init_variables(model, jax.random.key(seed))
        flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(init)).items()}
    for k in loaded:
        e = table[k]
        v = np.asarray(candidates[k], dtype=np.float32)
        flat[(e.collection, *e.path)] = v.transpose(2, 3, 1, 0) if e.is_conv_kernel else v
    if fresh or dropped or (partial and (unexpected or misshapen)):
        skipped = sorted(set(dropped) | set(unexpected) | set(misshapen))
        skipped = [k for k in skipped if not k.endswith("num_batches_tracked")]
        log.warning(
            "%s -> DDRNet-%s (num_classes=%d, aux_head=%s): loaded %d tensors; skipped %d checkpoint keys: %s; "
            "%d model tensors start fresh (seed %d): %s", source, variant, num_classes, aux_head, len(loaded),
            len(skipped), ", ".join(skipped) or "none", len(fresh), seed, ", ".join(fresh) or "none")
    return traverse_util.unflatten_dict(flat)


def ddrnet_state_dict_from_variables(variables: Mapping[str, Any], variant: str | None = None) -> dict[str, np.ndarray]:
    """The official-named PyTorch state dict (numpy, OIHW) of Flax DDRNet variables.

    ``num_batches_tracked`` is written as int64 0 (vitijax does not count BN
    updates; PyTorch uses it only when BN momentum is None). With ``variant``,
    the variables are first checked against that variant's table.
    """
    variables = jax.device_get(variables)
    table = torch_key_table(variables)
    if variant is not None:
        num_classes = table["final_layer.conv2.bias"].shape[0]
        aux_head = "seghead_extra.conv2.bias" in table
        expected = torch_key_table(variable_shapes(DDRNet(variant, num_classes, aux_head)))
        bad = [f"  {k}: variables {table[k].shape if k in table else 'absent'}, "
               f"DDRNet-{variant} {expected[k].shape if k in expected else 'absent'}"
               for k in sorted(set(table) | set(expected))
               if k not in table or k not in expected or table[k].shape != expected[k].shape]
        if bad:
            raise CheckpointMismatch(f"variables are not DDRNet-{variant}:\n" + "\n".join(bad))
    out: dict[str, np.ndarray] = {}
    for key, e in table.items():
        if not e.collection:
            out[key] = np.array(0, dtype=np.int64)
            continue
        v = np.asarray(_get(variables[e.collection], e.path))
        out[key] = np.ascontiguousarray(v.transpose(3, 2, 0, 1)) if e.is_conv_kernel else v
    return out


def _get(tree: Mapping[str, Any], path: tuple[str, ...]):
    for p in path:
        tree = tree[p]
    return tree
