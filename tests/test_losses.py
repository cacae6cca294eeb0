"""OHEM cross-entropy against the official reference and an independent numpy implementation."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitijax.convert import ddrnet_state_dict_from_variables, ddrnet_variables_from_torch
from vitijax.losses import ddrnet_loss, kth_smallest_nonnegative, ohem_cross_entropy
from vitijax.models.ddrnet import DDRNet


def numpy_ohem(logits_nhwc, labels, thresh, min_kept, ignore=255, weights=None):
    """HRNet's OhemCrossEntropy step by step in numpy (logits already at label size)."""
    x = logits_nhwc.astype(np.float32)
    e = np.exp(x - x.max(-1, keepdims=True))
    prob = (e / e.sum(-1, keepdims=True)).astype(np.float32)  # float32 softmax, as the reference
    logp = np.log(prob.astype(np.float64))
    lab = labels.reshape(-1)
    valid = lab != ignore
    tgt = np.where(valid, lab, 0)
    flat_logp = logp.reshape(-1, x.shape[-1])
    w = np.ones(x.shape[-1]) if weights is None else np.asarray(weights, np.float64)
    pixel = np.where(valid, -w[tgt] * flat_logp[np.arange(len(tgt)), tgt], 0.0)
    pred = prob.reshape(-1, x.shape[-1])[np.arange(len(tgt)), tgt][valid]
    if len(pred) == 0:
        return 0.0
    min_value = np.sort(pred)[min(max(1, min_kept), len(pred) - 1)]
    threshold = max(min_value, thresh)
    kept = pixel[valid][pred < threshold]
    return float(kept.mean()) if len(kept) else 0.0


@pytest.mark.parametrize("thresh,min_kept", [(0.7, 100), (0.7, 5000), (0.99, 50), (0.3, 10_000), (0.9, 1)])
def test_matches_numpy_on_random_batches(thresh, min_kept):
    r = np.random.default_rng(0)
    logits = r.normal(0, 2, (2, 24, 32, 3)).astype(np.float32)
    labels = r.integers(0, 3, (2, 24, 32))
    labels[r.random(labels.shape) < 0.1] = 255
    got = float(ohem_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), thresh=thresh, min_kept=min_kept))
    assert got == pytest.approx(numpy_ohem(logits, labels, thresh, min_kept), rel=1e-5)


def test_logits_are_upsampled_to_label_size_first():
    r = np.random.default_rng(1)
    logits = r.normal(0, 1, (1, 4, 4, 2)).astype(np.float32)
    labels = r.integers(0, 2, (1, 32, 32))
    got = ohem_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), thresh=0.7, min_kept=100)
    up = np.asarray(jax.image.resize(logits, (1, 32, 32, 2), "bilinear"))
    assert float(got) == pytest.approx(numpy_ohem(up, labels, 0.7, 100), rel=1e-5)


def test_class_weights_give_a_plain_mean_over_kept_pixels():
    r = np.random.default_rng(2)
    logits = r.normal(0, 1, (1, 16, 16, 3)).astype(np.float32)
    labels = r.integers(0, 3, (1, 16, 16))
    w = [0.5, 1.0, 2.0]
    got = float(ohem_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), thresh=0.7, min_kept=50,
                                   class_weights=w))
    assert got == pytest.approx(numpy_ohem(logits, labels, 0.7, 50, weights=w), rel=1e-5)


def test_ties_at_the_threshold_are_all_dropped():
    # 6 pixels with p(true) in {0.1, 0.2, 0.3, 0.3, 0.3, 0.8}; min_kept=2 -> threshold = max(0.3, 0.05)
    p = np.array([0.1, 0.2, 0.3, 0.3, 0.3, 0.8], np.float32)
    logits = np.stack([np.log(p), np.log(1 - p)], -1).reshape(1, 1, 6, 2)
    labels = np.zeros((1, 1, 6), np.int64)
    got = float(ohem_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), thresh=0.05, min_kept=2))
    assert got == pytest.approx(np.mean(-np.log([0.1, 0.2])), rel=1e-5)  # only p < 0.3: two pixels


def test_saturated_probabilities_tie_in_float32():
    # Large logits saturate p to exactly 1.0 in float32; all tie at the maximum and are dropped.
    logits = np.zeros((1, 1, 5, 2), np.float32)
    logits[..., 0] = [40, 50, 60, 2, 1]
    labels = np.zeros((1, 1, 5), np.int64)
    got = float(ohem_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), thresh=0.7, min_kept=10))
    want = numpy_ohem(logits, labels, 0.7, 10)
    assert got == pytest.approx(want, rel=1e-5)
    assert want == pytest.approx(np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(-1.0))]), rel=1e-5)


def test_min_kept_above_valid_count_drops_the_most_confident_pixel():
    p = np.array([0.6, 0.9, 0.95, 0.99], np.float32)
    logits = np.stack([np.log(p), np.log1p(-p)], -1).reshape(1, 1, 4, 2)
    labels = np.zeros((1, 1, 4), np.int64)
    got = float(ohem_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), thresh=0.7, min_kept=1000))
    assert got == pytest.approx(np.mean(-np.log(p[:3])), rel=1e-4)


def test_all_ignored_and_nothing_kept_give_zero_with_zero_gradient():
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(1, 8, 8, 2)).astype(np.float32))
    ignored = jnp.full((1, 8, 8), 255)
    loss, grad = jax.value_and_grad(lambda l: ohem_cross_entropy(l, ignored, min_kept=10))(logits)
    assert float(loss) == 0.0 and not np.any(np.asarray(grad))
    # One valid, confident pixel (p > thresh): it is the maximum, so it is dropped and nothing is
    # kept (the reference gives NaN).
    logits = logits.at[0, 3, 3].set(jnp.array([-5.0, 5.0]))
    one = ignored.at[0, 3, 3].set(1)
    loss, grad = jax.value_and_grad(lambda l: ohem_cross_entropy(l, one, min_kept=10))(logits)
    assert float(loss) == 0.0 and np.all(np.isfinite(grad)) and not np.any(np.asarray(grad))


def test_ddrnet_loss_weights_the_auxiliary_head():
    r = np.random.default_rng(4)
    main, aux = (jnp.asarray(r.normal(size=(1, 4, 4, 2)).astype(np.float32)) for _ in range(2))
    labels = jnp.asarray(r.integers(0, 2, (1, 32, 32)))
    total, parts = ddrnet_loss((main, aux), labels, aux_weight=0.25, thresh=0.7, min_kept=64)
    assert float(total) == pytest.approx(float(parts["loss_main"]) + 0.25 * float(parts["loss_aux"]), rel=1e-6)
    only, parts1 = ddrnet_loss(main, labels, thresh=0.7, min_kept=64)
    assert set(parts1) == {"loss_main"} and float(only) == pytest.approx(float(parts["loss_main"]))


def test_official_loss_and_gradients(reference_dir, reference):
    """OHEM(main) + 0.4 OHEM(aux) of a train-mode forward of the official weights, and its gradients.

    The gradients below DAPPM are ill-conditioned with these weights. In train mode DAPPM normalises a
    batch of two pooled maps, and with the official batch statistics a 1e-7 relative change of the input
    (below the float32 rounding of a photo) moves the total gradient norm between about 284.4 and 281.2
    and single tensors by up to 1.8 % (measured with jax 0.10.2, XLA's and YNNPACK's convolutions alike).
    So the heads, whose gradients do not pass back through DAPPM, are held to 1e-3, and everything else
    to 3e-2. Leaving OHEM out moves the gradients 15 %.
    """
    keys = json.loads((reference_dir / "ddrnet23slim_state_dict_shapes.json").read_text())
    v = ddrnet_variables_from_torch({k: reference[k] for k in keys}, "23-slim")
    model = DDRNet("23-slim", 2, aux_head=True)
    x = jnp.asarray(reference["input"].transpose(0, 2, 3, 1))
    y = jnp.asarray(reference["train/labels"].astype(np.int32))

    def loss_fn(params):
        out, _ = model.apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=True,
                             mutable=["batch_stats"])
        return ddrnet_loss(out, y, aux_weight=0.4, thresh=0.7, min_kept=100_000)

    (loss, parts), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(v["params"])
    assert float(loss) == pytest.approx(float(reference["train/loss"]), rel=1e-5)
    assert float(parts["loss_main"]) == pytest.approx(float(reference["train/loss_main"]), rel=1e-5)
    assert float(parts["loss_aux"]) == pytest.approx(float(reference["train/loss_aux"]), rel=1e-5)

    g = ddrnet_state_dict_from_variables({"params": grads, "batch_stats": v["batch_stats"]})
    names = [str(k) for k in reference["train/grad_norm_keys"]]
    norms = reference["train/grad_norms"]
    ours = np.array([np.linalg.norm(g[k]) for k in names])
    assert np.sqrt(np.sum(ours**2)) == pytest.approx(np.sqrt(np.sum(norms**2)), rel=2e-2)  # 284.36
    heads = np.array([n.startswith(("final_layer.", "seghead_extra.")) for n in names])
    # Biases of convs that feed a train-mode BN have zero gradient in exact arithmetic; the
    # reference's are float32 noise (norms 1e-8..1e-4), so they are compared absolutely.
    big = norms > 1e-3
    np.testing.assert_allclose(ours[big & heads], norms[big & heads], rtol=1e-3)
    np.testing.assert_allclose(ours[big & ~heads], norms[big & ~heads], rtol=3e-2)
    np.testing.assert_allclose(ours[~big], norms[~big], atol=1e-3)
    for k in ("final_layer.conv2.weight", "final_layer.conv2.bias", "seghead_extra.conv2.weight",
              "seghead_extra.conv2.bias"):
        np.testing.assert_allclose(g[k], reference[f"grad/{k}"], atol=1e-4 * np.abs(reference[f"grad/{k}"]).max())
    for k in ("conv1.0.weight", "spp.compression.2.weight", "layer3_.0.conv1.weight"):
        a, b = g[k].ravel(), reference[f"grad/{k}"].ravel()
        assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.999, k


def test_kth_smallest_equals_numpy_sort_bit_for_bit():
    r = np.random.default_rng(5)
    # Probabilities with exact zeros and ones, many ties, subnormals and the 2.0 fill of ignored pixels.
    x = np.concatenate([r.random(5000), np.zeros(40), np.ones(30), np.full(200, 0.5), np.full(70, 2.0),
                        np.array([1e-40, 1e-45, 3e-39]), r.random(100) ** 30]).astype(np.float32)
    r.shuffle(x)
    want = np.sort(x)
    f = jax.jit(kth_smallest_nonnegative)
    for k in [0, 1, 2, 3, 39, 40, 41, 45, 2500, 2600, 5000, x.size - 71, x.size - 70, x.size - 1]:
        got = np.asarray(f(jnp.asarray(x), k))
        assert got.tobytes() == want[k].tobytes(), (k, got, want[k])
    # Diverged logits give NaN probabilities: with either sign bit they sort last, as in np.sort, and
    # the finite order statistics are unchanged; -0.0 counts as 0.
    nan = np.concatenate([x[:3000], np.array([np.nan, -np.nan, -0.0, -0.0], np.float32)])
    want = np.sort(nan)
    assert np.isnan(nan[-4]) and np.isnan(nan[-3]) and np.signbit(nan[-3]) and np.signbit(nan[-1])
    for k in [0, 1, 20, 1500, nan.size - 5, nan.size - 3]:
        assert float(f(jnp.asarray(nan), k)) == want[k], k
    assert np.isnan(f(jnp.asarray(nan), nan.size - 1))
    assert float(f(jnp.full((50,), 0.25, jnp.float32), 17)) == 0.25
