"""DDRNet structure: parameter counts, output shapes, BatchNorm and resize semantics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitijax.convert import torch_key_table
from vitijax.models.ddrnet import BatchNorm, BasicBlock, DDRNet, count_params, variable_shapes
from vitijax.resize import resize_bilinear

# The official model's model.parameters() counts (reference README, torch 2.13).
OFFICIAL_PARAM_COUNTS = {
    ("23-slim", 19, False): 5_695_987, ("23-slim", 19, True): 5_734_342,
    ("23-slim", 2, False): 5_694_882, ("23-slim", 2, True): 5_732_132,
    ("23", 19, False): 20_148_947, ("23", 19, True): 20_299_366,
    ("23", 2, False): 20_146_754, ("23", 2, True): 20_294_980,
    ("39", 19, False): 32_360_275, ("39", 19, True): 32_660_838,
    ("39", 2, False): 32_355_906, ("39", 2, True): 32_652_100,
}


@pytest.mark.parametrize("variant,num_classes,aux", sorted(OFFICIAL_PARAM_COUNTS))
def test_parameter_count_equals_official(variant, num_classes, aux):
    shapes = variable_shapes(DDRNet(variant, num_classes, aux))
    assert count_params(shapes["params"]) == OFFICIAL_PARAM_COUNTS[variant, num_classes, aux]


@pytest.mark.parametrize("variant,aux,entries,bn_layers", [
    ("23-slim", False, 333, 55), ("23-slim", True, 346, 57),
    ("23", False, 333, 55), ("23", True, 346, 57),
    ("39", False, 501, 83), ("39", True, 514, 85),
])
def test_state_dict_entries_and_bn_count_equal_official(variant, aux, entries, bn_layers):
    table = torch_key_table(variable_shapes(DDRNet(variant, 19, aux)))
    assert len(table) == entries
    assert sum(k.endswith(".running_mean") for k in table) == bn_layers
    convs = [k for k, e in table.items() if e.is_conv_kernel]
    assert len(convs) == bn_layers  # one conv per BN in DDRNet


def test_ddrnet39_has_three_fusions_and_split_stage3():
    table = torch_key_table(variable_shapes(DDRNet("39", 19, True)))
    for name in ("layer3_1", "layer3_2", "layer3_1_", "layer3_2_", "down3_1", "down3_2",
                 "compression3_1", "compression3_2", "down4", "compression4"):
        assert any(k.startswith(name + ".") for k in table), name
    assert not any(k.startswith("layer3.") for k in table)
    assert table["layer4.2.conv2.weight"].shape == (512, 512, 3, 3)  # layer4 has 3 blocks in 39
    assert "layer4.3.conv1.weight" not in table


@pytest.mark.parametrize("variant", ["23-slim", "23", "39"])
@pytest.mark.parametrize("hw", [(256, 256), (264, 264), (200, 328), (64, 96)])
def test_both_outputs_at_one_eighth_of_input(variant, hw):
    model = DDRNet(variant, 3, aux_head=True)
    variables = variable_shapes(model)
    x = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
    main, aux = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert main.shape == aux.shape == (2, hw[0] // 8, hw[1] // 8, 3)
    assert main.dtype == jnp.float32
    only_main = jax.eval_shape(lambda v, x: DDRNet(variant, 3, aux_head=False).apply(v, x, train=False),
                               variable_shapes(DDRNet(variant, 3, aux_head=False)), x)
    assert only_main.shape == main.shape


def test_bf16_compute_keeps_float32_params_and_logits():
    model = DDRNet("23-slim", 2, aux_head=True, dtype=jnp.bfloat16)
    variables = variable_shapes(model)
    assert {a.dtype for a in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    main, aux = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                               jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    assert main.dtype == aux.dtype == jnp.float32


@pytest.mark.parametrize("hw", [(260, 256), (256, 250)])
def test_sides_not_multiple_of_8_are_refused_with_the_size(hw):
    model = DDRNet("23-slim", 2)
    with pytest.raises(ValueError, match=f"multiples of 8, got {hw[0]}x{hw[1]}"):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variable_shapes(model),
                       jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32))


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown DDRNet variant '23-fat'"):
        variable_shapes(DDRNet("23-fat", 2))


def test_batchnorm_follows_pytorch():
    """Normalise with the biased batch variance, update running var with the unbiased one."""
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(2, 3, 5, 4)).astype(np.float32)
    bn = BatchNorm()
    v = bn.init(jax.random.key(0), x, train=False)
    v = {"params": {"scale": jnp.array([1.0, 2.0, 0.5, 1.5]), "bias": jnp.array([0.0, 1.0, -1.0, 0.5])},
         "batch_stats": {"mean": jnp.full(4, 0.5), "var": jnp.full(4, 2.0)}}
    y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
    flat = x.reshape(-1, 4).astype(np.float64)
    mean, var_b, var_u = flat.mean(0), flat.var(0), flat.var(0, ddof=1)
    scale, bias = np.asarray(v["params"]["scale"]), np.asarray(v["params"]["bias"])
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var_b + 1e-5) * scale + bias, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.9 * 0.5 + 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 * 2.0 + 0.1 * var_u, rtol=1e-6)
    y_eval = bn.apply(v, x, train=False)
    np.testing.assert_allclose(y_eval, (x - 0.5) / np.sqrt(2.0 + 1e-5) * scale + bias, rtol=1e-5, atol=1e-5)


def test_conv_init_is_kaiming_fan_out_and_bn_is_identity():
    block = BasicBlock(planes=64, stride=2)
    v = block.init(jax.random.key(0), jnp.zeros((1, 16, 16, 32)), train=False)
    k = np.asarray(v["params"]["conv2"]["kernel"])  # 3x3x64x64
    np.testing.assert_allclose(k.std(), np.sqrt(2.0 / (64 * 9)), rtol=0.05)
    assert abs(k.mean()) < 0.01
    np.testing.assert_array_equal(v["params"]["bn1"]["scale"], 1.0)
    np.testing.assert_array_equal(v["params"]["bn1"]["bias"], 0.0)
    assert "downsample" in v["params"]  # stride 2 and 32 -> 64 channels


def _numpy_bilinear_half_pixel(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch's bilinear, align_corners=False, written out: src = (dst + .5) * in/out - .5, clamped."""
    def axis_weights(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = src - i0
        m = np.zeros((n_out, n_in))
        m[np.arange(n_out), i0] += 1 - frac
        m[np.arange(n_out), i1] += frac
        return m
    wh, ww = axis_weights(x.shape[1], out_h), axis_weights(x.shape[2], out_w)
    return np.einsum("oh,bhwc,pw->bopc", wh, x.astype(np.float64), ww)


@pytest.mark.parametrize("src,dst", [((4, 4), (32, 32)), ((5, 3), (33, 41)), ((16, 16), (32, 32)),
                                     ((1, 1), (7, 9)), ((8, 8), (3, 5))])
def test_resize_bilinear_matches_pytorch_formula(src, dst):
    x = np.random.default_rng(1).standard_normal((2, *src, 3)).astype(np.float32)
    got = np.asarray(resize_bilinear(jnp.asarray(x), dst))
    np.testing.assert_allclose(got, _numpy_bilinear_half_pixel(x, *dst), rtol=1e-5, atol=1e-5)


def test_resize_bilinear_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal((1, 5, 9, 2)).astype(np.float32)
    for dst in [(33, 41), (40, 72), (3, 4)]:
        want = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=dst,
                                               mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(np.asarray(resize_bilinear(jnp.asarray(x), dst)), want, rtol=1e-5, atol=1e-5)
