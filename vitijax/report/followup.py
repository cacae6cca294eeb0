"""What ``launch.analyze`` writes: per-photo masks and overlays, and the treatment follow-up per patient.

Layout of ``OUT``::
    index.html                 every patient, every photo that could not be analysed and why
    results.json               the study record (vitijax/study.py): every photo, its masks, its follow-up
    results.csv                one row per photo (ratio, change from the first visit, follow-up figures, flags)
    photos/<patient>/v<visit>_<view>[-shot<n>]/
        face_mask.png, lesion_mask.png   full resolution, 0 / 255
        unassessable_mask.png            from a glare-aware lesion network: where glare hides the skin
        overlay.jpg                      the face crop: face outline yellow, lesions green, unassessable
                                         (glare) hatched magenta
        probability.png, uncertainty.png on request / with test-time augmentation (crop-sized, 0-255)
        aligned.jpg                      the baseline's face framing; for a later photo, the photo
                                         registered onto the baseline (the report's blend slider)
        change_map.png                   later photos: stable lesion white, repigmented green, newly
                                         depigmented red, outside the common region the dimmed photo
    patients/<patient>/report.html, timeline.png, before_after.png, trajectory.png

Change from the first visit, per patient and view: ``change_pp`` = ratio -
first ratio (percentage points; negative = less vitiligo), and
``repigmentation_pct`` = (first - ratio) / first x 100 (the share of the
first visit's vitiligo that has repigmented), reported only when the first
ratio is at least :data:`REPIGMENTATION_FLOOR_PP`: a relative change divides
the error of two ratios by the baseline, so on a small baseline it says
nothing (the chain's per-photo F-Vitiligo error is about 1 pp, see README; on
a 1 pp baseline that alone makes repigmentation anywhere from -100 % to
+100 %, as the -124 % a patient once got from a true -18 %). Below the floor
the absolute change in pp is the figure to read. Every name that comes from
the input is escaped in HTML.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import math
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from vitijax import face as face_lib
from vitijax.data.io import downscale, write_png
from vitijax.report.figures import VIEW_ORDER, plt
from vitijax.report.overlay import GREEN, MAGENTA, YELLOW, fit_height, grid, outlines

COLUMNS = ("patient", "visit", "view", "shot", "file", "status", "reason", "ratio", "needs_review", "review_reasons",
           "change_pp", "repigmentation_pct", "repigmentation_note", "change_common_pp", "detectable_change",
           "fvasi", "fvasi_improvement_pct", "fvasi50", "fvasi75", "registration_ok", "lesion_events", "face_pixels", "vitiligo_pixels", "unassessable_pixels", "face_box", "box_score", "flags", "face_median_luminance",
           "saturated_share", "uncertain_share", "mean_uncertainty", "height", "width", "outputs")
_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:nth-child(-n+3),th:nth-child(-n+3){text-align:left}img{max-width:100%}
.flag{color:#b03000}small{color:#666}.blend{position:relative;display:inline-block}
.blend img{width:430px}.blend img.top{position:absolute;left:0;top:0}.pair{display:flex;gap:1em;flex-wrap:wrap}
.map{width:430px}.pair>div{width:430px}"""


def safe_name(name: str) -> str:
    """A file-system-safe, collision-free folder name for a patient id or view: letters, digits, _ . - kept,
    the rest replaced by _, plus a short hash of the original when anything was replaced (so "a b" and
    "a_b" stay apart) and never a name of dots only."""

    name = str(name)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:100]
    if safe != name or not safe.strip("."):
        safe = f"{safe.strip('.') or 'x'}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return safe


def photo_dir(out: str, patient: str, visit: int, view: str, shot: int = 0) -> str:
    return os.path.join(out, "photos", safe_name(patient), f"v{visit}_{safe_name(view)}" + (f"-shot{shot}" if shot else ""))


def overlay(photo: np.ndarray, result, max_side: int = 1024) -> np.ndarray:
    """The face crop [<= max_side] with lesions tinted green and outlined, the face outline in yellow and
    the unassessable region (glare-aware networks) hatched and outlined in magenta."""
    box = result.crop_box
    crop = result.crop if result.crop is not None else face_lib.crop(photo, box)  # the chain's own cut
    masks = [face_lib.crop(m, box) for m in (result.face_mask, result.lesion_mask)]
    if result.unassessable_mask is not None:
        masks.append(face_lib.crop(result.unassessable_mask, box))
    scale = min(1.0, max_side / max(crop.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
        crop = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BILINEAR))
        masks = [np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) for m in masks]
    face, lesion = masks[:2]
    tinted = crop.astype(np.float32)
    sel = lesion > 0
    tinted[sel] = 0.6 * tinted[sel] + 0.4 * np.asarray(GREEN, np.float32)
    lines = [(face, YELLOW), (lesion, GREEN)]
    if len(masks) > 2:
        yy, xx = np.indices(crop.shape[:2])
        hatch = (masks[2] > 0) & (((yy + xx) // 3) % 4 == 0)  # diagonal stripes: the photo stays visible
        tinted[hatch] = np.asarray(MAGENTA, np.float32)
        lines.append((masks[2], MAGENTA))
    return outlines(tinted.astype(np.uint8), lines)


def write_photo(out: str, inp, photo: np.ndarray, result) -> dict[str, str]:
    """Writes one analysed photo's pictures; returns {kind: path relative to ``out``} ('outputs': its folder)."""
    d = photo_dir(out, inp.patient, inp.visit, inp.view, inp.shot)
    os.makedirs(d, exist_ok=True)
    files = {}
    if result.face_mask is not None:
        write_png(os.path.join(d, "face_mask.png"), result.face_mask * 255)
        write_png(os.path.join(d, "lesion_mask.png"), result.lesion_mask * 255)
        if result.unassessable_mask is not None:
            write_png(os.path.join(d, "unassessable_mask.png"), result.unassessable_mask * 255)
            files["unassessable_mask"] = "unassessable_mask.png"
        Image.fromarray(overlay(photo, result)).save(os.path.join(d, "overlay.jpg"), quality=90)
        files.update(face_mask="face_mask.png", lesion_mask="lesion_mask.png", overlay="overlay.jpg")
    else:  # no face or an empty face mask: show what was seen, with the face box if there was one
        small = downscale(photo, 1024)
        Image.fromarray(small).save(os.path.join(d, "overlay.jpg"), quality=90)
        files["overlay"] = "overlay.jpg"
    for kind, arr in (("probability", result.probability), ("uncertainty", result.uncertainty)):
        if arr is not None:
            # uncertainty is a standard deviation of probabilities, at most 0.5: scaled x2 to use the range
            scale = 255.0 if kind == "probability" else 510.0
            write_png(os.path.join(d, f"{kind}.png"), np.clip(arr * scale, 0, 255).astype(np.uint8))
            files[kind] = f"{kind}.png"
    rel = os.path.relpath(d, out)
    return {"outputs": rel, **{k: os.path.join(rel, v) for k, v in files.items()}}


# Smallest first-visit F-Vitiligo (pp) for which a relative change (repigmentation %) is reported. With a
# per-photo error e in each of two visits, the relative change is off by up to 2e / baseline: at 5 pp and
# e = 1 pp (the chain's measured MAE is below that), 40 % at worst and about 28 % typically (sqrt(2) e /
# baseline); below 5 pp it grows past any clinical use (VASI's smallest detectable change is 5-7 %).
REPIGMENTATION_FLOOR_PP = 5.0


def add_changes(rows: list[dict[str, Any]]) -> None:
    """Fills ``change_pp`` and ``repigmentation_pct`` of each row against the patient's first visit with a
    defined ratio in the same view (NaN where undefined; repigmentation also NaN, with
    ``repigmentation_note``, where the first ratio is below :data:`REPIGMENTATION_FLOOR_PP`)."""
    first: dict[tuple[str, str], float] = {}
    for r in sorted(rows, key=lambda r: (str(r["patient"]), str(r["view"]), r["visit"], r.get("shot", 0))):
        key = (str(r["patient"]), str(r["view"]))
        ratio = r.get("ratio", math.nan)
        if key not in first and math.isfinite(ratio):
            first[key] = ratio
        base = first.get(key, math.nan)
        r["change_pp"] = ratio - base if math.isfinite(ratio) and math.isfinite(base) else math.nan
        defined = math.isfinite(ratio) and math.isfinite(base)
        r["repigmentation_pct"] = (100.0 * (base - ratio) / base if defined and base >= REPIGMENTATION_FLOOR_PP
                                   else math.nan)
        r["repigmentation_note"] = (f"not applicable: first visit {base:.2f} % < {REPIGMENTATION_FLOOR_PP:g} %"
                                    if defined and base < REPIGMENTATION_FLOOR_PP else "")


def csv_cell(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ";".join(csv_cell(x) for x in v) if not all(isinstance(x, str) for x in v) else "; ".join(v)
    if isinstance(v, dict):
        return json.dumps(v)
    return "" if v is None else str(v)


def _fmt(v, spec=".2f") -> str:
    return "&ndash;" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def plain(text) -> str:
    """``text`` for a matplotlib label: a ``$`` from a patient id would start mathtext (and can fail)."""
    return str(text).replace("$", r"\$")


def timeline_plot(patient: str, rows: Sequence[Mapping[str, Any]], path: str) -> None:
    """F-Vitiligo over visits, one line per view (matplotlib, Agg)."""
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    views = sorted({str(r["view"]) for r in rows}, key=lambda v: (VIEW_ORDER.index(v) if v in VIEW_ORDER else 9, v))
    plotted = 0
    for view in views:
        pts = sorted((r["visit"], r["ratio"]) for r in rows
                     if str(r["view"]) == view and not r.get("shot") and math.isfinite(r["ratio"]))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=plain(view))
            plotted += 1
    ax.set_xlabel("visit")
    ax.set_ylabel("F-Vitiligo (%)")
    ax.set_title(f"Patient {plain(patient)}", fontsize=10)
    ax.set_ylim(bottom=0)
    visits = sorted({r["visit"] for r in rows})
    ax.set_xlim(visits[0] - 0.5, visits[-1] + 0.5)  # one visit: a readable axis around it, not -0.04..0.04
    ax.set_xticks(visits)
    if plotted:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no photo with a defined ratio", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    """``tile`` [h, w, 3] with ``text`` on a dark band along its top (PIL's built-in font: nothing to ship)."""
    from PIL import ImageDraw

    im = Image.fromarray(tile)
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, im.width, 18), fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255))
    return np.asarray(im)


def before_after(out: str, rows: Sequence[Mapping[str, Any]], path: str, tile: int = 320) -> bool:
    """First and last analysed visit side by side, one row per view; False if there is no pair."""
    tiles = []
    for view in sorted({str(r["view"]) for r in rows}):
        ok = sorted((r for r in rows if str(r["view"]) == view and r["status"] == "ok" and not r.get("shot")
                     and "overlay" in r["files"]),
                    key=lambda r: r["visit"])
        if len(ok) >= 2:
            pair = [_caption(fit_height(np.asarray(Image.open(os.path.join(out, ok[i]["files"]["overlay"])).convert("RGB")),
                                        tile), f"{view}, visit {ok[i]['visit']}: {ok[i]['ratio']:.2f} %")
                    for i in (0, -1)]
            tiles.append(pair)
    if not tiles:
        return False
    width = max(t.shape[1] for row in tiles for t in row)
    padded = [[np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0)), constant_values=255) for t in row] for row in tiles]
    Image.fromarray(grid(padded)).save(path)
    return True


def view_label(r: Mapping[str, Any]) -> str:
    """The view, with the repeat shot when there is one ("front, shot 2")."""
    return f"{r['view']}, shot {r['shot']}" if r.get("shot") else str(r["view"])


def trajectory_plot(patient: str, rows: Sequence[Mapping[str, Any]], sdc: float, path: str) -> bool:
    """Per view: registered F-Vitiligo over visits (the baseline's ratio plus the change on the common
    region) with the band of +- the smallest detectable change around the baseline, and the F-VASI
    estimate; False when no view has a follow-up photo."""
    series = {}
    for r in rows:
        fu = r.get("follow_up") or {}
        if r.get("shot"):
            continue
        if fu.get("role") == "baseline":
            series.setdefault(str(r["view"]), []).append((r["visit"], r["ratio"], fu.get("fvasi")))
        elif fu.get("role") == "follow-up" and fu.get("change_common_pp") is not None:
            series.setdefault(str(r["view"]), []).append(
                (r["visit"], fu["baseline_ratio"] + fu["change_common_pp"], fu.get("fvasi_followup")))
    series = {v: sorted(p) for v, p in series.items() if len(p) >= 2}
    if not series:
        return False
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.6, 3.4))
    for k, (view, pts) in enumerate(sorted(series.items(), key=lambda kv: (VIEW_ORDER.index(kv[0])
                                                                           if kv[0] in VIEW_ORDER else 9, kv[0]))):
        colour = f"C{k}"
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] for p in pts], marker="o", color=colour, label=plain(view))
        if math.isfinite(sdc):
            ax.fill_between([xs[0], xs[-1]], pts[0][1] - sdc, pts[0][1] + sdc, color=colour, alpha=0.12, lw=0)
        bx.plot(xs, [p[2] if p[2] is not None else math.nan for p in pts], marker="s", color=colour, label=plain(view))
    ax.set_xlabel("visit")
    ax.set_ylabel("F-Vitiligo, registered (%)")
    ax.set_title(f"registered (baseline + change on the common region); band: +-{sdc:.2f} pp (no detectable change)", fontsize=8)
    bx.set_xlabel("visit")
    bx.set_ylabel("F-VASI estimate")
    visits = sorted({p[0] for pts in series.values() for p in pts})
    for a in (ax, bx):
        a.set_xticks(visits)
    bx.set_title("F-VASI estimate (from UV contrast)", fontsize=8)
    for a in (ax, bx):
        a.set_ylim(bottom=0)
        a.legend(fontsize=8)
    fig.suptitle(f"Patient {plain(patient)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def followup_section(out: str, d: str, rows: Sequence[Mapping[str, Any]], follow: Mapping[str, Any] | None) -> str:
    """The report's follow-up part, per view: blend slider of the baseline and the last visit registered
    onto it, the change map, the visit table (change on the common region, detectable or not,
    registration, F-VASI and the responder calls) and the last visit's lesion table."""
    e = html.escape
    up = os.path.relpath(out, d)
    sdc = float((follow or {}).get("sdc_pp", math.nan))
    parts = []
    for view in sorted({str(r["view"]) for r in rows}, key=lambda v: (VIEW_ORDER.index(v) if v in VIEW_ORDER else 9, v)):
        mine = sorted((r for r in rows if str(r["view"]) == view and (r.get("follow_up") or {}).get("role")),
                      key=lambda r: (r["visit"], r.get("shot", 0)))
        base = next((r for r in mine if r["follow_up"]["role"] == "baseline"), None)
        later = [r for r in mine if r["follow_up"]["role"] == "follow-up"]
        if base is None or not later:
            continue
        last = max((r for r in later if not r.get("shot")), key=lambda r: r["visit"], default=later[-1])
        fu = last["follow_up"]
        src = lambda r, k: e(up + "/" + r["files"][k]).replace("\\", "/")  # noqa: E731
        slider = (f'<div class=blend><img src="{src(base, "aligned")}" alt="baseline, visit {e(str(base["visit"]))}">'
                  f'<img class=top src="{src(last, "aligned")}" alt="visit {e(str(last["visit"]))} registered onto the '
                  f'baseline" style="opacity:.5"></div><br><label>baseline (visit {e(str(base["visit"]))}) '
                  f'<input type=range min=0 max=100 value=50 aria-label="blend" oninput="this.parentNode.'
                  f'previousElementSibling.previousElementSibling.lastElementChild.style.opacity=this.value/100"> '
                  f'visit {e(str(last["visit"]))}, registered</label>') if "aligned" in base["files"] else ""
        change = (f'<img src="{src(last, "change_map")}" alt="change map" class=map>'
                  if "change_map" in last["files"] else "")
        visit_rows = [f"<tr><td>{e(str(base['visit']))}</td><td>{e(str(base.get('shot', 0)))}</td><td>{_fmt(base['ratio'])}"
                      f"</td><td>baseline</td><td></td><td></td><td>{_fmt(base['follow_up'].get('fvasi'))}</td>"
                      "<td></td><td></td></tr>"]
        for r in later:
            f = r["follow_up"]
            det = {True: "detectable", False: "no detectable change",
                   None: "&ndash;" if f.get("registration_ok") else "no call (registration doubtful)"}[f.get("detectable")]
            call = ("F-VASI75" if f.get("fvasi75") else "F-VASI50" if f.get("fvasi50") else
                    "&ndash;" if f.get("fvasi50") is None else "no")
            visit_rows.append(
                f"<tr><td>{e(str(r['visit']))}</td><td>{e(str(r.get('shot', 0)))}</td><td>{_fmt(r['ratio'])}</td>"
                f"<td>{_fmt(f.get('change_common_pp'), '+.2f')}</td><td>{det}</td>"
                f"<td class={'ok' if f.get('registration_ok') else 'flag'}>{'ok' if f.get('registration_ok') else e(f.get('registration_reason') or 'doubtful')}"
                f" (ECC {_fmt((f.get('registration') or {}).get('ecc'))}, "
                f"face IoU {_fmt((f.get('registration') or {}).get('face_iou'))}; common region "
                f"{_fmt(100 * f.get('common_share', math.nan), '.0f')} %)</td><td>{_fmt(f.get('fvasi_followup'))}</td>"
                f"<td>{_fmt(f.get('improvement_pct'), '+.0f')}</td><td>{call}</td></tr>")
        face_px = max(int(base.get("face_pixels") or 0), 1)
        lesion_rows = "".join(
            f"<tr><td>{e(t['event'])}</td><td>{e(', '.join(map(str, t['base']))) or '&ndash;'}</td>"
            f"<td>{e(', '.join(map(str, t['follow']))) or '&ndash;'}</td><td>{100 * t['base_area'] / face_px:.2f}</td>"
            f"<td>{100 * t['follow_area'] / face_px:.2f}</td><td>{_fmt(t.get('area_change_pct'), '+.0f')}</td>"
            f"<td>{e(t.get('pattern') or '')}</td></tr>" for t in fu.get("tracks", []))
        parts.append(f"""<h3>{e(view)}</h3><div class=pair><div>{slider}</div><div>{change}<br><small>change map,
visit {e(str(last['visit']))} against the baseline: <span style="background:#e6e6e6">&nbsp;stable lesion&nbsp;</span>
<span style="background:#28c850">&nbsp;repigmented&nbsp;</span> <span style="background:#e62828;color:#fff">&nbsp;newly
depigmented&nbsp;</span>, normal skin dark grey, outside the common region the dimmed photo</small></div></div>
<table><tr><th>visit</th><th>shot</th><th>F-Vitiligo (%)</th><th>change on the common region (pp)</th><th>against
the SDC</th><th>registration</th><th>F-VASI estimate</th><th>F-VASI improvement (%)</th><th>responder</th></tr>
{''.join(visit_rows)}</table>
<table><tr><th>event (visit {e(str(last['visit']))})</th><th>baseline lesions</th><th>follow-up lesions</th><th>baseline
area (% face)</th><th>follow-up area (% face)</th><th>area change (%)</th><th>repigmentation</th></tr>
{lesion_rows or '<tr><td>no lesions</td></tr>'}</table>""")
    if not parts:
        return ""
    return (f"<h2 id=follow-up>Follow-up: every visit registered onto the baseline</h2>"
            f"<img src=\"trajectory.png\" alt=\"registered F-Vitiligo and F-VASI over visits\">"
            f"{''.join(parts)}<small>Change on the common region: F-Vitiligo of the follow-up minus the baseline's, "
            f"counted on the baseline face pixels that both photos show. Smallest detectable change (SDC): "
            f"{_fmt(sdc)} pp, from {e(str((follow or {}).get('sdc_source', '')))}; a smaller change is no detectable "
            f"change. Lesion events: new, disappeared, enlarged or shrunk by more than 25 % of the area, stable, "
            f"merged, split (vitijax/followup/lesions.py). Repigmentation: perifollicular (islands inside the lesion), "
            f"marginal (the border retreating), diffuse (the lesion's depigmentation degree falling). F-VASI is an "
            f"estimate from the UV contrast of each lesion against the surrounding skin, the patient's most "
            f"depigmented lesion at baseline taken as 100 % (vitijax/followup/fvasi.py); F-VASI50 / 75: at least "
            f"50 / 75 % lower than at baseline.</small>")


def write_patient(out: str, patient: str, rows: list[dict[str, Any]], follow: Mapping[str, Any] | None = None) -> str:
    """patients/<patient>/report.html with the timeline, before/after, the follow-up section (when any
    photo was registered onto a baseline) and the per-photo table; returns its path."""
    e = html.escape
    d = os.path.join(out, "patients", safe_name(patient))
    os.makedirs(d, exist_ok=True)
    timeline_plot(patient, rows, os.path.join(d, "timeline.png"))
    has_pair = before_after(out, rows, os.path.join(d, "before_after.png"))
    trajectory_plot(patient, rows, float((follow or {}).get("sdc_pp", math.nan)), os.path.join(d, "trajectory.png"))
    fu_html = followup_section(out, d, rows, follow)
    up = os.path.relpath(out, d)
    body = "".join(
        f"<tr><td>{e(str(r['visit']))}</td><td>{e(view_label(r))}</td><td>{e(os.path.basename(r['file']))}</td>"
        f"<td>{_fmt(r['ratio'])}</td><td>{_fmt(r['change_pp'], '+.2f')}</td>"
        f"<td>{e(r.get('repigmentation_note') or '') or _fmt(r['repigmentation_pct'], '.1f')}</td>"
        f"<td class=flag>{e('; '.join((['needs review: ' + ', '.join(r['review_reasons'])] if r.get('needs_review') else []) + r['flags']) or r.get('reason', ''))}</td>"
        + (f'<td><a href="{e(up + "/" + r["files"]["overlay"])}"><img src="{e(up + "/" + r["files"]["overlay"])}" '
           f'width="160" alt="overlay"></a></td>' if "overlay" in r["files"] else "<td></td>") + "</tr>"
        for r in sorted(rows, key=lambda r: (r["visit"], str(r["view"]), r.get("shot", 0))))
    ba = ('<h2>Before and after (first and last visit)</h2><img src="before_after.png" alt="before and after">'
          if has_pair else "")
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vitijax: patient {e(patient)}</title>
<style>{_STYLE}</style></head><body><p><a href="{e(up)}/index.html">all patients</a></p>
<h1>Patient {e(patient)}</h1><img src="timeline.png" alt="F-Vitiligo over visits">{ba}{fu_html}
<h2>Photos</h2><table><tr><th>visit</th><th>view</th><th>file</th><th>F-Vitiligo (%)</th>
<th>change from first visit (pp)</th><th>repigmentation (%)</th><th>flags</th><th>overlay</th></tr>{body}</table>
<small>F-Vitiligo = vitiligo pixels / face pixels at full resolution (a glare-aware network leaves the face pixels it
cannot assess out of both). Repigmentation = share of the first visit's
F-Vitiligo that is gone, given only from a first visit of at least {REPIGMENTATION_FLOOR_PP:g} % (below it the
change in percentage points is the figure to read). Overlays: face outline yellow, predicted vitiligo green, unassessable (glare) hatched magenta.</small></body></html>"""
    path = os.path.join(d, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)
    return path


def _describe(v) -> str:
    """A network's description from the analysis info, as words rather than JSON."""
    if not isinstance(v, dict):
        return str(v)
    parts = []
    for k, x in v.items():
        if x is None:
            continue
        if isinstance(x, dict):
            x = ", ".join(f"{kk} {vv}" for kk, vv in x.items())
        elif isinstance(x, float):
            x = f"{x:.4g}"
        parts.append(f"{k.replace('_', ' ')}: {x}")
    return "; ".join(parts)


def _flat(r: Mapping[str, Any]) -> dict[str, Any]:
    """A row with its follow-up figures as columns (:data:`COLUMNS`)."""
    fu = r.get("follow_up") or {}
    out = dict(r)
    events = fu.get("events") or {}
    out.update(change_common_pp=fu.get("change_common_pp"),
               detectable_change={True: "yes", False: "no detectable change", None: ""}.get(fu.get("detectable"), ""),
               fvasi=fu.get("fvasi_followup", fu.get("fvasi")), fvasi_improvement_pct=fu.get("improvement_pct"),
               fvasi50=fu.get("fvasi50"), fvasi75=fu.get("fvasi75"), registration_ok=fu.get("registration_ok"),
               lesion_events="; ".join(f"{k} {v}" for k, v in sorted(events.items())))
    return out


def write_results(out: str, rows: list[dict[str, Any]], problems: Sequence[tuple[str, str]], info: Mapping[str, Any],
                  follow: Mapping[str, Any] | None = None) -> dict[str, str]:
    """results.csv, the study record results.json (``follow``: the analysis-level follow-up information of
    :func:`vitijax.followup.visits.follow_up`), one report per patient and index.html; returns their paths."""
    from vitijax import study

    add_changes(rows)
    os.makedirs(out, exist_ok=True)
    paths = {"csv": os.path.join(out, "results.csv"), "json": os.path.join(out, "results.json"),
             "index": os.path.join(out, "index.html")}
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            flat = _flat(r)
            w.writerow([csv_cell(flat.get(c)) for c in COLUMNS])
    study.save(out, study.from_rows(rows, problems, info, follow))
    e = html.escape
    patients = sorted({str(r["patient"]) for r in rows})
    links = []
    for pid in patients:
        prow = [r for r in rows if str(r["patient"]) == pid]
        report = write_patient(out, pid, prow, follow)
        ok = [r for r in prow if r["status"] == "ok"]
        by_visit = {}
        for r in ok:
            if not r.get("shot"):  # a view's repeat shots would weigh it twice in the mean of the views
                by_visit.setdefault(r["visit"], []).append(r["ratio"])
        ratios = " &rarr; ".join(f"{float(np.mean(v)):.2f}" for _, v in sorted(by_visit.items())) or "&ndash;"
        review = sum(bool(r.get("needs_review")) for r in ok)
        links.append(f'<tr><td><a href="{e(os.path.relpath(report, out))}">{e(pid)}</a></td><td>{len(prow)}</td>'
                     f"<td>{len(ok)}</td><td class=flag>{review or ''}</td><td>{len({r['visit'] for r in prow})}</td>"
                     f"<td>{ratios}</td></tr>")
    failed = [(r["file"], r.get("reason") or "; ".join(r["flags"])) for r in rows if r["status"] != "ok"]
    failed += list(problems)
    fail_html = "".join(f"<tr><td>{e(p)}</td><td>{e(why)}</td></tr>" for p, why in failed)
    nets = "".join(f"<tr><td>{e(k.replace('_', ' '))}</td><td>{e(_describe(v))}</td></tr>"
                   for k, v in info.get("networks", {}).items())
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vitijax analysis</title>
<style>{_STYLE}</style></head><body><h1>vitijax analysis</h1>
<p>{len(rows)} photos of {len(patients)} patients; {sum(r['status'] == 'ok' for r in rows)} with a ratio.
Tables: <a href="results.csv">results.csv</a>, <a href="results.json">results.json</a>.</p>
<table><tr><th>patient</th><th>photos</th><th>with a ratio</th><th>need review</th><th>visits</th>
<th>F-Vitiligo by visit (%, mean of the views)</th></tr>{''.join(links)}</table>
<h2>Photos without a ratio</h2><table><tr><th>file</th><th>reason</th></tr>{fail_html or '<tr><td>none</td><td></td></tr>'}</table>
<h2>Networks</h2><table>{nets}</table></body></html>"""
    with open(paths["index"], "w", encoding="utf-8") as f:
        f.write(doc)
    return paths
