"""The PyTorch <-> Flax converter and ``python -m launch.convert``."""

from __future__ import annotations

import logging
import pickle

import jax
import numpy as np
import pytest

from launch import convert as convert_cli
from tests.conftest import random_variables
from vitijax.checkpoint import CheckpointError, load_model
from vitijax.convert import (CheckpointMismatch, ddrnet_state_dict_from_variables, ddrnet_variables_from_torch,
                             load_state_dict, save_state_dict)
from vitijax.models.ddrnet import DDRNet, variable_shapes


def random_state_dict(variant="23-slim", num_classes=2, aux=True, seed=0):
    shapes = variable_shapes(DDRNet(variant, num_classes, aux))
    return ddrnet_state_dict_from_variables(random_variables(shapes, seed))


def assert_trees_equal(a, b):
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("variant,entries", [("23-slim", 346), ("23", 346), ("39", 514)])
def test_round_trip_flax_torch_flax_is_exact(variant, entries):
    variables = random_variables(variable_shapes(DDRNet(variant, 2, True)))
    sd = ddrnet_state_dict_from_variables(variables, variant)
    assert len(sd) == entries
    assert sd["conv1.0.weight"].shape == ((32 if variant == "23-slim" else 64), 3, 3, 3)  # OIHW
    assert sd["layer1.0.bn1.num_batches_tracked"].dtype == np.int64
    back = ddrnet_variables_from_torch(sd, variant)
    assert_trees_equal(back, variables)


def test_conv_weights_are_transposed_oihw_to_hwio():
    sd = random_state_dict()
    v = ddrnet_variables_from_torch(sd, "23-slim")
    w = sd["layer2.0.conv1.weight"]  # O=64, I=32, 3, 3
    np.testing.assert_array_equal(v["params"]["layer2"]["0"]["conv1"]["kernel"][1, 2, 5, 7], w[7, 5, 1, 2])
    np.testing.assert_array_equal(v["batch_stats"]["spp"]["scale1"]["1"]["var"], sd["spp.scale1.1.running_var"])


def test_missing_key_is_named():
    sd = random_state_dict()
    del sd["layer3_.1.bn2.running_var"]
    with pytest.raises(CheckpointMismatch, match=r"missing key layer3_\.1\.bn2\.running_var"):
        ddrnet_variables_from_torch(sd, "23-slim")


def test_unexpected_key_is_named():
    sd = random_state_dict()
    sd["layer9.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatch, match=r"unexpected key layer9\.0\.conv1\.weight"):
        ddrnet_variables_from_torch(sd, "23-slim")


def test_misshapen_key_is_named_with_both_shapes():
    sd = random_state_dict()
    sd["down4.3.weight"] = np.zeros((256, 128, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatch, match=r"misshapen key down4\.3\.weight: checkpoint \(256, 128, 1, 1\), "
                                                  r"model \(256, 128, 3, 3\)"):
        ddrnet_variables_from_torch(sd, "23-slim")


def test_checkpoint_of_another_variant_is_refused():
    sd = random_state_dict("23-slim")
    with pytest.raises(CheckpointMismatch, match="does not fit DDRNet-23 ") as e:
        ddrnet_variables_from_torch(sd, "23")
    assert "misshapen key conv1.0.weight" in str(e.value)


def test_ddp_and_model_prefixes_are_stripped():
    sd = random_state_dict()
    v = ddrnet_variables_from_torch({f"module.{k}": a for k, a in sd.items()}, "23-slim")
    assert_trees_equal(v, ddrnet_variables_from_torch(sd, "23-slim"))


def test_cityscapes_19_classes_into_2_with_reinit_classifier(caplog):
    sd19 = random_state_dict(num_classes=19)
    with pytest.raises(CheckpointMismatch, match="reinit_classifier"):
        ddrnet_variables_from_torch(sd19, "23-slim", num_classes=2)
    with caplog.at_level(logging.WARNING):
        v = ddrnet_variables_from_torch(sd19, "23-slim", num_classes=2, reinit_classifier=True)
    assert v["params"]["final_layer"]["conv2"]["kernel"].shape == (1, 1, 64, 2)
    assert v["params"]["seghead_extra"]["conv2"]["bias"].shape == (2,)
    # Everything but the two classifier convs is the checkpoint's.
    back = ddrnet_state_dict_from_variables(v)
    for k, a in sd19.items():
        if not k.startswith(("final_layer.conv2.", "seghead_extra.conv2.")):
            np.testing.assert_array_equal(back[k], a, err_msg=k)
    assert "final_layer.conv2.weight" in caplog.text and "start fresh" in caplog.text


def test_partial_load_of_imagenet_backbone_reports_every_key(caplog):
    """Official ImageNet checkpoints: 'model.' prefix, no DAPPM or heads, an ImageNet classifier."""
    full = random_state_dict(num_classes=2, aux=True)
    backbone = {f"model.{k}": a for k, a in full.items() if not k.startswith(("spp.", "final_layer.", "seghead_extra."))}
    backbone["model.linear.weight"] = np.zeros((1000, 1024), np.float32)
    backbone["model.last_layer.0.weight"] = np.zeros((1024, 512, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatch, match="unexpected key linear.weight"):
        ddrnet_variables_from_torch(backbone, "23-slim", num_classes=2, aux_head=True)
    with caplog.at_level(logging.WARNING):
        v = ddrnet_variables_from_torch(backbone, "23-slim", num_classes=2, aux_head=True, partial=True)
    text = caplog.text
    assert "skipped 2 checkpoint keys: last_layer.0.weight, linear.weight" in text
    assert "spp.compression.2.weight" in text and "final_layer.conv2.bias" in text  # fresh
    np.testing.assert_array_equal(v["params"]["layer4"]["1"]["conv2"]["kernel"],
                                  full["layer4.1.conv2.weight"].transpose(2, 3, 1, 0))
    assert not np.array_equal(v["params"]["spp"]["compression"]["2"]["kernel"],
                              full["spp.compression.2.weight"].transpose(2, 3, 1, 0))


@pytest.mark.parametrize("ext", [".npz", ".safetensors", ".pth"])
def test_state_dict_files_round_trip(tmp_path, ext):
    if ext == ".pth":
        pytest.importorskip("torch")
    sd = random_state_dict()
    path = tmp_path / f"ddrnet{ext}"
    save_state_dict(sd, path)
    assert_trees_equal(ddrnet_variables_from_torch(path, "23-slim"), ddrnet_variables_from_torch(sd, "23-slim"))


def test_pth_wrapped_in_state_dict_key(tmp_path):
    torch = pytest.importorskip("torch")
    sd = random_state_dict()
    torch.save({"epoch": 3, "state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}, tmp_path / "ck.pth")
    np.testing.assert_array_equal(load_state_dict(tmp_path / "ck.pth")["conv1.0.bias"], sd["conv1.0.bias"])


def test_pth_with_arbitrary_objects_is_refused_not_unpickled(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.0.weight": logging.getLogger("x")}, f, protocol=2)
    with pytest.raises(CheckpointMismatch, match=f"{path}: not a readable weights-only PyTorch checkpoint"):
        load_state_dict(path)


def test_corrupt_and_unknown_files_are_named(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(CheckpointMismatch, match=f"{bad}: not a readable .safetensors file"):
        load_state_dict(bad)
    other = tmp_path / "weights.h5"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointMismatch, match="unknown checkpoint format '.h5'"):
        load_state_dict(other)
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        load_state_dict(tmp_path / "absent.npz")


def test_launch_convert_import_then_export(tmp_path, capsys):
    sd19 = random_state_dict(num_classes=19)
    src = tmp_path / "city.npz"
    save_state_dict(sd19, src)
    out = tmp_path / "ckpt"
    rc = convert_cli.main(["--from", str(src), "--variant", "23-slim", "--num-classes", "2",
                           "--reinit-classifier", "--out", str(out)])
    assert rc == 0
    assert "2 classes, aux head True, 5,732,132 parameters" in capsys.readouterr().out
    variables, meta = load_model(out, expect={"variant": "23-slim", "num_classes": 2})
    assert meta["reinit_classifier"] and meta["source"].endswith("city.npz") and len(meta["source_sha256"]) == 64
    np.testing.assert_array_equal(variables["params"]["layer1"]["0"]["conv1"]["kernel"],
                                  sd19["layer1.0.conv1.weight"].transpose(2, 3, 1, 0))
    with pytest.raises(CheckpointError, match="checkpoint of another model .*num_classes: checkpoint has 2, expected 19"):
        load_model(out, expect={"num_classes": 19})

    exported = tmp_path / "back.safetensors"
    assert convert_cli.main(["--from", str(out), "--out", str(exported)]) == 0
    back = load_state_dict(exported)
    for k, a in sd19.items():
        if not k.startswith(("final_layer.conv2.", "seghead_extra.conv2.")):
            np.testing.assert_array_equal(back[k], a, err_msg=k)

    assert convert_cli.main(["--from", str(out), "--variant", "39", "--out", str(tmp_path / "x.npz")]) == 2
    assert "variant: checkpoint has '23-slim', expected '39'" in capsys.readouterr().err


def test_launch_convert_reports_mismatch_and_exits_2(tmp_path, capsys):
    sd = random_state_dict()
    del sd["spp.scale0.2.weight"]
    src = tmp_path / "cut.npz"
    save_state_dict(sd, src)
    assert convert_cli.main(["--from", str(src), "--variant", "23-slim", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing key spp.scale0.2.weight" in err and str(src) in err
