"""Follow-up registration, measured against the synthetic generator's true correspondence.

    python -m launch.registration_study --out runs/registration_study --picture docs/registration.png

Renders new synthetic patients (seed 6000, never trained on) as a clinic re-photographs them
(``synthetic.FOLLOW_UP``: per photo the head turned, nodded and tilted by up to about 10 degrees,
the camera 15 % nearer or farther, the framing moved, the day's exposure and lamp tone), every visit
in every view, plus repeat shots of the first visit. Registers each follow-up photo, and each repeat
shot, to the first photo of the first visit in the same view (:mod:`vitijax.followup.registration`,
with the true face and lesion masks, so the registration alone is measured), and scores it at the
baseline's face pixels that the other photo shows: the distance between the registered and the true
position (``synthetic.correspondence``), in pixels and in % of the baseline face's width. Rows:
no registration (the same pixel), the affine stage alone, and affine plus the dense flow (what
``register`` returns). Also: how often a registration was flagged, and the F-Vitiligo change
between the two photos on the region both see, computed through the registration against the same
through the true correspondence (the change's error from geometry alone), next to the difference of
the two whole-face ratios (what follow-up reported before registration).

Writes ``OUT/study.json`` and prints the table; ``--picture`` draws one pair: the baseline, the
follow-up, and the follow-up registered onto the baseline, with the baseline's face outline on each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

SEED = 6000
PAPER = (4240, 2832)


def _truth_maps(patient, a, b, size_a, size_b, step: int):
    """The true follow-up pixel of every ``step``-th baseline face pixel: (xs, ys, xb, yb, seen, (yi, xi)),
    ``seen`` where the follow-up shows that point on its face, (yi, xi) the rounded follow-up pixel."""
    from vitijax.data import synthetic

    ys, xs = np.nonzero(a.face_mask[::step, ::step])
    ys, xs = ys * step, xs * step
    xb, yb, seen = synthetic.correspondence(patient, a.pose, size_a, b.pose, size_b, xs, ys)
    h, w = size_b
    yi, xi = np.clip(np.round(yb).astype(int), 0, h - 1), np.clip(np.round(xb).astype(int), 0, w - 1)
    seen &= (b.face_mask[yi, xi] > 0) & (xb >= 0) & (xb <= w - 1) & (yb >= 0) & (yb <= h - 1)
    return xs, ys, xb, yb, seen, (yi, xi)


def score_pair(patient, a, b, size, step: int = 4) -> tuple[dict, object]:
    """Registers photo ``b`` to ``a`` (both rendered at ``size``) and scores it against the truth:
    (the row, the :class:`Registration`)."""
    from vitijax.followup.registration import register

    t = time.perf_counter()
    reg = register(a.image, a.face_mask, b.image, b.face_mask, a.vitiligo_mask, b.vitiligo_mask)
    seconds = time.perf_counter() - t
    affine_only = dataclasses.replace(reg, flow=None)
    xs, ys, xb, yb, seen, (yi, xi) = _truth_maps(patient, a, b, size, size, step)
    face_w = a.face_box[2] - a.face_box[0]
    pts = np.stack([xs, ys], -1)[seen]
    truth = np.stack([xb, yb], -1)[seen]
    errors = {}
    for name, pred in (("none", pts.astype(np.float64)), ("affine", affine_only.to_followup(pts)),
                       ("affine + flow", reg.to_followup(pts))):
        errors[name] = np.hypot(*(pred - truth).T)
    # F-Vitiligo change on the common region, at the sampled baseline face pixels that b shows.
    base_vit = a.vitiligo_mask[ys, xs][seen] > 0
    true_b = b.vitiligo_mask[yi, xi][seen] > 0
    rp = np.round(reg.to_followup(pts)).astype(int)
    inside = (rp[:, 0] >= 0) & (rp[:, 0] < size[1]) & (rp[:, 1] >= 0) & (rp[:, 1] < size[0])
    reg_b = np.zeros_like(true_b)
    reg_b[inside] = b.vitiligo_mask[rp[inside, 1], rp[inside, 0]] > 0
    true_change = 100 * (true_b.mean() - base_vit.mean())
    return {"patient": patient.patient_id, "view": a.view, "visit": b.visit, "shot": b.shot, "ok": reg.ok,
            "reason": reg.reason, "ecc": reg.ecc, "face_iou": reg.face_iou, "seconds": seconds,
            "face_width_px": int(face_w), "points": int(seen.sum()),
            "errors_px": {k: v.tolist() for k, v in errors.items()},
            "true_common_change_pp": float(true_change),
            "registered_common_change_pp": float(100 * (reg_b.mean() - base_vit.mean())),
            "whole_face_change_pp": float(b.ratio - a.ratio)}, reg


def summarise(pairs: list[dict]) -> dict:
    out = {}
    for name in ("none", "affine", "affine + flow"):
        px = np.concatenate([p["errors_px"][name] for p in pairs])
        rel = np.concatenate([np.asarray(p["errors_px"][name]) / p["face_width_px"] for p in pairs])
        out[name] = {"median_px": float(np.median(px)), "p95_px": float(np.percentile(px, 95)),
                     "median_pct_face_width": float(100 * np.median(rel)),
                     "p95_pct_face_width": float(100 * np.percentile(rel, 95))}
    per_pair = [100 * float(np.median(np.asarray(p["errors_px"]["affine + flow"]) / p["face_width_px"])) for p in pairs]
    flagged = [not p["ok"] for p in pairs]
    bad = [m > 1.0 for m in per_pair]
    out["pairs"] = len(pairs)
    out["flagged"] = int(sum(flagged))
    out["pairs_over_1pct"] = int(sum(bad))
    out["flagged_among_over_1pct"] = int(sum(f and b for f, b in zip(flagged, bad)))
    out["change_error_registered_pp"] = float(np.mean([abs(p["registered_common_change_pp"] -
                                                           p["true_common_change_pp"]) for p in pairs]))
    out["change_error_whole_face_pp"] = float(np.mean([abs(p["whole_face_change_pp"] - p["true_common_change_pp"])
                                                       for p in pairs]))
    out["seconds_per_registration"] = float(np.median([p["seconds"] for p in pairs]))
    return out


def picture(path: str, a, b, reg, height: int = 640) -> None:
    """Baseline | follow-up | follow-up registered onto the baseline, each with the baseline's face
    outline (yellow): it fits the registered photo, not the raw one."""
    from PIL import Image

    from vitijax.report.overlay import YELLOW, fit_height, grid, outlines

    outline = fit_height((a.face_mask * 255).astype(np.uint8), height, nearest=True) > 127
    tiles = [outlines(fit_height(img, height), [(outline, YELLOW)]) for img in (a.image, b.image, reg.warp(b.image))]
    Image.fromarray(grid([tiles])).save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.registration_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/registration_study")
    p.add_argument("--patients", type=int, default=4)
    p.add_argument("--visits", type=int, default=3)
    p.add_argument("--shots", type=int, default=3, help="repeat shots of the first visit (1: none)")
    p.add_argument("--size", type=int, nargs=2, default=list(PAPER), metavar=("H", "W"),
                   help="photo size (default: the paper's 4240x2832)")
    p.add_argument("--picture", help="a PNG of one registered pair (for the docs)")
    a = p.parse_args(argv)
    from vitijax.data import synthetic
    from vitijax.run_log import format_seconds

    size = tuple(a.size)
    os.makedirs(a.out, exist_ok=True)
    pairs = []
    total = a.patients * len(synthetic.VIEWS) * (a.visits - 1 + a.shots - 1)
    t0 = time.perf_counter()
    shown = None
    for index in range(a.patients):
        patient = synthetic.make_patient(SEED, index)
        for view in synthetic.VIEWS:
            base = synthetic.render(patient, 0, view, size, synthetic.FOLLOW_UP)
            others = [(v, 0) for v in range(1, a.visits)] + [(0, s) for s in range(1, a.shots)]
            for visit, shot in others:
                other = synthetic.render(patient, visit, view, size, synthetic.FOLLOW_UP, shot=shot)
                row, reg = score_pair(patient, base, other, size)
                pairs.append(row)
                if shown is None and a.picture and visit == 1:
                    shown = (base, other, reg)
                done = len(pairs)
                el = time.perf_counter() - t0
                print(f"[{done}/{total}] {patient.patient_id} {view} visit {visit} shot {shot}: median error "
                      f"{np.median(pairs[-1]['errors_px']['affine + flow']):.2f} px"
                      f"{'' if pairs[-1]['ok'] else ' FLAGGED: ' + pairs[-1]['reason']}; "
                      f"ETA {format_seconds(el / done * (total - done))}", flush=True)
    summary = summarise(pairs)
    with open(os.path.join(a.out, "study.json"), "w") as f:
        json.dump({"size": size, "seed": SEED, "summary": summary, "pairs": pairs}, f)
    print(f"\n{summary['pairs']} registrations at {size[1]}x{size[0]} (true face and lesion masks):")
    print("| | median px | p95 px | median % face width | p95 % face width |")
    print("|---|---|---|---|---|")
    for name in ("none", "affine", "affine + flow"):
        r = summary[name]
        print(f"| {name} | {r['median_px']:.2f} | {r['p95_px']:.2f} | {r['median_pct_face_width']:.2f} | "
              f"{r['p95_pct_face_width']:.2f} |")
    print(f"flagged: {summary['flagged']} of {summary['pairs']}; pairs with a median error over 1 % of the face "
          f"width: {summary['pairs_over_1pct']}, of them flagged: {summary['flagged_among_over_1pct']}")
    print(f"F-Vitiligo change on the common region, mean absolute error from geometry: "
          f"{summary['change_error_registered_pp']:.3f} pp registered; the whole-face ratio difference "
          f"(no registration) is off the common-region change by {summary['change_error_whole_face_pp']:.3f} pp")
    print(f"{summary['seconds_per_registration']:.2f} s per registration (median); wrote "
          f"{os.path.join(a.out, 'study.json')}")
    if a.picture and shown:
        picture(a.picture, *shown)
        print(f"wrote {a.picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
