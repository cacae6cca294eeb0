"""RetinaFace MobileNet-0.25 in Flax against the shipped ONNX model run by onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
skdata = pytest.importorskip("skimage.data")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from vitijax import face  # noqa: E402
from vitijax.evaluate import box_iou  # noqa: E402
from vitijax.models import retinaface as rf  # noqa: E402


def photos():
    astro = skdata.astronaut()
    camera = np.repeat(skdata.camera()[..., None], 3, -1)
    return {"astronaut": astro, "astronaut_mirrored": astro[:, ::-1].copy(), "camera": camera,
            "camera_mirrored": camera[:, ::-1].copy(),
            # odd sides, not multiples of 32: ceil-sized pyramids, nearest upsampling of odd maps
            "astronaut_odd": astro[:437, 21:410].copy()}


@pytest.fixture(scope="module")
def flax_and_onnx():
    data = rf.onnx_weights_bytes()
    variables = rf.variables_from_onnx(data)
    model = rf.RetinaFace()
    return jax.jit(lambda x: model.apply(variables, x)), ort.InferenceSession(data)



@pytest.mark.parametrize("name", list(photos()))
def test_same_detections_as_onnxruntime(flax_and_onnx, name):
    fwd, sess = flax_and_onnx
    img = photos()[name]
    x = rf.preprocess(img)
    ours = [np.asarray(a)[0] for a in fwd(jnp.asarray(x))]
    theirs = [a[0] for a in sess.run(None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})]
    h, w = img.shape[:2]
    a, b = rf.postprocess(*ours, h, w), rf.postprocess(*theirs, h, w)
    assert len(a.scores) == len(b.scores) >= 1
    for i in range(len(a.scores)):
        assert box_iou(a.boxes[i], b.boxes[i]) >= 0.99
        assert abs(a.scores[i] - b.scores[i]) <= 1e-3
        assert np.abs(a.landmarks[i] - b.landmarks[i]).max() <= 1.0
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-4)  # all face scores, not just the kept ones


def test_detect_maps_back_to_full_resolution_and_mirrors():
    img = photos()["astronaut"]  # 512x512; the face is near (178..273, 57..177)
    big = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(img).resize((2048, 2048)))
    small_dets = face.detect(img, long_side=512)
    big_dets = face.detect(big, long_side=512)
    assert len(small_dets) == len(big_dets) == 1
    assert box_iou(np.array(big_dets[0].box) / 4, small_dets[0].box) > 0.97
    d = small_dets[0]
    assert 150 < d.box[0] < 200 and 250 < d.box[2] < 300 and d.score > 0.99
    assert d.landmarks.shape == (5, 2) and d.box[0] < d.landmarks[:, 0].min() and d.landmarks[:, 0].max() < d.box[2]
    mirrored = face.detect(img[:, ::-1].copy(), long_side=512)[0]
    assert mirrored.box[0] == pytest.approx(512 - d.box[2], abs=3)


def test_detect_on_a_non_square_photo_with_padding(flax_and_onnx):
    """An odd, non-square photo (padded to 32 inside detect): boxes agree with onnxruntime on the raw photo."""
    _, sess = flax_and_onnx
    img = photos()["astronaut"][:437, 21:410].copy()  # 437 x 389
    x = rf.preprocess(img)
    ref = rf.postprocess(*[a[0] for a in sess.run(None, {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})],
                         437, 389)
    got = face.detect(img, long_side=640)  # no downscale; padded to 448 x 416
    assert len(got) == len(ref.scores) == 1
    assert box_iou(got[0].box, ref.boxes[0]) > 0.97 and abs(got[0].score - ref.scores[0]) < 0.01


def test_no_face_is_an_empty_list_and_choose_face_picks_the_largest():
    assert face.detect(np.full((300, 200, 3), 90, np.uint8)) == []
    assert face.choose_face([]) is None
    small = face.Detection((0, 0, 10, 10), 0.99, np.zeros((5, 2)))
    large = face.Detection((0, 0, 100, 120), 0.9, np.zeros((5, 2)))
    weak = face.Detection((0, 0, 300, 300), 0.55, np.zeros((5, 2)))  # above detect's 0.5, below 0.8 x best
    assert face.choose_face([small, large, weak]) is large
    with pytest.raises(ValueError, match="RGB image"):
        face.detect(np.zeros((10, 10), np.uint8))


def test_converted_weights_are_cached(tmp_path):
    v1 = rf.pretrained_variables(cache_dir=str(tmp_path))
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    v2 = rf.pretrained_variables(cache_dir=str(tmp_path))
    for a, b in zip(jax.tree_util.tree_leaves(v1), jax.tree_util.tree_leaves(v2), strict=True):
        np.testing.assert_array_equal(a, b)
