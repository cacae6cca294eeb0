"""launch.export and launch.analyze end to end on small synthetic and real photos (tiny networks)."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from vitijax import face
from vitijax.checkpoint import CheckpointError, load_bundle
from vitijax.data import synthetic
from vitijax.report.followup import REPIGMENTATION_FLOOR_PP


def _read_mask(path):
    return (np.asarray(Image.open(path)) > 0).astype(np.uint8)


def test_bundle_holds_every_network_and_refuses_what_it_is_not(bundle, tiny_runs, tmp_path, monkeypatch, capsys):
    from launch import export

    parts, info = load_bundle(bundle)
    assert sorted(parts) == ["face_box", "face_mask", "lesion"]
    assert parts["lesion"][1]["task"] == "lesion" and parts["face_mask"][1]["task"] == "face_mask"
    # every part carries its whole input contract
    assert parts["lesion"][1]["input"] == {"size": [64, 64], "source": "crop", "margin": 0.15, "mask_input": True,
                                           "normalisation": "imagenet", "detect_long_side": 640, "unassessable": False}
    assert parts["face_box"][1]["input"]["source"] == "photo" and not parts["face_mask"][1]["input"]["mask_input"]
    assert info["origins"]["lesion"]["config"]["model"]["variant"] == "23-tiny"
    with pytest.raises(CheckpointError, match="a training workdir, not an inference bundle"):
        load_bundle(tiny_runs["lesion"])
    with pytest.raises(CheckpointError, match="not an inference bundle"):
        load_bundle(os.path.join(tiny_runs["lesion"], "best"))
    import vitijax

    monkeypatch.setattr(vitijax, "__version__", "0.9.0")
    with pytest.raises(CheckpointError, match=r"bundle written by vitijax 0\.3\.0, this is vitijax 0\.9\.0"):
        load_bundle(bundle)
    monkeypatch.undo()
    # a face-mask run given as the lesion network is refused, by name
    assert export.main(["--workdir", tiny_runs["face_mask"], "--out", str(tmp_path / "b")]) == 2
    assert "a face-mask network where the lesion network was expected" in capsys.readouterr().err


def test_follow_up_of_synthetic_patients(bundle, tmp_path):
    """Two patients x two visits x three views through the bundle's own face-box and face-mask networks:
    every output exists at full resolution, ratios are the masks' counts, changes are against visit 0,
    and patient names are escaped in HTML."""
    from launch import analyze

    root = tmp_path / "photos"
    names = {0: "p<b>&1", 1: "p2"}
    for i, name in names.items():
        patient = synthetic.make_patient(5, i)
        for visit in (0, 1):
            for view in synthetic.VIEWS:
                s = synthetic.render(patient, visit, view, (360, 240))
                d = root / name / str(visit)
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(s.image).save(d / f"{view}.png")
                if name == "p2" and visit == 0:  # a repeat shot of each view: the patient photographed again
                    s = synthetic.render(patient, visit, view, (360, 240), synthetic.FOLLOW_UP, shot=1)
                    Image.fromarray(s.image).save(d / f"{view}-shot1.png")
    out = tmp_path / "out"
    assert analyze.main(["--model", bundle, str(root), "--out", str(out), "--tta", "--probability",
                         "--batch-size", "4"]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 15 and all(r["status"] == "ok" for r in rows), [r["reason"] for r in rows]
    data = json.loads((out / "results.json").read_text())
    by_key = {(p["patient"], p["visit"], p["view"]): p for p in data["photos"] if not p["shot"]}
    for p in data["photos"]:
        d = out / p["outputs"]
        fm, lm = _read_mask(d / "face_mask.png"), _read_mask(d / "lesion_mask.png")
        assert fm.shape == (360, 240) == lm.shape
        assert not (lm & (1 - fm)).any()  # lesions only inside the face
        assert p["face_pixels"] == fm.sum() and p["vitiligo_pixels"] == lm.sum()
        assert p["ratio"] == pytest.approx(100 * lm.sum() / fm.sum())
        for f in ("overlay.jpg", "probability.png", "uncertainty.png"):
            assert (d / f).is_file(), f
        base = by_key[(p["patient"], 0, p["view"])]["ratio"]
        assert p["change_pp"] == pytest.approx(p["ratio"] - base, abs=1e-9)
        if base >= REPIGMENTATION_FLOOR_PP:
            assert p["repigmentation_pct"] == pytest.approx(100 * (base - p["ratio"]) / base)
        else:  # a relative change on a small baseline is not reported
            assert p["repigmentation_pct"] is None and p["repigmentation_note"].startswith("not applicable")
    assert sorted({p["patient"] for p in data["photos"]}) == sorted(names.values())
    for name in names.values():
        from vitijax.report.followup import safe_name

        pdir = out / "patients" / safe_name(name)
        assert pdir.name == name or pdir.name.startswith("p_b_1-")
        report = (pdir / "report.html").read_text()
        assert (pdir / "timeline.png").is_file() and (pdir / "before_after.png").is_file()
        assert "<b>&" not in report
    index = (out / "index.html").read_text()
    assert "p&lt;b&gt;&amp;1" in index and "<b>&" not in index
    # the index gives each patient's ratios per visit (mean of the views), and the networks in words, not JSON
    p2 = [p for p in data["photos"] if p["patient"] == "p2"]
    means = [np.mean([p["ratio"] for p in p2 if p["visit"] == v and not p["shot"]]) for v in (0, 1)]
    assert f"{means[0]:.2f} &rarr; {means[1]:.2f}" in index
    assert '{"' not in index and "variant: " in index
    # follow-up: each visit-1 photo registered onto its visit-0 baseline, in the record and the report
    from vitijax import study as study_lib

    rec = study_lib.load(str(out))
    for p in rec.analysed():
        fu = p["follow_up"]
        if p["visit"] == 0 and not p["shot"]:
            assert fu["role"] == "baseline" and (out / p["files"]["aligned"]).is_file()
            continue
        assert fu["role"] == "follow-up" and fu["baseline"]["visit"] == 0
        assert isinstance(fu["registration"]["ok"], bool) and len(fu["registration"]["affine"]) == 2
        # the change map: everything off the baseline's face is outside the common region, and the lesion
        # codes add up to the baseline's lesion pixels that the follow-up also sees
        base = rec.photo(p["patient"], 0, p["view"])
        px = fu["change_map_pixels"]
        assert px["outside the common region"] >= 360 * 240 - base["face_pixels"]
        assert px["normal skin"] + px["stable lesion"] + px["repigmented"] + px["newly depigmented"] == round(
            fu["common_share"] * base["face_pixels"])
        assert px["stable lesion"] + px["repigmented"] <= base["vitiligo_pixels"]
        assert Image.open(out / p["files"]["change_map"]).mode == "RGB"
        # a doubtful registration makes no call on the change (the tiny test networks' masks are poor)
        assert fu["detectable"] in ((True, False) if fu["registration_ok"] else (None,))
        for t in fu["tracks"]:
            assert t["event"] in ("new", "disappeared", "enlarged", "shrunk", "stable", "merged", "split",
                                  "merged and split")
    # p2's three repeat shots give the analysis its own smallest detectable change, from the shots whose
    # registration is trusted (the tiny test networks' masks make some doubtful): three or more such
    # patient-view-visits, or else the synthetic study's default
    from vitijax.followup import visits

    trusted = [p for p in rec.analysed() if p["shot"] and p["follow_up"]["registration_ok"]]
    if len(trusted) >= visits.MIN_REPEAT_SUBJECTS:
        assert rec.follow_up["sdc_source"].startswith(f"this analysis's repeat shots ({len(trusted)} patient-view-")
        assert rec.follow_up["sdc_pp"] == pytest.approx(rec.follow_up["repeatability"]["sdc"])
    else:
        assert rec.follow_up["sdc_source"] == visits.DEFAULT_SDC_SOURCE
        assert rec.follow_up["sdc_pp"] == visits.DEFAULT_SDC_PP and rec.follow_up["repeatability"] is None
    assert all(p["follow_up"]["sdc_pp"] == rec.follow_up["sdc_pp"] for p in rec.analysed()
               if p["follow_up"]["role"] == "follow-up")
    shot = rec.photo("p2", 0, "front", 1)
    assert shot["outputs"].endswith("v0_front-shot1") and shot["follow_up"]["baseline"]["shot"] == 0
    from launch import repeatability

    assert repeatability.main([str(out)]) == 0
    figures = json.loads((out / "repeatability.json").read_text())["figures"]
    assert figures["f_vitiligo"]["subjects"] == 3 and figures["f_vitiligo"]["photos"] == 6
    ratios = {v: [rec.photo("p2", 0, v, k)["ratio"] for k in (0, 1)] for v in synthetic.VIEWS}
    assert figures["f_vitiligo"]["within_sd"] == pytest.approx(
        math.sqrt(np.mean([np.var(r, ddof=1) for r in ratios.values()])))
    assert (out / "repeatability.png").is_file()
    report = (out / "patients" / "p2" / "report.html").read_text()
    assert "Follow-up: every visit registered onto the baseline" in report and 'type=range' in report
    assert (out / "patients" / "p2" / "trajectory.png").is_file()
    header = next(csv.reader(open(out / "results.csv")))
    assert {"shot", "change_common_pp", "detectable_change", "fvasi", "fvasi75"} <= set(header)


def test_a_corrupt_file_and_a_photo_without_a_face_do_not_stop_the_batch(bundle, tmp_path):
    """RetinaFace on real faces (scikit-image's astronaut, at two 'visits'), a corrupt JPEG and a blank
    photo in one folder: the faces are analysed, the other two are listed with their reasons."""
    skdata = pytest.importorskip("skimage.data")
    from launch import analyze

    root = tmp_path / "clinic"
    for visit in (0, 1):
        (root / "astro" / str(visit)).mkdir(parents=True)
        Image.fromarray(skdata.astronaut()).save(root / "astro" / str(visit) / "front.jpg", quality=95)
    (root / "broken" / "0").mkdir(parents=True)
    (root / "broken" / "0" / "front.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (root / "nobody" / "0").mkdir(parents=True)
    Image.fromarray(np.full((400, 300, 3), 128, np.uint8)).save(root / "nobody" / "0" / "left.png")
    out = tmp_path / "out"
    assert analyze.main(["--model", bundle, str(root), "--out", str(out), "--detector", "retinaface",
                         "--face-mask", "ellipse", str(tmp_path / "missing.png")]) == 0
    rows = {r["patient"]: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["broken"]["status"] == "failed" and rows["broken"]["file"].endswith("broken/0/front.jpg")
    # the reason says what is wrong; the file column says where (once, not "path: path: ...")
    assert "unreadable or truncated" in rows["broken"]["reason"] and "front.jpg" not in rows["broken"]["reason"]
    assert rows["nobody"]["status"] == "no ratio" and rows["nobody"]["flags"] == "no face"
    assert rows["nobody"]["ratio"] == ""  # undefined, not 0
    assert rows["astro"]["status"] == "ok" and float(rows["astro"]["box_score"]) > 0.9
    data = json.loads((out / "results.json").read_text())
    assert data["not_analysed"] == [{"file": str(tmp_path / "missing.png"), "reason": "no such file or folder"}]
    index = (out / "index.html").read_text()
    for what in ("front.jpg", "no face", "missing.png"):
        assert what in index


def test_ground_truth_face_masks_from_a_manifest_paste_back_exactly(bundle, tmp_path):
    """With the annotated face mask as the source, the written full-resolution face mask is that mask
    (the crop around the face box holds the whole face, and pasting back is exact)."""
    from launch import analyze

    lines = ["image,patient,visit,view,face_mask"]
    truths = {}
    for i, view in enumerate(synthetic.VIEWS):
        s = synthetic.render(synthetic.make_patient(6, i), 0, view, (420, 280))
        Image.fromarray(s.image).save(tmp_path / f"{view}.png")
        Image.fromarray(s.face_mask * 255).save(tmp_path / f"{view}_face.png")
        lines.append(f"{view}.png,P{i},0,{view},{view}_face.png")
        truths[f"P{i}"] = s.face_mask
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert analyze.main(["--model", bundle, "--manifest", str(tmp_path / "manifest.csv"), "--out", str(out),
                         "--face-mask", "ground_truth"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert len(data["photos"]) == 3
    for p in data["photos"]:
        np.testing.assert_array_equal(_read_mask(out / p["outputs"] / "face_mask.png"), truths[p["patient"]])
        assert math.isfinite(p["ratio"])
        # the crop it used is recorded, and it is the contract's crop of the recorded face box
        assert tuple(p["crop_box"]) == face.crop_box(face.int_box(tuple(p["face_box"])), data["info"]["crop_margin"])


def test_photo_inputs_from_layout_folders_files_and_a_manifest(tmp_path):
    from vitijax.data.photos import find_photos
    from vitijax.report.followup import safe_name

    for rel in ("P01/v1/front.jpg", "P01/v1/front-shot0.jpg", "P01/v2/left.png", "P01/v2/left-shot2.png",
                "P01/v2/notes.txt", "loose/IMG_7.tif"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "m.csv").write_text("image,patient,visit,view,shot\nP01/v1/front.jpg,Q,3,Front,\nx.jpg,Q,later,left,\n"
                                    "y.jpg,Q,1,left,2\nz.jpg,Q,1,left,two\n")
    # a patient's folder given directly still reads patient and visit from the path
    photos, problems = find_photos([str(tmp_path / "P01"), str(tmp_path / "loose" / "IMG_7.tif"),
                                    str(tmp_path / "nope")], str(tmp_path / "m.csv"))
    assert [(p.patient, p.visit, p.view, p.shot) for p in photos] == [
        ("P01", 1, "front", 0), ("P01", 2, "left", 2), ("P01", 2, "left", 0), ("IMG_7", 0, "unknown", 0),
        ("Q", 3, "front", 0), ("Q", 1, "left", 2)]
    assert problems[:3] == [(str(tmp_path / "nope"), "no such file or folder"),
                            (f"{tmp_path / 'm.csv'}:3", "visit 'later' is not a number"),
                            (f"{tmp_path / 'm.csv'}:5", "shot 'two' is not a whole number")]
    # front-shot0.jpg is front.jpg's slot: refused by name, the first one kept
    assert problems[3][0] == str(tmp_path / "P01" / "v1" / "front.jpg") and "the same patient, visit, view and shot as " \
        f"{tmp_path / 'P01' / 'v1' / 'front-shot0.jpg'}" in problems[3][1] and len(problems) == 4
    # folder names: distinct ids stay distinct, nothing escapes upwards
    assert safe_name("P01") == "P01" and safe_name("a b") != safe_name("a_b")
    assert ".." not in safe_name("..").split("-")[0] and "/" not in safe_name("../x")


def _analysis(out):
    """Each photo's row (ratio, flags, status, reason) and the bytes of every mask PNG of an analyze run."""
    data = json.loads((out / "results.json").read_text())
    rows = {p["file"]: (p["ratio"], p["flags"], p["status"], p["reason"]) for p in data["photos"]}
    masks = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("photos/*/*/*_mask.png"))}
    return rows, masks


def test_two_processes_give_the_results_of_one(bundle, tmp_path):
    """launch.analyze --processes 2 (two processes forming one JAX cluster, each on its share of the photos and
    of the cores) writes one report whose every ratio, flag and mask file equals the single process's, bit for
    bit: seven photos (uneven shares, a partial batch of 4 in each process) and one unreadable file."""
    import subprocess
    import sys

    root = tmp_path / "photos"
    for i in range(3):
        patient = synthetic.make_patient(7, i)
        for view in synthetic.VIEWS[: 3 if i < 2 else 1]:
            d = root / f"P{i}" / "0"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(synthetic.render(patient, 0, view, (360, 240)).image).save(d / f"{view}.png")
    (root / "P2" / "0" / "right.png").write_bytes(b"not a png")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    got = {}
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        proc = subprocess.run([sys.executable, "-m", "launch.analyze", "--model", bundle, str(root), "--out", str(out),
                               "--processes", str(n), "--batch-size", "4"], capture_output=True, text=True, cwd=repo)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "8 photos in " in proc.stdout and f"with {n} process(es)" in proc.stdout
        got[n] = _analysis(out)
        assert not (out / ".processes").exists()  # the hand-over folder is gone once merged
    rows, masks = got[1]
    assert len(rows) == 8 and sum(r[2] == "ok" for r in rows.values()) == 7 and len(masks) == 14
    assert rows[str(root / "P2" / "0" / "right.png")][2] == "failed"
    assert rows[str(root / "P2" / "0" / "right.png")][3].startswith("unreadable or truncated image")
    assert got[2] == got[1]
    # both processes worked and reported progress, each on its own share (4 and 4 of the 8)
    assert "process 0/2: photo 4/4" in proc.stderr and "process 1/2: photo 4/4" in proc.stderr


def test_processes_given_different_photos_are_refused_by_name(bundle, tmp_path):
    """Two processes of one cluster started by hand (as on two hosts) with different photo lists: both stop
    with an error saying so, before analysing anything."""
    import subprocess
    import sys

    from vitijax.cluster import free_port

    root = tmp_path / "photos"
    for i in range(2):
        d = root / f"P{i}" / "0"
        d.mkdir(parents=True)
        Image.fromarray(synthetic.render(synthetic.make_patient(7, i), 0, "front", (360, 240)).image).save(
            d / "front.png")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "launch.analyze", "--model", bundle,
                               str(root if pid == 0 else root / "P0"), "--out", str(tmp_path / "out"),
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(pid)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=repo) for pid in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    for pid, (p, (_, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 2, err[-2000:]
        assert "process(es) 1 were given other photos or options than process 0" in err
    assert not (tmp_path / "out" / "photos").exists()


def test_a_process_that_stops_early_is_reported_not_waited_for(tmp_path):
    """Process 0 waits for the others' rows; a local process that exits without handing them in ends the
    wait with an error naming it, and rows come back in input order with NaN kept."""
    from vitijax import cluster

    class Stopped:
        returncode = 3

        def poll(self):
            return 3

    cluster.hand_in(str(tmp_path), 0, [(2, {"ratio": math.nan, "file": "c"}), (0, {"ratio": 1.5, "file": "a"})])
    with pytest.raises(RuntimeError, match=r"process 1 stopped \(exit status 3\) before handing in its rows"):
        cluster.collect(str(tmp_path), 2, [Stopped()], poll_s=0.01)
    cluster.hand_in(str(tmp_path), 1, [(1, {"ratio": 2.0, "file": "b"})])
    rows = cluster.collect(str(tmp_path), 2, [Stopped()], poll_s=0.01)
    assert [r["file"] for r in rows] == ["a", "b", "c"] and math.isnan(rows[2]["ratio"]) and rows[0]["ratio"] == 1.5
    assert not (tmp_path / cluster.ROWS_DIR).exists()
