"""DDRNet-23-slim, DDRNet-23 and DDRNet-39 (Hong et al. 2021) in Flax linen.

A reimplementation from the facts in the official DDRNet's segmentation models:
a high-resolution (1/8) detail branch beside a low-resolution context branch,
bilateral fusion after stage 3 (twice in DDRNet-39) and after stage 4, a
Bottleneck stage 5 on both branches, DAPPM on the context branch, and two
segmentation heads (main, and the auxiliary head on the detail branch).

Sub-module names mirror the official PyTorch ``state_dict`` (``conv1/0``,
``layer3_/1/bn2``, ``spp/scale1/3``, ``final_layer/conv2`` ...), so that the
converter in :mod:`vitijax.convert` is a table of leaf renames, not a puzzle.

Shapes: input ``[b, h, w, 3]`` float, ``h`` and ``w`` multiples of 8; outputs
``[b, h/8, w/8, num_classes]`` float32 logits. Batch norm follows PyTorch:
momentum 0.1, eps 1e-5, running variance updated with the unbiased batch
variance; in ``train=True`` mode the batch statistics are those of the whole
(global) batch, so under ``jax.jit`` over a device mesh it is synchronised BN.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vitijax.models import custom_grads
from vitijax.resize import resize_bilinear

Dtype = Any


@dataclasses.dataclass(frozen=True)
class DDRNetSpec:
    """Constructor arguments of an official variant (reference README, variants table)."""

    layers: tuple[int, int, int, int]
    planes: int
    spp_planes: int
    head_planes: int
    split_stage3: bool  # DDRNet-39 splits stage 3 into 3_1 and 3_2, with a fusion after each.


VARIANTS: dict[str, DDRNetSpec] = {
    "23-slim": DDRNetSpec((2, 2, 2, 2), planes=32, spp_planes=128, head_planes=64, split_stage3=False),
    "23": DDRNetSpec((2, 2, 2, 2), planes=64, spp_planes=128, head_planes=128, split_stage3=False),
    "39": DDRNetSpec((3, 4, 6, 3), planes=64, spp_planes=128, head_planes=256, split_stage3=True),
    # Not an official variant: DDRNet-23's architecture at 1/4 of the slim width, for unit tests
    # and quick CPU checks. Everything but the widths is the real network.
    "23-tiny": DDRNetSpec((2, 2, 2, 2), planes=8, spp_planes=16, head_planes=16, split_stage3=False),
}

# PyTorch's kaiming_normal_(mode='fan_out', nonlinearity='relu'): an untruncated
# normal with variance 2 / (out_channels * kh * kw).
_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _torch_bias_init(fan_in: int):
    """PyTorch's default conv bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _conv(x, features: int, kernel: int, stride: int = 1, *, bias: bool = False,
          name: str, dtype: Dtype) -> jax.Array:
    """A PyTorch-style conv: symmetric padding kernel//2, so stride 2 gives ceil(h/2)."""
    pad = kernel // 2
    fan_in = x.shape[-1] * kernel * kernel
    if kernel == 3 and stride == 2:
        return _Conv3x3Stride2(features, bias, fan_in, dtype, name=name)(x)
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        use_bias=bias, kernel_init=_kaiming_fan_out, bias_init=_torch_bias_init(fan_in),
        dtype=dtype, param_dtype=jnp.float32, name=name)(x)


class _Conv3x3Stride2(nn.Module):
    """``nn.Conv`` with kernel 3, stride 2, padding 1: the same parameters and forward, with the input
    gradient that XLA CPU runs faster (:func:`vitijax.models.custom_grads.conv3x3_stride2`)."""

    features: int
    bias: bool
    fan_in: int
    dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", _kaiming_fan_out, (3, 3, x.shape[-1], self.features), jnp.float32)
        y = custom_grads.conv3x3_stride2(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.bias:
            y = y + self.param("bias", _torch_bias_init(self.fan_in), (self.features,), jnp.float32).astype(self.dtype)
        return y


class BatchNorm(nn.Module):
    """Batch norm over the last axis with PyTorch's semantics.

    Params ``scale`` and ``bias``; ``batch_stats`` ``mean`` and ``var``. Training
    normalises with the biased batch variance and updates ``var`` with the
    unbiased one (as ``torch.nn.BatchNorm2d``; Flax's own BatchNorm uses the
    biased one there). Statistics are computed in float32 whatever ``dtype``.
    """

    momentum: float = 0.1  # PyTorch convention: new = (1 - m) * old + m * batch.
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        xf = x.astype(jnp.float32)
        if train:
            # Two-pass variance, as PyTorch; the gradient is the textbook one (custom_grads).
            y, mean, var = custom_grads.batch_norm_train(xf, scale, bias, self.epsilon)
            if not self.is_initializing():
                n = x.size // c
                m = self.momentum
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = (1 - m) * ra_mean.value + m * lax.stop_gradient(mean)
                ra_var.value = (1 - m) * ra_var.value + m * lax.stop_gradient(unbiased)
        else:
            y = (xf - ra_mean.value) * (scale * lax.rsqrt(ra_var.value + self.epsilon)) + bias
        return y.astype(self.dtype)


class ConvBNSequence(nn.Module):
    """conv-BN(-ReLU) repeated; children named as the official ``nn.Sequential``.

    ``convs`` lists (features, kernel, stride); conv i is child ``3i``, its BN
    ``3i+1`` and the ReLU (no parameters) ``3i+2``. The ReLU after the last BN
    is applied only with ``final_relu``. Serves the stem ``conv1`` (with conv
    biases), ``compression*``, ``down*`` and the blocks' ``downsample``.
    """

    convs: Sequence[tuple[int, int, int]]
    bias: bool = False
    final_relu: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        for i, (features, kernel, stride) in enumerate(self.convs):
            x = _conv(x, features, kernel, stride, bias=self.bias, name=str(3 * i), dtype=self.dtype)
            x = BatchNorm(dtype=self.dtype, name=str(3 * i + 1))(x, train=train)
            if i < len(self.convs) - 1 or self.final_relu:
                x = nn.relu(x)
        return x


class BNReLUConv(nn.Module):
    """Pre-activation BN-ReLU-conv (DAPPM's branches); children ``offset`` and ``offset+2``.

    ``offset`` is 1 where the official Sequential starts with a pooling layer.
    """

    features: int
    kernel: int
    offset: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = nn.relu(BatchNorm(dtype=self.dtype, name=str(self.offset))(x, train=train))
        return _conv(x, self.features, self.kernel, name=str(self.offset + 2), dtype=self.dtype)


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN + residual, then ReLU unless ``no_relu``."""

    planes: int
    stride: int = 1
    no_relu: bool = False
    dtype: Dtype = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out = _conv(x, self.planes, 3, self.stride, name="conv1", dtype=self.dtype)
        out = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(out, train=train))
        out = _conv(out, self.planes, 3, name="conv2", dtype=self.dtype)
        out = BatchNorm(dtype=self.dtype, name="bn2")(out, train=train)
        out = out + _residual(x, self.planes * self.expansion, self.stride, train, self.dtype)
        return out if self.no_relu else nn.relu(out)


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(2x planes)-BN + residual."""

    planes: int
    stride: int = 1
    no_relu: bool = True
    dtype: Dtype = jnp.float32
    expansion = 2

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out = _conv(x, self.planes, 1, name="conv1", dtype=self.dtype)
        out = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(out, train=train))
        out = _conv(out, self.planes, 3, self.stride, name="conv2", dtype=self.dtype)
        out = nn.relu(BatchNorm(dtype=self.dtype, name="bn2")(out, train=train))
        out = _conv(out, self.planes * self.expansion, 1, name="conv3", dtype=self.dtype)
        out = BatchNorm(dtype=self.dtype, name="bn3")(out, train=train)
        out = out + _residual(x, self.planes * self.expansion, self.stride, train, self.dtype)
        return out if self.no_relu else nn.relu(out)


def _residual(x, out_features: int, stride: int, train: bool, dtype: Dtype) -> jax.Array:
    """Identity, or the official ``downsample`` (conv1x1(stride)+BN) when the shape changes.

    Called inside a block's compact method, so the ``downsample`` module is the block's child.
    """
    if stride == 1 and x.shape[-1] == out_features:
        return x
    return ConvBNSequence(((out_features, 1, stride),), dtype=dtype, name="downsample")(x, train=train)


class Stage(nn.Module):
    """The official ``_make_layer``: ``blocks`` blocks, children ``0`` .. ``blocks-1``.

    The first block takes the stride (and a downsample) and its class's default
    ``no_relu`` (False for BasicBlock, True for Bottleneck); middle blocks end
    with ReLU; the last of several does not. So every stage output is
    pre-activation, and the network applies ReLU before each consumer.
    """

    block: str  # "basic" or "bottleneck"
    planes: int
    blocks: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[self.block]
        for i in range(self.blocks):
            if i == 0:
                no_relu = cls.no_relu  # the dataclass default of the block class
                stride = self.stride
            else:
                no_relu = i == self.blocks - 1
                stride = 1
            x = cls(self.planes, stride, no_relu, dtype=self.dtype, name=str(i))(x, train=train)
        return x


class DAPPM(nn.Module):
    """Deep Aggregation Pyramid Pooling Module on ``[b, h, w, c]``; output ``out_planes`` channels.

    Average pools k=5/9/17 (strides 2/4/8, padding k//2, zeros counted in the
    divisor) and a global pool; each scale is upsampled to h x w, added to the
    previous scale's output and refined by a 3x3 conv; the five are
    concatenated, compressed by 1x1 and added to a 1x1 shortcut.
    """

    branch_planes: int
    out_planes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        h, w = x.shape[1:3]
        bp, dt = self.branch_planes, self.dtype
        ys = [BNReLUConv(bp, 1, 0, dt, name="scale0")(x, train=train)]
        for i, (k, s) in enumerate(((5, 2), (9, 4), (17, 8)), start=1):
            pad = k // 2
            pooled = nn.avg_pool(x, (k, k), strides=(s, s), padding=((pad, pad), (pad, pad)),
                                 count_include_pad=True)
            scaled = BNReLUConv(bp, 1, 1, dt, name=f"scale{i}")(pooled, train=train)
            ys.append(BNReLUConv(bp, 3, 0, dt, name=f"process{i}")(
                resize_bilinear(scaled, (h, w)) + ys[-1], train=train))
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
        scaled = BNReLUConv(bp, 1, 1, dt, name="scale4")(pooled, train=train)
        ys.append(BNReLUConv(bp, 3, 0, dt, name="process4")(
            resize_bilinear(scaled, (h, w)) + ys[-1], train=train))
        out = BNReLUConv(self.out_planes, 1, 0, dt, name="compression")(
            jnp.concatenate(ys, axis=-1), train=train)
        return out + BNReLUConv(self.out_planes, 1, 0, dt, name="shortcut")(x, train=train)


class SegmentHead(nn.Module):
    """BN-ReLU-conv3x3(inter)-BN-ReLU-conv1x1(num_classes, bias); no upsampling inside."""

    inter_planes: int
    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, train=train))
        x = _conv(x, self.inter_planes, 3, name="conv1", dtype=self.dtype)
        x = nn.relu(BatchNorm(dtype=self.dtype, name="bn2")(x, train=train))
        return _conv(x, self.num_classes, 1, bias=True, name="conv2", dtype=self.dtype)


class DDRNet(nn.Module):
    """DDRNet for semantic segmentation.

    Attributes:
      variant: "23-slim", "23" or "39" (see ``VARIANTS``; "23-tiny" is a test size).
      num_classes: output channels of both heads.
      aux_head: also return the auxiliary head (``seghead_extra``) on the
        detail branch, tapped after the last stage-3 fusion (used only for the
        training loss; costs nothing at inference when off).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters and batch
        statistics stay float32 and logits come out float32.

    ``apply(variables, x, train=...)`` with ``x`` [b, h, w, 3], h and w
    multiples of 8, returns logits [b, h/8, w/8, num_classes]: ``(main, aux)``
    when ``aux_head`` else ``main``. With ``train=True`` pass
    ``mutable=["batch_stats"]``.
    """

    variant: str = "23-slim"
    num_classes: int = 2
    aux_head: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown DDRNet variant {self.variant!r}; choose one of {sorted(VARIANTS)}")
        spec = VARIANTS[self.variant]
        if x.ndim != 4:
            raise ValueError(f"DDRNet expects NHWC input [b, h, w, c], got shape {x.shape}")
        h, w = x.shape[1:3]
        if h % 8 or w % 8:
            raise ValueError(
                f"DDRNet input height and width must be multiples of 8, got {h}x{w} "
                f"(nearest valid: {h - h % 8 or 8}x{w - w % 8 or 8} or {h + (-h) % 8}x{w + (-w) % 8})")
        out_hw = (h // 8, w // 8)
        p, hp, dt = spec.planes, 2 * spec.planes, self.dtype
        relu = nn.relu

        x = ConvBNSequence(((p, 3, 2), (p, 3, 2)), bias=True, final_relu=True, dtype=dt,
                           name="conv1")(x.astype(dt), train=train)
        x = Stage("basic", p, spec.layers[0], 1, dt, name="layer1")(x, train=train)
        x = Stage("basic", 2 * p, spec.layers[1], 2, dt, name="layer2")(relu(x), train=train)
        low = high = x

        # Bilateral stages: (name suffix, context planes, blocks, stride, down convs).
        n3 = spec.layers[2]
        if spec.split_stage3:
            stage3 = [("3_1", 4 * p, n3 // 2, 2), ("3_2", 4 * p, n3 // 2, 1)]
        else:
            stage3 = [("3", 4 * p, n3, 2)]
        stages = [(sfx, planes, blocks, stride, ((4 * p, 3, 2),)) for sfx, planes, blocks, stride in stage3]
        stages.append(("4", 8 * p, spec.layers[3], 2, ((4 * p, 3, 2), (8 * p, 3, 2))))

        aux_input = None
        for i, (sfx, planes, blocks, stride, down) in enumerate(stages):
            low_pre = Stage("basic", planes, blocks, stride, dt, name=f"layer{sfx}")(relu(low), train=train)
            high = Stage("basic", hp, blocks, 1, dt, name=f"layer{sfx}_")(relu(high), train=train)
            # high -> low: strided 3x3 conv(s); low -> high: 1x1 conv + BN on the
            # context features *before* this stage's fusion, then bilinear upsampling.
            low = low_pre + ConvBNSequence(down, dtype=dt, name=f"down{sfx}")(relu(high), train=train)
            compressed = ConvBNSequence(((hp, 1, 1),), dtype=dt, name=f"compression{sfx}")(
                relu(low_pre), train=train)
            high = high + resize_bilinear(compressed, out_hw)
            if i == len(stage3) - 1:
                aux_input = high  # the official ``temp``: detail branch after the last stage-3 fusion

        high = Stage("bottleneck", hp, 1, 1, dt, name="layer5_")(relu(high), train=train)
        low = Stage("bottleneck", 8 * p, 1, 2, dt, name="layer5")(relu(low), train=train)
        low = DAPPM(spec.spp_planes, 4 * p, dt, name="spp")(low, train=train)
        main = SegmentHead(spec.head_planes, self.num_classes, dt, name="final_layer")(
            resize_bilinear(low, out_hw) + high, train=train).astype(jnp.float32)
        if not self.aux_head:
            return main
        aux = SegmentHead(spec.head_planes, self.num_classes, dt, name="seghead_extra")(
            aux_input, train=train).astype(jnp.float32)
        return main, aux


def init_variables(model: DDRNet, rng: jax.Array, input_hw: tuple[int, int] = (64, 64)):
    """Fresh variables ({'params', 'batch_stats'}) of ``model``; shapes do not depend on input_hw."""
    x = jnp.zeros((1, *input_hw, 3), jnp.float32)
    return jax.jit(lambda r: model.init(r, x, train=False))(rng)


def variable_shapes(model: DDRNet):
    """The variables' tree as ``jax.ShapeDtypeStruct`` leaves, without computing anything."""
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    return jax.eval_shape(lambda r, x: model.init(r, x, train=False), jax.random.key(0), x)


def count_params(params) -> int:
    """Number of trainable scalars (conv weights and biases, BN scale and bias)."""
    return int(sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(params)))
