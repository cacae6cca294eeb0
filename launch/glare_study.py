"""Glare and photo quality, measured: the robustness table of docs/glare.md.

    python -m launch.glare_study --out runs/glare_study --markdown docs/glare.md --picture docs/glare_example.png

Trains the four settings of launch/configs/glare.py (``standard``: two classes on photos with the
standard highlights, the lesion network as it was; ``blind``: two classes on glared photos;
``painted``: three classes on the standard photos with painted highlights as its only glare;
``unassessable``: three classes on glared photos with their glare truth), unless ``OUT/<setting>``
already holds a finished run, then
renders new synthetic patients (never trained or validated on) at 1416x944 (half the paper's
resolution) under controlled conditions: glare gain 0 (none), 1 (the standard highlights), 2 and 3
(strong), and, at the standard glare, blur x3, exposure x0.5 and x1.6, and the head turned 20 degrees
off its view. All four networks analyse every photo through the analysis chain (:class:`Analyzer`) with
the true face box and face mask (the chain evaluator's "lesion only" rows), so the lesion stage is
all that differs. Per condition: F-Vitiligo MAE against the true ratio of the whole face, the
unassessable share against the truth's, and how often each check of the quality gate
(:mod:`vitijax.quality`) fires. Writes ``OUT/study.json``, and ``--markdown`` / ``--picture``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

SIZE = (1416, 944)  # (h, w): half the paper's 2832x4240 photos
SEED = 4000  # the new patients' data-set seed: not the training set's (0)
# (name, Acquisition keyword arguments): the conditions of the robustness table, in its order
CONDITIONS = (("no glare (gain 0)", {"glare": (0.0, 0.0)}), ("standard highlights (gain 1)", {}),
              ("glare gain 2", {"glare": (2.0, 2.0)}), ("strong glare (gain 3)", {"glare": (3.0, 3.0)}),
              ("blur x3", {"blur": (3.0, 3.0)}), ("underexposed x0.5", {"exposure": (0.5, 0.5)}),
              ("overexposed x1.6", {"exposure": (1.6, 1.6)}),
              ("head turned 20 degrees", {"yaw": (math.radians(20), math.radians(20))}))
SETTINGS = ("standard", "blind", "painted", "unassessable")  # the table's order: before, then after
GLARE_AWARE = ("painted", "unassessable")


STRONG = CONDITIONS[3][0]  # its front photos serve the pre-step measure and the picture too


def specular_free_auc(fronts) -> dict[str, list[float]]:
    """Whether a classical reflectance-separation pre-step could help: the specular-free image of the
    dichromatic model (each pixel minus its smallest channel, which removes a white specular component)
    against the photo, by how well luma tells lesion from normal skin (AUC, 1 = perfectly; pixels of
    neither glare nor another class), on ``fronts``: the strongly glared front photos of the study."""
    from scipy.stats import mannwhitneyu

    from vitijax.quality import luma

    out: dict[str, list[float]] = {"photo": [], "specular-free": []}
    for s in fronts:
        face, glare = s.face_mask > 0, s.unassessable_mask > 0
        lesion, skin = face & (s.vitiligo_mask > 0) & ~glare, face & (s.vitiligo_mask == 0) & ~glare
        img = s.image.astype(np.float32)
        for name, x in (("photo", luma(img)), ("specular-free", luma(img - img.min(-1, keepdims=True)))):
            a, b = x[lesion], x[skin]
            out[name].append(float(mannwhitneyu(a, b).statistic) / (a.size * b.size))
    return out


def train(out: str, steps: int | None) -> dict[str, str]:
    """{setting: its workdir}, training those not finished yet."""
    from launch.configs import glare
    from vitijax.train import train_and_evaluate

    dirs = {}
    for setting in SETTINGS:
        workdir = os.path.join(out, setting)
        c = glare.get_config(setting)
        if steps:
            c.num_steps = steps
        if os.path.isfile(os.path.join(workdir, "final_metrics.json")):  # reused only if trained as asked now
            with open(os.path.join(workdir, "config.json")) as f:
                ran = json.load(f)
            want = json.loads(c.to_json())
            for cfg in (ran, want):  # where the data set lives is not how the network was trained
                cfg.get("data", {}).pop("data_dir", None)
            differ = [k for k in ("model", "loss", "input", "augment", "data", "num_steps") if ran.get(k) != want.get(k)]
            if differ:
                raise SystemExit(f"{workdir} was trained with other {', '.join(differ)} than launch/configs/glare.py:"
                                 f"{setting} now gives: choose another --out")
        else:
            print(f"=== training {setting} into {workdir}", flush=True)
            train_and_evaluate(c, workdir)
        dirs[setting] = workdir
    return dirs


def photos(condition: dict, patients: int):
    """The condition's photos: every view of the first visit of ``patients`` new patients."""
    from vitijax.data import synthetic

    acq = synthetic.Acquisition(**condition)
    for i in range(patients):
        patient = synthetic.make_patient(SEED, i)
        for view in synthetic.VIEWS:
            yield synthetic.render(patient, 0, view, SIZE, acq)


def analyse(analyzers: dict, s) -> dict:
    """One photo through each analyser: {setting: row} with the ratio errors, unassessable shares and
    the checks that failed."""
    from vitijax.chain import score_photo

    out = {}
    for setting, analyzer in analyzers.items():
        res = analyzer([s.image], [s.face_mask], boxes=[s.face_box], views=[s.view])[0]
        row = score_photo(0, {"patient": s.patient_id, "visit": s.visit, "view": s.view}, res, s.face_mask,
                          s.vitiligo_mask, s.unassessable_mask)
        out[setting] = {"ratio_true": row["ratio_true"], "ratio_pred": row["ratio_pred"],
                        "error": row["ratio_error"], "dice": row["dice"],
                        "unassessable_true_pct": row["unassessable_true_pct"],
                        "unassessable_pred_pct": row["unassessable_pred_pct"],
                        "failed": [f for f, r in res.checks.items() if r["passed"] is False],
                        "quality": {k: res.quality[k] for k in ("sharpness", "face_median_luminance",
                                                                "saturated_share") if k in res.quality}}
    return out


def summarise(rows: list[dict]) -> dict:
    """Per setting: MAE, mean signed error, unassessable share MAE (pp), and each check's firing rate (%);
    and the mean true unassessable share (% of the face)."""
    out = {}
    for setting in SETTINGS:
        r = [row[setting] for row in rows]
        err = np.array([x["error"] for x in r])
        fired: dict[str, float] = {}
        for x in r:
            for f in x["failed"]:
                fired[f] = fired.get(f, 0) + 100.0 / len(r)
        out[setting] = {"mae": float(np.abs(err).mean()), "mean_signed_error": float(err.mean()),
                        "unassessable_mae": float(np.mean([abs(x["unassessable_pred_pct"] - x["unassessable_true_pct"])
                                                           for x in r])),
                        "unassessable_pred_mean": float(np.mean([x["unassessable_pred_pct"] for x in r])),
                        "checks_fired_pct": dict(sorted(fired.items())), "photos": len(r)}
    out["unassessable_true_mean"] = float(np.mean([row["unassessable"]["unassessable_true_pct"] for row in rows]))
    return out


def markdown(study: dict, command: str) -> str:
    b = study["by_condition"]
    free, strong = b[CONDITIONS[0][0]], b[STRONG]
    lines = ["# Glare and photo quality: measured", "",
             "Made by the command at the end on the machine that ran it; do not edit by hand. "
             f"{study['photos_per_condition']} photos per condition ({study['patients']} new synthetic patients x "
             f"3 views, {SIZE[1]}x{SIZE[0]}), analysed by the chain with the true face box and face mask, so only "
             "the lesion network differs. The four lesion networks of launch/configs/glare.py (DDRNet-23-slim, "
             "same steps and input): `standard`, two classes trained on photos with the standard highlights "
             "(the network as it was: **before**); `blind`, two classes trained on glared photos; `painted`, three "
             "classes trained on the standard photos with painted highlights as its only glare; `unassessable`, "
             "three classes trained on glared photos and their glare truth. A glare-aware network's unassessable "
             "pixels leave both counts of F-Vitiligo. Errors against the true F-Vitiligo of the whole face.", "",
             "## F-Vitiligo error against glare and photo quality", "",
             "| condition | true unassessable (% of face) | " + " | ".join(f"MAE `{s}` (pp)" for s in SETTINGS)
             + " | " + " | ".join(f"`{s}`: unassessable predicted (% of face), abs. error (pp)" for s in GLARE_AWARE)
             + " | quality gate (`unassessable`): checks that fired (% of photos) |",
             "|---|---|" + "---|" * (len(SETTINGS) + len(GLARE_AWARE)) + "---|"]
    for name, _ in CONDITIONS:
        c = b[name]
        fired = ", ".join(f"{k} {v:.0f}" for k, v in c["unassessable"]["checks_fired_pct"].items()) or "none"
        lines.append(f"| {name} | {c['unassessable_true_mean']:.2f} | "
                     + " | ".join(f"{c[s]['mae']:.2f} ({c[s]['mean_signed_error']:+.2f})" for s in SETTINGS) + " | "
                     + " | ".join(f"{c[s]['unassessable_pred_mean']:.2f}, {c[s]['unassessable_mae']:.2f}"
                                  for s in GLARE_AWARE) + f" | {fired} |")
    lines += ["", "MAE with the mean signed error in brackets. The head-pose check needs RetinaFace's landmarks, which "
              "the true face boxes used here do not come with: it is not measured in this table (it is tested on real "
              "faces; synthetic heads have no nose relief to estimate a pose from).", "",
              "Strong glare against none (the bar: at most 1.5x): "
              + "; ".join(f"`{s}` {strong[s]['mae']:.2f} / {free[s]['mae']:.2f} pp = "
                          f"{strong[s]['mae'] / free[s]['mae']:.2f}x" for s in SETTINGS) + ".", ""]
    auc = study["specular_free_auc"]
    lines += ["## A reflectance-separation pre-step, measured before adopting", "",
              "The dichromatic model's specular-free image (each pixel minus its smallest channel) removes a white "
              "reflection, but UV photographs are near-monochrome violet-blue and vitiligo is bluish white: on the "
              f"strongly glared front photos of the {len(auc['photo'])} patients, luma tells lesion from normal skin with "
              f"an AUC of {min(auc['photo']):.3f}-{max(auc['photo']):.3f} in the photo and "
              f"{min(auc['specular-free']):.3f}-{max(auc['specular-free']):.3f} in the specular-free image (below 0.5: "
              "inverted). It removes the lesions with the glare, so vitijax does not use it.", ""]
    flag = study["unassessable_flag"]
    lines += ["## The \"unassessable region\" flag", "",
              f"Over all {flag['photos']} photos of the `unassessable` network, the flag fired on {flag['fired']}. "
              f"Their mean absolute F-Vitiligo error: `unassessable` {flag['flagged_mae']['unassessable']:.2f} pp, "
              f"`standard` {flag['flagged_mae']['standard']:.2f} pp; on the photos it left alone: "
              f"{flag['quiet_mae']['unassessable']:.2f} and {flag['quiet_mae']['standard']:.2f} pp.", "",
              "![a strongly glared photo](glare_example.png)", "",
              "Left to right: the face crop under strong glare; the truth (vitiligo green, unassessable magenta); "
              "`unassessable` (lesions green, what it cannot assess hatched magenta); `painted`; `standard` (before).",
              "", f"Produced by `{command}`."]
    return "\n".join(lines) + "\n"


def flag_study(study: dict) -> dict:
    """How the photos the "unassessable region" check flags fare: mean |error| flagged and not, per setting."""
    rows = [r for name in study["rows"] for r in study["rows"][name]]
    flagged = [("unassessable region" in r["unassessable"]["failed"]) for r in rows]
    mean = lambda sel, s: float(np.mean([abs(r[s]["error"]) for r, f in zip(rows, flagged) if f == sel])) \
        if any(f == sel for f in flagged) else float("nan")  # noqa: E731
    return {"photos": len(rows), "fired": int(sum(flagged)),
            "flagged_mae": {s: mean(True, s) for s in SETTINGS}, "quiet_mae": {s: mean(False, s) for s in SETTINGS}}


def picture(analyzers: dict, path: str, fronts) -> None:
    """The most glared of ``fronts`` (the study's strongly glared front photos): crop, truth, and the
    overlays of three networks."""
    from PIL import Image

    from vitijax.pipeline import PhotoResult
    from vitijax.report.followup import overlay
    from vitijax.report.overlay import grid

    s = max(fronts, key=lambda p: float(p.unassessable_mask[p.face_mask > 0].mean()))  # first of equals, as before
    res = {k: a([s.image], [s.face_mask], boxes=[s.face_box])[0] for k, a in analyzers.items()}
    truth = PhotoResult(*s.image.shape[:2], crop_box=res["unassessable"].crop_box, face_mask=s.face_mask,
                        lesion_mask=s.vitiligo_mask & s.face_mask, unassessable_mask=s.unassessable_mask)
    crop = res["unassessable"].crop
    tiles = [np.asarray(Image.fromarray(crop).resize((400, 400), Image.Resampling.BILINEAR))]
    for r in (truth, res["unassessable"], res["painted"], res["standard"]):
        tiles.append(np.asarray(Image.fromarray(overlay(s.image, r, max_side=400)).resize((400, 400))))
    Image.fromarray(grid([tiles])).quantize(256).save(path, optimize=True)  # a third of the size, for git


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.glare_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/glare_study")
    p.add_argument("--patients", type=int, default=6, help="new patients per condition (x 3 views)")
    p.add_argument("--steps", type=int, help="override the configs' num_steps")
    p.add_argument("--markdown", help="also write the page to this file")
    p.add_argument("--picture", help="also write the example picture to this PNG")
    a = p.parse_args(argv)

    from vitijax import face_mask
    from vitijax.pipeline import Analyzer
    from vitijax.segmenter import Segmenter

    dirs = train(a.out, a.steps)
    analyzers = {s: Analyzer(Segmenter.load(d, expect="lesion"), face_mask.make("ground_truth")) for s, d in dirs.items()}
    study = {"patients": a.patients, "photos_per_condition": 3 * a.patients, "by_condition": {}, "rows": {}}
    start, done, total = time.perf_counter(), 0, len(CONDITIONS) * 3 * a.patients
    fronts = []  # the strongly glared front photos, rendered once
    for name, condition in CONDITIONS:
        rows = []
        for s in photos(condition, a.patients):
            rows.append(analyse(analyzers, s))
            if name == STRONG and s.view == "front":
                fronts.append(s)
            done += 1
            rate = done / (time.perf_counter() - start)
            print(f"\r{done}/{total} photos | {rate:.2f} photos/s | ETA {(total - done) / rate:.0f} s", end="",
                  file=sys.stderr, flush=True)
        summary = summarise(rows)
        study["by_condition"][name], study["rows"][name] = summary, rows
    print(file=sys.stderr)
    study["unassessable_flag"] = flag_study(study)
    study["specular_free_auc"] = specular_free_auc(fronts)
    command = "python -m launch.glare_study " + " ".join(argv if argv is not None else sys.argv[1:])
    study["command"] = command
    page = markdown(study, command)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "study.json"), "w") as f:
        json.dump(study, f, indent=1)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(page)
    if a.picture:
        picture(analyzers, a.picture, fronts)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
