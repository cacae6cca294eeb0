"""Annotation importers and exporters: fixture files of every format, written here, into the folder layout."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
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
        {"type": "brushlabels", "value": {"format": "rle", "rle": [1, 2], "brushlabels": ["lesion"]}}]}]}]
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
        else:
            assert _iou(lesion, want) > 0.9 and not lesion[70, 80], name
            if name != "labelme":  # COCO's and CVAT's polygon rule: the square (40,30)-(59,49) covers 19 x 19 pixels
                assert lesion.sum() == 19 * 19, (name, lesion.sum())
        assert folder.scan(str(out))[0]
    assert "a 'line' shape labelled 'lesion' is not an area" in notes["labelme"]
    assert "class 7 or 6 coordinates is not a polygon of a known class" in notes["yolo"]
    assert "'brushlabels' result is not read" in notes["labelstudio"]  # and the upload's renamed file was found
    assert "1 pixels of values not in the class table ([1, 2, 3])" in notes["labelmap"]
    np.testing.assert_array_equal(_read(tmp_path / "root_imap", "a")[0], FACE)


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
    assert "no face label given: the face mask is the whole photo" in out.err
    coco = tmp_path / "c.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "gone.jpg", "height": 4, "width": 4}],
                                "annotations": [], "categories": []}))
    assert import_annotations.main(["--format", "coco", "--annotations", str(coco), "--images", str(images),
                                    "--lesion", "x", "--out", str(tmp_path / "o3")]) == 2
    assert "gone.jpg: the annotated photo is not there" in capsys.readouterr().err


def test_analysis_masks_round_trip_through_coco_and_cvat_bit_for_bit(tmp_path, capsys):
    """analyze's own output -> COCO / CVAT pre-annotations -> import: the same masks, bit for bit."""
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
    for fmt, name in (("coco", "pre.json"), ("cvat", "pre.xml")):
        assert export_annotations.main([str(res), "--format", fmt, "--out", str(tmp_path / name)]) == 0
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


def test_imported_folder_builds_and_trains_with_grain_workers(tmp_path, capsys):
    """Ten patients' YOLO-seg labels -> the layout -> launch.build_dataset -> one training step with two
    grain workers: the path a user of another tool takes to their first run."""
    from launch import build_dataset
    from launch.configs import paper
    from vitijax.train import train_and_evaluate

    images, labels = tmp_path / "photos", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for i in range(10):
        _photo(images / f"P{i:02d}_front.png", i)
        (labels / f"P{i:02d}_front.txt").write_text(
            f"0 {20 / W} {10 / H} {99 / W} {10 / H} {99 / W} {89 / H} {20 / W} {89 / H}\n"
            f"1 {(40 + i) / W} {30 / H} {(59 + i) / W} {30 / H} {(59 + i) / W} {49 / H} {(40 + i) / W} {49 / H}\n")
    root = tmp_path / "root"
    assert import_annotations.main(["--format", "yolo", "--annotations", str(labels), "--images", str(images),
                                    "--classes", "face,lesion", "--face", "face", "--lesion", "lesion",
                                    "--pattern", r"(?P<patient>P\d+)_(?P<view>front)", "--out", str(root)]) == 0
    assert build_dataset.main(["--name", "uv_vitiligo", "--manual-dir", str(root), "--data-dir",
                               str(tmp_path / "tfds")]) == 0
    c = paper.get_config("23-slim")  # the paper's config as shipped (four grain workers), made small
    c.model.variant = "23-tiny"
    c.data.data_dir = str(tmp_path / "tfds")
    c.input.update(size=(64, 64), worker_count=2)
    c.loss.min_kept = 2000
    c.batch_size, c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 1, 1, 0, 0
    result = train_and_evaluate(c, str(tmp_path / "run"))
    assert result["step"] == 1 and result["test"]["images"] == 1
