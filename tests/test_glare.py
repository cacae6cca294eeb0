"""Glare with truth, the glare-aware lesion network's class, and the photo quality gate."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import skimage.data

from vitijax import face as face_lib
from vitijax import face_mask, metrics, quality, tasks
from vitijax.checkpoint import save_model
from vitijax.contract import InputContract
from vitijax.data import synthetic
from vitijax.data.records import make_example
from vitijax.models.ddrnet import DDRNet, init_variables
from vitijax.pipeline import Analyzer, PhotoResult
from vitijax.segmenter import Segmenter

SIZE = (384, 256)


def _pair(gain: float, index: int = 1, view: str = "front", size=SIZE):
    """The same photo without glare and with glare gain ``gain`` (every other draw the same)."""
    p = synthetic.make_patient(0, index)
    return (synthetic.render(p, 0, view, size, synthetic.Acquisition(glare=(0.0, 0.0))),
            synthetic.render(p, 0, view, size, synthetic.Acquisition(glare=(gain, gain))))


def test_glare_truth_is_where_specular_light_dominates_the_pixel():
    free, glared = _pair(3.0)
    assert free.unassessable_mask.sum() == 0
    face = glared.face_mask > 0
    truth = glared.unassessable_mask > 0
    assert truth.any() and not (truth & ~face).any()
    assert np.array_equal(free.vitiligo_mask, glared.vitiligo_mask)  # lesions under glare stay lesions
    # Independently of the renderer's bookkeeping: the glared photo minus the glare-free one, as a share of
    # the way to white. Glare is a blend towards the lamp's colour; the truth says at least half of it.
    a, b = free.image.astype(np.float64).mean(-1), glared.image.astype(np.float64).mean(-1)
    towards_white = (b - a) / np.maximum(255.0 - a, 1.0)
    inner = truth & ~(glared.image.max(-1) >= 250)  # clipped pixels cannot show how far they went
    assert np.median(towards_white[inner]) > 0.4
    assert np.median(towards_white[face & ~truth]) < 0.1
    shares = [float(_pair(g)[1].unassessable_mask[face].mean()) for g in (1.0, 2.0, 3.0)]
    assert shares[0] < shares[1] < shares[2] and shares[2] > 0.03, shares


def test_a_turned_head_is_the_next_view():
    """The front view turned by the left view's yaw shows exactly the left view's face."""
    p = synthetic.make_patient(0, 2)
    turned = synthetic.render(p, 0, "front", SIZE, synthetic.Acquisition(yaw=(0.62, 0.62)))
    left = synthetic.render(p, 0, "left", SIZE, synthetic.Acquisition())
    assert np.array_equal(turned.face_mask, left.face_mask)
    assert np.array_equal(turned.vitiligo_mask, left.vitiligo_mask)


def test_the_glare_aware_label_has_class_2_exactly_where_glare_covers_the_face():
    _, s = _pair(3.0)
    ex = make_example(s.image, s.face_mask, s.vitiligo_mask, patient="P", visit=0, view="front",
                      face_box=s.face_box, unassessable_mask=s.unassessable_mask)
    lesion = tasks.get("lesion")
    glare_aware = InputContract(size=(128, 128), mask_input=True, unassessable=True)
    plain = InputContract(size=(128, 128), mask_input=True)
    out = lesion.prepare(ex, glare_aware)
    from vitijax.data.pipeline import crop_example

    crop = crop_example(ex, glare_aware)
    want = np.where((crop["unassessable"] > 0) & (crop["face"] > 0), 2, crop["lesion"])
    assert (out["label"] == 2).sum() > 50 and np.array_equal(out["label"], want)
    assert set(np.unique(lesion.prepare(ex, plain)["label"])) <= {0, 1}
    del ex["unassessable_mask"]  # a data set without glare truth: nothing is marked, unless painted
    assert set(np.unique(lesion.prepare(ex, glare_aware)["label"])) <= {0, 1}
    from vitijax.data.pipeline import Augment

    painted = lesion.prepare(ex, glare_aware, Augment(highlights=1.0), np.random.default_rng(0))
    assert (painted["label"] == 2).sum() > 20 and not ((painted["label"] == 2) & (painted["face"] == 0)).any()


def test_a_glare_aware_config_needs_three_classes():
    from launch.configs import glare
    from vitijax.train import configure

    c = glare.get_config("unassessable")
    assert configure(c)[1].unassessable
    c.model.num_classes = 2
    with pytest.raises(ValueError, match="unassessable=True with config.model.num_classes=2"):
        configure(c)
    c = glare.get_config("blind")
    c.model.num_classes = 3
    with pytest.raises(ValueError, match="unassessable=False with config.model.num_classes=3"):
        configure(c)


def test_the_three_class_decision():
    p = np.array([[0.6, 0.3, 0.1], [0.3, 0.4, 0.3], [0.2, 0.2, 0.6], [0.45, 0.05, 0.5], [0.1, 0.9, 0.0]])
    assert metrics.foreground(p).tolist() == [False, True, False, False, True]
    assert metrics.unassessable(p).tolist() == [False, False, True, False, False]
    assert metrics.foreground(np.array([[0.4, 0.6], [0.6, 0.4]])).tolist() == [True, False]


def _glare_aware_analyzer(tmp_path) -> Analyzer:
    model = DDRNet("23-tiny", 3, True)
    v = init_variables(model, jax.random.key(0), (64, 64))
    meta = {**tasks.get("lesion").model_meta({"variant": "23-tiny", "num_classes": 3, "aux_head": True}),
            "task": "lesion", "input": InputContract(size=(64, 64), mask_input=True, unassessable=True).to_meta()}
    return Analyzer(Segmenter.load(save_model(tmp_path / "lesion", v, meta)), face_mask.make("ground_truth"))


def test_unassessable_pixels_leave_both_counts_and_flag_the_photo(tmp_path):
    """The analysis's last step on known class probabilities: lesions on the left half, glare on the
    top-right quarter of the crop; counted by hand."""
    analyzer = _glare_aware_analyzer(tmp_path)
    photo = np.full((200, 160, 3), 90, np.uint8)
    box = (20, 40, 140, 160)  # a 120 x 120 crop
    crop = face_lib.crop(photo, box)
    face = np.zeros((120, 120), np.uint8)
    face[10:110, 10:110] = 1
    probs = np.zeros((15, 15, 3), np.float32)  # the network's 1/8 output
    probs[...] = (0.8, 0.1, 0.1)
    probs[:, :8] = (0.1, 0.8, 0.1)  # lesion, columns 0-63 after the resize (half-pixel: 8 x 8 = 64)
    probs[:7, 8:] = (0.1, 0.1, 0.8)  # glare, rows 0-55, columns 64-119
    res = PhotoResult(200, 160)
    analyzer._finish(res, photo.shape[:2], box, crop, face, probs, None)
    from vitijax.resize import resize_host

    full = resize_host(probs, (120, 120))
    lesion_ref = (full[..., 1] > full[..., 0]) & (full[..., 2] <= 0.5) & (face > 0)
    glare_ref = (full[..., 2] > 0.5) & (face > 0)
    assert glare_ref.sum() > 0.1 * face.sum() and not (lesion_ref & glare_ref).any()
    assert res.face_pixels == face.sum() and res.unassessable_pixels == glare_ref.sum()
    assert res.vitiligo_pixels == lesion_ref.sum()
    assert res.ratio == pytest.approx(100 * lesion_ref.sum() / (face.sum() - glare_ref.sum()))
    assert res.quality["unassessable_share"] == pytest.approx(glare_ref.sum() / face.sum())
    assert "unassessable region" in res.flags
    assert any(r.startswith("unassessable region: unassessable_share") for r in res.review_reasons)
    assert res.unassessable_mask[40:160, 20:140].sum() == glare_ref.sum() and res.unassessable_mask.sum() == glare_ref.sum()
    # a little glare passes the check
    probs[:7, 8:] = (0.8, 0.1, 0.1)
    probs[2, 12] = (0.0, 0.0, 1.0)
    res = PhotoResult(200, 160)
    analyzer._finish(res, photo.shape[:2], box, crop, face, probs, None)
    assert 0 < res.quality["unassessable_share"] < 0.03 and res.checks["unassessable region"]["passed"]
    # glare over the whole face: no ratio
    probs[...] = (0.1, 0.1, 0.8)
    res = PhotoResult(200, 160)
    analyzer._finish(res, photo.shape[:2], box, crop, face, probs, None)
    assert math.isnan(res.ratio) and "no assessable face" in res.flags


def _checks_of(analyzer, s, view="front"):
    res = analyzer([s.image], [s.face_mask], boxes=[s.face_box], views=[view])[0]
    return res, {k: v["passed"] for k, v in res.checks.items()}


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    """A glare-aware analyser (random lesion network: the checks below do not depend on its output) and a
    standard photo large enough for every check."""
    analyzer = _glare_aware_analyzer(tmp_path_factory.mktemp("gate"))
    p = synthetic.make_patient(0, 1)
    return analyzer, p, synthetic.render(p, 0, "front", (1416, 944), synthetic.Acquisition(glare=(0.0, 0.0)))


def test_a_standard_photo_passes_every_measured_check(gate):
    analyzer, _, s = gate
    res, passed = _checks_of(analyzer, s)
    for flag in ("underexposed", "overexposed", "specular highlights", "blurred", "face too small",
                 "face mask touches the photo edge"):
        assert passed[flag] is True, (flag, res.checks[flag])
        assert flag not in res.flags
    assert passed["head turned"] is None and res.checks["head turned"]["value"] is None  # no landmarks given


@pytest.mark.parametrize("flag,acq", [("underexposed", dict(exposure=(0.3, 0.3))),
                                      ("overexposed", dict(exposure=(4.5, 4.5))),
                                      ("specular highlights", dict(glare=(3.0, 3.0), exposure=(1.4, 1.4))),
                                      ("blurred", dict(blur=(4.0, 4.0), glare=(0.0, 0.0)))])
def test_a_degraded_photo_fails_its_check(gate, flag, acq):
    analyzer, p, _ = gate
    res, passed = _checks_of(analyzer, synthetic.render(p, 0, "front", (1416, 944), synthetic.Acquisition(**acq)))
    assert passed[flag] is False, res.checks[flag]
    assert flag in res.flags and any(r.startswith(flag + ":") for r in res.review_reasons)


def test_a_small_face_and_a_cut_off_face_fail_their_checks(gate):
    analyzer, p, s = gate
    small = synthetic.render(p, 0, "front", SIZE, synthetic.Acquisition(glare=(0.0, 0.0)))
    res, passed = _checks_of(analyzer, small)
    assert passed["face too small"] is False and res.quality["face_width_px"] < 256
    cut = face_lib.box_from_mask(s.face_mask)[0] + 200  # the photo's left edge through the face
    res, passed = _checks_of(analyzer, synthetic.SyntheticImage(
        s.image[:, cut:].copy(), s.face_mask[:, cut:].copy(), s.vitiligo_mask[:, cut:].copy(),
        face_lib.box_from_mask(s.face_mask[:, cut:]), s.ratio, s.patient_id, 0, "front", s.subtype))
    assert passed["face mask touches the photo edge"] is False


def test_head_pose_from_landmarks_against_the_view():
    """A real frontal face (skimage's astronaut) passes as a front view and fails as a left one; a
    near-profile (the cameraman) turns about 60 degrees, the mirrored photo the other way."""
    astronaut = skimage.data.astronaut()
    det = face_lib.choose_face(face_lib.detect(astronaut))
    yaw = quality.head_yaw(det.landmarks, astronaut.shape[:2])
    assert abs(yaw) < 10
    for view, ok in (("front", True), ("left", False), ("right", False)):
        report = quality.run_checks({"yaw_error_deg": abs(yaw - quality.EXPECTED_YAW_DEG[view])})
        assert report["head turned"]["passed"] is ok
    camera = np.repeat(skimage.data.camera()[..., None], 3, -1)
    yaws = [quality.head_yaw(face_lib.choose_face(face_lib.detect(x)).landmarks, x.shape[:2])
            for x in (camera, camera[:, ::-1].copy())]
    assert 40 < abs(yaws[0]) < 80 and yaws[0] * yaws[1] < 0 and abs(yaws[0] + yaws[1]) < 10
    # the cameraman looks towards the image's right: his right cheek faces the camera, the "right" view's sign
    assert yaws[0] < 0 and quality.EXPECTED_YAW_DEG["right"] < 0


def test_analyzer_reports_the_pose_check_with_retinaface(tmp_path):
    """Through the chain: RetinaFace's landmarks, the photo's view, the check and "needs review"."""
    analyzer = Analyzer(_glare_aware_analyzer(tmp_path).lesion, face_mask.make("ellipse"))
    astronaut = skimage.data.astronaut()
    front, left = analyzer([astronaut, astronaut], views=["front", "left"])
    assert front.checks["head turned"]["passed"] is True and abs(front.quality["yaw_deg"]) < 10
    assert left.checks["head turned"]["passed"] is False and "head turned" in left.flags
    assert any(r.startswith("head turned: yaw_error_deg") for r in left.review_reasons)


def _random_lesion(tmp_path, name: str, classes: int) -> Segmenter:
    model = DDRNet("23-tiny", classes, True)
    v = init_variables(model, jax.random.key(classes), (64, 64))
    meta = {**tasks.get("lesion").model_meta({"variant": "23-tiny", "num_classes": classes, "aux_head": True}),
            "task": "lesion", "input": InputContract(size=(64, 64), mask_input=True,
                                                    unassessable=classes == 3).to_meta()}
    return Segmenter.load(save_model(tmp_path / name, v, meta))


def test_glare_study_rows_and_table_add_up(tmp_path):
    """launch.glare_study's per-photo rows, summary, flag study and page on two real photos through four
    (random) lesion networks: every figure is the mean of the rows it summarises."""
    from launch import glare_study

    analyzers = {s: Analyzer(_random_lesion(tmp_path, s, 3 if s in glare_study.GLARE_AWARE else 2),
                             face_mask.make("ground_truth")) for s in glare_study.SETTINGS}
    p = synthetic.make_patient(glare_study.SEED, 0)
    photos = [synthetic.render(p, 0, v, SIZE, synthetic.Acquisition(glare=(3.0, 3.0))) for v in ("front", "left")]
    rows = [glare_study.analyse(analyzers, s) for s in photos]
    for row, s in zip(rows, photos):
        face = s.face_mask > 0
        for setting, r in row.items():
            assert r["ratio_true"] == pytest.approx(s.ratio, abs=1e-9)
            assert r["unassessable_true_pct"] == pytest.approx(100 * s.unassessable_mask[face].mean())
    summary = glare_study.summarise(rows)
    for setting in glare_study.SETTINGS:
        assert summary[setting]["mae"] == pytest.approx(np.mean([abs(r[setting]["error"]) for r in rows]))
    study = {"patients": 1, "photos_per_condition": 2, "rows": {}, "by_condition": {}}
    for name, _ in glare_study.CONDITIONS:
        study["rows"][name], study["by_condition"][name] = rows, summary
    study["unassessable_flag"] = glare_study.flag_study(study)
    study["specular_free_auc"] = auc = glare_study.specular_free_auc([photos[0]])
    assert auc["photo"][0] > 0.95 and auc["specular-free"][0] < 0.5  # the pre-step inverts patient 0's lesions
    assert study["unassessable_flag"]["photos"] == 2 * len(glare_study.CONDITIONS)
    page = glare_study.markdown(study, "python -m launch.glare_study")
    strong = glare_study.CONDITIONS[3][0]
    assert f"| {strong} | {summary['unassessable_true_mean']:.2f} | {summary['standard']['mae']:.2f} (" in page
    assert f"AUC of {auc['photo'][0]:.3f}-{auc['photo'][0]:.3f} in the photo" in page
    assert page.rstrip().endswith("Produced by `python -m launch.glare_study`.")


def test_analyze_writes_the_unassessable_mask_and_the_checks(tmp_path):
    """launch.analyze with a glare-aware bundle: unassessable_mask.png at full resolution holds the pixels
    results.json counts, the ratio leaves them out, and every check is reported with its limit."""
    import json

    from PIL import Image

    from launch import analyze, export

    seg = _random_lesion(tmp_path, "lesion3", 3)
    assert export.main(["--workdir", seg.where, "--out", str(tmp_path / "bundle")]) == 0
    s = synthetic.render(synthetic.make_patient(0, 3), 0, "front", (640, 448))
    (tmp_path / "in" / "P1" / "0").mkdir(parents=True)
    Image.fromarray(s.image).save(tmp_path / "in" / "P1" / "0" / "front.png")
    out = tmp_path / "out"
    analyze.main(["--model", str(tmp_path / "bundle"), str(tmp_path / "in"), "--out", str(out),
                  "--face-mask", "ellipse", "--detector", "retinaface"])
    photo = json.loads((out / "results.json").read_text())["photos"][0]
    glare = np.asarray(Image.open(out / photo["files"]["unassessable_mask"])) > 0
    face = np.asarray(Image.open(out / photo["files"]["face_mask"])) > 0
    lesion = np.asarray(Image.open(out / photo["files"]["lesion_mask"])) > 0
    assert glare.shape == (640, 448) and glare.sum() == photo["unassessable_pixels"] and not (glare & ~face).any()
    assert not (glare & lesion).any()
    assert face.sum() > glare.sum()  # this random network leaves part of the face assessable
    assert photo["ratio"] == pytest.approx(100 * lesion.sum() / (face.sum() - glare.sum()))
    checks = photo["checks"]
    assert set(checks) == {c.flag for c in quality.CHECKS}
    assert checks["head turned"]["value"] == pytest.approx(abs(photo["yaw_deg"]))  # front: 0 expected
    assert checks["face too small"]["limit"] == 256 and checks["face too small"]["passed"] is False


def test_tta_of_a_glare_aware_network_keeps_a_lesion_one_member_sees():
    """One member calls the pixel glare, the other lesion: the lesion stays, glare is their mean (0.4)."""
    from vitijax.segmenter import _keep_lesion_any_member_sees

    stack = np.array([[[[0.1, 0.2, 0.7]]], [[[0.3, 0.6, 0.1]]]], np.float32)  # [members, 1, 1, 3]
    p = _keep_lesion_any_member_sees(stack)
    assert p.shape == (1, 1, 3) and p.sum() == pytest.approx(1.0) and p[0, 0, 2] == pytest.approx(0.4)
    assert metrics.foreground(p)[0, 0] and not metrics.unassessable(p)[0, 0]
    both_glare = np.array([[[[0.1, 0.1, 0.8]]], [[[0.2, 0.2, 0.6]]]], np.float32)
    assert metrics.unassessable(_keep_lesion_any_member_sees(both_glare))[0, 0]


def test_a_lesion_network_whose_classes_contradict_its_contract_is_refused(tmp_path):
    from vitijax.checkpoint import CheckpointError

    model = DDRNet("23-tiny", 3, True)
    v = init_variables(model, jax.random.key(0), (64, 64))
    meta = {**tasks.get("lesion").model_meta({"variant": "23-tiny", "num_classes": 3, "aux_head": True}),
            "task": "lesion", "input": InputContract(size=(64, 64), mask_input=True).to_meta()}
    with pytest.raises(CheckpointError, match="3 classes and input.unassessable=False.*2 classes .*or 3 with"):
        Segmenter.load(save_model(tmp_path / "m", v, meta))
