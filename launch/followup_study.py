"""Follow-up across visits, measured against the synthetic generator's truth.

    python -m launch.followup_study --model models/synthetic --out runs/followup_study \\
        --picture docs/registration.jpg --change-picture docs/followup_change.jpg

Renders new synthetic patients (seed 6000, never trained on) as a clinic re-photographs them
(``synthetic.FOLLOW_UP``: per photo the head turned, nodded and tilted by up to about 10 degrees,
the camera 15 % nearer or farther, the framing moved, the day's exposure and lamp tone; lesions
that shrink, gain pigment islands or fade: ``make_patient(..., diffuse=True)``), every visit in
every view, plus repeat shots of the first visit. Each follow-up photo and each repeat shot is
registered to the first photo of the first visit in the same view and compared with it
(:mod:`vitijax.followup.compare`), with the masks of each source in ``--masks``:

* ``truth``: the true face and lesion masks, so that registration, tracking and the F-VASI
  estimate are measured alone (and the repeatability of the true ratio shows what a change of pose
  alone does to F-Vitiligo);
* ``chain``: what ``launch.analyze`` finds with the bundle ``--model`` (face box, face mask and
  lesion networks at full resolution): the end-to-end figures.

Scored, per source:

* **registration**: the distance between where the registration puts each baseline face pixel
  and where the generator says it is (``synthetic.correspondence``), in pixels and in % of the
  baseline face's width, for no registration, the affine stage and affine + flow; how often the
  flag fired and whether it fired on the pairs over 1 %;
* **F-Vitiligo change on the common region** (the face both photos show): through the registration
  with the source's masks, against the true change (true masks through the true correspondence);
  next to the difference of the two whole-face ratios (follow-up without registration);
* **lesion tracking**: precision and recall of the links between baseline and follow-up lesions;
  a true link joins two lesions (connected components) that hold a common generator lesion
  (:func:`id_sets`);
* **F-VASI estimate** per photo against the true F-VASI (true areas times the generator lesions'
  true degrees, graded): ICC(2,1) (absolute agreement, :mod:`vitijax.agreement`) and MAE; and the F-VASI50 / F-VASI75 calls
  from baseline to the last visit against the true calls;
* **repeatability** over the repeat shots (:mod:`vitijax.followup.repeatability`): CV, ICC and the
  smallest detectable change (SDC) of F-Vitiligo, of F-VASI, and of *registered* F-Vitiligo (each
  repeat shot's ratio carried onto the first shot's pixels: the first shot's ratio plus the change
  on their common region, which is what a follow-up change is made of); and how many visit changes
  on the common region exceed the registered SDC, against how many truly do.

Writes ``OUT/study.json`` and prints the tables, with progress and ETA.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

SEED = 6000
PAPER = (4240, 2832)
ID_SHARE = 0.2  # a generator lesion belongs to a connected lesion: see id_sets


def truth_maps(patient, a, b, step: int):
    """The true follow-up pixel of every ``step``-th baseline face pixel: (xs, ys, xb, yb, seen, (yi, xi)),
    ``seen`` where the follow-up shows that point on its face, (yi, xi) the rounded follow-up pixel."""
    from vitijax.data import synthetic

    ys, xs = np.nonzero(a.face_mask[::step, ::step])
    ys, xs = ys * step, xs * step
    size_a, size_b = a.image.shape[:2], b.image.shape[:2]
    xb, yb, seen = synthetic.correspondence(patient, a.pose, size_a, b.pose, size_b, xs, ys)
    h, w = size_b
    yi, xi = np.clip(np.round(yb).astype(int), 0, h - 1), np.clip(np.round(xb).astype(int), 0, w - 1)
    seen &= (b.face_mask[yi, xi] > 0) & (xb >= 0) & (xb <= w - 1) & (yb >= 0) & (yb <= h - 1)
    return xs, ys, xb, yb, seen, (yi, xi)


def registration_errors(patient, a, b, reg, step: int = 4) -> tuple[dict, float]:
    """({stage: per-point errors in px}, the true F-Vitiligo change on the common region in pp: the true
    follow-up mask at the true correspondence of the baseline's face pixels that the follow-up shows)."""
    xs, ys, xb, yb, seen, (yi, xi) = truth_maps(patient, a, b, step)
    pts = np.stack([xs, ys], -1)[seen]
    truth = np.stack([xb, yb], -1)[seen]
    errors = {}
    for name, pred in (("none", pts.astype(np.float64)), ("affine", dataclasses.replace(reg, flow=None).to_followup(pts)),
                       ("affine + flow", reg.to_followup(pts))):
        errors[name] = np.hypot(*(pred - truth).T)
    true_change = 100.0 * (float((b.vitiligo_mask[yi, xi][seen] > 0).mean()) -
                           float((a.vitiligo_mask[ys, xs][seen] > 0).mean()))
    return errors, true_change


def true_fvasi(patient, s) -> float:
    """The photo's true F-VASI: each generator lesion's visible pixels (% of the face) times the grade of
    its true degree at this visit."""
    from vitijax.data import synthetic
    from vitijax.followup.fvasi import grade

    face = int(s.face_mask.sum())
    counts = np.bincount(s.lesion_ids.ravel(), minlength=len(patient.lesions) + 1)
    return float(sum(100.0 * counts[i + 1] / face * grade(synthetic.degree(les, s.visit))
                     for i, les in enumerate(patient.lesions) if counts[i + 1]))


def id_sets(labels: np.ndarray, ids: np.ndarray) -> dict[int, set[int]]:
    """For each lesion (connected component) of ``labels``, the generator lesions it holds (``ids``: the true
    lesion identity map on the same pixels): those whose pixels in it make at least :data:`ID_SHARE` of
    the smaller of the two (a satellite swallowed by a large lesion belongs to it; a lesion that an eye
    cuts in two belongs to both halves, not to a neighbour it grazes)."""
    sel = labels > 0
    n, m = int(labels.max(initial=0)), int(ids.max(initial=0))
    pair = np.bincount(labels[sel].astype(np.int64) * (m + 1) + ids[sel], minlength=(n + 1) * (m + 1))
    pair = pair.reshape(n + 1, m + 1)
    size, own = pair.sum(1), np.bincount(ids.ravel(), minlength=m + 1)
    return {i: {j for j in range(1, m + 1) if pair[i, j] > 0 and pair[i, j] >= ID_SHARE * min(size[i], own[j])}
            for i in range(1, n + 1)}


def masks_of(s, source: str, analyzer):
    """(face, lesion, unassessable or None, ratio) of one rendered photo for a mask source."""
    if source == "truth":
        return s.face_mask, s.vitiligo_mask, None, s.ratio
    (res,) = analyzer([s.image], views=[s.view])
    if res.face_mask is None:
        return None, None, None, math.nan
    return res.face_mask, res.lesion_mask, res.unassessable_mask, res.ratio


def score_pair(patient, a, b, ma, mb, base_measured):
    """Registers photo ``b`` onto ``a`` with the masks ``ma``/``mb`` of one source and scores everything.
    Returns (row, registration, comparison)."""
    from vitijax.data import synthetic  # noqa: F401  (the rendered photos carry their poses)
    from vitijax.followup.compare import compare
    from vitijax.followup.lesions import links
    from vitijax.followup.registration import register

    t = time.perf_counter()
    reg = register(a.image, ma[0], b.image, mb[0], ma[1], mb[1])
    t_reg = time.perf_counter() - t
    errors, true_change = registration_errors(patient, a, b, reg)
    t = time.perf_counter()
    cmp = compare(a.image, ma[0], ma[1], b.image, mb[0], mb[1], reg, ma[2], mb[2], base=base_measured)
    t_cmp = time.perf_counter() - t
    # Tracking against the generator's identities (the follow-up's carried onto the baseline the same way).
    ids_b = reg.warp(b.lesion_ids, nearest=True)
    truth_a, truth_f = id_sets(cmp.base.labels, a.lesion_ids), id_sets(cmp.follow.labels, ids_b)
    predicted = links(cmp.events)
    seen_b = {b for ev in cmp.events for b in ev.base}  # the lesions the tracker reports on: the others
    seen_f = {f for ev in cmp.events for f in ev.follow}  # lie mostly outside the common region
    true = {(i, j) for i, si in truth_a.items() for j, sj in truth_f.items() if si & sj}
    true = {(i, j) for i, j in true if i in seen_b or j in seen_f}
    face_w = a.face_box[2] - a.face_box[0]
    row = {"patient": patient.patient_id, "view": a.view, "visit": b.visit, "shot": b.shot, "ok": reg.ok,
           "reason": reg.reason, "ecc": reg.ecc, "face_iou": reg.face_iou, "seconds_registration": t_reg,
           "seconds_compare": t_cmp, "face_width_px": int(face_w),
           "errors_px": {k: v.tolist() for k, v in errors.items()},
           "true_common_change_pp": true_change, "registered_common_change_pp": cmp.change_pp,
           "whole_face_change_pp": mb[3] - ma[3], "links_predicted": len(predicted),
           "links_true": len(true), "links_correct": len(predicted & true),
           "tracks": [ev.row() for ev in cmp.events], **cmp.summary()}
    return row, reg, cmp


def _registration_summary(pairs: list[dict]) -> dict:
    out = {}
    for name in ("none", "affine", "affine + flow"):
        px = np.concatenate([p["errors_px"][name] for p in pairs])
        rel = np.concatenate([np.asarray(p["errors_px"][name]) / p["face_width_px"] for p in pairs])
        out[name] = {"median_px": float(np.median(px)), "p95_px": float(np.percentile(px, 95)),
                     "median_pct_face_width": float(100 * np.median(rel)),
                     "p95_pct_face_width": float(100 * np.percentile(rel, 95))}
    per_pair = [100 * float(np.median(np.asarray(p["errors_px"]["affine + flow"]) / p["face_width_px"]))
                for p in pairs]
    flagged = [not p["ok"] for p in pairs]
    bad = [m > 1.0 for m in per_pair]
    out.update(pairs=len(pairs), flagged=int(sum(flagged)), pairs_over_1pct=int(sum(bad)),
               flagged_among_over_1pct=int(sum(f and b for f, b in zip(flagged, bad))),
               seconds_per_registration=float(np.median([p["seconds_registration"] for p in pairs])),
               seconds_per_comparison=float(np.median([p["seconds_compare"] for p in pairs])))
    return out


def summarise(pairs: list[dict], photos: list[dict]) -> dict:
    """The study's figures for one mask source: ``pairs`` from :func:`score_pair`, ``photos`` one row per
    photo (ratio, F-VASI estimate and truth, visit, shot)."""
    from vitijax.agreement import icc_a1
    from vitijax.followup import repeatability
    from vitijax.followup.fvasi import response

    ok_pairs = [p for p in pairs if p.get("change_common_pp") is not None]
    visits = [p for p in ok_pairs if p["shot"] == 0]
    out = {"registration": _registration_summary(ok_pairs) if ok_pairs else {}}
    for name, rows in (("visit pairs", visits), ("repeat shots", [p for p in ok_pairs if p["shot"] > 0])):
        if rows:
            out[f"change ({name})"] = {
                "pairs": len(rows),
                "mae_registered_pp": float(np.mean([abs(p["registered_common_change_pp"] - p["true_common_change_pp"])
                                                    for p in rows])),
                "mae_whole_face_pp": float(np.mean([abs(p["whole_face_change_pp"] - p["true_common_change_pp"])
                                                    for p in rows if math.isfinite(p["whole_face_change_pp"])]))}
    tp = sum(p["links_correct"] for p in visits)
    npred, ntrue = sum(p["links_predicted"] for p in visits), sum(p["links_true"] for p in visits)
    out["tracking"] = {"pairs": len(visits), "links_predicted": npred, "links_true": ntrue, "links_correct": tp,
                       "precision": tp / npred if npred else math.nan, "recall": tp / ntrue if ntrue else math.nan}
    events: dict[str, int] = {}
    for p in visits:
        for k, v in p["events"].items() if isinstance(p["events"], dict) else []:
            events[k] = events.get(k, 0) + v
    # F-VASI estimate against truth, one value per photo
    fv = [(r["fvasi"], r["fvasi_true"]) for r in photos if math.isfinite(r["fvasi"])]
    out["fvasi"] = {"photos": len(fv), "icc": icc_a1([e for e, _ in fv], [t for _, t in fv]) if fv else math.nan,
                    "mae": float(np.mean([abs(e - t) for e, t in fv])) if fv else math.nan,
                    "bias": float(np.mean([e - t for e, t in fv])) if fv else math.nan}
    calls = []
    for key in {(r["patient"], r["view"]) for r in photos}:
        mine = {(r["visit"], r["shot"]): r for r in photos if (r["patient"], r["view"]) == key}
        last = max(v for v, s in mine if s == 0)
        if last == 0 or (0, 0) not in mine or (last, 0) not in mine:
            continue
        est, true = (response(mine[(0, 0)][k], mine[(last, 0)][k]) for k in ("fvasi", "fvasi_true"))
        for level in (50, 75):
            if est[f"fvasi{level}"] is not None and true[f"fvasi{level}"] is not None:  # undefined: not called
                calls.append((level, est[f"fvasi{level}"], true[f"fvasi{level}"]))
    for level in (50, 75):
        c = [(e, t) for lv, e, t in calls if lv == level]
        out["fvasi"][f"fvasi{level}_calls"] = {"pairs": len(c), "agree": int(sum(e == t for e, t in c)),
                                                "true_responders": int(sum(t for _, t in c)),
                                                "called_responders": int(sum(e for e, _ in c))}
    # repeatability over the repeat shots of the first visit
    groups_ratio, groups_fvasi = {}, {}
    for r in photos:
        if r["visit"] == 0:
            groups_ratio.setdefault((r["patient"], r["view"]), []).append(r["ratio"])
            groups_fvasi.setdefault((r["patient"], r["view"]), []).append(r["fvasi"])
    # The same, registered: each repeat shot's F-Vitiligo carried onto the first shot's pixels (its first
    # shot's ratio plus the change on their common region), the measure follow-up changes are made of.
    groups_registered = {}
    for r in photos:
        if (r["visit"], r["shot"]) == (0, 0) and math.isfinite(r["ratio"]):
            groups_registered[(r["patient"], r["view"])] = [r["ratio"]]
    for p in ok_pairs:
        key = (p["patient"], p["view"])
        if p["shot"] > 0 and key in groups_registered:
            groups_registered[key].append(groups_registered[key][0] + p["registered_common_change_pp"])
    out["repeatability"] = {"f_vitiligo": repeatability.summarise(groups_ratio),
                            "f_vitiligo_registered": repeatability.summarise(groups_registered),
                            "fvasi": repeatability.summarise(groups_fvasi)}
    sdc = out["repeatability"]["f_vitiligo_registered"]["sdc"]
    det = [repeatability.detectable(p["registered_common_change_pp"], sdc) for p in visits]
    true_det = [repeatability.detectable(p["true_common_change_pp"], sdc) for p in visits]
    out["detectable"] = {"visit_pairs": len(visits), "sdc": sdc,
                         "reported_detectable": int(sum(bool(d) for d in det)),
                         "true_change_above_sdc": int(sum(bool(t) for t in true_det)),
                         "agree": int(sum(d is not None and d == t for d, t in zip(det, true_det)))}
    out["events"] = events
    return out


def pair_picture(path: str, a, b, reg, cmp, height: int = 560) -> None:
    """Baseline | follow-up registered onto it | the change map with the baseline's lesion outlines."""
    from PIL import Image

    from vitijax.followup.lesions import change_picture
    from vitijax.report.overlay import GREEN, YELLOW, fit_height, grid, outlines

    ys, xs = np.nonzero(a.face_mask)
    pad = 40
    sl = (slice(max(ys.min() - pad, 0), ys.max() + pad), slice(max(xs.min() - pad, 0), xs.max() + pad))
    face = fit_height((a.face_mask[sl] * 255).astype(np.uint8), height, nearest=True) > 127
    lesion = fit_height((a.vitiligo_mask[sl] * 255).astype(np.uint8), height, nearest=True) > 127
    warped = reg.warp(b.image)[sl]
    tiles = [outlines(fit_height(a.image[sl], height), [(face, YELLOW)]),
             outlines(fit_height(warped, height), [(face, YELLOW)]),
             outlines(fit_height(change_picture(cmp.codes[sl], a.image[sl]), height, nearest=True),
                      [(lesion, GREEN)])]
    Image.fromarray(grid([tiles])).save(path, quality=88)  # .jpg for the docs: a tenth of the PNG


def registration_picture(path: str, a, b, reg, height: int = 640) -> None:
    """Baseline | follow-up | follow-up registered onto the baseline, each with the baseline's face
    outline (yellow): it fits the registered photo, not the raw one."""
    from PIL import Image

    from vitijax.report.overlay import YELLOW, fit_height, grid, outlines

    outline = fit_height((a.face_mask * 255).astype(np.uint8), height, nearest=True) > 127
    tiles = [outlines(fit_height(img, height), [(outline, YELLOW)]) for img in (a.image, b.image, reg.warp(b.image))]
    Image.fromarray(grid([tiles])).save(path, quality=88)  # .jpg for the docs: a tenth of the PNG


def _print(source: str, s: dict, size) -> None:
    reg = s["registration"]
    print(f"\n== masks: {source} ({size[1]}x{size[0]}) ==")
    print(f"registration, {reg['pairs']} pairs:")
    print("| | median px | p95 px | median % face width | p95 % face width |\n|---|---|---|---|---|")
    for name in ("none", "affine", "affine + flow"):
        r = reg[name]
        print(f"| {name} | {r['median_px']:.2f} | {r['p95_px']:.2f} | {r['median_pct_face_width']:.2f} | "
              f"{r['p95_pct_face_width']:.2f} |")
    print(f"flagged {reg['flagged']} of {reg['pairs']}; over 1 % of the face width: {reg['pairs_over_1pct']}, "
          f"of them flagged {reg['flagged_among_over_1pct']}; {reg['seconds_per_registration']:.2f} s per "
          f"registration, {reg['seconds_per_comparison']:.2f} s per comparison (medians)")
    for k in ("change (visit pairs)", "change (repeat shots)"):
        if k in s:
            c = s[k]
            print(f"F-Vitiligo {k}, MAE against the true common-region change: registered "
                  f"{c['mae_registered_pp']:.3f} pp, whole-face ratio difference {c['mae_whole_face_pp']:.3f} pp "
                  f"({c['pairs']} pairs)")
    t = s["tracking"]
    print(f"tracking: precision {t['precision']:.3f}, recall {t['recall']:.3f} ({t['links_correct']} correct of "
          f"{t['links_predicted']} predicted links, {t['links_true']} true)")
    f = s["fvasi"]
    print(f"F-VASI estimate vs truth over {f['photos']} photos: ICC {f['icc']:.3f}, MAE {f['mae']:.3f}, "
          f"bias {f['bias']:+.3f}; F-VASI50 calls agree {f['fvasi50_calls']['agree']}/{f['fvasi50_calls']['pairs']}, "
          f"F-VASI75 {f['fvasi75_calls']['agree']}/{f['fvasi75_calls']['pairs']}")
    for k, r in s["repeatability"].items():
        print(f"repeatability of {k}: CV {r['cv_pct']:.2f} % (pooled {r['cv_pooled_pct']:.2f} %), ICC {r['icc']:.4f}, "
              f"within-subject SD "
              f"{r['within_sd']:.3f}, smallest detectable change {r['sdc']:.3f} ({r['subjects']} subjects, "
              f"{r['photos']} photos)")
    d = s["detectable"]
    print(f"visit changes reported as detectable (registered SDC {d['sdc']:.3f} pp): {d['reported_detectable']} of "
          f"{d['visit_pairs']} (true change above it: {d['true_change_above_sdc']}; the call agrees with the "
          f"truth's on {d['agree']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.followup_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/followup_study")
    p.add_argument("--model", help="an inference bundle (launch.export): adds the 'chain' mask source")
    p.add_argument("--masks", nargs="+", choices=("truth", "chain"), help="mask sources (default: truth, "
                   "and chain with --model)")
    p.add_argument("--patients", type=int, default=4)
    p.add_argument("--visits", type=int, default=3)
    p.add_argument("--shots", type=int, default=3, help="repeat shots of the first visit (1: none)")
    p.add_argument("--size", type=int, nargs=2, default=list(PAPER), metavar=("H", "W"),
                   help="photo size (default: the paper's 4240x2832)")
    p.add_argument("--picture", help="a PNG of one registered pair (for the docs)")
    p.add_argument("--change-picture", help="a PNG of one pair's change map (for the docs)")
    a = p.parse_args(argv)
    from vitijax.data import synthetic
    from vitijax.followup.compare import measure
    from vitijax.run_log import format_seconds
    from vitijax.study import json_safe

    sources = a.masks or (["truth", "chain"] if a.model else ["truth"])
    analyzer = None
    if "chain" in sources:
        if not a.model:
            p.error("--masks chain needs --model")
        from launch.analyze import build_analyzer
        from vitijax import compile_cache

        compile_cache.enable()
        analyzer, _ = build_analyzer(argparse.Namespace(model=a.model, face_mask=None, detector="auto", tta=False,
                                                        probability=False, batch_size=1))
    size = tuple(a.size)
    os.makedirs(a.out, exist_ok=True)
    pairs = {s: [] for s in sources}
    photos = {s: [] for s in sources}
    keys = [(v, 0) for v in range(a.visits)] + [(0, s) for s in range(1, a.shots)]
    total = a.patients * len(synthetic.VIEWS) * len(keys)
    done, t0 = 0, time.perf_counter()
    shown = {}
    for index in range(a.patients):
        patient = synthetic.make_patient(SEED, index, diffuse=True)
        for view in synthetic.VIEWS:
            base = None
            measured = {}
            for visit, shot in keys:
                s = synthetic.render(patient, visit, view, size, synthetic.FOLLOW_UP, shot=shot)
                if base is None:
                    base = s
                for source in sources:
                    m = masks_of(s, source, analyzer)
                    if (visit, shot) == (0, 0):
                        measured[source] = (m, measure(base.image, *m[:3]) if m[0] is not None else None)
                    bm, base_meas = measured[source]
                    photo = {"patient": patient.patient_id, "view": view, "visit": visit, "shot": shot,
                             "ratio": m[3], "true_ratio": s.ratio, "fvasi_true": true_fvasi(patient, s),
                             "fvasi": base_meas.fvasi if (visit, shot) == (0, 0) and base_meas else math.nan}
                    photos[source].append(photo)
                    if (visit, shot) == (0, 0) or m[0] is None or bm[0] is None:
                        continue
                    row, reg, cmp = score_pair(patient, base, s, bm, m, base_meas)
                    photo["fvasi"] = cmp.fvasi_followup  # what analyze reports for this photo
                    pairs[source].append(row)
                    if source == sources[0] and visit == a.visits - 1 and "pair" not in shown and index == 0:
                        shown["pair"] = (base, s, reg, cmp)
                done += 1
                el = time.perf_counter() - t0
                last = {src: pairs[src][-1] for src in sources if pairs[src] and (visit, shot) != (0, 0)}
                note = "; ".join(f"{src}: change {r['registered_common_change_pp']:+.2f} pp (true "
                                 f"{r['true_common_change_pp']:+.2f})" for src, r in last.items())
                print(f"[{done}/{total}] {patient.patient_id} {view} visit {visit} shot {shot}"
                      f"{': ' + note if note else ''}; ETA {format_seconds(el / done * (total - done))}", flush=True)
    summary = {src: summarise(pairs[src], photos[src]) for src in sources}
    with open(os.path.join(a.out, "study.json"), "w") as f:
        json.dump(json_safe({"size": size, "seed": SEED, "model": a.model, "summary": summary, "pairs": pairs,
                             "photos": photos}), f)
    for src in sources:
        _print(src, summary[src], size)
    print(f"wrote {os.path.join(a.out, 'study.json')}")
    if "pair" in shown:
        base, s, reg, cmp = shown["pair"]
        if a.picture:
            registration_picture(a.picture, base, s, reg)
            print(f"wrote {a.picture}")
        if a.change_picture:
            pair_picture(a.change_picture, base, s, reg, cmp)
            print(f"wrote {a.change_picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
