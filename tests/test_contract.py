"""One contract from training to analysis: strict configs, the input contract stored and read back, tasks as files."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags
from PIL import Image

from vitijax import tasks
from vitijax.checkpoint import CheckpointError, save_model
from vitijax.contract import CROP_MARGIN, InputContract
from vitijax.data import synthetic
from vitijax.models.ddrnet import DDRNet, init_variables
from vitijax.train import configure

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = [("synthetic.py", None), ("test.py", None), ("paper.py", "23-slim"), ("paper.py", "39"),
           ("face_mask.py", "synthetic"), ("face_mask.py", "folder"), ("face_box.py", "synthetic"),
           ("face_box.py", "folder"), ("face_box.py", "tiny")]


def _parse(argv):
    """launch.train's own flag: the config file, locked, with command-line overrides."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=["train", *argv])
    fv(["train", *argv])
    return fv.config


@pytest.mark.parametrize("name,arg", SHIPPED)
def test_every_shipped_config_is_valid_and_takes_num_steps(name, arg):
    path = f"{ROOT}/launch/configs/{name}" + (f":{arg}" if arg else "")
    c = _parse([f"--config={path}", "--config.num_steps=7", "--config.input.margin=0.2"])
    assert c.num_steps == 7 and c.input.margin == 0.2
    task, contract, _ = configure(c)  # every key is one the task takes
    assert contract.margin == 0.2 and task.NAME == c.task


def test_a_misspelt_or_unused_key_fails_naming_it():
    with pytest.raises(Exception, match="optimiser"):
        _parse([f"--config={ROOT}/launch/configs/synthetic.py", "--config.optimiser.lr=0.1"])
    from launch.configs import face_box, synthetic as synthetic_cfg

    c = synthetic_cfg.get_config()
    c.input.sise = (128, 128)
    with pytest.raises(ValueError, match=r"config\.input\.sise: unknown or unused here"):
        configure(c)
    c = synthetic_cfg.get_config()
    c.augment.brightnes = 0.1
    with pytest.raises(ValueError, match=r"config\.augment\.brightnes"):
        configure(c)
    c = synthetic_cfg.get_config()
    c.model.pool = 5  # a face-box setting on the lesion network
    with pytest.raises(ValueError, match=r"config\.model\.pool"):
        configure(c)
    c = face_box.get_config()
    c.input.mask_input = True  # the face-box network takes the whole photo: masking means nothing to it
    with pytest.raises(ValueError, match=r"config\.input\.mask_input"):
        configure(c)
    c.task = "lesions"
    with pytest.raises(ValueError, match="task must be one of lesion, face_mask, face_box, lesion_semi, got 'lesions'"):
        configure(c)


def test_contract_round_trips_and_refuses_nonsense():
    c = InputContract(size=(256, 256), margin=0.3, mask_input=True)
    assert InputContract.from_meta(json.loads(json.dumps(c.to_meta())), "here") == c
    with pytest.raises(ValueError, match="multiples of 8"):
        InputContract(size=(250, 256))
    with pytest.raises(ValueError, match="crop margin must be in"):
        InputContract(size=(64, 64), margin=-0.1)
    with pytest.raises(CheckpointError, match="does not say what input"):
        InputContract.from_meta(None, "ckpt")
    # a model saved by vitijax 0.2 (size, mask_input and label only) is read with its task's own kind of input
    old_box = {"model": "facebox", "pool": 5, "hidden": 256, "input": {"size": [320, 320], "mask_input": False,
                                                                       "label": "box"}}
    task, _, contract = tasks.load(old_box, "old")
    assert task.NAME == "face_box" and contract.source == "photo" and contract.normalisation == "retinaface"
    assert contract.margin == CROP_MARGIN


def _random_lesion_checkpoint(directory, margin: float) -> str:
    model = DDRNet("23-tiny", 2, True)
    v = init_variables(model, jax.random.key(0), (64, 64))
    meta = {**tasks.get("lesion").model_meta({"variant": "23-tiny", "num_classes": 2, "aux_head": True}),
            "task": "lesion", "input": InputContract(size=(64, 64), margin=margin, mask_input=True).to_meta()}
    return save_model(directory, v, meta)


def test_analyze_uses_the_margin_its_bundle_was_trained_with(tmp_path):
    """A lesion network trained on 0.3-margin crops: analyze crops every photo with 0.3, read from the bundle."""
    from launch import analyze, export

    ckpt = _random_lesion_checkpoint(tmp_path / "lesion", 0.3)
    assert export.main(["--workdir", ckpt, "--out", str(tmp_path / "bundle")]) == 0
    s = synthetic.render(synthetic.make_patient(0, 3), 0, "front", (640, 448))
    Image.fromarray(s.image).save(tmp_path / "p.png")
    out = tmp_path / "out"
    analyze.main(["--model", str(tmp_path / "bundle"), str(tmp_path / "p.png"), "--out", str(out),
                  "--face-mask", "ellipse", "--detector", "retinaface"])
    data = json.loads((out / "results.json").read_text())
    photo = data["photos"][0]
    assert photo["face_box"] is not None, photo  # RetinaFace finds the synthetic face
    x0, y0, x1, y1 = (int(np.floor(photo["face_box"][0])), int(np.floor(photo["face_box"][1])),
                      int(np.ceil(photo["face_box"][2])), int(np.ceil(photo["face_box"][3])))
    cx0, cy0, cx1, cy1 = photo["crop_box"]
    assert cx1 - cx0 == cy1 - cy0 == round(max(x1 - x0, y1 - y0) * 1.6)  # 1 + 2 x 0.3, not 1.3
    assert data["info"]["crop_margin"] == 0.3


def test_networks_of_different_crop_margins_are_not_chained(tmp_path):
    from vitijax import face_mask
    from vitijax.pipeline import Analyzer
    from vitijax.segmenter import Segmenter

    lesion = Segmenter.load(_random_lesion_checkpoint(tmp_path / "a", 0.3))
    other = Segmenter.load(_random_lesion_checkpoint(tmp_path / "b", 0.15))
    other.task = tasks.get("face_mask")  # stands for a face-mask network trained on 0.15 crops
    with pytest.raises(CheckpointError, match="margin 0.15.*on 0.3: export networks trained with one crop margin"):
        Analyzer(lesion, face_mask.NetworkFaceMask(other))


def _sources(*dirs):
    for d in dirs:
        for p in sorted((ROOT / d).rglob("*.py")):
            yield p, p.read_text()


def test_no_task_branch_outside_the_tasks_and_one_margin():
    """Which network is trained is dispatched to vitijax/tasks/, never tested by label elsewhere; the
    default crop margin is written once (vitijax/contract.py)."""
    branch = re.compile(r"\.label\b(?!\()|label\s*==|==\s*\"(box|face|vitiligo)\"|isinstance\([^)]*FaceBoxNet"
                        r"|task\s*==|NAME\s*==")
    margin = re.compile(r"margin[^\n=]*=\s*0\.\d|0\.15\b.*margin|margin.*0\.15\b")
    for path, text in _sources("vitijax", "launch"):
        rel = path.relative_to(ROOT).as_posix()
        for i, line in enumerate(text.splitlines(), 1):
            code = line.split("#")[0]
            if not rel.startswith("vitijax/tasks/") and rel != "vitijax/metrics.py":
                assert not branch.search(code), f"{rel}:{i}: {line.strip()}"
            if rel != "vitijax/contract.py":
                assert not margin.search(code), f"{rel}:{i}: {line.strip()}"


def test_importing_vitijax_changes_no_process_setting():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "VITIJAX_XLA_DEFAULTS")}
    probe = "import os, {}; print(repr(os.environ.get('XLA_FLAGS')))"
    lib = subprocess.run([sys.executable, "-c", probe.format("vitijax, vitijax.pipeline, vitijax.train")], cwd=ROOT,
                         env=env, capture_output=True, text=True, check=True)
    assert lib.stdout.strip() == "None"
    entry = subprocess.run([sys.executable, "-c", probe.format("launch.analyze")], cwd=ROOT, env=env,
                           capture_output=True, text=True, check=True)
    assert "xla_cpu_experimental_ynn_fusion_type" in entry.stdout
