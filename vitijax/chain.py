"""Scoring the whole analysis chain at full resolution, in photo coordinates: ``launch.evaluate --bundle``.

``launch.analyze`` runs face box -> crop -> face mask -> lesion network ->
masks pasted back -> F-Vitiligo. Table 1 (``vitijax.evaluate``) scores the
lesion network alone, on crops cut around the *true* face box with the *true*
face mask at the network's input size. This module scores what ``analyze``
ships, against the true masks of the full photo:

* face box: IoU with the true box (the true face mask's bounding box) and
  whether the square crop around it holds the whole true face;
* face mask: Dice and IoU with the true face mask;
* lesion mask: counts inside the *true* face (tp, fp, fn, tn), so Table 1's
  Dice / IoU / precision / recall read the same way;
* F-Vitiligo: ``analyze``'s own ratio (predicted face mask as denominator)
  against the true ratio; MAE, signed bias, Bland-Altman, ICC
  (``vitijax.evaluate.summarize``);
* change between visits: predicted against true change from the first visit
  of each patient and view, in percentage points.

The same rows, made with the true face box and the true face mask
(``lesion_only``), show what the earlier stages cost.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from vitijax import face as face_lib
from vitijax import quality
from vitijax.evaluate import add_ratio_errors, box_iou, image_row, summarize


def _count(a: np.ndarray) -> int:
    return int(np.count_nonzero(a))


def score_photo(index: int, ids: Mapping[str, Any], result, face_true: np.ndarray, lesion_true: np.ndarray,
                unassessable_true: np.ndarray | None = None) -> dict[str, Any]:
    """One photo's row: ``result`` (a :class:`vitijax.pipeline.PhotoResult`) against the true face and
    vitiligo masks [h, w] {0, 1} of the full photo. Counts inside the true face (``tp`` .. ``tn``) and over
    the photo (``crop_tp`` ..); ``ratio_pred`` is the chain's own ratio (NaN when it gave none), against the
    true ratio of the whole face. With the true unassessable (glare) mask: ``unassessable_true_pct`` and
    ``unassessable_pred_pct``, shares of the true and of the predicted face (0 from a glare-blind network)."""
    face_t = face_true > 0
    lesion_t = (lesion_true > 0) & face_t  # what is not on the face is not facial vitiligo
    h, w = face_t.shape
    face_p = result.face_mask > 0 if result.face_mask is not None else np.zeros((h, w), bool)
    lesion_p = result.lesion_mask > 0 if result.lesion_mask is not None else np.zeros((h, w), bool)
    tp = _count(lesion_p & lesion_t)
    fp_face = _count(lesion_p & ~lesion_t & face_t)
    fn = _count(lesion_t & ~lesion_p)
    n_face = _count(face_t)
    face_counts = (tp, fp_face, fn, n_face - tp - fp_face - fn)
    fp_all = _count(lesion_p) - tp
    crop_counts = (tp, fp_all, fn, h * w - tp - fp_all - fn)
    row = image_row(index, {**ids, "ratio": None}, face_counts, crop_counts)
    row["ratio_pred"] = float(result.ratio)
    add_ratio_errors(row)
    true_box = face_lib.box_from_mask(face_t)
    row["box_true"] = list(true_box) if true_box else None
    row["box_pred"] = None if result.face_box is None else [round(float(v), 1) for v in result.face_box]
    row["box_iou"] = box_iou(result.face_box, true_box) if result.face_box is not None and true_box else 0.0
    row["crop_holds_face"] = bool(result.crop_box is not None and true_box is not None
                                  and face_lib.contains(result.crop_box, true_box))
    inter, n_pred = _count(face_p & face_t), _count(face_p)
    row["face_dice"] = 2 * inter / (n_pred + n_face) if n_pred + n_face else math.nan
    row["face_iou"] = inter / (n_pred + n_face - inter) if n_pred + n_face else math.nan
    row["flags"] = list(result.flags)
    row["quality"] = dict(result.quality)
    if unassessable_true is not None:
        row["unassessable_true_pct"] = 100.0 * _count((unassessable_true > 0) & face_t) / max(n_face, 1)
        row["unassessable_pred_pct"] = (100.0 * result.unassessable_pixels / result.face_pixels
                                        if result.face_pixels else math.nan)
    return row


def change_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per patient and view, each later visit against the first visit where both ratios are defined:
    true and predicted change (percentage points) and their difference."""
    out = []
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["patient"]), str(r["view"])), []).append(r)
    for (patient, view), rs in sorted(groups.items()):
        rs = sorted((r for r in rs if math.isfinite(r["ratio_pred"]) and math.isfinite(r["ratio_true"])),
                    key=lambda r: r["visit"])
        for r in rs[1:]:
            true = r["ratio_true"] - rs[0]["ratio_true"]
            pred = r["ratio_pred"] - rs[0]["ratio_pred"]
            out.append({"patient": patient, "view": view, "from_visit": rs[0]["visit"], "visit": r["visit"],
                        "change_true_pp": true, "change_pred_pp": pred, "change_error_pp": pred - true})
    return out


def _mean(values) -> float:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    return float(v.mean()) if v.size else math.nan


def summarize_chain(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Every figure of one section (``chain`` or ``lesion_only``): the lesion scores and F-Vitiligo
    agreement of :func:`vitijax.evaluate.summarize`, ``f_vitiligo_mae_pp``, and per stage: face box,
    face mask, change between visits."""
    s = summarize(rows)
    changes = change_rows(rows)
    err = np.array([c["change_error_pp"] for c in changes], np.float64)
    s["f_vitiligo_mae_pp"] = s["ratio"]["mae"]
    s["stages"] = {
        "face_box": {"found": float(np.mean([r["box_pred"] is not None for r in rows])),
                     "iou": _mean(r["box_iou"] for r in rows),
                     "crop_holds_face": float(np.mean([r["crop_holds_face"] for r in rows]))},
        "face_mask": {"dice": _mean(r["face_dice"] for r in rows), "iou": _mean(r["face_iou"] for r in rows)},
        "lesion": {k: s["face"]["pooled"][k] for k in ("dice", "iou", "precision", "recall")},
        "change": {"pairs": len(changes), "mae_pp": float(np.abs(err).mean()) if err.size else math.nan,
                   "mean_signed_error_pp": float(err.mean()) if err.size else math.nan},
    }
    glare = [r for r in rows if "unassessable_true_pct" in r]
    if glare:  # photos with the glare truth (launch.synthesize writes it)
        s["stages"]["unassessable"] = {
            "photos": len(glare), "true_mean_pct": _mean(r["unassessable_true_pct"] for r in glare),
            "pred_mean_pct": _mean(r["unassessable_pred_pct"] for r in glare),
            "share_mae_pp": _mean(abs(r["unassessable_pred_pct"] - r["unassessable_true_pct"]) for r in glare)}
    return s


# ----------------------------------------------------------------------------
# Flags against the error they should predict
# ----------------------------------------------------------------------------

BIG_ERROR_PP, SMALL_ERROR_PP = 2.0, 1.0  # a flag should fire above the first and stay quiet below the second
SIGNALS = ("ratio_band_pp", "uncertain_share", "mean_uncertainty", "saturated_share", "face_median_luminance",
           "face_fill", "face_in_box", "face_largest_part")


def _error_classes(rows: Sequence[Mapping[str, Any]]):
    """(the rows with a ratio, their big-error mask, their small-error mask): what every flag is judged on."""
    rated = [r for r in rows if math.isfinite(r["ratio_pred"])]
    err = np.array([abs(r["ratio_error"]) for r in rated], np.float64)
    return rated, err > BIG_ERROR_PP, err < SMALL_ERROR_PP


def flag_report(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How well each flag, and the "needs review" decision, predicts a large F-Vitiligo error.

    Over the photos with a ratio: ``big`` have an absolute error above
    :data:`BIG_ERROR_PP`, ``small`` below :data:`SMALL_ERROR_PP`. Per flag:
    how often it fires, its recall on ``big`` (share of big-error photos it
    flags), its false-alarm rate on ``small`` and its precision (share of
    flagged photos that have a big error). The target for "needs review":
    recall >= 0.9 and false alarms <= 0.2.
    """
    rated, big, small = _error_classes(rows)
    names = sorted({f for r in rated for f in r.get("flags", [])} | {"needs review"})

    def stats(fires: np.ndarray) -> dict[str, Any]:
        return {"fires": int(fires.sum()),
                "recall_big_error": float(fires[big].mean()) if big.any() else math.nan,
                "false_alarm_small_error": float(fires[small].mean()) if small.any() else math.nan,
                "precision": float(big[fires].mean()) if fires.any() else math.nan}

    flags = {n: stats(np.array([bool(r.get("needs_review")) if n == "needs review" else n in r.get("flags", [])
                                for r in rated], bool)) for n in names}
    return {"photos_with_ratio": len(rated), "big_error_photos": int(big.sum()), "small_error_photos": int(small.sum()),
            "big_error_pp": BIG_ERROR_PP, "small_error_pp": SMALL_ERROR_PP, "flags": flags}


# ----------------------------------------------------------------------------
# The stage table, as text and as HTML
# ----------------------------------------------------------------------------

def _stage_lines(sections: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    def pct(v):
        return "-" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"

    def pp(v, sign=""):
        return "-" if v is None or not math.isfinite(v) else format(v, f"{sign}.3f")

    rows = []
    for label, get in (
            ("face found (% of photos)", lambda s: pct(s["stages"]["face_box"]["found"])),
            ("face box IoU (%)", lambda s: pct(s["stages"]["face_box"]["iou"])),
            ("crop holds the whole face (%)", lambda s: pct(s["stages"]["face_box"]["crop_holds_face"])),
            ("face mask Dice (%, mean per photo)", lambda s: pct(s["stages"]["face_mask"]["dice"])),
            ("lesion Dice (%, pooled in the true face)", lambda s: pct(s["stages"]["lesion"]["dice"])),
            ("lesion precision (%)", lambda s: pct(s["stages"]["lesion"]["precision"])),
            ("lesion recall (%)", lambda s: pct(s["stages"]["lesion"]["recall"])),
            ("F-Vitiligo MAE (pp)", lambda s: pp(s["f_vitiligo_mae_pp"])),
            ("F-Vitiligo mean signed error (pp)", lambda s: pp(s["ratio"]["mean_signed_error"], "+")),
            ("Bland-Altman 95% limits (pp)", lambda s: f"{pp(s['agreement']['bland_altman_loa_low'], '+')} to "
                                                       f"{pp(s['agreement']['bland_altman_loa_high'], '+')}"),
            ("ICC(2,1)", lambda s: pp(s["agreement"]["icc_a1"])),
            ("photos without a ratio", lambda s: str(s["ratio"]["undefined"])),
            ("change from first visit: MAE (pp)", lambda s: pp(s["stages"]["change"]["mae_pp"])),
            ("change pairs", lambda s: str(s["stages"]["change"]["pairs"]))):
        rows.append((label, get(sections["chain"]), get(sections["lesion_only"])))
    if "unassessable" in sections["chain"]["stages"]:
        for label, key in (("unassessable share, true (% of face)", "true_mean_pct"),
                           ("unassessable share, predicted (% of face)", "pred_mean_pct"),
                           ("unassessable share MAE (pp)", "share_mae_pp")):
            rows.append((label, *(pp(sections[k]["stages"]["unassessable"][key]) for k in ("chain", "lesion_only"))))
    return rows


def _flag_lines(review: Mapping[str, Any]) -> list[tuple[str, str, str, str, str]]:
    def pct(v):
        return "-" if v is None or not math.isfinite(v) else f"{100 * v:.0f}"

    return [(name, str(f["fires"]), pct(f["recall_big_error"]), pct(f["false_alarm_small_error"]), pct(f["precision"]))
            for name, f in review["flags"].items()]


def stages_text(sections: Mapping[str, Mapping[str, Any]], review: Mapping[str, Any]) -> str:
    """The stage table (chain against lesion only) and the flag table, for the terminal."""
    lines = [f"{'':42s}{'chain':>16s}{'lesion only':>18s}"]
    lines += [f"{label:42s}{a:>16s}{b:>18s}" for label, a, b in _stage_lines(sections)]
    lines.append("")
    lines.append(f"flags against the F-Vitiligo error ({review['photos_with_ratio']} photos with a ratio: "
                 f"{review['big_error_photos']} above {review['big_error_pp']:g} pp, {review['small_error_photos']} "
                 f"below {review['small_error_pp']:g} pp)")
    lines.append(f"{'flag':32s}{'fires':>7s}{'recall >2pp %':>15s}{'false alarm <1pp %':>20s}{'precision %':>13s}")
    lines += [f"{n:32s}{a:>7s}{b:>15s}{c:>20s}{d:>13s}" for n, a, b, c, d in _flag_lines(review)]
    return "\n".join(lines)


def stages_html(sections: Mapping[str, Mapping[str, Any]], review: Mapping[str, Any]) -> str:
    """The same two tables as HTML (escaped), for the report."""
    import html

    e = html.escape
    stages = "".join(f"<tr><td>{e(l)}</td><td>{e(a)}</td><td>{e(b)}</td></tr>" for l, a, b in _stage_lines(sections))
    flags = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in _flag_lines(review))
    return (f"<h2>Stage by stage</h2><p>The chain is what <code>launch.analyze</code> computes (predicted box, "
            f"predicted face mask, full resolution); <em>lesion only</em> is the same lesion network given the true "
            f"face box and the true face mask. All scores at the photo's full resolution.</p>"
            f"<table><tr><th></th><th>chain</th><th>lesion only</th></tr>{stages}</table>"
            f"<h2>Flags against the error</h2><p>{review['photos_with_ratio']} photos with a ratio; "
            f"{review['big_error_photos']} with an F-Vitiligo error above {review['big_error_pp']:g} pp, "
            f"{review['small_error_photos']} below {review['small_error_pp']:g} pp.</p>"
            f"<table><tr><th>flag</th><th>fires</th><th>recall on errors &gt; {review['big_error_pp']:g} pp (%)</th>"
            f"<th>false alarms on errors &lt; {review['small_error_pp']:g} pp (%)</th><th>precision (%)</th></tr>"
            f"{flags}</table>")


def calibrate_review(rows: Sequence[Mapping[str, Any]], signals: Sequence[str] = SIGNALS,
                     min_recall: float = 0.9) -> dict[str, Any]:
    """The "needs review" rule that held-out photos support.

    Candidates are one quality signal against a threshold (either direction,
    thresholds halfway between observed values, so none sits on a calibration
    photo), or two such tests joined by "or" (different signals). A rule must
    flag at least ``min_recall`` of the photos whose F-Vitiligo error exceeds
    :data:`BIG_ERROR_PP`; among those, the one that raises the fewest false
    alarms on photos whose error is below :data:`SMALL_ERROR_PP` wins (a single
    test before a pair when they tie, then the higher precision). "Needs review"
    is the rule *or* a failed check of the photo quality gate
    (:mod:`vitijax.quality`), so every figure is of the two together; ``gate``
    holds the gate's alone.

    Returns {'rule': {signal: [op, threshold], ...} or None, 'candidates': the
    best single test of each signal and the best rules overall with their
    recall, false-alarm rate and precision, 'photos', 'big_error_photos',
    'small_error_photos', 'why'}.
    """
    rated, big, small = _error_classes(rows)
    out: dict[str, Any] = {"photos": len(rated), "big_error_photos": int(big.sum()),
                           "small_error_photos": int(small.sum()), "min_recall": min_recall,
                           "big_error_pp": BIG_ERROR_PP, "small_error_pp": SMALL_ERROR_PP, "rule": None,
                           "candidates": []}
    if not big.any():
        out["why"] = (f"no calibration photo has an error above {BIG_ERROR_PP:g} pp: nothing to calibrate on "
                      "(use more or harder photos, e.g. launch.synthesize --acquisition varied)")
        return out
    tests, fires = [], []  # (signal, op, threshold), bool [photos]
    for key in signals:
        v = np.array([r["quality"].get(key, math.nan) for r in rated], np.float64)
        u = np.unique(v[np.isfinite(v)])
        if u.size < 2:
            continue
        for t in (u[:-1] + u[1:]) / 2:
            tests += [(key, ">", float(t)), (key, "<", float(t))]
            fires += [np.isfinite(v) & (v > t), np.isfinite(v) & (v < t)]
    if not tests:
        out["why"] = "no quality signal was recorded for these photos"
        return out
    checks = {c.flag for c in quality.CHECKS}
    gate = np.array([any(flag in checks for flag in r.get("flags", [])) for r in rated], bool)
    f = np.array(fires) | gate[None, :]  # [tests, photos]: a rule fires, or the gate already flags
    need = min_recall * big.sum() - 1e-9

    def score(mask):
        return {"recall_big_error": float(mask[big].mean()),
                "false_alarm_small_error": float(mask[small].mean()) if small.any() else math.nan,
                "precision": float(big[mask].mean()) if mask.any() else math.nan}

    out["gate"] = score(gate)

    rules = []  # (false alarms, size, -precision, [test indices])
    ok = f[:, big].sum(1) >= need
    for i in np.flatnonzero(ok):
        sc = score(f[i])
        rules.append((sc["false_alarm_small_error"], 1, -sc["precision"], [int(i)]))
    signal_of = np.array([t[0] for t in tests])
    for i in range(len(tests)):  # pairs: every test "or" every later test of another signal; keep i's best
        either = f[i][None, :] | f[i + 1:]
        usable = (either[:, big].sum(1) >= need) & (signal_of[i + 1:] != signal_of[i])
        if not usable.any():
            continue
        fa = either[:, small].mean(1) if small.any() else np.zeros(len(either))
        precision = (either & big).sum(1) / np.maximum(either.sum(1), 1)
        order = np.lexsort((-precision, fa))  # by false alarms, then precision
        j = int(order[usable[order]][0])
        rules.append((float(fa[j]), 2, -float(precision[j]), [i, i + 1 + j]))
    if not rules:
        out["why"] = f"no rule of one or two signals flags {100 * min_recall:.0f} % of the big-error photos"
        return out
    rules.sort(key=lambda r: (r[0], r[1], r[2]))

    def describe(idx):
        mask = np.any(f[idx], axis=0)
        return {"rule": {tests[k][0]: [tests[k][1], round(tests[k][2], 4)] for k in idx}, **score(mask)}

    best = describe(rules[0][3])
    per_signal = {}
    for r in rules:
        if r[1] == 1 and tests[r[3][0]][0] not in per_signal:
            per_signal[tests[r[3][0]][0]] = describe(r[3])
    out["rule"] = best["rule"]
    out["candidates"] = [best] + list(per_signal.values())
    text = " or ".join(f"{k} {op} {t:g}" for k, (op, t) in best["rule"].items())
    out["why"] = (f"{text}, or a failed quality check, flags {100 * best['recall_big_error']:.0f} % of the "
                  f"{int(big.sum())} photos with an error "
                  f"above {BIG_ERROR_PP:g} pp and {100 * best['false_alarm_small_error']:.0f} % of the "
                  f"{int(small.sum())} below {SMALL_ERROR_PP:g} pp")
    return out
