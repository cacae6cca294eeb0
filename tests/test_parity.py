"""DDRNet-23-slim against the official PyTorch model (../shared/reference/ddrnet23slim_ref.npz).

Bounds are relative to max |reference|. The issue asks for 1e-4 on every
logit tensor. Eval-mode *main* logits cannot meet it in float32, nor in
float64: the reference's DAPPM batch-norm statistics were calibrated on two
pooled 1x1 samples (``spp.scale3.1.running_var`` goes down to 2.4e-10), so
those BNs have gains near 1/sqrt(eps) = 316 and amplify PyTorch's own float32
rounding (about 1e-5 at ``layer5``) to about 1.5e-4 at the logits; an exact
float64 forward of vitijax lands 1.47e-4 from the reference. So the main head
is pinned twice: end to end at 2e-4, and stage by stage at 1e-5 by feeding
the reference's own activations into DAPPM and the head (teacher forcing),
which leaves no room for a structural difference.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vitijax.convert import ddrnet_state_dict_from_variables, ddrnet_variables_from_torch, torch_key_table
from vitijax.models.ddrnet import DAPPM, DDRNet, SegmentHead, variable_shapes
from vitijax.resize import resize_bilinear

MODEL = DDRNet("23-slim", num_classes=2, aux_head=True)


def nhwc(a):
    return np.asarray(a).transpose(0, 2, 3, 1)


def rel_err(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def state_dict(reference_dir, reference):
    keys = json.loads((reference_dir / "ddrnet23slim_state_dict_shapes.json").read_text())
    return {k: reference[k] for k in keys}


@pytest.fixture(scope="module")
def variables(state_dict):
    return ddrnet_variables_from_torch(state_dict, "23-slim")


@pytest.fixture(scope="module")
def eval_run(variables, reference):
    """Eval forward with every module's output captured."""
    fwd = jax.jit(lambda v, x: MODEL.apply(v, x, train=False, capture_intermediates=True,
                                           mutable=["intermediates"]))
    (main, aux), state = fwd(variables, jnp.asarray(nhwc(reference["input"])))
    acts = {name: np.asarray(out["__call__"][0]) for name, out in state["intermediates"].items()
            if name != "__call__"}
    return np.asarray(main), np.asarray(aux), acts


def test_key_table_equals_official_state_dict(reference_dir):
    official = json.loads((reference_dir / "ddrnet23slim_state_dict_shapes.json").read_text())
    table = torch_key_table(variable_shapes(MODEL))
    # Same keys and shapes (order differs: Flax sorts names; PyTorch's load_state_dict ignores order).
    assert {k: list(e.shape) for k, e in table.items()} == official


def test_eval_aux_logits(eval_run, reference):
    _, aux, _ = eval_run
    assert aux.shape == (2, 32, 32, 2)
    assert rel_err(aux, nhwc(reference["out_aux"])) <= 1e-4


def test_eval_main_logits(eval_run, reference):
    main, _, _ = eval_run
    want = nhwc(reference["out_main"])
    assert main.shape == (2, 32, 32, 2)
    np.testing.assert_allclose(main[0, 0, :4, :].T, [[-3.5603, -4.2119, -0.7635, -3.7234],
                                                     [2.8365, 1.3935, 1.3348, 3.6159]], atol=2e-3)
    assert rel_err(main, want) <= 2e-4  # see the module docstring for why not 1e-4


@pytest.mark.parametrize("module", ["conv1", "layer1", "layer2", "layer3", "layer3_", "down3", "compression3",
                                    "layer4", "layer4_", "down4", "compression4", "layer5_", "layer5",
                                    "seghead_extra"])
def test_eval_module_activations(eval_run, reference, module):
    assert rel_err(eval_run[2][module], nhwc(reference[f"act/{module}"])) <= 1e-4


def test_dappm_and_head_teacher_forced(variables, reference):
    """DAPPM on the reference layer5 output, the head on the reference spp + layer5_: both to 1e-5."""
    p, s = variables["params"], variables["batch_stats"]
    spp = DAPPM(128, 128).apply({"params": p["spp"], "batch_stats": s["spp"]},
                                jnp.asarray(nhwc(reference["act/layer5"])), train=False)
    assert rel_err(spp, nhwc(reference["act/spp"])) <= 1e-5
    head_in = resize_bilinear(jnp.asarray(nhwc(reference["act/spp"])), (32, 32)) + nhwc(reference["act/layer5_"])
    head = SegmentHead(64, 2).apply({"params": p["final_layer"], "batch_stats": s["final_layer"]},
                                    head_in, train=False)
    assert rel_err(head, nhwc(reference["act/final_layer"])) <= 1e-5


def test_train_mode_forward_and_bn_running_stats(variables, reference):
    fwd = jax.jit(lambda v, x: MODEL.apply(v, x, train=True, mutable=["batch_stats"]))
    (main, aux), updated = fwd(variables, jnp.asarray(nhwc(reference["input"])))
    assert rel_err(main, nhwc(reference["train/out_main"])) <= 1e-4
    assert rel_err(aux, nhwc(reference["train/out_aux"])) <= 1e-4
    sd = ddrnet_state_dict_from_variables({"params": variables["params"], "batch_stats": updated["batch_stats"]})
    stat_keys = [k for k in reference if k.startswith("after_train_fwd/") and "running_" in k]
    assert len(stat_keys) == 2 * 57
    worst = max(rel_err(sd[k.split("/", 1)[1]], reference[k]) for k in stat_keys)
    assert worst <= 1e-4  # PyTorch semantics: momentum 0.1, unbiased variance in the running estimate
