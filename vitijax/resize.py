"""Bilinear resizing with PyTorch's ``align_corners=False`` semantics: on the device and on the host.

DDRNet upsamples everywhere with ``F.interpolate(mode='bilinear')`` and no
``align_corners``, i.e. half-pixel centres and clamped edges. ``jax.image.resize``
with the triangle kernel and no antialiasing computes exactly that for
upsampling (an out-of-range neighbour is dropped and the weights renormalised,
which equals clamping), and PyTorch's plain, non-antialiased interpolation for
downsampling. A 1x1 source (DAPPM's global pooling branch) is a broadcast.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Resizes ``x`` [b, h, w, c] to [b, size[0], size[1], c], bilinear, half-pixel.

    The dtype is kept; the arithmetic runs in ``x``'s dtype.
    """
    chex.assert_rank(x, 4)
    b, h, w, c = x.shape
    out_h, out_w = int(size[0]), int(size[1])
    if (h, w) == (out_h, out_w):
        return x
    if (h, w) == (1, 1):
        return jnp.broadcast_to(x, (b, out_h, out_w, c))
    return jax.image.resize(x, (b, out_h, out_w, c), method="bilinear", antialias=False)


def resize_host(a: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """[h, w, c] or [h, w] float -> [H, W(, c)] float32, bilinear with half-pixel centres, on the host
    (PIL, one channel at a time: a full-resolution crop's probabilities never exist as a float64 stack)."""
    h, w = size_hw
    if a.ndim == 2:
        return np.asarray(Image.fromarray(np.ascontiguousarray(a, np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    return np.stack([resize_host(a[..., k], size_hw) for k in range(a.shape[-1])], axis=-1)
