"""A self-contained evaluation report (``index.html``) that reads offline.

Every name that comes from the data (patient ids, file names) is escaped.
Pictures are linked relative to the report's folder.
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

# What a segmentation report is about (a task's REPORT): the class scored, where, and whether F-Vitiligo and
# the paper's lesion Table 1 apply.
LESION_REPORT = {"class": "lesion", "region": "inside the face mask", "ratio": True, "paper_table": True}
PAPER_TABLE1 = {"f1": 76.937, "iou": 67.105, "miou": 83.178, "dice": 76.937, "precision": 79.842, "recall": 75.534}

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0;width:560px}
.grid img{width:100%}figcaption{font-size:.85em;color:#444}small{color:#666}"""


def _pct(v: float) -> str:
    return "-" if v is None or v != v else f"{100 * v:.2f}"


def table1_rows(summary: Mapping[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """(label, {metric: fraction}) rows of the paper's Table 1, one per averaging mode."""
    face = summary["face"]
    labels = {"pooled": "vitijax, pooled over pixels", "per_image": "vitijax, mean per image",
              "per_patient": "vitijax, mean per patient"}
    return [(labels[k], {**face[k], "f1": face[k]["dice"]}) for k in ("pooled", "per_image", "per_patient")]


def table1_markdown(summary: Mapping[str, Any], report: Mapping[str, Any] = LESION_REPORT) -> str:
    cols = ("f1", "iou", "miou", "dice", "precision", "recall")
    head = "| | F1 | IoU | mIoU | Dice | Precision | Recall |\n|---|---|---|---|---|---|---|\n"
    body = "".join(f"| {label} | " + " | ".join(_pct(v[c]) for c in cols) + " |\n" for label, v in table1_rows(summary))
    paper = "| paper (Lee et al. 2024, Table 1) | " + " | ".join(f"{PAPER_TABLE1[c]:.3f}" for c in cols) + " |\n"
    return head + body + (paper if report["paper_table"] else "") + "\n" + _scope(summary, report) + "\n"


def _scope(summary: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    c, where = report["class"], report["region"]
    return (f"All figures in %, for the {c} class, {where}. mIoU = mean of the {c} and non-{c} IoU {where}. "
            f"F1 = Dice for binary masks. {summary['images']} images of {summary['patients']} patients.")


def write_index(path: str, *, title: str, summary: Mapping[str, Any], overlays: Sequence[Mapping[str, Any]],
                patient_figures: Sequence[tuple[str, str]], bland_altman_png: str | None,
                per_patient: Sequence[Mapping[str, Any]], extra_html: str = "",
                report: Mapping[str, Any] = LESION_REPORT) -> None:
    """``report`` (a task's REPORT) says which class is scored and whether F-Vitiligo and the paper's
    lesion Table 1 belong in the page (not for the face-mask network)."""
    e = html.escape
    cols = ("f1", "iou", "miou", "dice", "precision", "recall")
    t1 = "".join(f"<tr><td>{e(label)}</td>" + "".join(f"<td>{_pct(v[c])}</td>" for c in cols) + "</tr>"
                 for label, v in table1_rows(summary))
    if report["paper_table"]:
        t1 += ("<tr><td>paper (Lee et al. 2024, Table 1)</td>"
               + "".join(f"<td>{PAPER_TABLE1[c]:.3f}</td>" for c in cols) + "</tr>")
    ci = summary["face"].get("pooled_ci95")
    ci_html = ""
    if ci:
        ci_html = "<p>Patient-level bootstrap 95 % intervals of the pooled scores: " + ", ".join(
            f"{e(k)} {_pct(lo)}&ndash;{_pct(hi)}" for k, (lo, hi) in ci.items()) + ".</p>"
    ag = summary["agreement"]
    ratio = summary["ratio"]
    agree = (f"<table><tr><th>F-Vitiligo agreement (per image)</th><th></th></tr>"
             f"<tr><td>mean absolute error (pp)</td><td>{ratio['mae']:.3f}</td></tr>"
             f"<tr><td>mean signed error (pp)</td><td>{ratio['mean_signed_error']:+.3f}</td></tr>"
             f"<tr><td>Bland-Altman bias (pp)</td><td>{ag['bland_altman_bias']:+.3f}</td></tr>"
             f"<tr><td>95 % limits of agreement (pp)</td><td>{ag['bland_altman_loa_low']:+.3f} to "
             f"{ag['bland_altman_loa_high']:+.3f}</td></tr>"
             f"<tr><td>ICC(2,1), absolute agreement</td><td>{ag['icc_a1']:.4f}</td></tr>"
             f"<tr><td>Lin's concordance correlation</td><td>{ag['lins_ccc']:.4f}</td></tr>"
             f"<tr><td>Pearson r</td><td>{ag['pearson_r']:.4f}</td></tr>"
             f"<tr><td>images with an undefined ratio (empty face mask)</td><td>{ratio['undefined']}</td></tr></table>")
    if not report["ratio"]:
        agree = ba_png = ""
    else:
        ba_png = bland_altman_png
    ratio_cells = (lambda r: f"<td>{r['ratio_true_mean']:.2f}</td><td>{r['ratio_pred_mean']:.2f}</td>"
                   f"<td>{r['ratio_mae']:.2f}</td>") if report["ratio"] else (lambda r: "")
    pp = "".join(f"<tr><td>{e(str(r['patient']))}</td><td>{r['images']}</td><td>{_pct(r['dice'])}</td>"
                 f"<td>{_pct(r['iou'])}</td>{ratio_cells(r)}</tr>" for r in per_patient)
    pp_head = "<th>true F-Vitiligo</th><th>predicted</th><th>MAE (pp)</th>" if report["ratio"] else ""
    figs = "".join(f'<figure><img src="{e(src)}" alt="patient {e(pid)}"><figcaption>Patient {e(pid)}'
                   f"</figcaption></figure>" for pid, src in patient_figures)
    ovs = "".join(
        f'<figure><img src="{e(o["src"])}" alt="overlay"><figcaption>{e(str(o["patient"]))}, visit '
        f'{e(str(o["visit"]))}, {e(str(o["view"]))}: Dice {_pct(o["dice"])} %'
        + (f', F-Vitiligo true {o["ratio_true"]:.2f} %, predicted {o["ratio_pred"]:.2f} %' if report["ratio"] else "")
        + '</figcaption></figure>' for o in overlays)
    ba = f'<img src="{e(ba_png)}" alt="Bland-Altman plot" width="520">' if ba_png else ""
    agree_section = f"<h2>F-Vitiligo: agreement with the expert masks</h2>{agree}{ba}" if report["ratio"] else ""
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>{_STYLE}</style></head><body>
<h1>{e(title)}</h1>{extra_html}
<h2>Table 1</h2><table><tr><th></th>{''.join(f'<th>{c}</th>' for c in ('F1', 'IoU', 'mIoU', 'Dice', 'Precision', 'Recall'))}</tr>{t1}</table>
<small>{e(_scope(summary, report))}</small>{ci_html}
{agree_section}
<h2>Per patient</h2><table><tr><th>patient</th><th>images</th><th>Dice</th><th>IoU</th>{pp_head}</tr>{pp}</table>
<div class="grid">{figs}</div>
<h2>Overlays</h2><p>photo | prediction | expert | agreement (green: both; red: false positive; blue: false negative)</p>
<div class="grid">{ovs}</div>
</body></html>"""
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)
