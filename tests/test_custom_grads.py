"""The hand-written gradients of vitijax.models.custom_grads and losses.pick_class against autodiff
of the plain formulas (float32) and against float64 numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vitijax.losses import pick_class
from vitijax.models.custom_grads import batch_norm_train, conv3x3_stride2


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def conv_autodiff(x, k):
    return lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv_numpy_input_grad(g, k, h, w):
    """dx of y[i, j] = sum x[2i+u-1, 2j+v-1] k[u, v] (zero padding), by scattering every term: [b, h, w, ci]."""
    g, k = np.asarray(g, np.float64), np.asarray(k, np.float64)
    b, ho, wo, _ = g.shape
    dx = np.zeros((b, h + 2, w + 2, k.shape[2]))
    for u in range(3):
        for v in range(3):
            dx[:, u:u + 2 * ho:2, v:v + 2 * wo:2] += g @ k[u, v].T
    return dx[:, 1:h + 1, 1:w + 1]


@pytest.mark.parametrize("shape", [(2, 16, 16, 5), (1, 15, 13, 3), (1, 2, 2, 4)])
def test_stride2_conv_forward_and_gradients(shape):
    r = np.random.default_rng(0)
    x = jnp.asarray(r.standard_normal(shape), jnp.float32)
    k = jnp.asarray(r.standard_normal((3, 3, shape[-1], 7)), jnp.float32)
    y, vjp = jax.vjp(conv3x3_stride2, x, k)
    y_ref, vjp_ref = jax.vjp(conv_autodiff, x, k)
    assert y.shape == (shape[0], -(-shape[1] // 2), -(-shape[2] // 2), 7)
    np.testing.assert_array_equal(y, y_ref)  # the forward is the same convolution, bit for bit
    g = jnp.asarray(r.standard_normal(y.shape), jnp.float32)
    (dx, dk), (dx_ref, dk_ref) = vjp(g), vjp_ref(g)
    assert rel(dx, conv_numpy_input_grad(g, k, *shape[1:3])) < 1e-6
    assert rel(dx, dx_ref) < 1e-6
    np.testing.assert_array_equal(dk, dk_ref)  # the weight gradient is autodiff's own


def bn_autodiff(x, scale, bias, eps):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    return (x - mean) * (scale * lax.rsqrt(var + eps)) + bias, mean, var


def test_batch_norm_statistics_and_output_against_float64():
    r = np.random.default_rng(1)
    x = (r.standard_normal((4, 32, 32, 6)) * 3 + 5).astype(np.float32)
    scale, bias = r.random(6).astype(np.float32) + 0.5, r.random(6).astype(np.float32)
    y, mean, var = batch_norm_train(jnp.asarray(x), jnp.asarray(scale), jnp.asarray(bias), 1e-5)
    x64 = x.astype(np.float64)
    m64, v64 = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
    assert rel(mean, m64) < 1e-6 and rel(var, v64) < 1e-5
    assert rel(y, (x64 - m64) / np.sqrt(v64 + 1e-5) * scale + bias) < 1e-5


def test_batch_norm_gradients_equal_autodiff_for_every_output():
    r = np.random.default_rng(2)
    x = jnp.asarray(r.standard_normal((2, 8, 8, 4)) * 3 + 1, jnp.float32)
    scale, bias = jnp.asarray(r.random(4) + 0.5, jnp.float32), jnp.asarray(r.random(4), jnp.float32)
    outs, vjp = jax.vjp(lambda *a: batch_norm_train(*a, 1e-5), x, scale, bias)
    outs_ref, vjp_ref = jax.vjp(lambda *a: bn_autodiff(*a, 1e-5), x, scale, bias)
    for o, o_ref in zip(outs, outs_ref):
        assert rel(o, o_ref) < 1e-6
    # Cotangents on y alone (the network's case: mean and var feed only the running statistics) and
    # on all three outputs.
    g = jnp.asarray(r.standard_normal(x.shape), jnp.float32)
    for cts in [(g, jnp.zeros(4), jnp.zeros(4)),
                (g, jnp.asarray(r.standard_normal(4), jnp.float32), jnp.asarray(r.standard_normal(4), jnp.float32))]:
        for got, want in zip(vjp(cts), vjp_ref(cts)):
            assert rel(got, want) < 1e-5


def test_pick_class_equals_take_along_axis_with_its_gradient():
    r = np.random.default_rng(3)
    values = jnp.asarray(r.standard_normal((2, 5, 5, 3)), jnp.float32).at[0, 0, 0, 2].set(-jnp.inf)
    target = jnp.asarray(r.integers(0, 3, (2, 5, 5)), jnp.int32).at[0, 0, 0].set(1)
    want = jnp.take_along_axis(values, target[..., None], axis=-1)[..., 0]
    np.testing.assert_array_equal(pick_class(values, target), want)  # a -inf elsewhere does not leak
    w = jnp.asarray(r.standard_normal(target.shape), jnp.float32)
    finite = jnp.where(jnp.isfinite(values), values, 0.0)
    np.testing.assert_array_equal(
        jax.grad(lambda v: jnp.sum(pick_class(v, target) * w))(finite),
        jax.grad(lambda v: jnp.sum(jnp.take_along_axis(v, target[..., None], axis=-1)[..., 0] * w))(finite))
