"""Semi-supervised training of the lesion network (vitijax/tasks/lesion_semi.py): the teacher is an EMA of
the student, pseudo-labels below the threshold carry no loss, the teacher survives kill-and-resume bit for
bit, and the unlabelled split never reaches evaluation."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch.configs.test import get_config
from vitijax import tasks
from vitijax.losses import pseudo_label_loss


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_teacher_is_an_ema_of_the_student():
    from vitijax.optim import make_optimizer
    from vitijax.train import configure, fresh_state

    c = get_config("semi")
    task, contract, _ = configure(c)
    meta = {**task.model_meta(c.model), "task": "lesion", "input": contract.to_meta()}
    model = task.build_model(meta)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    tx, schedule = make_optimizer(c.optimizer, 10)
    state = fresh_state(task, tx, variables["params"], variables["batch_stats"])
    # a teacher unlike the student, so that the average is visible; at step 50 the warm-up has passed 0.9
    state = state.replace(teacher=jax.tree_util.tree_map(lambda x: 0.5 * x + 0.01, state.teacher),
                          step=jnp.asarray(50, jnp.int32))
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(2, 64, 64, 3)).astype(np.float32),
             "label": (rng.random((2, 64, 64)) > 0.8).astype(np.int32),
             "u_weak": rng.normal(size=(2, 64, 64, 3)).astype(np.float32),
             "u_strong": rng.normal(size=(2, 64, 64, 3)).astype(np.float32),
             "u_face": np.ones((2, 64, 64), np.uint8)}
    step = jax.jit(functools.partial(task.train_step, model=model, task_loss=task.loss, tx=tx, loss_cfg=c.loss,
                                     schedule=schedule))
    new, out = step(state, batch)
    d = c.loss.ema_decay
    assert float(task.ema_decay(jnp.asarray(50), d)) == pytest.approx(min(d, 1 - 1 / 51))
    assert float(task.ema_decay(jnp.asarray(0), d)) == 0.0  # the first step's teacher is the student
    for old, student, teacher in zip(_leaves(state.teacher["params"]), _leaves(new.params),
                                     _leaves(new.teacher["params"])):
        np.testing.assert_allclose(teacher, d * old + (1 - d) * student, rtol=1e-6, atol=1e-7)
    for old, student, teacher in zip(_leaves(state.teacher["batch_stats"]), _leaves(new.batch_stats),
                                     _leaves(new.teacher["batch_stats"])):
        np.testing.assert_allclose(teacher, d * old + (1 - d) * student, rtol=1e-6, atol=1e-7)
    assert not np.allclose(_leaves(new.params)[0], _leaves(state.params)[0])  # the student did move
    assert float(out["loss_unlabelled"]) >= 0 and 0 <= float(out["confident_share"]) <= 1


def test_pseudo_labels_below_the_threshold_carry_no_loss():
    semi = tasks.get("lesion_semi")
    # teacher: image 0 sure of lesion (p = 0.95), image 1 unsure (p = 0.55); the face is the left half
    p = np.array([0.95, 0.55])
    logits = np.zeros((2, 2, 2, 2), np.float32)
    logits[..., 1] = np.log(p / (1 - p))[:, None, None]
    face = np.zeros((2, 16, 16), np.uint8)
    face[:, :, :8] = 1
    labels, share = semi.pseudo_labels(jnp.asarray(logits), jnp.asarray(face), 0.9)
    labels = np.asarray(labels)
    assert (labels[0][face[0] > 0] == 1).all() and (labels[0][face[0] == 0] == 255).all()
    assert (labels[1] == 255).all() and float(share) == pytest.approx(0.5)
    student = jnp.asarray(np.random.default_rng(1).normal(size=(2, 2, 2, 2)).astype(np.float32))
    loss, grad = jax.value_and_grad(lambda x: pseudo_label_loss(x, jnp.asarray(labels)))(student)
    # independent reference: numpy cross-entropy over image 0's face pixels (the logits, bilinearly upsampled
    # from 2x2, are resized by the same function as the loss; the mean is over the 128 confident pixels)
    from vitijax.resize import resize_bilinear

    up = np.asarray(resize_bilinear(student, (16, 16)))[0]
    log_p = up - np.log(np.exp(up).sum(-1, keepdims=True))
    assert float(loss) == pytest.approx(float(-log_p[..., 1][face[0] > 0].mean()), rel=1e-5)
    assert np.all(np.asarray(grad)[1] == 0)  # the unsure image pushes nothing
    # class-balanced: background and lesion pixels weigh the same whatever their counts (numpy reference)
    mixed = labels.copy()
    mixed[0, :4, :4] = 0  # 16 background pixels among 112 lesion ones
    balanced = float(pseudo_label_loss(student, jnp.asarray(mixed), class_balanced=True))
    per_class = [-log_p[..., k][mixed[0] == k].mean() for k in (0, 1)]
    assert balanced == pytest.approx(float(np.mean(per_class)), rel=1e-5)
    plain = float(pseudo_label_loss(student, jnp.asarray(mixed)))
    assert plain == pytest.approx(float(-(log_p[..., 0][mixed[0] == 0].sum() + log_p[..., 1][mixed[0] == 1].sum())
                                        / (mixed[0] != 255).sum()), rel=1e-5)
    none = jnp.full((2, 16, 16), 255, jnp.int32)
    for balanced in (False, True):
        loss0, grad0 = jax.value_and_grad(lambda x: pseudo_label_loss(x, none, class_balanced=balanced))(student)
        assert float(loss0) == 0.0 and not np.asarray(grad0).any()


def test_the_unlabelled_split_never_reaches_evaluation(tmp_path, capsys):
    from launch import evaluate as evaluate_cli
    from vitijax.data.sources import load_splits
    from vitijax.train import configure

    c = get_config("semi")
    for key in ("eval_split", "test_split"):
        bad = get_config("semi")
        bad.data[key] = "unlabelled"
        with pytest.raises(ValueError, match="the unlabelled split 'unlabelled' cannot be evaluated on"):
            configure(bad)
    for key, spec in (("train_split", "train+unlabelled"), ("eval_split", "validation+unlabelled[:50%]")):
        bad = get_config("semi")
        bad.data[key] = spec
        with pytest.raises(ValueError, match=f"config.data.{key}: the unlabelled split 'unlabelled' cannot be"):
            configure(bad)
    bad = get_config("semi")
    bad.data.unlabelled_ratio = 0
    with pytest.raises(ValueError, match="unlabelled_ratio must be >= 1"):
        configure(bad)
    bad = get_config()  # --config.task=lesion_semi on a config without the semi keys: said before any work
    bad.task, bad.data.unlabelled_split = "lesion_semi", "unlabelled"
    with pytest.raises(ValueError, match="config.loss: the lesion_semi task needs ema_decay, confidence"):
        configure(bad)
    plain = get_config()
    plain.data.unlabelled_split = "unlabelled"
    with pytest.raises(ValueError, match="the lesion task does not train on unlabelled photos"):
        configure(plain)
    semi_without = get_config("semi")
    semi_without.data.unlabelled_split = None
    with pytest.raises(ValueError, match="needs config.data.unlabelled_split"):
        configure(semi_without)
    splits = load_splits(c.data, ["train", "validation", "test", "unlabelled"])
    patients = {k: {ex["patient"] for ex in v} for k, v in splits.items()}
    assert len(patients["train"]) == 2 and len(patients["unlabelled"]) == 2
    assert not patients["unlabelled"] & (patients["validation"] | patients["test"] | patients["train"])
    assert all(not np.asarray(ex["vitiligo_mask"]).any() for ex in splits["unlabelled"])  # withheld
    assert any(np.asarray(ex["vitiligo_mask"]).any() for ex in splits["train"])
    for spec in ("synthetic_uv_vitiligo:semi/unlabelled", "synthetic_uv_vitiligo:semi/test+unlabelled[:10%]"):
        assert evaluate_cli.main(["--checkpoint", str(tmp_path / "run"), "--data", spec,
                                  "--out", str(tmp_path / "ev")]) == 2
        assert "the unlabelled split has no lesion masks" in capsys.readouterr().err


def test_a_folder_without_some_lesion_masks_builds_an_unlabelled_split(tmp_path, capsys):
    """Photos without vitiligo masks: kept, reported, in the unlabelled split unless their patient is held out."""
    from launch import build_dataset
    from tests.test_data import _write_patient
    from vitijax.data import tfds_io

    root = tmp_path / "uv"
    pids = [_write_patient(root, i) for i in range(5)]
    for pid in pids:  # every patient's right view lost its lesion mask
        (root / "vitiligo_masks" / pid / "0" / "right.png").unlink()
    extra = _write_patient(root, 9, pid="P900")  # a patient never annotated at all
    for view in ("left", "front", "right"):
        (root / "vitiligo_masks" / extra / "0" / f"{view}.png").unlink()
    assert build_dataset.main(["--name", "uv_vitiligo", "--manual-dir", str(root), "--data-dir", str(tmp_path / "d"),
                               "--val-fraction", "0.2", "--test-fraction", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "[kept] 8 x no vitiligo mask (unlabelled)" in out
    assert "2 unlabelled photos of validation or test patients are left out" in out
    builder = tfds_io.get_builder("uv_vitiligo", data_dir=str(tmp_path / "d"))
    splits = {k: [src[i] for i in range(len(src))] for k in ("train", "validation", "test", "unlabelled")
              for src in [tfds_io.data_source(builder, k)]}
    held = {ex["patient"] for k in ("validation", "test") for ex in splits[k]}
    unl = splits["unlabelled"]
    assert len(held) == 2 and len(unl) == 3 + 3  # P900's three views + the three training patients' right views
    assert {ex["patient"] for ex in unl} == {"P900", *{ex["patient"] for ex in splits["train"]}}
    assert not held & {ex["patient"] for ex in unl}
    assert all(ex["view"] != "right" for k in ("train", "validation", "test") for ex in splits[k])


def test_semi_supervised_run_resumes_the_teacher_bit_for_bit(tmp_path):
    """SIGKILL mid-training of launch/configs/test.py:semi, restart: the student and the teacher equal an
    uninterrupted run's, bit for bit."""
    from tests.test_train import ROOT, load_params, run_python

    args = ["--semi", "--steps", "6", "--ckpt-every", "2"]
    full = run_python(["-m", "tests.helpers.train_run", str(tmp_path / "full"), str(tmp_path / "full.npz"), *args])
    assert full.returncode == 0, full.stderr[-3000:]
    wd = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.train_run", str(wd), str(tmp_path / "x.npz"),
                             *args, "--hold-after", "2"], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    held = any(line.startswith("HOLD 2") for line in proc.stdout)
    watchdog.cancel()
    assert held
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_python(["-m", "tests.helpers.train_run", str(wd), str(tmp_path / "resumed.npz"), *args])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = load_params(tmp_path / "full.npz"), load_params(tmp_path / "resumed.npz")
    assert any(k.startswith("teacher/params/") for k in a) and any(k.startswith("teacher/batch_stats/") for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # the semi-supervised checkpoint is not resumed as supervised training (it holds a teacher)
    plain = run_python(["-m", "tests.helpers.train_run", str(wd), str(tmp_path / "plain.npz"), "--steps", "8"])
    assert plain.returncode != 0 and "trained_as: checkpoint has 'lesion_semi', expected None" in plain.stderr


def test_study_summary_states_the_spread_and_the_share_of_the_gap_closed():
    from launch.semi_study import markdown, summarise

    runs = {"labelled_only": {0: {"dice": 60.0, "ratio_mae": 4.0}, 1: {"dice": 64.0, "ratio_mae": 3.0}},
            "semi": {0: {"dice": 70.0, "ratio_mae": 2.5}, 1: {"dice": 70.0, "ratio_mae": 2.5}},
            "all_labelled": {0: {"dice": 80.0, "ratio_mae": 1.0}, 1: {"dice": 82.0, "ratio_mae": 2.0}}}
    s = summarise(runs)
    assert s["labelled_only"]["dice_mean"] == 62.0 and s["labelled_only"]["dice_sd"] == pytest.approx(8 ** 0.5)
    assert s["gap_closed"]["dice"] == pytest.approx((70 - 62) / (81 - 62))
    assert s["gap_closed"]["mae"] == pytest.approx((2.5 - 3.5) / (1.5 - 3.5))  # 50 %: lower is better, same rule
    page = markdown(s, runs, "python -m launch.semi_study --seeds 0 1")
    assert "| semi | 6 | 40 | 70.0 ± 0.0 (70.0-70.0) |" in page and "Dice 42 %, F-Vitiligo MAE 50 %" in page
