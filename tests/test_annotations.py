"""Annotation importers and exporters: fixture files of every format, written here, into the folder layout."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from launch import export_annotations, import_annotations
from vitijax.data import annotations as ann_lib
from vitijax.data import folder

H, W = 96, 128


def _photo(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


def _rect(x0, y0, x1, y1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _read(root, patient, visit=0, view="front"):
    rel = os.path.join(patient, str(visit), view + ".png")
    return tuple((np.asarray(Image.open(os.path.join(root, d, rel))) > 0).astype(np.uint8)
                 for d in ("face_masks", "vitiligo_masks"))


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


FACE = _rect(20, 10, 100, 90)
LESION = _rect(40, 30, 60, 50) | _rect(70, 60, 90, 80)  # two disconnected pieces


def test_coco_polygons_rle_holes_and_an_unregistered_label(tmp_path, capsys):
    from pycocotools import mask as mask_utils

    images = tmp_path / "photos"
    images.mkdir()
    _photo(images / "P001_v0_front.jpg")
    _photo(images / "P001_v1_front.jpg", 1)
    ring = FACE.copy()
    ring[40:60, 50:70] = 0  # a face with a hole, as uncompressed RLE
    rle = mask_utils.encode(np.asfortranarray(ring))
    runs = ann_lib.mask_to_runs(ring, order="F")
    compressed = mask_utils.encode(np.asfortranarray(LESION))
    data = {"images": [{"id": 1, "file_name": "P001_v0_front.jpg", "height": H, "width": W},
                       {"id": 2, "file_name": "P001_v1_front.jpg", "height": H, "width": W}],
            "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "vitiligo"}, {"id": 3, "name": "background"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": {"size": [H, W], "counts": runs}},
                {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 1,
                 "segmentation": {"size": [H, W], "counts": compressed["counts"].decode()}},
                {"id": 3, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
                # image 2: polygons, the lesion in two pieces of one annotation
                {"id": 4, "image_id": 2, "category_id": 1, "iscrowd": 0,
                 "segmentation": [[20, 10, 100, 10, 100, 90, 20, 90]]},
                {"id": 5, "image_id": 2, "category_id": 2, "iscrowd": 0,
                 "segmentation": [[40, 30, 60, 30, 60, 50, 40, 50], [70, 60, 90, 60, 90, 80, 70, 80]]}]}
    assert int(mask_utils.area(rle)) == ring.sum()
    (tmp_path / "coco.json").write_text(json.dumps(data))
    out = tmp_path / "root"
    rc = import_annotations.main(["--format", "coco", "--annotations", str(tmp_path / "coco.json"), "--images",
                                  str(images), "--face", "face", "--lesion", "vitiligo", "--pattern",
                                  r"(?P<patient>P\d+)_v(?P<visit>\d+)_(?P<view>front|left|right)", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    face, lesion = _read(out, "P001", 0)
    np.testing.assert_array_equal(face, ring)  # RLE: exact, hole included
    np.testing.assert_array_equal(lesion, LESION)
    assert "label 'background' is neither face, lesion nor ignore: left out (100 pixels)" in err
    face, lesion = _read(out, "P001", 1)
    assert _iou(face, FACE) > 0.95 and _iou(lesion, LESION) > 0.85 and lesion[35, 45] and lesion[70, 80]
    report = json.loads((out / "import_report.json").read_text())
    assert report["photos"] == 2
    records, _ = folder.scan(str(out))  # what build_dataset reads
    assert sorted((r.patient, r.visit, r.view) for r in records) == [("P001", 0, "front"), ("P001", 1, "front")]


def test_labelme_yolo_labelstudio_cvat_and_label_maps(tmp_path, capsys):
    images = tmp_path / "photos"
    images.mkdir()
    _photo(images / "a.png")
    _photo(images / "b.png", 1)
    # LabelMe: a polygon, a rectangle and a line (not an area)
    lm = tmp_path / "labelme"
    lm.mkdir()
    (lm / "a.json").write_text(json.dumps({
        "imagePath": "a.png", "imageHeight": H, "imageWidth": W, "shapes": [
            {"label": "face", "shape_type": "rectangle", "points": [[20, 10], [99, 89]]},
            {"label": "lesion", "shape_type": "polygon", "points": [[40, 30], [59, 30], [59, 49], [40, 49]]},
            {"label": "lesion", "shape_type": "line", "points": [[0, 0], [5, 5]]}]}))
    # YOLO-seg: normalised polygons by class index
    yolo = tmp_path / "yolo"
    yolo.mkdir()
    (yolo / "a.txt").write_text(f"1 {20 / W} {10 / H} {99 / W} {10 / H} {99 / W} {89 / H} {20 / W} {89 / H}\n"
                                f"0 {40 / W} {30 / H} {59 / W} {30 / H} {59 / W} {49 / H} {40 / W} {49 / H}\n"
                                "7 0.1 0.1 0.2 0.2 0.3 0.1\n")
    # Label Studio: polygons in percent
    ls = [{"data": {"image": "/data/upload/3/8e1f2a3b-a.png"}, "annotations": [{"result": [
        {"type": "polygonlabels", "value": {"points": [[20 / W * 100, 10 / H * 100], [99 / W * 100, 10 / H * 100],
                                                       [99 / W * 100, 89 / H * 100], [20 / W * 100, 89 / H * 100]],
                                            "polygonlabels": ["face"]}},
        {"type": "polygonlabels", "value": {"points": [[40 / W * 100, 30 / H * 100], [59 / W * 100, 30 / H * 100],
                                                       [59 / W * 100, 49 / H * 100], [40 / W * 100, 49 / H * 100]],
                                            "polygonlabels": ["lesion"]}},
        {"type": "brushlabels", "original_width": W, "original_height": H,
         "value": {"format": "rle", "rle": ann_lib.mask_to_brush(_rect(70, 60, 90, 80)), "brushlabels": ["lesion"]}},
        {"type": "choices", "value": {"choices": ["blurred"]}}]}]},
        # a photo nobody reviewed: only its pre-annotation, which is never taken for the truth
        {"data": {"image": "/data/local-files/?d=b.png"}, "annotations": [], "predictions": [{"result": []}]}]
    (tmp_path / "ls.json").write_text(json.dumps(ls))
    # CVAT: a face polygon and a lesion mask with a hole
    hole = LESION.copy()
    hole[35:45, 45:55] = 0
    top, left = 30, 40
    box = hole[top:80, left:90]
    cvat = ET.Element("annotations")
    im = ET.SubElement(cvat, "image", id="0", name="a.png", width=str(W), height=str(H))
    ET.SubElement(im, "polygon", label="face", points="20,10;99,10;99,89;20,89")
    ET.SubElement(im, "mask", label="lesion", rle=", ".join(map(str, ann_lib.mask_to_runs(box))), left=str(left),
                  top=str(top), width="50", height="50")
    ET.ElementTree(cvat).write(tmp_path / "cvat.xml")
    # A colour label map and an index label map (face-parsing style: skin 1 + nose 10 = face, 255 lesion)
    maps = tmp_path / "maps"
    maps.mkdir()
    colour = np.zeros((H, W, 3), np.uint8)
    colour[FACE > 0] = (0, 255, 0)
    colour[LESION > 0] = (255, 0, 0)
    colour[0, 0] = (1, 2, 3)  # a colour not in the table
    Image.fromarray(colour).save(maps / "a.png")
    imaps = tmp_path / "imaps"
    imaps.mkdir()
    index = np.zeros((H, W), np.uint8)
    index[FACE > 0] = 1
    index[10:20, 50:60] = 10
    index[LESION > 0] = 255
    Image.fromarray(index).save(imaps / "a.png")

    runs = {
        "labelme": ["--annotations", str(lm), "--images", str(images), "--face", "face", "--lesion", "lesion"],
        "yolo": ["--annotations", str(yolo), "--images", str(images), "--classes", "lesion,face", "--face", "face",
                 "--lesion", "lesion"],
        "labelstudio": ["--annotations", str(tmp_path / "ls.json"), "--images", str(images), "--face", "face",
                        "--lesion", "lesion"],
        "cvat": ["--annotations", str(tmp_path / "cvat.xml"), "--images", str(images), "--face", "face",
                 "--lesion", "lesion"],
        "labelmap": ["--annotations", str(maps), "--images", str(images), "--class-table",
                     "#00ff00=skin,#ff0000=vitiligo", "--face", "skin,vitiligo", "--lesion", "vitiligo"],
        "imap": ["--annotations", str(imaps), "--images", str(images), "--class-table", "1=skin,10=nose,255=vitiligo",
                 "--face", "skin,nose,vitiligo", "--lesion", "vitiligo"],
    }
    notes = {}
    for name, args in runs.items():
        out = tmp_path / f"root_{name}"
        fmt = "labelmap" if name == "imap" else name
        rc = import_annotations.main(["--format", fmt, *args, "--out", str(out)])
        notes[name] = capsys.readouterr().err
        assert rc == 0, notes[name]
        face, lesion = _read(out, "a")
        assert _iou(face, FACE) > 0.95, name
        want = hole if name == "cvat" else (LESION if name in ("labelmap", "imap") else _rect(40, 30, 60, 50))
        if name in ("cvat", "labelmap", "imap"):
            np.testing.assert_array_equal(lesion, want, err_msg=name)  # masks: exact
        elif name == "labelstudio":  # a polygon and a brush mask (exact) of one label
            np.testing.assert_array_equal(lesion[55:], _rect(70, 60, 90, 80)[55:])
            assert lesion[:55].sum() == 19 * 19
        else:
            assert _iou(lesion, want) > 0.9 and not lesion[70, 80], name
            if name != "labelme":  # COCO's and CVAT's polygon rule: the square (40,30)-(59,49) covers 19 x 19 pixels
                assert lesion.sum() == 19 * 19, (name, lesion.sum())
        assert folder.scan(str(out))[0]
    assert "a 'line' shape labelled 'lesion' is not an area" in notes["labelme"]
    assert "class 7 or 6 coordinates is not a polygon of a known class" in notes["yolo"]
    # the upload's renamed file was found; the unreviewed photo was not imported
    assert "a Label Studio 'choices' result is not an area" in notes["labelstudio"]
    assert f"{images / 'b.png'}: skipped: no annotation, only pre-annotations nobody reviewed" in notes["labelstudio"]
    assert json.loads((tmp_path / "root_labelstudio" / "import_report.json").read_text())["photos"] == 1
    assert "1 pixels of values not in the class table ([1, 2, 3])" in notes["labelmap"]
    np.testing.assert_array_equal(_read(tmp_path / "root_imap", "a")[0], FACE)


def test_label_studio_brush_rle_against_a_hand_written_bit_stream():
    """Label Studio's brush RLE (rle-pack over RGBA): a 2x2 mask with its diagonal set, written bit by bit."""
    mask = np.array([[1, 0], [0, 1]], bool)
    header = f"{16:032b}" + "00111" + "0010" "0011" "0111" "1111"  # 16 values, 8-bit words, sizes 3, 4, 8, 16
    on, off = "11111111", "00000000"

    def packed(bits):
        bits += "0" * (-len(bits) % 8)
        return [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]

    # literal block of 4 words, a run of 8 zeros (size 3 bits), a run of 4 (size 4 bits)
    literal = header + "0" "00" "011" + on * 4 + "1" "00" "111" + off + "1" "01" "0011" + on
    np.testing.assert_array_equal(ann_lib.brush_to_mask(packed(literal), (2, 2)), mask)
    # what the exporter writes: runs only, each with the smallest length field
    runs = "1" "00" "011" + on + "1" "00" "111" + off + "1" "00" "011" + on
    assert ann_lib.mask_to_brush(mask) == packed(header + runs)
    big = np.random.default_rng(0).random((300, 301)) > 0.3
    big[:250] = False  # runs longer than a 16-bit length field holds
    np.testing.assert_array_equal(ann_lib.brush_to_mask(ann_lib.mask_to_brush(big), big.shape), big)
    try:
        ann_lib.brush_to_mask(packed(literal), (3, 2))
    except ValueError as e:
        assert "brush RLE holds 16 values, an RGBA image of 2x3 has 24" in str(e)
    else:
        raise AssertionError("a brush mask of the wrong size was read")


def test_import_refuses_two_photos_for_one_slot_and_a_missing_photo(tmp_path, capsys):
    images = tmp_path / "photos"
    images.mkdir()
    _photo(images / "x_1.png")
    _photo(images / "x_2.png")
    yolo = tmp_path / "yolo"
    yolo.mkdir()
    args = ["--format", "yolo", "--annotations", str(yolo), "--images", str(images), "--classes", "lesion",
            "--lesion", "lesion"]
    assert import_annotations.main([*args, "--pattern", r"(?P<patient>x)_\d", "--out", str(tmp_path / "o1")]) == 2
    assert "are both patient x, visit 0, view front" in capsys.readouterr().err
    assert import_annotations.main([*args, "--out", str(tmp_path / "o2")]) == 0
    out = capsys.readouterr()
    assert "no --face given: no face masks written" in out.err
    assert not (tmp_path / "o2" / "face_masks").exists() and (tmp_path / "o2" / "vitiligo_masks" / "x_1").is_dir()
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "gone.jpg", "height": 4, "width": 4}],
                                "annotations": [], "categories": []}))
    assert import_annotations.main(["--format", "coco", "--annotations", str(coco), "--images", str(images),
                                    "--lesion", "x", "--out", str(tmp_path / "o3")]) == 2
    assert "gone.jpg: the annotated photo is not there" in capsys.readouterr().err


def test_analysis_masks_round_trip_through_coco_cvat_and_label_studio_bit_for_bit(tmp_path, capsys):
    """analyze's own output -> COCO / CVAT / Label Studio pre-annotations -> import: the same masks, bit for bit."""
    from launch import analyze, export
    from tests.test_contract import _random_lesion_checkpoint
    from vitijax.data import synthetic

    ckpt = _random_lesion_checkpoint(tmp_path / "lesion", 0.15)
    assert export.main(["--workdir", ckpt, "--out", str(tmp_path / "bundle")]) == 0
    photos = tmp_path / "photos"
    for i in range(2):  # faces RetinaFace finds, in the layout: every patient has a front.png
        s = synthetic.render(synthetic.make_patient(0, 3), i, "front", (640, 448))
        (photos / f"P{i}" / "0").mkdir(parents=True)
        Image.fromarray(s.image).save(photos / f"P{i}" / "0" / "front.png")
    res = tmp_path / "results"
    analyze.main(["--model", str(tmp_path / "bundle"), str(photos), "--out", str(res), "--face-mask", "ellipse",
                  "--detector", "retinaface"])
    rows = [p for p in json.loads((res / "results.json").read_text())["photos"] if "face_mask" in p.get("files", {})]
    assert len(rows) == 2
    for fmt, name in (("coco", "pre.json"), ("cvat", "pre.xml"), ("labelstudio", "tasks.json")):
        assert export_annotations.main([str(res), "--format", fmt, "--out", str(tmp_path / name)]) == 0
        if fmt == "labelstudio":  # a reviewer submits each pre-annotation unchanged: Label Studio's export
            tasks = json.loads((tmp_path / name).read_text())
            assert [t["data"]["image"] for t in tasks] == ["/data/local-files/?d=P0/0/front.png",
                                                           "/data/local-files/?d=P1/0/front.png"]
            for t in tasks:
                t["annotations"] = [{"id": 1, "result": t.pop("predictions")[0]["result"]}]
            (tmp_path / name).write_text(json.dumps(tasks))
        out = tmp_path / f"back_{fmt}"
        assert import_annotations.main(["--format", fmt, "--annotations", str(tmp_path / name), "--images",
                                        str(photos), "--face", "face", "--lesion", "lesion", "--out", str(out)]) == 0
        assert f"--images {photos}" in capsys.readouterr().out  # the export says how to bring it back
        for p in rows:
            want = [np.asarray(Image.open(res / p["files"][k])) > 0 for k in ("face_mask", "lesion_mask")]
            got = _read(out, p["patient"], 0, "front")  # the slot comes back from the exported name
            assert want[1].any()  # a random network still marks some lesion pixels: the test has runs to carry
            np.testing.assert_array_equal(got[0], want[0], err_msg=fmt)
            np.testing.assert_array_equal(got[1], want[1] & want[0], err_msg=fmt)


def _ten_patients(fmt, tmp_path):
    """Ten patients' front photos annotated in ``fmt`` (the face a polygon or rectangle, the lesion a
    polygon, RLE or mask, drifting with the patient): the import arguments that read them."""
    images, ann = tmp_path / "photos", tmp_path / "annotations"
    images.mkdir()
    ann.mkdir()
    names = [f"P{i:02d}_front.png" for i in range(10)]
    faces = [[(20, 10), (99, 10), (99, 89), (20, 89)]] * 10
    lesions = [_rect(40 + i, 30, 60 + i, 50) | _rect(70, 60 + i, 90, 70 + i) for i in range(10)]  # two pieces
    for i, name in enumerate(names):
        _photo(images / name, i)
    if fmt == "coco":
        data = {"images": [{"id": i, "file_name": n, "height": H, "width": W} for i, n in enumerate(names, 1)],
                "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "lesion"}],
                "annotations": [a for i in range(10) for a in (
                    {"id": 2 * i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                     "segmentation": [[float(v) for p in faces[i] for v in p]]},
                    {"id": 2 * i + 2, "image_id": i + 1, "category_id": 2, "iscrowd": 1,
                     "segmentation": {"size": [H, W], "counts": ann_lib.mask_to_runs(lesions[i], order="F")}})]}
        (ann / "coco.json").write_text(json.dumps(data))
        return ["--annotations", str(ann / "coco.json"), "--images", str(images)]
    if fmt == "cvat":
        items = [(None, n, {"face": FACE.astype(bool), "lesion": lesions[i].astype(bool)}) for i, n in enumerate(names)]
        ann_lib.write_cvat(str(ann / "cvat.xml"), items)
        return ["--annotations", str(ann / "cvat.xml"), "--images", str(images)]
    if fmt == "labelstudio":
        tasks = [{"data": {"image": f"/data/upload/1/0a1b2c3d-{n}"}, "annotations": [{"id": i, "result": [
            {"type": "polygonlabels", "value": {"points": [[x / W * 100, y / H * 100] for x, y in faces[i]],
                                                "polygonlabels": ["face"]}},
            {"type": "brushlabels", "original_width": W, "original_height": H,
             "value": {"format": "rle", "rle": ann_lib.mask_to_brush(lesions[i]), "brushlabels": ["lesion"]}}]}]}
            for i, n in enumerate(names)]
        (ann / "ls.json").write_text(json.dumps(tasks))
        return ["--annotations", str(ann / "ls.json"), "--images", str(images)]
    if fmt == "labelme":
        for i, n in enumerate(names):
            (ann / n.replace(".png", ".json")).write_text(json.dumps({
                "imagePath": n, "imageHeight": H, "imageWidth": W, "shapes": [
                    {"label": "face", "shape_type": "rectangle", "points": [[20, 10], [99, 89]]},
                    {"label": "lesion", "shape_type": "polygon",
                     "points": [[40 + i, 30], [59 + i, 30], [59 + i, 49], [40 + i, 49]]},
                    {"label": "lesion", "shape_type": "rectangle", "points": [[70, 60 + i], [89, 69 + i]]}]}))
        return ["--annotations", str(ann), "--images", str(images)]
    if fmt == "yolo":
        for i, n in enumerate(names):
            (ann / n.replace(".png", ".txt")).write_text(
                "0 " + " ".join(f"{x / W} {y / H}" for x, y in faces[i]) + "\n"
                f"1 {(40 + i) / W} {30 / H} {(59 + i) / W} {30 / H} {(59 + i) / W} {49 / H} {(40 + i) / W} {49 / H}\n"
                f"1 {70 / W} {(60 + i) / H} {90 / W} {(60 + i) / H} {90 / W} {(70 + i) / H} {70 / W} {(70 + i) / H}\n")
        return ["--annotations", str(ann), "--images", str(images), "--classes", "face,lesion"]
    assert fmt == "labelmap"
    for i, n in enumerate(names):
        colour = np.zeros((H, W, 3), np.uint8)
        colour[FACE > 0] = (0, 255, 0)
        colour[lesions[i] > 0] = (255, 0, 0)
        Image.fromarray(colour).save(ann / n)
    return ["--annotations", str(ann), "--images", str(images), "--class-table", "#00ff00=face,#ff0000=lesion"]


@pytest.mark.parametrize("fmt", ann_lib.FORMATS)
def test_imported_folder_builds_and_trains_with_grain_workers(fmt, tmp_path, capsys):
    """Ten patients annotated in each tool's format -> the layout -> launch.build_dataset -> one training
    step of the paper's config with two grain workers: the path a user of another tool takes to their
    first run."""
    from launch import build_dataset
    from launch.configs import paper
    from vitijax.train import train_and_evaluate

    root = tmp_path / "root"
    # YOLO labels without a face class: the whole photo is the face region
    face = {"labelmap": ["--face", "face,lesion"], "yolo": ["--ignore", "face"]}.get(fmt, ["--face", "face"])
    assert import_annotations.main(["--format", fmt, *_ten_patients(fmt, tmp_path), *face, "--lesion", "lesion",
                                    "--pattern", r"(?P<patient>P\d+)_(?P<view>front)", "--out", str(root)]) == 0
    lesion = (np.asarray(Image.open(root / "vitiligo_masks" / "P03" / "0" / "front.png")) > 0)
    assert lesion[40, 50] and lesion[65, 80] and not lesion[40, 42]
    if fmt != "yolo":
        assert _iou(_read(root, "P03")[0], FACE) > 0.95
    assert build_dataset.main(["--name", "uv_vitiligo", "--manual-dir", str(root), "--data-dir",
                               str(tmp_path / "tfds")]) == 0
    from vitijax.data import tfds_io

    builder = tfds_io.get_builder("uv_vitiligo", data_dir=str(tmp_path / "tfds"))
    ex = tfds_io.data_source(builder, "train")[0]
    if fmt == "yolo":  # whole-image mode: the crop is the square holding the photo, no black margin around it
        assert builder.info.metadata["face_mask_source"] == "whole image"
        assert tuple(ex["crop_box"]) == (0, (H - W) // 2, W, (H + W) // 2) and ex["face_mask"].sum() == H * W
    else:
        assert builder.info.metadata["face_mask_source"] == "annotation"
        fb = np.asarray(ex["face_box"])  # the polygon rules differ by a pixel: 79 or 80 wide
        assert np.abs(fb - (20, 10, 100, 90)).max() <= 1
        assert ex["image"].shape[0] == round((fb[2] - fb[0]) * 1.3)  # the crop rule's 15 % margin per side
    c = paper.get_config("23-slim")  # the paper's config as shipped (four grain workers), made small
    c.model.variant = "23-tiny"
    c.data.data_dir = str(tmp_path / "tfds")
    c.input.update(size=(64, 64), worker_count=2)
    c.loss.min_kept = 2000
    c.batch_size, c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 1, 1, 0, 0
    result = train_and_evaluate(c, str(tmp_path / "run"))
    assert result["step"] == 1 and result["test"]["images"] == 1
