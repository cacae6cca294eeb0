"""Lesion tracking, change maps, repigmentation patterns, the F-VASI estimate and repeatability, on
hand-made masks and values whose answers are known."""

import dataclasses
import math

import numpy as np
import pytest

from vitijax.followup import fvasi, lesions, repeatability

H, W = 200, 300
FACE = np.ones((H, W), np.uint8)


def disc(cx, cy, r, shape=(H, W)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8)


def events_of(base, follow, common=None):
    bl, _ = lesions.lesions(base, FACE)
    fl, _ = lesions.lesions(follow, FACE)
    return {ev.event: ev for ev in lesions.track(bl, fl, common)}, bl, fl


def test_lesions_drops_specks_and_counts_components():
    mask = disc(50, 50, 20) | disc(200, 100, 15)
    mask[5, 5] = 1  # one pixel: below 0.05 % of the face (30 px)
    labels, n = lesions.lesions(mask, FACE)
    assert n == 2
    assert labels[5, 5] == 0 and labels[50, 50] > 0 and labels[100, 200] > 0
    # outside the face nothing is a lesion
    face = FACE.copy()
    face[:, :120] = 0
    assert lesions.lesions(mask, face)[1] == 1


def test_tracking_taxonomy_on_hand_made_pairs():
    # baseline: A (left), B and C (close together, middle), D (right, will vanish), E (bottom, will split)
    a, b, c, d = disc(40, 50, 20), disc(130, 50, 14), disc(160, 50, 14), disc(260, 50, 15)
    e = np.zeros((H, W), np.uint8)
    e[140:170, 60:200] = 1  # a long bar
    base = a | b | c | d | e
    follow = np.zeros((H, W), np.uint8)
    follow |= disc(40, 50, 12)  # A shrinks: area 144/400 of the baseline's
    follow[45:56, 125:166] = 1  # B and C joined by a bridge: one lesion
    follow |= b | c
    follow[140:170, 60:100] = 1  # the bar split in two pieces
    follow[140:170, 160:200] = 1
    follow |= disc(250, 160, 12)  # a new lesion
    ev, bl, fl = events_of(base, follow)
    assert set(ev) == {"shrunk", "merged", "disappeared", "split", "new"}
    assert len(ev["merged"].base) == 2 and len(ev["merged"].follow) == 1
    assert len(ev["split"].base) == 1 and len(ev["split"].follow) == 2
    assert ev["disappeared"].base == [bl[50, 260]] and ev["disappeared"].follow == []
    assert ev["new"].follow == [fl[160, 250]] and ev["new"].base_area == 0
    shrunk = ev["shrunk"]
    assert shrunk.base_area == int(disc(40, 50, 20).sum()) and shrunk.follow_area == int(disc(40, 50, 12).sum())
    # the Hungarian assignment: in the split, the larger... both pieces are equal; one carries the identity
    assert len(ev["split"].continues) == 1 and list(ev["split"].continues.values())[0] in ev["split"].follow
    # in the merge, only one of the two baseline lesions continues into the merged lesion
    assert len(ev["merged"].continues) == 1


def test_tracking_stable_enlarged_and_the_size_threshold():
    base = disc(100, 100, 30)
    for r, want in ((30, "stable"), (33, "stable"), (36, "enlarged"), (25, "shrunk")):
        # 36^2 / 30^2 = 1.44 > 1.25; 33^2 / 30^2 = 1.21 < 1.25; 25^2 / 30^2 = 0.69 < 0.75
        ev, _, _ = events_of(base, disc(100, 100, r))
        assert list(ev) == [want], (r, ev)


def test_tracking_ignores_lesions_outside_the_common_region():
    base = disc(40, 50, 15) | disc(250, 50, 15)
    follow = disc(40, 50, 15) | disc(250, 150, 15)
    common = np.zeros((H, W), np.uint8)
    common[:, :150] = 1  # the right half is not seen by both photos
    ev, _, _ = events_of(base, follow, common)
    assert list(ev) == ["stable"]
    ev, _, _ = events_of(base, follow)  # with everything seen: one gone, one new
    assert set(ev) == {"stable", "disappeared", "new"}


def test_tracking_merged_and_split_and_lesions_half_seen():
    # two baseline lesions become two follow-up lesions that each straddle both: several to several
    base = np.zeros((H, W), np.uint8)
    base[50:100, 50:100] = 1
    base[50:100, 110:160] = 1
    follow = np.zeros((H, W), np.uint8)
    follow[50:72, 50:160] = 1
    follow[78:100, 50:160] = 1
    ev, _, _ = events_of(base, follow)
    assert list(ev) == ["merged and split"]
    assert len(ev["merged and split"].base) == 2 and len(ev["merged and split"].follow) == 2
    # an unchanged lesion that the follow-up photo sees only the left 40 % of: stable, not shrunk, and
    # what it cannot see did not repigment
    lesion = disc(150, 100, 40)
    common = FACE.copy()
    common[:, 126:] = 0
    seen_follow = lesion * common  # the warped follow-up has nothing where its photo does not reach
    ev, bl, _ = events_of(lesion, seen_follow, common)
    (only,) = ev.values()
    assert only.event == "stable" and only.base_area == only.follow_area == int((lesion & common).sum())
    lesions.patterns([only], bl, seen_follow, common)
    assert only.marginal_px == only.perifollicular_px == 0 and only.pattern == ""


def test_growing_old_islands_are_perifollicular_not_marginal():
    base = disc(100, 100, 40)
    base[disc(100, 100, 5) > 0] = 0  # a pigment island the lesion already had
    follow = disc(100, 100, 40)
    follow[disc(100, 100, 12) > 0] = 0  # the island grew
    ev, bl, _ = events_of(base, follow)
    (only,) = ev.values()
    lesions.patterns([only], bl, follow)
    assert only.perifollicular_px == int(((base > 0) & (follow == 0)).sum()) and only.marginal_px == 0
    assert only.pattern == "perifollicular"


def test_change_map_codes():
    base = disc(100, 100, 30)
    follow = disc(120, 100, 30)
    common = FACE.copy()
    common[:, 250:] = 0
    codes = lesions.change_map(base, follow, common)
    assert codes[100, 100] == 2 and codes[100, 75] == 3 and codes[100, 145] == 4
    assert codes[10, 10] == 1 and codes[10, 260] == 0
    rgb = lesions.change_picture(codes)
    assert rgb.shape == (H, W, 3) and tuple(rgb[100, 75]) == lesions.CHANGE_COLOURS[3]


def test_repigmentation_patterns():
    base = disc(100, 100, 40)
    # perifollicular: pigment islands inside the lesion, the border unchanged
    islands = base.copy()
    for cx, cy in ((90, 90), (110, 105), (100, 120)):
        islands[disc(cx, cy, 4) > 0] = 0
    # marginal: the border retreats
    retreat = disc(100, 100, 30)
    for follow, want in ((islands, "perifollicular"), (retreat, "marginal")):
        ev, bl, _ = events_of(base, follow)
        (only,) = ev.values()
        lesions.patterns([only], bl, follow)
        assert only.pattern == want, (want, only)
    ev, bl, _ = events_of(base, base)
    (same,) = ev.values()
    lesions.patterns([same], bl, base)
    assert same.pattern == "" and same.perifollicular_px == same.marginal_px == 0
    assert lesions.name_pattern(same, degree_fall=0.3) == "diffuse"
    assert lesions.name_pattern(same, degree_fall=0.05) == ""


def test_fvasi_grades_and_sum():
    assert [fvasi.grade(d) for d in (1.0, 0.93, 0.8, 0.6, 0.3, 0.12, 0.02)] == [1.0, 0.9, 0.75, 0.5, 0.25, 0.1, 0.0]
    assert fvasi.grade(float("nan")) == 0.0
    areas = np.array([0, 100, 50])
    # 100 px at 100 % + 50 px at 50 % over 1000 face px: 10 + 2.5
    assert fvasi.fvasi(areas, np.array([np.nan, 1.0, 0.5]), 1000) == pytest.approx(12.5)
    assert fvasi.fvasi(areas, np.array([np.nan, np.nan, 0.5]), 1000) == pytest.approx(12.5)  # unknown: 100 %
    assert math.isnan(fvasi.fvasi(areas, np.array([0, 1.0, 1.0]), 0))
    r = fvasi.response(20.0, 4.0)
    assert r["improvement_pct"] == pytest.approx(80.0) and r["fvasi50"] and r["fvasi75"]
    r = fvasi.response(20.0, 8.0)
    assert r["fvasi50"] and not r["fvasi75"]
    assert fvasi.response(0.0, 1.0)["fvasi75"] is None


def test_fvasi_degree_from_uv_contrast():
    """Two lesions painted on flat skin at full and at half depigmentation: the full one sets the
    reference, the half one comes out at the 50 % grade, under a shading gradient that cancels."""
    skin, lesion_grey = 50.0, 200.0
    shade = np.linspace(0.7, 1.3, W)[None, :].repeat(H, 0)
    full, half = disc(80, 100, 25), disc(220, 100, 25)
    g = skin * np.ones((H, W))
    g = g + full * (lesion_grey - skin) + half * 0.5 * (lesion_grey - skin)
    photo = np.clip(g * shade, 0, 255).astype(np.uint8)
    photo = np.repeat(photo[..., None], 3, -1)
    labels, n = lesions.lesions(full | half, FACE)
    ratios = fvasi.contrasts(photo, labels, FACE)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    ref = fvasi.reference_ratio(ratios, areas, FACE.sum())
    assert ref == pytest.approx(4.0, rel=0.05)  # 200 / 50
    deg = fvasi.degrees(ratios, ref)
    assert deg[labels[100, 80]] == pytest.approx(1.0)
    assert deg[labels[100, 220]] == pytest.approx(0.5, abs=0.04)
    assert fvasi.grade(deg[labels[100, 220]]) == 0.5
    # the unassessable region is left out: a lesion entirely under glare has no contrast
    glare = half.copy()
    assert math.isnan(fvasi.contrasts(photo, labels, FACE, glare)[labels[100, 220]])


def test_repeatability_against_hand_computed_figures():
    groups = {"a": [10.0, 12.0], "b": [20.0, 22.0], "c": [30.0, 30.0]}
    s = repeatability.summarise(groups)
    # variances 2, 2, 0 -> S_w = sqrt(4/3); SDC = 1.96 sqrt(2) S_w
    sw = math.sqrt(4 / 3)
    assert s["within_sd"] == pytest.approx(sw)
    assert s["sdc"] == pytest.approx(1.96 * math.sqrt(2) * sw)
    assert s["cv_pct"] == pytest.approx(100 * math.sqrt((2 / 121 + 2 / 441 + 0) / 3))
    assert s["cv_pooled_pct"] == pytest.approx(100 * sw / (124 / 6)) and s["mean"] == pytest.approx(124 / 6)
    # one-way ICC by hand: means 11, 21, 30; grand mean 124 / 6; MSB = k SS(means) / (g - 1)
    means = np.array([11, 21, 30.0])
    grand = 124 / 6
    msb = 2 * ((means - grand) ** 2).sum() / 2
    msw = 4 / 3
    assert s["icc"] == pytest.approx((msb - msw) / (msb + msw))
    assert s["subjects"] == 3 and s["photos"] == 6
    # a subject with one value (or NaNs) is left out; identical repeats: SDC 0, ICC 1
    s = repeatability.summarise({"a": [5.0, 5.0], "b": [7.0, 7.0], "c": [1.0, float("nan")]})
    assert s["subjects"] == 2 and s["sdc"] == 0 and s["icc"] == pytest.approx(1.0)


def test_repeatability_with_unequal_repeats():
    """Subjects photographed 4, 2 and 2 times: SEM from the pooled within-subject mean square and the ICC
    with Shrout and Fleiss's k0, both by hand."""
    groups = {"a": [1.0, 2.0, 3.0, 6.0], "b": [10.0, 11.0], "c": [20.0, 22.0]}
    s = repeatability.summarise(groups)
    ssw = (2 ** 2 + 1 ** 2 + 0 + 3 ** 2) + 0.5 + 2.0  # about the subject means 3, 10.5, 21
    msw = ssw / (8 - 3)
    assert s["within_sd"] == pytest.approx(math.sqrt(msw))
    grand = 75 / 8
    msb = (4 * (3 - grand) ** 2 + 2 * (10.5 - grand) ** 2 + 2 * (21 - grand) ** 2) / 2
    k0 = (8 - (16 + 4 + 4) / 8) / 2
    assert s["icc"] == pytest.approx((msb - msw) / (msb + (k0 - 1) * msw))


def test_detectable_change_rule():
    assert repeatability.detectable(1.5, 1.0) is True
    assert repeatability.detectable(-1.5, 1.0) is True
    assert repeatability.detectable(0.4, 1.0) is False
    assert repeatability.detectable(float("nan"), 1.0) is None
    assert repeatability.detectable(0.0, 0.0) is False  # identical repeats: no change is no change


def test_generator_lesion_identity_and_degree():
    from vitijax.data import synthetic

    p = synthetic.make_patient(6000, 0, diffuse=True)
    assert any(les.fade > 0 for les in p.lesions)
    plain = synthetic.make_patient(6000, 0)
    assert all(les.fade == 0 for les in plain.lesions)  # bundled data sets are drawn without
    assert [dataclasses.replace(les, fade=0.0) for les in p.lesions] == list(plain.lesions)  # nothing else moves
    s = synthetic.render(p, 1, "front", (384, 256))
    assert s.lesion_ids.shape == s.vitiligo_mask.shape
    assert np.array_equal(s.lesion_ids > 0, s.vitiligo_mask > 0)
    assert s.lesion_ids.max() <= len(p.lesions)
    fading = next(les for les in p.lesions if les.fade > 0)
    assert synthetic.degree(fading, 2) < synthetic.degree(fading, 1) < synthetic.degree(fading, 0) == fading.contrast


def test_standard_renders_are_bit_for_bit_those_the_bundled_data_sets_were_built_from():
    """Lesion identities, degrees and fading were added to the generator without moving a pixel of the
    standard photos (the digest is that of the generator before them, at commit faba095)."""
    import hashlib

    from vitijax.data import synthetic

    h = hashlib.sha256()
    for index in range(3):
        p = synthetic.make_patient(0, index)
        for visit in (0, 2):
            for view in synthetic.VIEWS:
                s = synthetic.render(p, visit, view, (96, 64))
                for arr in (s.image, s.face_mask, s.vitiligo_mask, s.unassessable_mask):
                    h.update(arr.tobytes())
    assert h.hexdigest() == "7c01bf35a570bceadc3f37f035620443fbf5254432e36c5ce4c8a50275fb07ef"


def test_followup_study_end_to_end(tmp_path):
    """The study on one small patient: it runs, writes its JSON, and its figures are the ones of a
    working follow-up (registration well under 1 % of the face width, tracking near perfect with true
    masks, the F-VASI estimate close to the truth and every F-VASI75 call right)."""
    import json

    from launch import followup_study

    out = tmp_path / "study"
    assert followup_study.main(["--patients", "1", "--visits", "2", "--shots", "2", "--size", "636", "425",
                                "--out", str(out), "--change-picture", str(tmp_path / "change.png")]) == 0
    study = json.loads((out / "study.json").read_text())
    s = study["summary"]["truth"]
    assert s["registration"]["pairs"] == 6  # 3 views x (1 follow-up visit + 1 repeat shot)
    assert s["registration"]["affine + flow"]["median_pct_face_width"] < 1.0
    assert s["registration"]["none"]["median_pct_face_width"] > 5.0  # the acquisition really varied
    assert s["tracking"]["precision"] >= 0.9 and s["tracking"]["recall"] >= 0.9
    assert s["change (repeat shots)"]["mae_registered_pp"] < 1.0
    assert s["repeatability"]["f_vitiligo"]["subjects"] == 3
    assert s["fvasi"]["photos"] == 9 and s["fvasi"]["icc"] > 0.8 and s["fvasi"]["mae"] < 3.0
    assert s["fvasi"]["fvasi75_calls"]["pairs"] == 3 == s["fvasi"]["fvasi75_calls"]["agree"]
    assert s["detectable"]["visit_pairs"] == 3 and s["detectable"]["agree"] >= 2
    assert len(study["photos"]["truth"]) == 9
    from PIL import Image

    assert Image.open(tmp_path / "change.png").size[1] > 100


def test_study_record_round_trips(tmp_path):
    """Written, read and written again: the same file; NaN comes back as NaN; a photo is found by its keys;
    a folder without a record, or with a broken one, is refused by name."""
    from vitijax import study

    rows = [{"patient": "p<1>", "visit": 0, "view": "front", "shot": 0, "file": "/x/front.jpg", "status": "ok",
             "ratio": 12.5, "change_pp": 0.0, "flags": [], "files": {"face_mask": "photos/p/v0_front/face_mask.png"},
             "follow_up": {"role": "baseline", "fvasi": 7.25}},
            {"patient": "p<1>", "visit": 1, "view": "front", "shot": 2, "file": "/x/front-shot2.jpg",
             "status": "no ratio", "ratio": float("nan"), "flags": ["no face"], "files": {}}]
    rec = study.from_rows(rows, [("/x/bad.jpg", "unreadable")], {"bundle": "m"}, {"sdc_pp": 1.2})
    path = study.save(str(tmp_path), rec)
    first = open(path).read()
    back = study.load(str(tmp_path))
    assert math.isnan(back.photos[1]["ratio"]) and back.photos[0]["ratio"] == 12.5
    assert back.photo("p<1>", 1, "front", 2)["flags"] == ["no face"]
    assert [p["file"] for p in back.analysed()] == ["/x/front.jpg"]
    assert back.not_analysed == [{"file": "/x/bad.jpg", "reason": "unreadable"}] and back.follow_up["sdc_pp"] == 1.2
    study.save(str(tmp_path), back)
    assert open(path).read() == first
    with pytest.raises(KeyError, match="visit 3"):
        back.photo("p<1>", 3, "front")
    with pytest.raises(FileNotFoundError, match="no results.json"):
        study.load(str(tmp_path / "elsewhere"))
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable study record"):
        study.load(str(tmp_path))


def test_synthesize_writes_repeat_shots_of_another_day(tmp_path):
    import csv

    from launch import synthesize

    assert synthesize.main(["--patients", "1", "--visits", "2", "--views", "front", "--shots", "2", "--size", "96",
                            "64", "--acquisition", "follow-up", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "truth.csv")))
    assert [(r["visit"], r["shot"]) for r in rows] == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    for visit in (0, 1):
        for name in ("front.png", "front-shot1.png"):
            for kind in ("images", "face_masks", "vitiligo_masks"):
                assert (tmp_path / kind / "S1000_P000" / str(visit) / name).is_file()
    # the layout analyze reads: shot 1 of the front view, not a view called "front-shot1"
    from vitijax.data.photos import find_photos

    photos, problems = find_photos([str(tmp_path / "images")])
    assert not problems and sorted((p.visit, p.view, p.shot) for p in photos) == [
        (0, "front", 0), (0, "front", 1), (1, "front", 0), (1, "front", 1)]


def test_screenshot_of_a_report_page(tmp_path):
    """launch.screenshot: the system's headless Chromium takes the page, the crop keeps the rows asked for."""
    from launch import screenshot

    if screenshot.find_browser() is None:
        pytest.skip("no Chromium on the PATH (chromium, chromium-browser or google-chrome)")
    from PIL import Image

    page = tmp_path / "page.html"
    page.write_text('<!doctype html><body style="margin:0;background:#fff"><div style="height:100px;background:#f00">'
                    '</div><div style="height:100px;background:#00f"></div></body>')
    out = tmp_path / "shot.png"
    assert screenshot.main([str(page), "--out", str(out), "--width", "200", "--height", "300",
                            "--crop", "100", "200"]) == 0
    im = np.asarray(Image.open(out).convert("RGB"))
    assert im.shape == (100, 200, 3)
    assert (im[50, 100] == [0, 0, 255]).all()  # the second (blue) block, not the first
    assert screenshot.main([str(tmp_path / "nope.html"), "--out", str(out)]) == 2


def test_the_smallest_detectable_change_comes_from_trusted_repeat_shots():
    from vitijax.followup import visits

    def rows(n_subjects, ok=True):
        out = []
        for i in range(n_subjects):
            out.append({"patient": f"p{i}", "view": "front", "visit": 0, "ratio": 10.0 + i,
                        "follow_up": {"role": "baseline"}})
            out.append({"patient": f"p{i}", "view": "front", "visit": 0, "ratio": 11.0 + i,
                        "follow_up": {"role": "follow-up", "baseline_ratio": 10.0 + i, "change_common_pp": 0.5 * (i + 1),
                                      "registration_ok": ok}})
        return out

    info = visits.smallest_detectable_change(rows(3))
    # registered values: [10, 10.5], [11, 12], [12, 13.5]: variances 0.125, 0.5, 1.125
    sem = math.sqrt((0.125 + 0.5 + 1.125) / 3)
    assert info["sdc_pp"] == pytest.approx(1.96 * math.sqrt(2) * sem)
    assert info["sdc_source"].startswith("this analysis's repeat shots (3 patient-view-visits, 6 photos)")
    # two subjects are too few; doubtful registrations do not count
    for few in (rows(2), rows(3, ok=False)):
        info = visits.smallest_detectable_change(few)
        assert info["sdc_pp"] == visits.DEFAULT_SDC_PP and info["repeatability"] is None
