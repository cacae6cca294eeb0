"""DDRNet-23-slim / 23 / 39 and DDRNet's OHEM loss in PyTorch eager mode.

Written from the same reference facts as :mod:`vitijax.models.ddrnet` (the
official DDRNet's architecture and HRNet's ``OhemCrossEntropy``), not from
either project's code. It exists only so that ``python -m launch.benchmark``
can time a PyTorch row in the same run as the Flax model; nothing else in
vitijax uses it. torch is an optional dependency (the ``torch`` / ``test``
extras), so import this module only where torch is installed.

Sub-module names reproduce the official ``state_dict`` keys exactly
(``conv1.0.weight``, ``layer3_.0.bn1.running_var``, ``spp.scale1.1.weight``,
``final_layer.conv2.bias``, ...), so an official checkpoint loads with
``strict=True``.

Shapes are NCHW: input ``[b, 3, h, w]`` float32 with ``h`` and ``w``
multiples of 8; logits ``[b, num_classes, h/8, w/8]``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitijax.models.ddrnet import VARIANTS

BN_MOMENTUM = 0.1  # PyTorch convention: running = 0.9 * running + 0.1 * batch (the official value).


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=BN_MOMENTUM)  # eps 1e-5, the default


def _conv(cin: int, cout: int, k: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    # Symmetric padding k//2: a stride-2 conv gives ceil(h/2), as the official model.
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    """conv-BN (children ``0``, ``1``): ``downsample``, ``compression*``, ``down3*``."""
    return nn.Sequential(_conv(cin, cout, k, stride), _bn(cout))


def _bn_relu_conv(cin: int, cout: int, k: int, pool: nn.Module | None = None) -> nn.Sequential:
    """Pre-activation [pool-]BN-ReLU-conv (DAPPM's branches); the pool, when given, is child ``0``."""
    layers = [] if pool is None else [pool]
    return nn.Sequential(*layers, _bn(cin), nn.ReLU(), _conv(cin, cout, k))


def _up(x: torch.Tensor, size) -> torch.Tensor:
    # The official model's every upsampling: bilinear, align_corners unspecified = False.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN + residual, then ReLU unless ``no_relu``; [b, cin, h, w] ->
    [b, planes, h/stride, w/stride]."""

    expansion = 1
    default_no_relu = False

    def __init__(self, cin: int, planes: int, stride: int = 1, no_relu: bool = False):
        super().__init__()
        self.conv1 = _conv(cin, planes, 3, stride)
        self.bn1 = _bn(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = _bn(planes)
        cout = planes * self.expansion
        self.downsample = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        self.no_relu = no_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        return out if self.no_relu else F.relu(out)


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1-BN + residual (expansion 2); [b, cin, h, w] ->
    [b, 2 planes, h/stride, w/stride], no final ReLU by default."""

    expansion = 2
    default_no_relu = True

    def __init__(self, cin: int, planes: int, stride: int = 1, no_relu: bool = True):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = _conv(cin, planes, 1)
        self.bn1 = _bn(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = _bn(planes)
        self.conv3 = _conv(planes, cout, 1)
        self.bn3 = _bn(cout)
        self.downsample = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        self.no_relu = no_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        return out if self.no_relu else F.relu(out)


def _make_layer(block, cin: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """The official ``_make_layer``. The first block takes the stride and its class's default
    ``no_relu``; middle blocks end with ReLU; the last of several does not. So every stage output is
    pre-activation and the network applies ReLU before each consumer."""
    layers = [block(cin, planes, stride, block.default_no_relu)]
    cin = planes * block.expansion
    for i in range(1, blocks):
        layers.append(block(cin, planes, 1, no_relu=i == blocks - 1))
    return nn.Sequential(*layers)


class DAPPM(nn.Module):
    """Deep Aggregation Pyramid Pooling Module: [b, cin, h, w] -> [b, cout, h, w].

    AvgPool k=5/9/17, strides 2/4/8, padding k//2 with zeros counted in the divisor
    (``count_include_pad=True``, the default) plus a global pool; each scale is
    upsampled, added to the previous scale's output and refined by a 3x3 conv.
    """

    def __init__(self, cin: int, branch: int, cout: int):
        super().__init__()
        self.scale1 = _bn_relu_conv(cin, branch, 1, nn.AvgPool2d(5, 2, 2))
        self.scale2 = _bn_relu_conv(cin, branch, 1, nn.AvgPool2d(9, 4, 4))
        self.scale3 = _bn_relu_conv(cin, branch, 1, nn.AvgPool2d(17, 8, 8))
        self.scale4 = _bn_relu_conv(cin, branch, 1, nn.AdaptiveAvgPool2d((1, 1)))
        self.scale0 = _bn_relu_conv(cin, branch, 1)
        self.process1 = _bn_relu_conv(branch, branch, 3)
        self.process2 = _bn_relu_conv(branch, branch, 3)
        self.process3 = _bn_relu_conv(branch, branch, 3)
        self.process4 = _bn_relu_conv(branch, branch, 3)
        self.compression = _bn_relu_conv(5 * branch, cout, 1)
        self.shortcut = _bn_relu_conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        ys = [self.scale0(x)]
        for scale, process in ((self.scale1, self.process1), (self.scale2, self.process2),
                               (self.scale3, self.process3), (self.scale4, self.process4)):
            ys.append(process(_up(scale(x), size) + ys[-1]))
        return self.compression(torch.cat(ys, 1)) + self.shortcut(x)


class SegmentHead(nn.Module):
    """BN-ReLU-conv3x3(inter)-BN-ReLU-conv1x1(num_classes, bias): [b, cin, h, w] -> [b, nc, h, w]."""

    def __init__(self, cin: int, inter: int, num_classes: int):
        super().__init__()
        self.bn1 = _bn(cin)
        self.conv1 = _conv(cin, inter, 3)
        self.bn2 = _bn(inter)
        self.conv2 = _conv(inter, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.relu(self.bn1(x)))
        return self.conv2(F.relu(self.bn2(x)))


class DDRNet(nn.Module):
    """DDRNet ("23-slim", "23", "39"; "23-tiny" is vitijax's test width).

    ``forward(x)`` with x [b, 3, h, w] (h, w multiples of 8) returns logits
    [b, num_classes, h/8, w/8]: ``[main, aux]`` when ``aux_head`` else ``main``.
    """

    def __init__(self, variant: str = "23-slim", num_classes: int = 2, aux_head: bool = True):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown DDRNet variant {variant!r}; choose one of {sorted(VARIANTS)}")
        spec = VARIANTS[variant]
        p, hp = spec.planes, 2 * spec.planes
        l1, l2, l3, l4 = spec.layers
        self.split_stage3 = spec.split_stage3
        self.aux_head = aux_head

        # Registered in the official order, so that state_dict() lists the keys in the same order
        # (checked for the 23 family; DDRNet-39's is by analogy). Loading does not depend on it.
        self.conv1 = nn.Sequential(_conv(3, p, 3, 2, bias=True), _bn(p), nn.ReLU(),
                                   _conv(p, p, 3, 2, bias=True), _bn(p), nn.ReLU())
        self.layer1 = _make_layer(BasicBlock, p, p, l1)
        self.layer2 = _make_layer(BasicBlock, p, 2 * p, l2, stride=2)
        if spec.split_stage3:  # DDRNet-39: stage 3 in two halves, a bilateral fusion after each
            self.layer3_1 = _make_layer(BasicBlock, 2 * p, 4 * p, l3 // 2, stride=2)
            self.layer3_2 = _make_layer(BasicBlock, 4 * p, 4 * p, l3 // 2)
        else:
            self.layer3 = _make_layer(BasicBlock, 2 * p, 4 * p, l3, stride=2)
        self.layer4 = _make_layer(BasicBlock, 4 * p, 8 * p, l4, stride=2)
        if spec.split_stage3:
            self.compression3_1 = _conv_bn(4 * p, hp, 1)
            self.compression3_2 = _conv_bn(4 * p, hp, 1)
        else:
            self.compression3 = _conv_bn(4 * p, hp, 1)
        self.compression4 = _conv_bn(8 * p, hp, 1)
        if spec.split_stage3:
            self.down3_1 = _conv_bn(hp, 4 * p, 3, 2)
            self.down3_2 = _conv_bn(hp, 4 * p, 3, 2)
        else:
            self.down3 = _conv_bn(hp, 4 * p, 3, 2)
        self.down4 = nn.Sequential(_conv(hp, 4 * p, 3, 2), _bn(4 * p), nn.ReLU(),
                                   _conv(4 * p, 8 * p, 3, 2), _bn(8 * p))
        if spec.split_stage3:
            self.layer3_1_ = _make_layer(BasicBlock, 2 * p, hp, l3 // 2)
            self.layer3_2_ = _make_layer(BasicBlock, hp, hp, l3 // 2)
        else:
            self.layer3_ = _make_layer(BasicBlock, 2 * p, hp, l3)
        self.layer4_ = _make_layer(BasicBlock, hp, hp, l4)
        self.layer5_ = _make_layer(Bottleneck, hp, hp, 1)
        self.layer5 = _make_layer(Bottleneck, 8 * p, 8 * p, 1, stride=2)
        self.spp = DAPPM(16 * p, spec.spp_planes, 4 * p)
        if aux_head:
            self.seghead_extra = SegmentHead(hp, spec.head_planes, num_classes)
        self.final_layer = SegmentHead(4 * p, spec.head_planes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # Official init; conv biases (stem, classifiers) keep PyTorch's default.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _fuse(self, low, high, layer, layer_, down, compression, size):
        """One bilateral stage: low [b, c, h, w] and high [b, hp, H/8, W/8] (both pre-activation) ->
        the fused pair. Compression takes the context features before this stage's own addition."""
        low_pre = layer(F.relu(low))
        high = layer_(F.relu(high))
        low = low_pre + down(F.relu(high))
        high = high + _up(compression(F.relu(low_pre)), size)
        return low, high

    def forward(self, x: torch.Tensor):
        h, w = x.shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f"DDRNet input height and width must be multiples of 8, got {h}x{w}")
        size = (h // 8, w // 8)
        x = self.layer1(self.conv1(x))
        low = high = self.layer2(F.relu(x))
        if self.split_stage3:
            low, high = self._fuse(low, high, self.layer3_1, self.layer3_1_, self.down3_1,
                                   self.compression3_1, size)
            low, high = self._fuse(low, high, self.layer3_2, self.layer3_2_, self.down3_2,
                                   self.compression3_2, size)
        else:
            low, high = self._fuse(low, high, self.layer3, self.layer3_, self.down3, self.compression3, size)
        temp = high  # aux tap: the detail branch after the last stage-3 fusion
        low, high = self._fuse(low, high, self.layer4, self.layer4_, self.down4, self.compression4, size)
        high = self.layer5_(F.relu(high))
        low = _up(self.spp(self.layer5(F.relu(low))), size)
        main = self.final_layer(low + high)  # both pre-activation: the head starts with BN-ReLU
        if not self.aux_head:
            return main
        return [main, self.seghead_extra(temp)]


def ohem_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, thresh: float = 0.7,
                       min_kept: int = 100000, ignore_index: int = 255) -> torch.Tensor:
    """HRNet's ``OhemCrossEntropy`` of logits [b, c, h, w] against integer labels [b, H, W]; a scalar.

    Logits are upsampled bilinearly (align_corners=False) to the labels' size;
    over all valid pixels of the batch, ``threshold = max(sorted_p[min(min_kept,
    n_valid - 1)], thresh)`` with ``p`` the float32 softmax probability of the
    true class; the loss is the plain mean CE of valid pixels with
    ``p < threshold``. As the reference: NaN when nothing is kept, an
    IndexError when no pixel is valid.
    """
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = _up(logits, labels.shape[-2:])
    labels = labels.long()
    pixel_losses = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none").reshape(-1)
    valid = (labels != ignore_index).reshape(-1)
    with torch.no_grad():  # the selection carries no gradient
        target = torch.where(labels == ignore_index, torch.zeros_like(labels), labels)
        p = F.softmax(logits, dim=1).gather(1, target.unsqueeze(1)).reshape(-1)
        p_valid, _ = torch.sort(p[valid])
        min_value = p_valid[min(max(1, min_kept), p_valid.numel() - 1)]
        threshold = max(float(min_value), thresh)  # a host sync, as in the reference's max(tensor, float)
        kept = valid & (p < threshold)
    return pixel_losses[kept].mean()


def ddrnet_loss(outputs, labels: torch.Tensor, aux_weight: float = 0.4, **kw) -> torch.Tensor:
    """DDRNet's loss OHEM(main) + aux_weight * OHEM(aux) on ``[main, aux]`` (or ``main`` alone)."""
    if isinstance(outputs, (list, tuple)):
        main, aux = outputs
        return ohem_cross_entropy(main, labels, **kw) + aux_weight * ohem_cross_entropy(aux, labels, **kw)
    return ohem_cross_entropy(outputs, labels, **kw)


def train_step_fn(model: nn.Module, optimizer: torch.optim.Optimizer,
                  **loss_kw) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """``step(images [b, 3, h, w], labels [b, h, w])`` -> loss float: one eager train step
    (train-mode forward, DDRNet loss, backward, optimizer step). The benchmark passes
    ``torch.optim.AdamW(model.parameters())``, matching vitijax's optimizer default."""

    def step(images: torch.Tensor, labels: torch.Tensor) -> float:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = ddrnet_loss(model(images), labels, **loss_kw)
        loss.backward()
        optimizer.step()
        return loss.item()  # .item() synchronises, so a timed step includes the device work

    return step
