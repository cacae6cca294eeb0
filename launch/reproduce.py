"""Rebuild every number and picture of README.md and docs/ from nothing but the repository.

    python -m launch.reproduce            # about an hour on a 2-core CPU; steps already done are kept

Runs, in order, the commands README shows (each as its own process, with this
Python), and writes what README quotes:

1. the main job (``launch.train``, synthetic config) and its evaluation (``launch.evaluate --checkpoint``):
   ``docs/overlay_example.png``, ``docs/figure4_example.png``; the same with seeds 1 and 2, for the spread;
2. the face-mask and face-box networks, and an inference bundle (``launch.export``);
3. 8 new synthetic patients x 2 visits x 3 views at 2832x4240 (``launch.synthesize``, seed 2000) and 8 more
   with varied acquisition at 2120x1416 (seed 2001), on which the "needs review" rule is calibrated
   (``launch.evaluate --bundle --calibrate``), and the bundle re-exported with it (``models/synthetic``);
4. 3 other new patients x 2 visits x 3 views at 2832x4240 (seed 1000), never used for any choice, scored by
   the chain evaluator without and with ``--tta``: ``docs/analysis_example.png``, ``docs/chain_overlay.png``;
   with 3 more patients with varied acquisition (seed 1001), the flags against the error;
   and 13 files that hold no face (``write_hostile_photos``) through ``launch.analyze``;
5. ``docs/synthetic_grid.png`` and ``docs/synthetic_views.png`` (``launch.preview``);
6. ``docs/results.md``: every figure README quotes, read from the metrics files above; and, where Debian's
   ``chromium`` is installed, screenshots of the analysis pages (``docs/analysis_index.png``,
   ``docs/analysis_patient.png``).

A step whose output exists is not run again (delete ``runs/`` and ``models/`` to start over), so an
interrupted run resumes. Outputs: ``runs/``, ``models/`` (neither in git) and ``docs/`` (in git).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image

DOCS = "docs"


def _run(args: list[str], done: str) -> None:
    """``python -m ARGS`` unless ``done`` exists; stops the whole rebuild if it fails."""
    if os.path.exists(done):
        print(f"[kept] {done}", flush=True)
        return
    cmd = [sys.executable, "-m", *args]
    print(f"[run] {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    if rc not in (0, 1) or not os.path.exists(done):  # analyze/evaluate may exit 1 for "nothing analysed"
        raise SystemExit(f"step failed (exit {rc}): {' '.join(args)}")
    print(f"[done in {time.perf_counter() - t0:.0f} s] {done}", flush=True)


def _side_by_side(paths: list[str], out: str, height: int = 420) -> None:
    tiles = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        tiles.append(np.asarray(im.resize((round(im.width * height / im.height), height), Image.Resampling.BILINEAR)))
    gap = np.full((height, 12, 3), 255, np.uint8)
    row = [tiles[0]]
    for t in tiles[1:]:
        row += [gap, t]
    Image.fromarray(np.concatenate(row, axis=1)).save(out, optimize=True)


def write_hostile_photos(folder) -> None:
    """13 files a clinic's folder can hold that show no face, each wrong in its own way, into ``folder``
    (the reliability checks: noise, white, black, grey, RGBA, 16-bit, TIFF, EXIF-rotated, tiny,
    truncated, empty, a decompression bomb, a hostile file name)."""
    import pathlib
    import struct
    import zlib

    rng = np.random.default_rng(0)
    d = pathlib.Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (600, 400, 3), dtype=np.uint8)).save(d / "noise.png")
    Image.fromarray(np.full((600, 400, 3), 255, np.uint8)).save(d / "white.png")
    Image.fromarray(np.zeros((600, 400, 3), np.uint8)).save(d / "black.png")
    Image.fromarray(np.full((600, 400), 128, np.uint8)).save(d / "grey.png")
    Image.fromarray(rng.integers(0, 256, (600, 400, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (600, 400), dtype=np.uint16)).save(d / "sixteen.png")
    Image.fromarray(rng.integers(0, 256, (600, 400, 3), dtype=np.uint8)).save(d / "tiff.tif")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    Image.fromarray(rng.integers(0, 256, (400, 600, 3), dtype=np.uint8)).save(d / "exif.jpg", exif=exif)
    Image.fromarray(np.full((3, 2, 3), 90, np.uint8)).save(d / "tiny.png")
    full = d / "truncated.jpg"
    Image.fromarray(rng.integers(0, 256, (600, 400, 3), dtype=np.uint8)).save(full, quality=90)
    full.write_bytes(full.read_bytes()[:2000])
    (d / "empty.png").write_bytes(b"")
    # a PNG whose header claims 15000x15000 (225 Mpx, where PIL itself only warns): refused before decoding
    ihdr = struct.pack(">IIBBBBB", 15000, 15000, 8, 2, 0, 0, 0)
    chunk = lambda t, b: struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))  # noqa: E731
    (d / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 99))
                                 + chunk(b"IEND", b""))
    Image.fromarray(rng.integers(0, 256, (600, 400, 3), dtype=np.uint8)).save(d / "<script>x'\"&.png")


def _screenshots(analysis: str) -> None:
    """docs/analysis_index.png and docs/analysis_patient.png: the analysis pages as a browser shows them
    (headless Chromium, if installed: Debian's ``chromium``; otherwise said and skipped)."""
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("[skipped] screenshots of the analysis pages: no chromium on this machine (apt-get install chromium)")
        return
    patient = sorted(os.listdir(os.path.join(analysis, "patients")))[0]
    for page, out, height in (("index.html", "analysis_index.png", 900),
                              (os.path.join("patients", patient, "report.html"), "analysis_patient.png", 1500)):
        url = "file://" + os.path.abspath(os.path.join(analysis, page))
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                        f"--window-size=1200,{height}", f"--screenshot={os.path.abspath(os.path.join(DOCS, out))}",
                        url], check=True, capture_output=True, timeout=120)
        path = os.path.join(DOCS, out)
        Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)  # a third of the size


def _f(v, spec=".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else format(v, spec)


def results_markdown(main: dict, chain_plain: dict, chain_tta: dict, chain_flags: dict, calibration: dict,
                     hostile: list[dict], seeds: dict[int, dict] | None = None) -> str:
    """docs/results.md: the figures README quotes, each with where it comes from."""
    from vitijax.chain import _flag_lines, _stage_lines

    t, ag = main["face"]["pooled"], main["agreement"]
    lines = ["# Results quoted in README", "",
             "Made by `python -m launch.reproduce` on the machine that ran it; do not edit by hand.", "",
             "## The main job's model on its test split (`runs/eval/metrics.json`, `table1.md`)", "",
             "| Dice | IoU | mIoU | precision | recall | F-Vitiligo MAE |", "|---|---|---|---|---|---|",
             f"| {100 * t['dice']:.1f} % | {100 * t['iou']:.1f} % | {100 * t['miou']:.1f} % | "
             f"{100 * t['precision']:.1f} % | {100 * t['recall']:.1f} % | {main['ratio']['mae']:.2f} pp |", "",
             f"{main['images']} test images of {main['patients']} patients (face region, pooled pixels, 256x256 crops "
             f"around the true face). Bland-Altman bias {ag['bland_altman_bias']:+.2f} pp (95 % limits "
             f"{ag['bland_altman_loa_low']:+.2f} to {ag['bland_altman_loa_high']:+.2f}), ICC(2,1) {ag['icc_a1']:.3f}, "
             f"Lin's CCC {ag['lins_ccc']:.3f}, Pearson r {ag['pearson_r']:.3f}.", ""]
    if seeds:
        lines += ["The same command with other seeds (`--config.seed=N`, `runs/eval_seedN/metrics.json`):", "",
                  "| seed | Dice | precision | recall | F-Vitiligo MAE |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {100 * m['face']['pooled']['dice']:.1f} % | {100 * m['face']['pooled']['precision']:.1f} % | "
                  f"{100 * m['face']['pooled']['recall']:.1f} % | {m['ratio']['mae']:.2f} pp |"
                  for k, m in sorted(seeds.items())]
        lines.append("")
    for title, m in (("3 held-out patients at 2832x4240 (`runs/chain_eval/metrics.json`)", chain_plain),
                     ("the same with `--tta` (`runs/chain_eval_tta/metrics.json`)", chain_tta),
                     ("those 18 photos and 18 more of 3 other patients with varied acquisition "
                      "(`runs/chain_eval_flags/metrics.json`)", chain_flags)):
        lines += [f"## The whole chain: {title}", "",
                  "| | chain | lesion only |", "|---|---|---|"]
        lines += [f"| {label} | {a} | {b} |" for label, a, b in _stage_lines(m)]
        review = m["needs_review"]
        lines += ["", f"Flags against the F-Vitiligo error: {review['photos_with_ratio']} photos with a ratio, "
                      f"{review['big_error_photos']} with an error above {review['big_error_pp']:g} pp, "
                      f"{review['small_error_photos']} below {review['small_error_pp']:g} pp.", "",
                  "| flag | fires | recall on errors > 2 pp (%) | false alarms on errors < 1 pp (%) | precision (%) |",
                  "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in _flag_lines(review)]
        lines.append("")
    lines += ["## The needs-review rule (`runs/calibration_eval/review_rule.json`)", "",
              f"Calibrated on {calibration['photos']} photos of 16 other new patients (seeds 2000 and 2001, the "
              f"second with varied acquisition at 2120x1416): {calibration['why']}.", "",
              "The chosen rule first, then the best single test of each signal:", "",
              "| rule | recall > 2 pp | false alarms < 1 pp | precision |", "|---|---|---|---|"]
    lines += ["| " + " or ".join(f"{k} {op} {t:g}" for k, (op, t) in c["rule"].items()) + f" | "
              f"{100 * c['recall_big_error']:.0f} % | {_f(100 * c['false_alarm_small_error'], '.0f')} % | "
              f"{_f(100 * c['precision'], '.0f')} % |" for c in calibration["candidates"]]
    ok = [r for r in hostile if r["status"] == "ok"]
    lines += ["", "## Photos without a face (`runs/hostile/out/results.csv`)", "",
              f"{len(hostile)} files, {len(ok)} with a ratio.", "", "| file | status | reason |", "|---|---|---|"]
    lines += [f"| `{os.path.basename(r['file'])}` | {r['status']} | {r['reason']} |" for r in hostile]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.parse_args(argv)
    os.makedirs(DOCS, exist_ok=True)
    # 1. the main job and its evaluation
    _run(["launch.train", "--config", "launch/configs/synthetic.py", "--workdir", "runs/synthetic"],
         "runs/synthetic/final_metrics.json")
    _run(["launch.evaluate", "--checkpoint", "runs/synthetic", "--data", "synthetic_uv_vitiligo:small/test",
          "--out", "runs/eval"], "runs/eval/metrics.json")
    # 1b. the spread of the main job: the same command with two other seeds
    for seed in (1, 2):
        _run(["launch.train", "--config", "launch/configs/synthetic.py", "--workdir", f"runs/synthetic_seed{seed}",
              f"--config.seed={seed}"], f"runs/synthetic_seed{seed}/final_metrics.json")
        _run(["launch.evaluate", "--checkpoint", f"runs/synthetic_seed{seed}", "--data",
              "synthetic_uv_vitiligo:small/test", "--out", f"runs/eval_seed{seed}"], f"runs/eval_seed{seed}/metrics.json")
    # 2. the face stages and a first bundle
    _run(["launch.train", "--config", "launch/configs/face_mask.py:synthetic", "--workdir", "runs/face_mask"],
         "runs/face_mask/final_metrics.json")
    _run(["launch.train", "--config", "launch/configs/face_box.py:synthetic", "--workdir", "runs/face_box"],
         "runs/face_box/final_metrics.json")
    nets = ["--workdir", "runs/synthetic", "--face-mask-workdir", "runs/face_mask", "--face-box-workdir",
            "runs/face_box"]
    _run(["launch.export", *nets, "--out", "models/synthetic_uncalibrated"], "models/synthetic_uncalibrated")
    # 3. the needs-review rule, calibrated on photos of their own
    _run(["launch.synthesize", "--patients", "8", "--visits", "2", "--seed", "2000", "--out", "runs/calibration"],
         "runs/calibration/truth.csv")
    _run(["launch.synthesize", "--patients", "8", "--visits", "2", "--seed", "2001", "--size", "2120", "1416",
          "--acquisition", "varied", "--out", "runs/calibration_varied"], "runs/calibration_varied/truth.csv")
    _run(["launch.evaluate", "--bundle", "models/synthetic_uncalibrated", "--photos", "runs/calibration",
          "runs/calibration_varied", "--out", "runs/calibration_eval", "--calibrate"],
         "runs/calibration_eval/review_rule.json")
    rule = json.load(open("runs/calibration_eval/review_rule.json"))["rule"]
    _run(["launch.export", *nets, *(["--review-rule", "runs/calibration_eval/review_rule.json"] if rule else []),
          "--out", "models/synthetic"], "models/synthetic")
    # 4. held-out photos, used for nothing but this score
    _run(["launch.synthesize", "--patients", "3", "--visits", "2", "--seed", "1000", "--out", "runs/heldout"],
         "runs/heldout/truth.csv")
    _run(["launch.evaluate", "--bundle", "models/synthetic", "--photos", "runs/heldout", "--out", "runs/chain_eval"],
         "runs/chain_eval/metrics.json")
    _run(["launch.evaluate", "--bundle", "models/synthetic", "--photos", "runs/heldout", "--out",
          "runs/chain_eval_tta", "--tta"], "runs/chain_eval_tta/metrics.json")
    _run(["launch.synthesize", "--patients", "3", "--visits", "2", "--seed", "1001", "--acquisition", "varied",
          "--out", "runs/heldout_varied"], "runs/heldout_varied/truth.csv")
    _run(["launch.evaluate", "--bundle", "models/synthetic", "--photos", "runs/heldout", "runs/heldout_varied",
          "--out", "runs/chain_eval_flags"], "runs/chain_eval_flags/metrics.json")
    # 4b. photos without a face through the same bundle: not one may get a ratio
    if not os.path.exists("runs/hostile/photos"):
        write_hostile_photos("runs/hostile/photos/hostile/0")
    _run(["launch.analyze", "--model", "models/synthetic", "runs/hostile/photos", "--out", "runs/hostile/out"],
         "runs/hostile/out/results.csv")
    # 5. pictures of the data
    _run(["launch.preview", "--synthetic", "--patients", "3", "--visits", "3", "--view", "front",
          "--out", f"{DOCS}/synthetic_grid.png"], f"{DOCS}/synthetic_grid.png")
    _run(["launch.preview", "--synthetic", "--patients", "2", "--visits", "1", "--out", f"{DOCS}/synthetic_views.png"],
         f"{DOCS}/synthetic_views.png")
    # 6. pictures of the results and the figures README quotes
    import shutil

    overlays = sorted(os.listdir("runs/eval/overlays"))
    shutil.copy(os.path.join("runs/eval/overlays", overlays[0]), f"{DOCS}/overlay_example.png")
    figs = sorted(os.listdir("runs/eval/patients"))
    shutil.copy(os.path.join("runs/eval/patients", figs[0]), f"{DOCS}/figure4_example.png")
    pdir = os.path.join("runs/chain_eval/analysis/patients", sorted(os.listdir("runs/chain_eval/analysis/patients"))[0])
    _side_by_side([os.path.join(pdir, "before_after.png"), os.path.join(pdir, "timeline.png")],
                  f"{DOCS}/analysis_example.png")
    _screenshots("runs/chain_eval/analysis")
    chain_overlays = sorted(os.listdir("runs/chain_eval/overlays"))
    shutil.copy(os.path.join("runs/chain_eval/overlays", chain_overlays[1]), f"{DOCS}/chain_overlay.png")
    load = lambda p: json.load(open(p))  # noqa: E731
    import csv

    hostile = list(csv.DictReader(open("runs/hostile/out/results.csv")))
    text = results_markdown(load("runs/eval/metrics.json"), load("runs/chain_eval/metrics.json"),
                            load("runs/chain_eval_tta/metrics.json"), load("runs/chain_eval_flags/metrics.json"),
                            load("runs/calibration_eval/review_rule.json"), hostile,
                            {0: load("runs/eval/metrics.json"), **{k: load(f"runs/eval_seed{k}/metrics.json")
                                                                   for k in (1, 2)}})
    with open(f"{DOCS}/results.md", "w") as f:
        f.write(text)
    print(text)
    print(f"rebuilt {DOCS}/results.md and the pictures in {DOCS}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
