"""Plots for the evaluation report (matplotlib, Agg backend: no display needed).

* ``figure4``: the paper's Figure 4 for one patient: predicted vs expert
  F-Vitiligo for the left, front and right views, one panel per visit.
* ``bland_altman_plot``: differences vs means with the bias and 95 % limits.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

VIEW_ORDER = ("left", "front", "right")


def figure4(patient: str, rows: Sequence[Mapping], path: str) -> None:
    """Bars of true and predicted F-Vitiligo per view, one panel per visit, saved to ``path`` (PNG)."""
    visits = sorted({int(r.get("visit", 0) or 0) for r in rows})
    fig, axes = plt.subplots(1, len(visits), figsize=(3.2 * len(visits) + 0.6, 3.0), squeeze=False, sharey=True)
    top = max([1.0] + [v for r in rows for v in (r["ratio_true"], r["ratio_pred"]) if np.isfinite(v)]) * 1.15
    for ax, visit in zip(axes[0], visits):
        by_view = {str(r.get("view", "")): r for r in rows if int(r.get("visit", 0) or 0) == visit}
        views = [v for v in VIEW_ORDER if v in by_view] + sorted(set(by_view) - set(VIEW_ORDER))
        x = np.arange(len(views))
        true = [by_view[v]["ratio_true"] for v in views]
        pred = [by_view[v]["ratio_pred"] for v in views]
        ax.bar(x - 0.2, true, 0.4, label="expert (ground truth)", color="#4a6fd1")
        ax.bar(x + 0.2, pred, 0.4, label="vitijax", color="#f0a030")
        for xi, (t, p) in enumerate(zip(true, pred)):
            ax.text(xi - 0.2, t, f"{t:.1f}", ha="center", va="bottom", fontsize=7)
            ax.text(xi + 0.2, p, f"{p:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, views)
        ax.set_title(f"visit {visit}", fontsize=9)
        ax.set_ylim(0, top)
    axes[0][0].set_ylabel("F-Vitiligo (%)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Patient {patient}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bland_altman_plot(pred: Sequence[float], true: Sequence[float], stats: Mapping[str, float], path: str,
                      title: str = "F-Vitiligo: vitijax vs expert") -> None:
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    ok = np.isfinite(pred) & np.isfinite(true)
    mean, diff = (pred[ok] + true[ok]) / 2, pred[ok] - true[ok]
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    ax.scatter(mean, diff, s=14, alpha=0.75, color="#4a6fd1")
    for y, style, label in ((stats["bias"], "-", "bias"), (stats["loa_low"], "--", "-1.96 SD"),
                            (stats["loa_high"], "--", "+1.96 SD")):
        if np.isfinite(y):
            ax.axhline(y, color="#c03030", linestyle=style, linewidth=1)
            ax.text(ax.get_xlim()[1] if len(mean) else 1, y, f" {label} {y:+.2f}", va="center", fontsize=7,
                    color="#c03030")
    ax.set_xlabel("mean of vitijax and expert (%)")
    ax.set_ylabel("vitijax - expert (percentage points)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
