"""Data: the synthetic generator, crops, splits, image I/O, the folder check, TFDS builds, grain pipelines."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageFilter

from launch import build_dataset
from vitijax import face
from vitijax.data import folder, io, splits, synthetic, tfds_io
from vitijax import tasks
from vitijax.contract import InputContract
from vitijax.data.pipeline import Augment, eval_batches, train_loader

LESION = tasks.get("lesion")


def prepare(example, contract, aug=None, rng=None):
    return LESION.prepare(example, contract, aug, rng)
from vitijax.data.records import make_example


# --- synthetic generator -----------------------------------------------------------

def test_generator_is_deterministic_and_ground_truth_is_exact():
    p = synthetic.make_patient(7, 3)
    a, b = synthetic.render(p, 1, "front"), synthetic.render(synthetic.make_patient(7, 3), 1, "front")
    np.testing.assert_array_equal(a.image, b.image)
    assert a.image.shape == (384, 256, 3) and a.image.dtype == np.uint8
    assert set(np.unique(a.face_mask)) <= {0, 1} and set(np.unique(a.vitiligo_mask)) <= {0, 1}
    assert not np.any(a.vitiligo_mask & ~a.face_mask.astype(bool))  # vitiligo lies inside the face
    assert a.face_box == face.box_from_mask(a.face_mask)
    assert a.ratio == pytest.approx(100 * a.vitiligo_mask.sum() / a.face_mask.sum())
    other = synthetic.render(synthetic.make_patient(7, 4), 1, "front")
    assert not np.array_equal(a.image, other.image)


def test_three_views_show_one_face():
    """A lesion on the patient's left cheek: largest in the left view, visible in front, smallest in right."""
    lesion = synthetic.Lesion(azimuth=0.7, elevation=-0.1, radius=0.15, roughness=0.1, border=0.05, contrast=1.0,
                              response=1.0, noise_seed=1)
    p = dataclasses.replace(synthetic.make_patient(0, 0), lesions=(lesion,), islands=0.0, rate=0.0)
    px = {v: synthetic.render(p, 0, v).vitiligo_mask.sum() for v in synthetic.VIEWS}
    assert px["left"] > px["front"] > px["right"] and px["front"] > 0
    front = synthetic.render(p, 0, "front")
    ys, xs = np.nonzero(front.vitiligo_mask)
    assert xs.mean() > (front.face_box[0] + front.face_box[2]) / 2  # patient's left = image right


@pytest.mark.parametrize("rate,trend", [(0.25, "down"), (-0.1, "up")])
def test_treatment_trajectory(rate, trend):
    p = dataclasses.replace(synthetic.make_patient(0, 2), rate=rate)
    ratios = [synthetic.render(p, v, "front").ratio for v in range(4)]
    assert (np.diff(ratios) < 0).all() if trend == "down" else (np.diff(ratios) > 0).all(), ratios


def test_every_subtype_places_lesions_on_the_face():
    for subtype in synthetic.SUBTYPES:
        s = synthetic.render(synthetic.make_patient(1, 0, subtype=subtype), 0, "front")
        assert s.vitiligo_mask.sum() > 0 and s.subtype == subtype


def test_full_paper_resolution_render():
    s = synthetic.render(synthetic.make_patient(0, 1), 0, "left", synthetic.PAPER_SIZE)
    assert s.image.shape == (4240, 2832, 3)
    assert s.face_mask.sum() > 1_000_000 and np.isfinite(s.ratio)


# --- crops -------------------------------------------------------------------------

def test_example_stores_the_whole_photo_downscaled():
    s = synthetic.render(synthetic.make_patient(0, 0), 0, "front", (2048, 1368))
    ex = make_example(s.image, s.face_mask, s.vitiligo_mask, patient="P", visit=0, view="front", face_box=s.face_box)
    assert ex["photo"].shape == (1024, 684, 3)
    assert ex["face_pixels"] == s.face_mask.sum() and ex["ratio"] == pytest.approx(s.ratio, rel=1e-6)


def test_crop_contains_the_face_and_pastes_back_exactly():
    s = synthetic.render(synthetic.make_patient(0, 0), 0, "right")
    box = face.crop_box(s.face_box, 0.15)
    assert box[2] - box[0] == box[3] - box[1]  # square
    c = face.crop(s.face_mask, box)
    assert c.sum() == s.face_mask.sum()  # the whole face mask is inside the crop
    np.testing.assert_array_equal(face.paste_back(c, box, s.face_mask.shape), s.face_mask)


def test_crop_past_the_photo_edge_is_zero_filled_and_round_trips():
    img = np.arange(20 * 30, dtype=np.int32).reshape(20, 30)
    box = face.crop_box((20, 2, 30, 12), 0.5)  # reaches past the right and top edges
    c = face.crop(img, box)
    assert c.shape == (box[3] - box[1], box[2] - box[0]) and (c == 0).sum() > 0
    back = face.paste_back(c, box, img.shape)
    inside = face.crop(np.ones_like(img), box).astype(bool)
    np.testing.assert_array_equal(back[face.paste_back(inside, box, img.shape)], img[face.paste_back(inside, box, img.shape)])


# --- splits ------------------------------------------------------------------------

def test_splits_partition_patients():
    ids = [f"P{i:02d}" for i in range(20)]
    s = splits.fraction_split(ids, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert sorted(sum(s.values(), [])) == ids and len(s["test"]) == 4 and len(s["validation"]) == 2
    k = splits.kfold_split(ids, 5)
    assert sorted(sum(k.values(), [])) == ids and {len(v) for v in k.values()} == {4}
    h = splits.held_out_split(ids, ["P03", "P07"], val_fraction=0.1)
    assert h["test"] == ["P03", "P07"] and "P03" not in h["train"] + h["validation"]


def test_a_split_that_cannot_be_filled_says_what_would_fill_it():
    with pytest.raises(ValueError, match=r"2 patients cannot fill validation \(1\), test \(1\) and train .*"
                                         r"--val-fraction 0 --test-fraction 0\.5"):
        splits.fraction_split(["a", "b"])
    with pytest.raises(ValueError, match="one patient cannot be held out from itself"):
        splits.fraction_split(["a"])
    with pytest.raises(ValueError, match=r"--val-fraction 0\.20 --test-fraction 0\.20"):
        splits.fraction_split(list("abcde"), val_fraction=0.6, test_fraction=0.4)


def test_patient_in_two_splits_is_refused_by_name():
    with pytest.raises(splits.SplitLeak, match="patient P05 is in test, validation"):
        splits.held_out_split(["P01", "P05", "P09"], ["P05"], validation_patients=["P05", "P09"])


# --- image I/O -----------------------------------------------------------------------

def test_read_photo_converts_modes_and_applies_exif(tmp_path):
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[:, :5] = 200
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    assert io.read_photo(tmp_path / "rot.jpg").shape == (20, 10, 3)
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    assert io.read_photo(tmp_path / "a.png").shape == io.read_photo(tmp_path / "g.png").shape == (10, 20, 3)
    Image.fromarray((np.arange(200, dtype=np.uint16).reshape(10, 20) * 300)).save(tmp_path / "d16.png")
    p16 = io.read_photo(tmp_path / "d16.png")
    assert p16.dtype == np.uint8 and p16.shape == (10, 20, 3)
    assert p16.max() == round(59700 / 65535 * 255)  # 16-bit full scale maps to 8-bit full scale


def test_bad_images_and_masks_are_named(tmp_path):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(io.ImageReadError, match=r"cut\.jpg: unreadable or truncated"):
        io.read_photo(tmp_path / "cut.jpg")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(io.ImageReadError, match=r"m\.png: mask is 40x30 \(w x h\) but its photo is 40x40"):
        io.read_mask(tmp_path / "m.png", (40, 40))
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(tmp_path / "v.png")
    with pytest.raises(io.ImageReadError, match=r"values must be \{0,1\} or \{0,255\} \(or anti-aliased black and "
                                                 r"white\), found 128; a label map\? .*--format labelmap"):
        io.read_mask(tmp_path / "v.png", (40, 40))
    soft = np.zeros((40, 40), np.uint8)
    soft[10:30, 10:30] = 255
    soft[10:30, 9] = 100  # an anti-aliased edge: 20 pixels neither black nor white, below the threshold
    soft[10:30, 30] = 200  # and 20 above it
    Image.fromarray(soft).save(tmp_path / "soft.png")
    changed: list[int] = []
    np.testing.assert_array_equal(io.read_mask(tmp_path / "soft.png", (40, 40), changed), soft >= io.MASK_THRESHOLD)
    assert changed == [40]
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(tmp_path / "w.png")
    assert io.read_mask(tmp_path / "w.png", (40, 40)).max() == 1


# --- a researcher's folder ------------------------------------------------------------

def _write_patient(root, pid_index, pid=None, visits=1, views=synthetic.VIEWS, ext=".jpg"):
    p = synthetic.make_patient(5, pid_index)
    pid = pid or p.patient_id
    for visit in range(visits):
        for view in views:
            s = synthetic.render(p, visit, view, (160, 112))
            for sub, arr in (("images", s.image), ("face_masks", s.face_mask * 255),
                             ("vitiligo_masks", s.vitiligo_mask * 255)):
                d = root / sub / pid / str(visit)
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(d / f"{view}{ext if sub == 'images' else '.png'}", quality=95)
    return pid


@pytest.fixture()
def user_folder(tmp_path):
    root = tmp_path / "uv_photos"
    for i in range(5):
        _write_patient(root, i)
    # the problems a real folder has:
    jpg = root / "images" / "P000" / "0" / "front.jpg"
    jpg.write_bytes(jpg.read_bytes()[:400])  # a corrupt (truncated) photo
    Image.fromarray(np.zeros((100, 80), np.uint8)).save(root / "face_masks" / "P001" / "0" / "left.png")  # wrong size
    (root / "images" / "P002" / "0" / "right.jpg").unlink()  # a missing view
    dup = root / "images" / "P004" / "0"
    (root / "images" / "P099" / "0").mkdir(parents=True)
    (root / "images" / "P099" / "0" / "front.jpg").write_bytes((dup / "front.jpg").read_bytes())  # duplicate
    for sub in ("face_masks", "vitiligo_masks"):
        (root / sub / "P099" / "0").mkdir(parents=True)
        (root / sub / "P099" / "0" / "front.png").write_bytes((root / sub / "P004" / "0" / "front.png").read_bytes())
    return root


def test_folder_check_reports_each_problem_by_file(user_folder):
    records, report = folder.scan(user_folder)
    text = report.text()
    assert len(records) == 15 - 1 - 1 - 1  # 15 photos, minus corrupt, wrong-size mask, missing; dup not counted
    assert "P000/0/front.jpg: unreadable or truncated" in text
    assert "P001/0/left.png: mask is 80x100 (w x h) but its photo is 112x160" in text
    assert "P002/visit 0: has front, left; missing right" in text
    assert "P099/0/front.jpg: duplicate of" in text and "P004/0/front.jpg of another patient (P004; one of them is " \
        "mislabelled?)" in text
    assert len(report.skipped) == 3 and report.records == 12


def test_folder_takes_real_archives_and_says_everything_once(tmp_path):
    """Any view name, ISO-date visits, .bmp photos, anti-aliased masks, a photo without a face mask; a second
    photo for one slot is named; a duplicate does not hide an empty face mask; many visits lacking views are
    one line of text (every one in the JSON)."""
    root = tmp_path / "archive"
    for i in range(7):  # seven patients photographed from the front only
        _write_patient(root, i, views=("front",))
    p = synthetic.make_patient(5, 9)
    s = synthetic.render(p, 0, "front", (160, 112))
    d = {sub: root / sub / "P900" / "2024-03-15" for sub in ("images", "face_masks", "vitiligo_masks")}
    for x in d.values():
        x.mkdir(parents=True)
    Image.fromarray(s.image).save(d["images"] / "oblique.bmp")
    soft = np.asarray(Image.fromarray(s.face_mask * 255).filter(ImageFilter.GaussianBlur(1.0)))
    Image.fromarray(soft).save(d["face_masks"] / "oblique.png")  # anti-aliased edges
    Image.fromarray(s.vitiligo_mask * 255).save(d["vitiligo_masks"] / "oblique.png")
    Image.fromarray(s.image).save(d["images"] / "chin.png")  # no face mask for this one
    Image.fromarray(s.vitiligo_mask * 255).save(d["vitiligo_masks"] / "chin.png")
    Image.fromarray(s.image).save(root / "images" / "P000" / "0" / "front.png")  # a second photo for P000/0/front
    # a duplicate (of P900's oblique) whose face mask is also empty: both are said
    e = {sub: root / sub / "P901" / "0" for sub in ("images", "face_masks", "vitiligo_masks")}
    for x in e.values():
        x.mkdir(parents=True)
    (e["images"] / "front.bmp").write_bytes((d["images"] / "oblique.bmp").read_bytes())
    Image.fromarray(np.zeros((160, 112), np.uint8)).save(e["face_masks"] / "front.png")
    Image.fromarray(np.zeros((160, 112), np.uint8)).save(e["vitiligo_masks"] / "front.png")
    (root / "images" / ".DS_Store").write_bytes(b"\0")  # the file system's, not the researcher's
    (root / "images" / "P000" / "notes.txt").write_text("seen at 3 pm")
    records, report = folder.scan(root)
    by = {(r.patient, r.visit, r.view): r for r in records}
    assert ".DS_Store" not in report.to_json() and "[ignored]" in report.text() and "notes.txt" in report.text()
    assert ("P900", 20240315, "oblique") in by and ("P900", 20240315, "chin") in by
    assert by[("P900", 20240315, "chin")].face_mask == ""  # whole-image mode
    text = report.text()
    assert "anti-aliased mask pixels (neither 0 nor 255) binarised at 128" in text
    assert "no face mask: the whole photo is the face region (whole-image mode)" in text
    assert "a second photo for patient P000, visit 0, view front (the first is" in text
    assert "P901/0/front.png: face mask is empty" in text and "P901/0/front.bmp: duplicate of" in text
    assert "of another patient (P900" in text
    assert "7 x visits with only front of the three views" in text
    assert text.count("missing left, right") == 1  # one example line; the rest are in the JSON
    assert json.loads(report.to_json())["problems"].__len__() == len(report.problems) >= 11
    photo, face, vit = folder.load_record(by[("P900", 20240315, "chin")])
    assert face.all() and face.shape == photo.shape[:2]
    assert np.array_equal(folder.load_record(by[("P900", 20240315, "oblique")])[1], (soft >= 128).astype(np.uint8))


def test_folder_build_and_leak_refusal(user_folder, tmp_path, capsys):
    (user_folder / "splits").mkdir()
    (user_folder / "splits" / "test.txt").write_text("P003\n")
    (user_folder / "splits" / "validation.txt").write_text("P003\nP001\n")  # P003 in two splits
    rc = build_dataset.main(["--name", "uv_vitiligo", "--manual-dir", str(user_folder),
                             "--data-dir", str(tmp_path / "tfds"), "--allow-skips"])
    assert rc == 2 and "patient P003 is in test, validation" in capsys.readouterr().err
    (user_folder / "splits" / "validation.txt").write_text("P001\n")
    # --check: the report as JSON, and exit 1 because photos would be skipped
    assert build_dataset.main(["--name", "uv_vitiligo", "--manual-dir", str(user_folder), "--check",
                               "--data-dir", str(tmp_path / "tfds")]) == 1
    check = json.loads((tmp_path / "tfds" / "reports" / "uv_vitiligo_default_check_validation.json").read_text())
    assert check["skipped"] == 3 and any("truncated" in p["problem"] for p in check["problems"])
    # the build stops on skipped photos unless told to go on without them
    rc = build_dataset.main(["--name", "uv_vitiligo", "--manual-dir", str(user_folder),
                             "--data-dir", str(tmp_path / "tfds")])
    err = capsys.readouterr().err
    assert rc == 2 and "3 photos were skipped" in err and "build without them with --allow-skips" in err
    rc = build_dataset.main(["--name", "uv_vitiligo", "--manual-dir", str(user_folder),
                             "--data-dir", str(tmp_path / "tfds"), "--allow-skips"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "unreadable or truncated" in out and "test: 3 examples" in out and "validation: 2 examples" in out
    b = tfds_io.get_builder("uv_vitiligo", data_dir=str(tmp_path / "tfds"))
    test = tfds_io.data_source(b, "test", with_photo=True)
    ex = test[0]
    assert ex["patient"] == "P003" and ex["source_file"].endswith(".jpg") and len(ex["source_sha256"]) == 64
    assert ex["image"].shape[0] == ex["image"].shape[1] and ex["face_mask"].shape == ex["image"].shape[:2]
    assert tuple(ex["original_size"]) == (160, 112)
    assert ex["photo"].shape == (160, 112, 3)  # small photos are stored whole
    assert ex["ratio"] == pytest.approx(100 * ex["vitiligo_pixels"] / ex["face_pixels"], rel=1e-5)
    reports = sorted(os.listdir(tmp_path / "tfds" / "reports"))
    assert reports == ["uv_vitiligo_default_check_validation.json", "uv_vitiligo_default_validation.json"]
    assert "Downloading" not in out and "nothing is downloaded" in out


def test_synthetic_tfds_build_without_tensorflow(tmp_path):
    assert importlib.util.find_spec("tensorflow") is None, "TensorFlow must not be installed"
    rc = build_dataset.main(["--name", "synthetic_uv_vitiligo", "--config", "tiny", "--data-dir", str(tmp_path)])
    assert rc == 0
    b = tfds_io.get_builder("synthetic_uv_vitiligo", data_dir=str(tmp_path), config="tiny")
    by_split = {s: tfds_io.data_source(b, s) for s in ("train", "validation", "test")}
    patients = {s: {src[i]["patient"] for i in range(len(src))} for s, src in by_split.items()}
    assert sum(len(v) for v in by_split.values()) == 6 * 2 * 3
    assert not (patients["train"] & patients["test"]) and not (patients["train"] & patients["validation"])
    ex = by_split["test"][0]
    assert ex["image"].dtype == np.uint8 and set(np.unique(ex["vitiligo_mask"])) <= {0, 1}
    assert isinstance(ex["photo"], bytes) and ex["photo"][:4] == b"\x89PNG"  # left encoded for training
    # The stored ratio is the full-resolution truth of the rendered photo.
    pid, visit, view = ex["patient"], int(ex["visit"]), ex["view"]
    s = synthetic.render(synthetic.make_patient(0, int(pid[1:])), visit, view, (192, 128))
    assert ex["ratio"] == pytest.approx(s.ratio, rel=1e-5)
    # The build records its crop rule; another margin is another data set, never a silent reuse.
    assert dict(b.info.metadata) == {"crop_margin": 0.15, "face_mask_source": "synthetic truth", "build_options": {
        "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0, "max_side": None}}
    with pytest.raises(ValueError, match=r"cropped with margin 0\.15, the run asks for 0\.3; build it with .*--crop-margin 0\.3"):
        tfds_io.check_margin(b, 0.3)
    from vitijax.data.sources import load_splits
    import ml_collections

    cfg = ml_collections.ConfigDict(dict(source="tfds", name="synthetic_uv_vitiligo", config="tiny",
                                         data_dir=str(tmp_path), build_if_missing=False))
    with pytest.raises(FileNotFoundError, match=r"synthetic_uv_vitiligo/tiny_margin0\.3 is not built .*--crop-margin 0\.3"):
        load_splits(cfg, ["test"], margin=0.3)
    assert build_dataset.main(["--name", "synthetic_uv_vitiligo", "--config", "tiny", "--data-dir", str(tmp_path),
                               "--crop-margin", "0.3"]) == 0
    wide = load_splits(cfg, ["test"], margin=0.3)["test"][0]
    x0, y0, x1, y1 = (int(v) for v in wide["face_box"])
    cx0, cy0, cx1, cy1 = (int(v) for v in wide["crop_box"])
    assert cx1 - cx0 == round(max(x1 - x0, y1 - y0) * 1.6) == wide["image"].shape[0]
    assert load_splits(cfg, ["test"])["test"][0]["image"].shape == ex["image"].shape  # the 0.15 build, untouched


# --- pipelines ------------------------------------------------------------------------

def _examples(n=7):
    out = []
    for i in range(n):
        s = synthetic.render(synthetic.make_patient(2, i % 4), 0, synthetic.VIEWS[i % 3], (160, 112))
        out.append(make_example(s.image, s.face_mask, s.vitiligo_mask, patient=s.patient_id, visit=0,
                                view=s.view, face_box=s.face_box))
    return out


def test_augmentation_moves_image_and_masks_together():
    ex = _examples(1)[0]
    ex = {**ex, "image": np.repeat(ex["vitiligo_mask"][..., None] * 255, 3, -1).astype(np.uint8)}
    cfg = InputContract(size=(64, 64), mask_input=False)
    aug = Augment(brightness=0, contrast=0, uv_tone=0, blur_prob=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        out = prepare(ex, cfg, aug, rng)
        bright = out["image"][..., 0] > 0.5
        lesion = out["label"] == 1
        assert (bright & lesion).sum() / max((bright | lesion).sum(), 1) > 0.8


def test_flip_swaps_left_and_right_views():
    ex = _examples(1)[0]
    assert ex["view"] == "left"
    cfg = InputContract(size=(64, 64), mask_input=True)
    aug = Augment(flip=True, scale_range=(1, 1), max_rotation_deg=0)
    views = set()
    for seed in range(8):
        views.add(prepare(ex, cfg, aug, np.random.default_rng(seed))["view"])
    assert views == {"left", "right"}


def test_eval_batches_yield_every_example_once_padded():
    src = _examples(7)
    cfg = InputContract(size=(32, 32), mask_input=True)
    seen = []
    counts = []
    for shard in range(2):
        batches = list(eval_batches(src, LESION, cfg, 3, shard_index=shard, shard_count=2, keys=("patient",)))
        counts.append(len(batches))
        for b in batches:
            seen += [int(i) for i, v in zip(b["index"], b["valid"]) if v]
            assert all((p is None) == (not v) for p, v in zip(b["patient"], b["valid"]))
    assert sorted(seen) == list(range(7)) and counts[0] == counts[1] == 2


def test_train_loader_is_seeded_and_resumable():
    src = _examples(6)
    cfg = InputContract(size=(32, 32), mask_input=True)
    it = iter(train_loader(src, "lesion", cfg, Augment(), 2, seed=1))
    first = [next(it)["image"] for _ in range(2)]
    state = it.get_state()
    after = next(it)["image"]
    again = iter(train_loader(src, "lesion", cfg, Augment(), 2, seed=1))
    np.testing.assert_array_equal(next(again)["image"], first[0])
    resumed = iter(train_loader(src, "lesion", cfg, Augment(), 2, seed=1))
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["image"], after)
    other = next(iter(train_loader(src, "lesion", cfg, Augment(), 2, seed=2)))["image"]
    assert not np.array_equal(other, first[0])
