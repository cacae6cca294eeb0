"""Review in the browser (launch.review): the server's refusals, corrections as audited data, the recomputed
figures, the export into the uv_vitiligo layout, a real headless Chromium painting a correction, and the
round trip analyze -> correct -> export -> build -> fine-tune."""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from vitijax import study as study_lib
from vitijax.data import synthetic
from vitijax.data.annotations import mask_to_runs
from vitijax.data.io import write_png
from vitijax.review import corrections as corr
from vitijax.review import server

TOKEN = "test-token-1234"
HEADERS = {"X-Review-Token": TOKEN}
EVIL = "<img src=x onerror=alert(1)>"  # a patient id that is also HTML


def _client(out, **kw):
    from starlette.testclient import TestClient

    app, _ = server.make_app(str(out), token=TOKEN, **kw)
    return TestClient(app)


@pytest.fixture
def hand_study(tmp_path):
    """A study record written like launch.analyze's, with the generator's true masks as the 'model' output:
    patient EVIL (visit 0) and P2 (visit 0), front view, 180x120."""
    out = tmp_path / "out"
    rows = []
    for i, name in enumerate((EVIL, "P2")):
        s = synthetic.render(synthetic.make_patient(3, i), 0, "front", (180, 120))
        photo = tmp_path / "photos" / f"{i}.png"
        photo.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(s.image).save(photo)
        rel = f"photos/p{i}/v0_front"
        write_png(out / rel / "face_mask.png", s.face_mask * 255)
        write_png(out / rel / "lesion_mask.png", (s.vitiligo_mask & s.face_mask) * 255)
        rows.append({"patient": name, "visit": 0, "view": "front", "shot": 0, "file": str(photo), "status": "ok",
                     "reason": "", "ratio": 100.0 * (s.vitiligo_mask & s.face_mask).sum() / s.face_mask.sum(),
                     "flags": [], "needs_review": i == 1, "review_reasons": ["saturated_share 0.1 > 0.053"] if i else [],
                     "height": 180, "width": 120, "outputs": rel,
                     "files": {"outputs": rel, "face_mask": f"{rel}/face_mask.png",
                               "lesion_mask": f"{rel}/lesion_mask.png"}})
    study_lib.save(str(out), study_lib.from_rows(rows, [], {"bundle": "test"}))
    return out


def _payload(mask):
    return {"size": list(mask.shape), "counts": mask_to_runs(mask)}


def _nothing_written(out):
    doc = json.loads((out / "results.json").read_text())
    assert all("review" not in p for p in doc["photos"])
    assert not any(f.endswith(".png") for _, _, fs in os.walk(out / "review") for f in fs) if (out / "review").exists() else True


# ---------------------------------------------------------------------------- refusals

def test_every_request_needs_the_token(hand_study):
    c = _client(hand_study)
    for path in ("/", "/api/study", "/api/photo/0", "/api/photo/0/image", "/static/review.js",
                 "/files/photos/p0/v0_front/face_mask.png"):
        assert c.get(path).status_code == 403, path
        r = c.get(path, headers={"X-Review-Token": "wrong"})
        assert r.status_code == 403 and "token" in r.json()["error"]
        assert c.get(path, headers=HEADERS).status_code == 200, path
    assert c.post("/api/photo/0/review", json={}).status_code == 403
    # the page opened with ?token= hands the token to its own script and pictures as a strict cookie
    r = c.get(f"/?token={TOKEN}")
    assert r.status_code == 200 and "HttpOnly" in r.headers["set-cookie"] and "SameSite=Strict" in r.headers["set-cookie"]
    assert c.get("/static/review.js").status_code == 200  # the client kept the cookie
    # ... for the page's own script and style only: cookies ignore ports, another local page could send it
    assert c.get("/api/study").status_code == 403
    assert c.get("/files/photos/p0/v0_front/face_mask.png").status_code == 403
    assert c.post("/api/photo/0/review", json={"reviewer": "x", "base_revision": 0, "status": "approved"}).status_code == 403
    # a form or text/plain POST (what another origin can send without asking) is refused even with the token
    plain = c.post("/api/photo/0/review", headers={**HEADERS, "Content-Type": "text/plain"},
                   content=json.dumps({"reviewer": "x", "base_revision": 0, "status": "approved"}))
    assert plain.status_code == 415
    _nothing_written(hand_study)
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_files_outside_the_folder_are_refused(hand_study, tmp_path):
    (tmp_path / "secret.png").write_bytes(b"not yours")
    os.symlink(tmp_path / "secret.png", hand_study / "photos" / "link.png")  # a link leading out
    c = _client(hand_study)
    for path in ("/files/..%2Fsecret.png", "/files/%2E%2E/secret.png", "/files/photos/%2E%2E/%2E%2E/%2E%2E/secret.png",
                 f"/files/{'%2F'.join(str(tmp_path / 'secret.png').split('/'))}", "/files/photos/link.png",
                 "/files/results.json", "/static/..%2Fcorrections.py", "/static/index.html%00.js",
                 "/api/photo/2", "/api/photo/-1", "/api/photo/..%2F0", "/api/photo/1e3/image", "/files/a%00.png",
                 "/api/photo/%C2%B2"):
        r = c.get(path, headers=HEADERS)
        assert r.status_code == 404, (path, r.status_code)
        assert b"not yours" not in r.content
    assert c.get("/files/photos/p0/v0_front/lesion_mask.png", headers=HEADERS).status_code == 200


def test_bodies_over_the_limit_are_refused(hand_study):
    c = _client(hand_study, max_body=1000)
    json_headers = {**HEADERS, "Content-Type": "application/json"}
    r = c.post("/api/photo/0/review", headers=json_headers, content=b"{" + b" " * 2000 + b"}")
    assert r.status_code == 413 and "at most 1000" in r.json()["error"]

    def chunks():  # no Content-Length: counted while read
        for _ in range(20):
            yield b" " * 100

    r = c.post("/api/photo/0/preview", headers=json_headers, content=chunks())
    assert r.status_code == 413
    _nothing_written(hand_study)


def test_bad_masks_and_saves_are_refused_and_nothing_is_written(hand_study):
    c = _client(hand_study)
    good = np.zeros((180, 120), np.uint8)
    cases = [
        ({"masks": {"lesion": _payload(np.zeros((90, 120), np.uint8))}}, "60x90... ", "120x90 for a photo of 120x180"),
        ({"masks": {"lesion": {"size": [180, 120], "counts": [-5, 21605]}}}, "", "non-negative integers"),
        ({"masks": {"lesion": {"size": [180, 120], "counts": [100.5, 21499.5]}}}, "", "non-negative integers"),
        ({"masks": {"lesion": {"size": [180, 120], "counts": [True, 21599]}}}, "", "non-negative integers"),
        ({"masks": {"lesion": {"size": [180, 120], "counts": [100]}}}, "", "cover 100 pixels, the photo has 21600"),
        ({"masks": {"lesion": {"size": [180, 120], "counts": "AAAA"}}}, "", "counts must be a list"),
        ({"masks": {"lesion": [0, 1]}}, "", "expected {\"size\""),
        ({"masks": {"hair": _payload(good)}}, "", "face and/or lesion"),
        ({"status": "done"}, "", "status 'done'"),
        ({"reviewer": ""}, "", "reviewer's name"),
        ({"status": "rejected", "comment": "  "}, "", "needs a comment"),
        ({"base_revision": "0"}, "", "base_revision"),
    ]
    for change, _, message in cases:
        body = {"reviewer": "Dr A", "base_revision": 0, "status": "approved", "comment": "", **change}
        r = c.post("/api/photo/0/review", headers=HEADERS, json=body)
        assert r.status_code == 400 and message in r.json()["error"], (change, r.json())
    r = c.post("/api/photo/0/review", headers={**HEADERS, "Content-Type": "application/json"}, content=b"not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    _nothing_written(hand_study)


def test_a_second_reviewers_save_is_detected_not_lost(hand_study):
    c = _client(hand_study)
    model = np.asarray(Image.open(hand_study / "photos/p1/v0_front/lesion_mask.png")) > 0
    mine, theirs = model.copy(), model.copy()
    mine[10:20, 10:20] = True
    theirs[100:110, 60:70] = True
    theirs &= np.asarray(Image.open(hand_study / "photos/p1/v0_front/face_mask.png")) > 0
    a = c.post("/api/photo/1/review", headers=HEADERS, json={"reviewer": "Dr A", "base_revision": 0,
               "status": "corrected", "comment": "", "masks": {"lesion": _payload(theirs.astype(np.uint8))}})
    assert a.status_code == 200 and a.json()["review"]["revision"] == 1
    b = c.post("/api/photo/1/review", headers=HEADERS, json={"reviewer": "Dr B", "base_revision": 0,
               "status": "approved", "comment": "", "masks": {"lesion": _payload(mine.astype(np.uint8))}})
    assert b.status_code == 409
    assert b.json()["current"]["reviewer"] == "Dr A" and "saved meanwhile by 'Dr A'" in b.json()["error"]
    rec = study_lib.load(str(hand_study)).photos[1]["review"]
    assert rec["reviewer"] == "Dr A" and rec["status"] == "corrected"
    saved = np.asarray(Image.open(hand_study / rec["files"]["lesion_mask"])) > 0
    np.testing.assert_array_equal(saved, theirs)  # A's save stands
    # B saves over on purpose: a new revision; A's files stay, and the log holds both
    b = c.post("/api/photo/1/review", headers=HEADERS, json={"reviewer": "Dr B", "base_revision": 1,
               "status": "approved", "comment": "kept the forehead patch", "masks": {"lesion": _payload(mine.astype(np.uint8))}})
    assert b.status_code == 200 and b.json()["review"]["revision"] == 2
    assert (hand_study / rec["files"]["lesion_mask"]).is_file()
    log = [json.loads(line) for line in (hand_study / "review" / "audit.jsonl").read_text().splitlines()]
    assert [(e["reviewer"], e["revision"]) for e in log] == [("Dr A", 1), ("Dr B", 2)]
    assert log[1]["sha256_before"]["lesion"] == log[0]["sha256_after"]["lesion"] == corr.mask_sha256(theirs)


def test_audit_log_is_a_hash_chain_and_tampering_is_found(hand_study, capsys):
    from launch import review

    c = _client(hand_study)
    for i in (0, 1):
        assert c.post(f"/api/photo/{i}/review", headers=HEADERS, json={
            "reviewer": "Dr A", "base_revision": 0, "status": "approved", "comment": "fine"}).status_code == 200
    assert corr.verify_audit(str(hand_study)) == (2, [])
    assert review.main([str(hand_study), "--verify"]) == 0
    path = hand_study / "review" / "audit.jsonl"
    lines = path.read_text().splitlines()
    edited = json.loads(lines[0])
    edited["reviewer"] = "Dr Z"
    path.write_text(json.dumps(edited, sort_keys=True) + "\n" + lines[1] + "\n")
    n, problems = corr.verify_audit(str(hand_study))
    assert n == 2 and any("does not match its hash" in p for p in problems)
    path.write_text(lines[1] + "\n")  # the first line removed
    assert any("does not follow the line before" in p for p in corr.verify_audit(str(hand_study))[1])
    assert review.main([str(hand_study), "--verify"]) == 1
    assert "problems" in capsys.readouterr().out
    path.write_text(lines[0] + "\n")  # the last line cut off: the record's review of photo 1 is not in the log
    assert any("review of photos/p1/v0_front is not the last one" in p for p in corr.verify_audit(str(hand_study))[1])
    path.write_text("\n".join(lines) + "\n")
    doc = json.loads((hand_study / "results.json").read_text())
    doc["photos"][0]["review"]["status"] = "rejected"  # edited in the record behind the log's back
    (hand_study / "results.json").write_text(json.dumps(doc))
    assert any("review of photos/p0/v0_front is not the last one" in p for p in corr.verify_audit(str(hand_study))[1])
    doc["photos"][0]["review"]["status"] = "approved"
    (hand_study / "results.json").write_text(json.dumps(doc))
    assert corr.verify_audit(str(hand_study)) == (2, [])
    os.remove(hand_study / doc["photos"][1]["review"]["files"]["lesion_mask"])
    assert any("r1_lesion_mask.png is missing" in p for p in corr.verify_audit(str(hand_study))[1])


def test_saved_corrections_recompute_the_ratio_and_dice_against_independent_counts(hand_study):
    from sklearn.metrics import f1_score

    c = _client(hand_study)
    face = np.asarray(Image.open(hand_study / "photos/p0/v0_front/face_mask.png")) > 0
    model = np.asarray(Image.open(hand_study / "photos/p0/v0_front/lesion_mask.png")) > 0
    fixed = model.copy()
    fixed[60:90, 40:80] = True  # painted over the face edge too: what lies outside the face is cut off
    fixed[:, :5] = True
    r = c.post("/api/photo/0/preview", headers=HEADERS, json={"masks": {"lesion": _payload(fixed.astype(np.uint8))}})
    want = 100.0 * (fixed & face).sum() / face.sum()
    assert r.status_code == 200 and r.json()["ratio"] == pytest.approx(want)
    assert "review" not in study_lib.load(str(hand_study)).photos[0]  # a preview saves nothing
    r = c.post("/api/photo/0/review", headers=HEADERS, json={"reviewer": "Dr A", "base_revision": 0, "status": "approved",
                                                             "comment": "", "masks": {"lesion": _payload(fixed.astype(np.uint8))}})
    rev = r.json()["review"]
    assert rev["corrected"]["ratio"] == pytest.approx(want)
    assert rev["dice"]["lesion"] == pytest.approx(f1_score(model.ravel(), (fixed & face).ravel()))
    assert rev["dice"]["face"] == 1.0 and rev["pixels_changed_from_model"]["lesion"] == int(((fixed & face) != model).sum())
    saved = np.asarray(Image.open(hand_study / rev["files"]["lesion_mask"]))
    assert set(np.unique(saved)) <= {0, 255} and ((saved > 0) == (fixed & face)).all()
    # the model's output is untouched beside it
    np.testing.assert_array_equal(np.asarray(Image.open(hand_study / "photos/p0/v0_front/lesion_mask.png")) > 0, model)
    report = (hand_study / "review" / "report.html").read_text()
    assert EVIL not in report and "&lt;img src=x onerror=alert(1)&gt;" in report


def test_export_writes_the_approved_photos_in_the_folder_layout(hand_study, tmp_path, capsys):
    from launch import build_dataset, review

    c = _client(hand_study)
    fixed = np.zeros((180, 120), np.uint8)
    fixed[70:100, 50:70] = 1
    assert review.main([str(hand_study), "--export", str(tmp_path / "none")]) == 1  # nothing approved yet
    assert "no approved photo" in capsys.readouterr().err
    c.post("/api/photo/1/review", headers=HEADERS, json={"reviewer": "Dr A", "base_revision": 0, "status": "approved",
                                                         "comment": "", "masks": {"lesion": _payload(fixed)}})
    c.post("/api/photo/0/review", headers=HEADERS, json={"reviewer": "Dr A", "base_revision": 0, "status": "rejected",
                                                         "comment": "blurred"})
    root = tmp_path / "export"
    assert review.main([str(hand_study), "--export", str(root)]) == 0
    assert sorted(os.listdir(root / "images")) == ["P2"]  # the rejected photo stays out
    face = np.asarray(Image.open(hand_study / "photos/p1/v0_front/face_mask.png")) > 0
    lesion = np.asarray(Image.open(root / "vitiligo_masks" / "P2" / "0" / "front.png"))
    np.testing.assert_array_equal(lesion > 0, (fixed > 0) & face)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "face_masks" / "P2" / "0" / "front.png")) > 0, face)
    np.testing.assert_array_equal(np.asarray(Image.open(root / "images" / "P2" / "0" / "front.png")),
                                  np.asarray(Image.open(hand_study.parent / "photos" / "1.png")))
    meta = json.loads((root / "review_export.json").read_text())
    assert meta["photos"][0]["sha256"]["lesion"] == corr.mask_sha256((fixed > 0) & face)
    assert build_dataset.main(["--name", "uv_vitiligo", "--manual-dir", str(root), "--check"]) == 0


def test_the_page_sets_names_as_text_never_as_html():
    js = open(os.path.join(server.STATIC, "review.js")).read()
    page = open(os.path.join(server.STATIC, "index.html")).read()
    assert "innerHTML" not in js and "outerHTML" not in js and "insertAdjacentHTML" not in js
    assert "document.write" not in js and "http://" not in page + js and "https://" not in page + js  # nothing fetched


# ---------------------------------------------------------------------------- the real chain

def _analysis(bundle, tmp_path, patients=4):
    """launch.analyze on patients x 2 visits of the front view at 360x240 (the first patient named EVIL)."""
    from launch import analyze

    root = tmp_path / "photos"
    for i in range(patients):
        name = EVIL.replace("/", "") if i == 0 else f"P{i}"
        patient = synthetic.make_patient(5, i)
        for visit in (0, 1):
            d = root / name / str(visit)
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(synthetic.render(patient, visit, "front", (360, 240)).image).save(d / "front.png")
    out = tmp_path / "out"
    assert analyze.main(["--model", bundle, str(root), "--out", str(out), "--batch-size", "4"]) == 0
    return out


@pytest.fixture(scope="module")
def analysis(bundle, tmp_path_factory):
    return _analysis(bundle, tmp_path_factory.mktemp("review_analysis"))


def test_round_trip_analyze_correct_export_build_and_fine_tune(analysis, bundle, tmp_path, capsys):
    """analyze -> two photos corrected (and the rest approved as they are) -> export -> build_dataset ->
    one training step of the bundle's own lesion network on them (config.init_from = the bundle)."""
    from launch import build_dataset, review
    from launch.configs import test as test_config
    from vitijax.train import train_and_evaluate

    out = tmp_path / "out"
    shutil.copytree(analysis, out)
    c = _client(out)
    photos = c.get("/api/study", headers=HEADERS).json()["photos"]
    assert len(photos) == 8 and all(p["editable"] for p in photos)
    fixes = {}
    for p in photos[:2]:  # two corrections: a lesion painted in the middle of the face, the face trimmed
        row = study_lib.load(str(out)).photos[p["index"]]
        m = corr.Corrections(str(out)).model_masks(row)
        ys, xs = np.nonzero(m["face"])
        cy, cx = int(ys.mean()), int(xs.mean())
        m["lesion"][cy - 8:cy + 8, cx - 8:cx + 8] = 1
        m["face"][ys.max() - 5:, :] = 0
        fixes[p["index"]] = m
        r = c.post(f"/api/photo/{p['index']}/review", headers=HEADERS, json={
            "reviewer": "Dr A", "base_revision": 0, "status": "approved", "comment": "lesion added, chin trimmed",
            "masks": {k: _payload(v) for k, v in m.items()}})
        assert r.status_code == 200, r.json()
        want = 100.0 * (m["lesion"] & m["face"]).sum() / m["face"].sum()
        assert r.json()["review"]["corrected"]["ratio"] == pytest.approx(want)
    for p in photos[2:]:
        assert c.post(f"/api/photo/{p['index']}/review", headers=HEADERS, json={
            "reviewer": "Dr A", "base_revision": 0, "status": "approved", "comment": ""}).status_code == 200
    summary = corr.summary(study_lib.load(str(out)))
    assert summary["status"]["approved"] == 8 and 0.5 < summary["lesion_dice_pooled"] < 1.0
    root = tmp_path / "export"
    assert review.main([str(out), "--export", str(root)]) == 0
    rec = study_lib.load(str(out))
    for i, m in fixes.items():
        p = rec.photos[i]
        from vitijax.report.followup import safe_name

        got = np.asarray(Image.open(root / "vitiligo_masks" / safe_name(p["patient"]) / str(p["visit"]) / "front.png")) > 0
        np.testing.assert_array_equal(got, (m["lesion"] & m["face"]) > 0)
    assert build_dataset.main(["--name", "uv_vitiligo", "--manual-dir", str(root), "--data-dir",
                               str(tmp_path / "tfds")]) == 0
    c = test_config.get_config()
    c.data.update(source="tfds", name="uv_vitiligo", config="default", data_dir=str(tmp_path / "tfds"),
                  build_if_missing=False)
    c.init_from = bundle
    c.batch_size, c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 2, 1, 1, 0, 0
    result = train_and_evaluate(c, str(tmp_path / "run"))
    assert result["step"] == 1
    assert f"initialised from {bundle}" in capsys.readouterr().out


# ---------------------------------------------------------------------------- the browser

@pytest.fixture
def browser():
    from launch.screenshot import browser_driver

    try:
        d = browser_driver()
    except RuntimeError as e:
        if os.environ.get("VITIJAX_REQUIRE_BROWSER"):
            pytest.fail(f"VITIJAX_REQUIRE_BROWSER is set (.ci/run) but: {e}")
        pytest.skip(f"the browser test needs Debian's chromium and chromium-driver (.ci/run installs them): {e}")
    yield d
    d.quit()


def _wait(d, script, timeout=60):
    t = time.time()
    while time.time() - t < timeout:
        v = d.execute_script(script)
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {script}; browser log: {d.get_log('browser')}")


def test_browser_paints_a_correction_approves_and_exports(analysis, browser, tmp_path):
    """Chromium opens the study, a reviewer paints a lesion with the brush, erases a stroke with undo, fills a
    polygon, approves; the exported mask holds exactly those pixels and the page's ratio is the record's."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from launch import review
    from vitijax.report.followup import safe_name

    out = tmp_path / "out"
    shutil.copytree(analysis, out)
    app, token = server.make_app(str(out))
    sock = server.bind()
    srv = server.serve_in_thread(app, sock)
    d = browser
    try:
        d.get(f"http://127.0.0.1:{sock.getsockname()[1]}/?token={token}")
        _wait(d, "return document.body.dataset.ready")
        rows = d.find_elements(By.CSS_SELECTOR, "#queue tr.row")
        assert len(rows) == 8
        assert any(r.find_elements(By.TAG_NAME, "td")[0].text == EVIL for r in rows)  # shown as text
        assert not d.find_elements(By.CSS_SELECTOR, "#queue img")  # never made into an element
        study = study_lib.load(str(out))
        index = next(i for i, p in enumerate(study.photos) if p["patient"] == "P1" and p["visit"] == 1)
        d.find_element(By.CSS_SELECTOR, f'#queue tr.row[data-index="{index}"]').click()
        _wait(d, f"return document.body.dataset.ready === '{index}'")
        row = study.photos[index]
        masks = corr.Corrections(str(out)).model_masks(row)
        ys, xs = np.nonzero(masks["face"])
        y, x0, x1 = int(np.percentile(ys, 40)), int(np.percentile(xs, 30)), int(np.percentile(xs, 70))

        def at(px, py):
            return [int(round(v)) for v in d.execute_script(f"return vitijaxReview.screenOf({px} + 0.5, {py} + 0.5)")]

        d.find_element(By.ID, "reviewer").send_keys("Dr Browser")
        d.execute_script("document.activeElement.blur()")  # keys go to the page, not the name field
        for key in ("b", "l"):
            ActionChains(d).send_keys(key).perform()
        d.execute_script("vitijaxReview.state.size = 6")
        def pointer(*moves):  # [(x, y), "down" | "up"] on the page
            chain = ActionChains(d)
            for m in moves:
                if m == "down":
                    chain.w3c_actions.pointer_action.pointer_down()
                elif m == "up":
                    chain.w3c_actions.pointer_action.pointer_up()
                else:
                    chain.w3c_actions.pointer_action.move_to_location(*m)
            chain.perform()

        pointer(at(x0, y), "down", at(x1, y), "up")
        pointer(at(x0, y + 20), "down", at(x1, y + 20), "up")  # a second stroke, then undone
        ActionChains(d).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
        _wait(d, "return document.body.dataset.edits === '3'")  # two strokes and the undo
        ActionChains(d).send_keys("p").perform()  # a polygon: two corners clicked, a double click on the third fills it
        tri = [(x0, y - 30), (x1, y - 30), ((x0 + x1) // 2, y - 12)]
        for px, py in tri[:2]:
            pointer(at(px, py), "down", "up")
            time.sleep(0.6)  # apart: not a double click
        pointer(at(*tri[2]), "down", "up", "down", "up")
        _wait(d, "return document.body.dataset.edits === '4'")
        live = float(d.execute_script("return document.getElementById('ratio-now').dataset.value"))
        ActionChains(d).send_keys("a").perform()  # approve
        _wait(d, f"return document.body.dataset.saved === '{index}:1'")
        shown = d.find_element(By.ID, "ratio-now").text
        rec = study_lib.load(str(out)).photos[index]["review"]  # the approval: what is checked below
        # a second reviewer saves the same photo meanwhile; this page's next save is refused, its edits kept,
        # and saved over theirs only on purpose
        other = _client(out)
        assert other.post(f"/api/photo/{index}/review", headers=HEADERS, json={
            "reviewer": "Dr Other", "base_revision": 1, "status": "rejected", "comment": "blurred"}).status_code == 200
        ActionChains(d).send_keys("b").perform()
        pointer(at(x0, y + 40), "down", at(x1, y + 40), "up")
        _wait(d, "return document.body.dataset.edits === '5'")
        ActionChains(d).send_keys("a").perform()
        _wait(d, "return !document.getElementById('conflict').hidden")
        assert "Dr Other" in d.find_element(By.ID, "message").text
        assert study_lib.load(str(out)).photos[index]["review"]["reviewer"] == "Dr Other"
        d.find_element(By.ID, "save-over").click()
        _wait(d, f"return document.body.dataset.saved === '{index}:3'")
    finally:
        srv.should_exit = True
    final = study_lib.load(str(out)).photos[index]["review"]
    assert (final["status"], final["reviewer"], final["revision"]) == ("approved", "Dr Browser", 3)
    assert (np.asarray(Image.open(out / final["files"]["lesion_mask"])) > 0)[y + 40, (x0 + x1) // 2] or \
        not masks["face"][y + 40, (x0 + x1) // 2]  # the stroke made after the other's save was not lost
    log = [json.loads(line) for line in (out / "review" / "audit.jsonl").read_text().splitlines()]
    assert [(e["reviewer"], e["revision"], e["status"]) for e in log] == [
        ("Dr Browser", 1, "approved"), ("Dr Other", 2, "rejected"), ("Dr Browser", 3, "approved")]
    assert log[0]["sha256_after"] == rec["sha256"]
    assert corr.verify_audit(str(out)) == (3, [])
    saved = np.asarray(Image.open(out / rec["files"]["lesion_mask"])) > 0
    face = masks["face"] > 0
    want = 100.0 * (saved & face).sum() / face.sum()
    assert rec["corrected"]["ratio"] == pytest.approx(want)
    assert live == pytest.approx(want)
    assert shown == f"{want:.2f}"
    added, model = saved & ~(masks["lesion"] > 0), masks["lesion"] > 0
    assert (saved | ~model).all()  # nothing the model found was lost
    for x in range(x0 + 3, x1 - 3):  # the brush stroke, within the face
        assert saved[y, x] or not face[y, x]
    assert not added[y + 17:y + 24].any()  # the undone stroke left nothing
    assert saved[y - 25, (x0 + x1) // 2] or not face[y - 25, (x0 + x1) // 2]  # inside the polygon
    assert not added[:y - 32].any() and not added[y + 5:].any()  # nothing painted elsewhere
    root = tmp_path / "export"
    assert review.main([str(out), "--export", str(root)]) == 0
    exported = np.asarray(Image.open(root / "vitiligo_masks" / safe_name(row["patient"]) / "1" / "front.png")) > 0
    np.testing.assert_array_equal(exported, np.asarray(Image.open(out / final["files"]["lesion_mask"])) > 0)


def test_benchmark_times_the_review_server_on_a_copy(hand_study):
    from launch.benchmark import bench_review

    before = (hand_study / "results.json").read_bytes()
    r = bench_review(str(hand_study), 2)
    assert r["runs"] == 2 and "120x180" in r["what"] and "no follow-up" in r["what"]
    assert all(r[k] > 0 for k in ("photo_first_s", "photo_cached_s", "recompute_first_s", "recompute_s", "save_s"))
    assert (hand_study / "results.json").read_bytes() == before and not (hand_study / "review").exists()
    c = _client(hand_study)  # an analysis already reviewed: the copy starts from the model's output
    assert c.post("/api/photo/0/review", headers=HEADERS, json={"reviewer": "Dr A", "base_revision": 0,
                                                                "status": "approved", "comment": ""}).status_code == 200
    assert bench_review(str(hand_study), 2)["save_s"] > 0
