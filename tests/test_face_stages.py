"""The face stages: the face-box network (loss, input, training, finding the face in every view) and the
face-mask sources."""

from __future__ import annotations

import numpy as np
import pytest

from vitijax import face
from vitijax.checkpoint import CheckpointError
from vitijax.data import synthetic
from vitijax.contract import InputContract
from vitijax.data.pipeline import Augment, photo_example
from vitijax.inputs import box_to_photo
from vitijax.losses import box_iou_giou, box_loss
from vitijax.evaluate import box_iou


def test_giou_against_hand_computed_values():
    pred = np.array([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 4, 2]], np.float32)
    target = np.array([[1, 1, 3, 3], [2, 0, 3, 1], [0, 0, 4, 2]], np.float32)
    iou, giou = (np.asarray(v) for v in box_iou_giou(pred, target))
    # overlap 1, union 7, hull 9 | disjoint: union 2, hull 3 | identical
    np.testing.assert_allclose(iou, [1 / 7, 0, 1], rtol=1e-6)
    np.testing.assert_allclose(giou, [1 / 7 - 2 / 9, -1 / 3, 1], rtol=1e-6)
    loss, parts = box_loss(pred[:2] / 4, target[:2] / 4, l1_weight=5.0, giou_weight=2.0)
    l1 = np.abs(pred[:2] - target[:2]).mean() / 4
    np.testing.assert_allclose(float(loss), 5 * l1 + 2 * np.mean([1 - (1 / 7 - 2 / 9), 1 + 1 / 3]), rtol=1e-5)
    assert float(parts["iou"]) == pytest.approx(1 / 14)


def test_box_loss_leaves_out_the_box_of_photos_without_a_face():
    """A photo without a face adds only its presence term (binary cross-entropy against an independent
    formula), whatever its box; the box terms average over the photos with a face."""
    pred = np.array([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.4, 0.6], [0.0, 0.0, 1.0, 1.0]], np.float32)
    target = np.array([[0.1, 0.1, 0.5, 0.6], [0.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.4, 0.4]], np.float32)
    logits = np.array([2.0, 1.0, 0.5], np.float32)
    present = np.array([1.0, 0.0, 1.0], np.float32)
    loss, parts = box_loss(pred, target, logits, present, l1_weight=5.0, giou_weight=2.0, presence_weight=1.0)
    keep = present > 0
    ref_box, _ = box_loss(pred[keep], target[keep], l1_weight=5.0, giou_weight=2.0)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -np.mean(present * np.log(p) + (1 - present) * np.log(1 - p))
    assert float(parts["loss_presence"]) == pytest.approx(bce, rel=1e-5)
    assert float(loss) == pytest.approx(float(ref_box) + bce, rel=1e-5)
    assert float(parts["presence_accuracy"]) == pytest.approx(2 / 3)  # logit 1.0 says face where there is none
    # the box of the photo without a face does not matter
    moved = target.copy()
    moved[1] = [0.9, 0.9, 1.0, 1.0]
    assert float(box_loss(pred, moved, logits, present)[0]) == pytest.approx(float(loss), rel=1e-6)


def test_no_face_photos_hold_no_face():
    """Every kind of negative is a valid RGB photo; the background strip never overlaps the face box and the
    skin patch lies inside it (so neither shows a whole face); evaluation negatives are fixed per index."""
    from vitijax.data import no_face

    s = synthetic.render(synthetic.make_patient(3, 0), 0, "front", (240, 160))
    rng = np.random.default_rng(0)
    for kind in no_face.KINDS:
        for _ in range(5):
            img = no_face.no_face_photo(s.image, s.face_box, rng, kind)
            assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 16, kind
    # a background strip is a piece of the photo outside the face box: never as big as the photo
    x0, y0, x1, y1 = s.face_box
    strip = no_face.no_face_photo(s.image, s.face_box, rng, "background")
    assert strip.shape[0] < 240 or strip.shape[1] < 160
    blank = no_face.no_face_photo(s.image, s.face_box, rng, "blank")
    assert (blank == blank[0, 0]).all()
    np.testing.assert_array_equal(no_face.evaluation_negative(s.image, s.face_box, 7),
                                  no_face.evaluation_negative(s.image, s.face_box, 7))
    with pytest.raises(ValueError, match="kind must be one of"):
        no_face.no_face_photo(s.image, s.face_box, rng, "cat")


def test_letterboxed_photo_maps_the_box_both_ways():
    """The label follows the photo through letterboxing, scaling, shifting and flipping, and a prediction
    maps back to the photo's pixels exactly."""
    rng = np.random.default_rng(0)
    photo = np.zeros((300, 500, 3), np.uint8)
    box = np.array([310.0, 60.0, 410.0, 200.0])
    photo[60:200, 310:410] = 255  # a white box where the face is
    contract = InputContract(size=(160, 160), source="photo", normalisation="retinaface")
    aug = Augment(scale_range=(0.7, 1.1), blur_prob=0.0, brightness=0.0, contrast=0.0, uv_tone=0.0)
    plain = photo_example(photo, contract, box)
    np.testing.assert_allclose(box_to_photo(plain["box"], plain["coeffs"], 160), box, atol=1e-3)
    # letterbox: 500 wide -> 160, so 300 high -> 96, centred: rows 32..128
    np.testing.assert_allclose(plain["box"] * 160, [310 * .32, 32 + 60 * .32, 410 * .32, 32 + 200 * .32], atol=1e-3)
    for _ in range(10):
        out = photo_example(photo, contract, box, aug, rng)
        x0, y0, x1, y1 = np.round(out["box"] * 160).astype(int)
        white = out["image"][..., 0] > 0  # BGR minus mean: the white box is the only positive region
        rows, cols = np.flatnonzero(white.any(1)), np.flatnonzero(white.any(0))
        assert abs(rows[0] - y0) <= 1 and abs(rows[-1] + 1 - y1) <= 1
        assert abs(cols[0] - x0) <= 1 and abs(cols[-1] + 1 - x1) <= 1
        np.testing.assert_allclose(box_to_photo(out["box"], out["coeffs"], 160), box, atol=1e-3)


def test_face_box_network_finds_the_face_in_every_view(tiny_runs):
    workdir, result = tiny_runs["face_box"], tiny_runs["face_box_result"]
    assert result["test"]["recall_50"] == 1.0 and result["best_validation_iou"] > 0.6
    # the presence head, on held-out photos and their fixed no-face negatives
    assert result["test"]["face_found"] == 1.0 and result["test"]["no_face_rejected"] >= 0.8, result["test"]
    sweep = result["test_details"]["presence_sweep"]
    assert [r["face_found"] for r in sweep] == sorted(r["face_found"] for r in sweep)[::-1]  # monotone in t
    model = face.FaceBoxModel.load(workdir)
    # photos of nothing score below the threshold
    from vitijax.data.no_face import no_face_photo

    s = synthetic.render(synthetic.make_patient(7, 0), 0, "front", (480, 320))
    rng = np.random.default_rng(1)
    for kind in ("blank", "noise", "gradient"):
        assert model(no_face_photo(s.image, s.face_box, rng, kind)).score < model.threshold, kind
    # New patients (another seed), every view, at twice the training photos' size: the box is found and
    # the square crop around it holds the annotated face: all of it but a sliver (this 120-step network
    # can end a box 2 pixels above a 170-pixel face's chin, depending on the CPU's rounding), and at least
    # 99 % of its pixels, the share that reaches F-Vitiligo's denominator.
    for i in range(3):
        patient = synthetic.make_patient(7, i)
        for view in synthetic.VIEWS:
            s = synthetic.render(patient, 0, view, (480, 320))
            det = model(s.image)
            assert det.score >= model.threshold and det.landmarks is None, (patient.patient_id, view, det.score)
            iou = box_iou(det.box, s.face_box)
            assert iou > 0.5, (patient.patient_id, view, det.box, s.face_box)
            c = face.crop_box(face.int_box(det.box))
            fx0, fy0, fx1, fy1 = face.box_from_mask(s.face_mask)
            slack = 0.02 * (fy1 - fy0)
            assert c[0] <= fx0 + slack and c[1] <= fy0 + slack and c[2] >= fx1 - slack and c[3] >= fy1 - slack, (
                view, c, (fx0, fy0, fx1, fy1))
            held = face.crop(s.face_mask, c).sum() / s.face_mask.sum()
            assert held >= 0.99, (view, held)


def test_face_box_checkpoint_is_not_a_segmenter(tiny_runs):
    from vitijax.segmenter import Segmenter

    workdir = tiny_runs["face_box"]
    with pytest.raises(CheckpointError, match="facebox checkpoint, not a DDRNet"):
        Segmenter.load(workdir)


def test_ellipse_face_mask_follows_the_box_and_the_eye_line():
    from vitijax.face_mask import EllipseFaceMask, ellipse_mask

    # Upright: the ellipse of the face box covers most of a synthetic face mask and little else.
    s = synthetic.render(synthetic.make_patient(0, 1), 0, "front", (384, 256))
    x0, y0, x1, y1 = s.face_box
    det = face.Detection(tuple(float(v) for v in s.face_box), 0.99, None)
    box = face.crop_box(s.face_box)
    m = EllipseFaceMask()([s.image], [box], [det])[0]
    truth = face.crop(s.face_mask, box)
    inter, union = (m & truth).sum(), (m | truth).sum()
    assert m.shape == truth.shape and inter / union > 0.75
    # Turned: the ellipse's long axis follows the eye line (second moments), 30 degrees here.
    eyes = np.array([[40, 60], [40 + 40 * np.cos(np.pi / 6), 60 + 40 * np.sin(np.pi / 6)], [0, 0], [0, 0], [0, 0]])
    e = ellipse_mask((200, 200), (20, 60, 180, 140), eyes)
    ys, xs = np.nonzero(e)
    cov = np.cov(np.stack([xs, ys]))
    angle = 0.5 * np.degrees(np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1]))
    assert angle == pytest.approx(30, abs=1.5)
    with pytest.raises(ValueError, match="needs a face detection"):
        EllipseFaceMask()([s.image], [box], [None])


def test_ground_truth_face_mask_names_a_size_mismatch():
    from vitijax.face_mask import make

    s = synthetic.render(synthetic.make_patient(0, 2), 0, "left", (192, 128))
    src = make("ground_truth")
    box = face.crop_box(s.face_box)
    np.testing.assert_array_equal(src([s.image], [box], truths=[s.face_mask])[0], face.crop(s.face_mask, box))
    with pytest.raises(ValueError, match=r"face mask of size 64x96 for a photo of 128x192"):
        src([s.image], [box], truths=[np.zeros((96, 64), np.uint8)])
    with pytest.raises(ValueError, match="must be one of"):
        make("matting")
    with pytest.raises(ValueError, match="needs the face-mask network's checkpoint"):
        make("network")


def test_face_mask_network_source(tiny_runs):
    """The tiny face-mask network trained by launch.train answers the face-mask interface at the crop's
    size, the same batched or one at a time; a lesion network is refused as a face-mask network, by name."""
    from vitijax.face_mask import NetworkFaceMask

    src = NetworkFaceMask.load(tiny_runs["face_mask"])
    photos = [synthetic.render(synthetic.make_patient(3, i), 0, v, (160, 112)) for i, v in enumerate(synthetic.VIEWS)]
    boxes = [face.crop_box(s.face_box) for s in photos]
    masks = src([s.image for s in photos], boxes)
    singly = [src([s.image], [b])[0] for s, b in zip(photos, boxes)]
    inter = union = 0
    for s, box, m, m1 in zip(photos, boxes, masks, singly):
        truth = face.crop(s.face_mask, box)
        assert m.shape == truth.shape and set(np.unique(m)) <= {0, 1}
        np.testing.assert_array_equal(m, m1)  # batched = one at a time
        # It has learnt the face: calling the whole crop face scores about 0.5 per photo. One view of
        # this tiny 150-step network can sit near 0.65 (the rounding of the run decides which), so each
        # photo must clear 0.55 and the three together 0.7 (about 0.8 measured).
        i, u = (m & truth).sum(), (m | truth).sum()
        assert i / u > 0.55
        inter, union = inter + i, union + u
    assert inter / union > 0.7
    with pytest.raises(CheckpointError, match="a lesion network where the face-mask network was expected"):
        NetworkFaceMask.load(tiny_runs["lesion"])
    with pytest.raises(CheckpointError, match="a ddrnet checkpoint, not the face-box network"):
        face.FaceBoxModel.load(tiny_runs["lesion"])
