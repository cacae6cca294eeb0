"""The paper's face-box network: RetinaFace's pretrained encoder with an MLP head that regresses one box.

RetinaFace finds faces by scoring thousands of anchors; on UV photos of
panfacial vitiligo its scores collapse (the pretrained model has never seen
depigmented skin under a Wood's lamp). The paper therefore fine-tunes a
regressor: the MobileNet-0.25 + FPN + SSH encoder of :mod:`retinaface`
(pretrained, same module names, so its weights load as a subtree copy) and a
small MLP that maps the three pyramid levels, each average-pooled to a
``pool x pool`` grid (position is kept: the grid cells are flattened, not
averaged away), to the face box of the one patient in the photo.

Input: [b, s, s, 3] float32, RetinaFace's normalisation (BGR minus
:data:`retinaface.MEAN_BGR`), the photo letterboxed into the square (see
:mod:`vitijax.data.pipeline`); ``s`` a multiple of ``32 * pool``.
Output: (boxes [b, 4] as (x0, y0, x1, y1), fractions of ``s``, x0 < x1 and
y0 < y1 by construction (centre and size through a sigmoid); face-presence
logits [b]). The box regressor always answers a box; the presence head (one
more dense layer on the same features, trained with binary cross-entropy on
photos with and without a face, :mod:`vitijax.data.no_face`) says whether
there is a face to box. ``sigmoid(logit)`` is the face-presence score that
``launch.analyze`` compares with the threshold stored in the model's meta.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitijax.models.retinaface import FPN, SSH, MobileNetV1


def _avg_pool_to(x, cells: int):
    """[b, h, w, c] -> [b, cells, cells, c] by averaging equal windows (h, w multiples of ``cells``)."""
    b, h, w, c = x.shape
    if h % cells or w % cells:
        raise ValueError(f"feature map {h}x{w} is not divisible into {cells}x{cells} cells: the input side "
                         f"must be a multiple of 32 x {cells}")
    return x.reshape(b, cells, h // cells, cells, w // cells, c).mean(axis=(2, 4))


class FaceBoxNet(nn.Module):
    """Encoder ``fx`` / ``fpn`` / ``ssh1..3`` (RetinaFace's names) + MLP ``head_0``, ``head_1`` (box) and
    ``presence`` (face-presence logit)."""

    pool: int = 5
    hidden: int = 256

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        del train  # no dropout or batch norm: the same function in training and inference
        feats = MobileNetV1(name="fx")(x)
        feats = FPN(name="fpn")(feats)
        feats = [SSH(name=f"ssh{i}")(f) for i, f in enumerate(feats, start=1)]
        h = jnp.concatenate([_avg_pool_to(f, self.pool).reshape(f.shape[0], -1) for f in feats], axis=-1)
        h = nn.leaky_relu(nn.Dense(self.hidden, name="head_0")(h), 0.1)
        # Zero-initialised output: every fresh model starts at the centred box of half the side,
        # a sane prior for a clinical photo, instead of a random one.
        raw = nn.Dense(4, kernel_init=nn.initializers.zeros, name="head_1")(h).astype(jnp.float32)
        centre = jax.nn.sigmoid(raw[:, :2])
        size = jax.nn.sigmoid(raw[:, 2:])
        presence = nn.Dense(1, name="presence")(h).astype(jnp.float32)[:, 0]
        return jnp.concatenate([centre - size / 2, centre + size / 2], axis=-1), presence


ENCODER_MODULES = ("fx", "fpn", "ssh1", "ssh2", "ssh3")


def with_pretrained_encoder(params: dict, retinaface_params: dict) -> dict:
    """``params`` of a :class:`FaceBoxNet` with the encoder replaced by RetinaFace's (shapes checked)."""
    out = dict(params)
    for name in ENCODER_MODULES:
        mine = jax.tree_util.tree_map(jnp.shape, params[name])
        theirs = jax.tree_util.tree_map(jnp.shape, retinaface_params[name])
        if mine != theirs:
            raise ValueError(f"RetinaFace encoder module {name} does not match the face-box network's")
        out[name] = retinaface_params[name]
    return out
