"""Writes everything an evaluation produces into one folder.

metrics.json, per_image.csv, per_patient.csv, table1.md, overlays/ (photo |
prediction | expert | agreement, the paper's Figure 3), patients/ (the
paper's Figure 4 per patient), bland_altman.png and index.html.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from vitijax.evaluate import per_patient
from vitijax.report import figures, html as html_report
from vitijax.report.overlay import GREEN, YELLOW, agreement, fit_height, grid, outlines

PER_IMAGE_COLUMNS = ("index", "patient", "visit", "view", "source_file", "tp", "fp", "fn", "tn", "dice", "iou",
                     "precision", "recall", "ratio_pred", "ratio_true", "ratio_error", "ratio_abs_error",
                     "ratio_true_full",
                     "crop_tp", "crop_fp", "crop_fn", "crop_tn")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:120] or "x"


def _csv(path: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(r.get(k), float) and math.isnan(r[k]) else r.get(k, "")) for k in columns})


def overlay_panels(image: np.ndarray, pred: np.ndarray, true: np.ndarray, face: np.ndarray | None,
                   tile: int = 256) -> np.ndarray:
    """photo | prediction outline | expert outline | agreement colours, each ``tile`` high."""
    def fit(a):
        return fit_height(a, tile, nearest=True)

    extra = [(face, YELLOW)] if face is not None else []
    return grid([[fit(image), fit(outlines(image, extra + [(pred, GREEN)])),
                  fit(outlines(image, extra + [(true, GREEN)])), fit(agreement(image, pred, true, face))]], pad=3)


def write_report(out: str, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], *, title: str,
                 overlay_source: Callable[[Mapping[str, Any]], tuple] | None = None,
                 max_overlays: int = 200, extra_html: str = "",
                 report: Mapping[str, Any] = html_report.LESION_REPORT) -> dict[str, str]:
    """Writes the report; ``overlay_source(row)`` gives (image, pred, true, face) arrays for a row's overlay;
    ``extra_html`` (already escaped) goes above Table 1; ``report`` (a task's REPORT) says what is scored
    (without F-Vitiligo, no Bland-Altman plot is drawn).

    Returns the paths written, by kind.
    """
    os.makedirs(out, exist_ok=True)
    paths = {k: os.path.join(out, v) for k, v in (("metrics", "metrics.json"), ("per_image", "per_image.csv"),
                                                   ("per_patient", "per_patient.csv"), ("table1", "table1.md"),
                                                   ("index", "index.html"), ("bland_altman", "bland_altman.png"))}
    with open(paths["metrics"], "w") as f:
        json.dump(summary, f, indent=2, default=float)
    _csv(paths["per_image"], rows, PER_IMAGE_COLUMNS)
    pp = per_patient(rows)
    _csv(paths["per_patient"], pp, ("patient", "images", "tp", "fp", "fn", "tn", "dice", "iou", "precision",
                                    "recall", "ratio_true_mean", "ratio_pred_mean", "ratio_mae",
                                    "ratio_mean_signed_error"))
    with open(paths["table1"], "w") as f:
        f.write(html_report.table1_markdown(summary, report))
    if report["ratio"]:
        figures.bland_altman_plot([r["ratio_pred"] for r in rows], [r["ratio_true"] for r in rows],
                                  {k.replace("bland_altman_", ""): v for k, v in summary["agreement"].items()
                                   if k.startswith("bland_altman_")}, paths["bland_altman"])
    else:
        del paths["bland_altman"]
    os.makedirs(os.path.join(out, "patients"), exist_ok=True)
    patient_figs = []
    for pid in sorted({str(r["patient"]) for r in rows}):
        rel = os.path.join("patients", f"{_safe(pid)}.png")
        figures.figure4(pid, [r for r in rows if str(r["patient"]) == pid], os.path.join(out, rel))
        patient_figs.append((pid, rel))
    overlays = []
    if overlay_source is not None:
        os.makedirs(os.path.join(out, "overlays"), exist_ok=True)
        for r in rows[:max_overlays]:
            rel = os.path.join("overlays", _safe(f"{r['patient']}_v{r['visit']}_{r['view']}_{r['index']}") + ".png")
            Image.fromarray(overlay_panels(*overlay_source(r))).save(os.path.join(out, rel))
            overlays.append({**r, "src": rel})
    html_report.write_index(paths["index"], title=title, summary=summary, overlays=overlays,
                            patient_figures=patient_figs, bland_altman_png="bland_altman.png", per_patient=pp,
                            extra_html=extra_html, report=report)
    return paths
