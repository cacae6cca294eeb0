"""Test-retest repeatability from repeat photographs: CV, ICC and the smallest detectable change.

    python -m launch.analyze --model models/synthetic PHOTOS... --out results/
    python -m launch.repeatability results/ [--out results/repeatability.json] [--plot results/repeatability.png]

Reads the study record of a ``launch.analyze`` run (``results.json``) whose photos include repeat
shots: the same patient, visit and view photographed more than once (``<view>-shot<n>.<ext>`` in the
folder layout, or a ``shot`` column in the manifest; :mod:`vitijax.data.photos`). For every
patient-view-visit with two or more shots it computes, per measure
(:mod:`vitijax.followup.repeatability`): the within-subject SD, the coefficient of variation, the
one-way ICC and the smallest detectable change (SDC = 1.96 x sqrt(2) x SEM), of

* ``f_vitiligo``: each photo's own F-Vitiligo;
* ``f_vitiligo_registered``: each shot registered onto the patient's baseline (the baseline's ratio
  plus the change on their common region), what a follow-up change is made of;
* ``fvasi``: the F-VASI estimate.

A change between visits smaller than the SDC is within what re-photographing the same face
produces: ``launch.analyze`` reports it as "no detectable change". Works on a user's photos and on
synthetic ones alike (``launch.followup_study`` measures the synthetic figures of README).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

def plot(path: str, data: dict[str, dict[tuple, list[float]]], figures: dict[str, dict]) -> None:
    """One panel per measure: every subject's shots against the subject's mean, with the SDC band."""
    from vitijax.followup.repeatability import MEASURES
    from vitijax.report.figures import plt

    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.6))
    for ax, m in zip(axes, MEASURES):
        subjects = {k: [x for x in v if x is not None and math.isfinite(x)] for k, v in data[m].items()}
        subjects = {k: v for k, v in subjects.items() if len(v) >= 2}
        for v in subjects.values():
            mean = sum(v) / len(v)
            ax.plot([mean] * len(v), [x - mean for x in v], "o", ms=4, alpha=0.7)
        sdc = figures[m]["sdc"]
        if math.isfinite(sdc):
            ax.axhspan(-sdc / math.sqrt(2), sdc / math.sqrt(2), color="0.85", zorder=0, label="+- 1.96 SEM")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel("subject mean")
        ax.set_ylabel("shot - subject mean")
        ax.set_title(f"{m}: CV {figures[m]['cv_pct']:.1f} % (pooled {figures[m]['cv_pooled_pct']:.1f} %), "
                     f"SDC {sdc:.2f}", fontsize=8)
        if math.isfinite(sdc):
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.repeatability", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a launch.analyze output folder")
    p.add_argument("--out", help="JSON of the figures (default: RESULTS/repeatability.json)")
    p.add_argument("--plot", help="PNG of every subject's shots (default: RESULTS/repeatability.png)")
    a = p.parse_args(argv)
    from vitijax import study
    from vitijax.followup import repeatability

    try:
        rec = study.load(a.results)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = repeatability.record_groups(rec.photos)
    figures = {m: repeatability.summarise(data[m]) for m in repeatability.MEASURES}
    if not figures["f_vitiligo"]["subjects"]:
        print(f"error: {a.results}: no patient, view and visit was photographed twice with a ratio; name repeat "
              "shots <view>-shot<n> (e.g. front-shot2.jpg) or give a manifest 'shot' column", file=sys.stderr)
        return 1
    print("| measure | subjects | photos | mean | within-subject SD | CV (%) | pooled CV (%) | ICC | "
          "smallest detectable change |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in repeatability.MEASURES:
        f = figures[m]
        print(f"| {m} | {f['subjects']} | {f['photos']} | {f['mean']:.3f} | {f['within_sd']:.3f} | {f['cv_pct']:.2f} | "
              f"{f['cv_pooled_pct']:.2f} | {f['icc']:.4f} | {f['sdc']:.3f} |")
    out = a.out or os.path.join(a.results, "repeatability.json")
    with open(out, "w") as f:
        json.dump(study.json_safe({"results": os.path.abspath(a.results), "figures": figures, "subjects": {
            m: {" / ".join(map(str, k)): v for k, v in data[m].items()} for m in repeatability.MEASURES}}), f, indent=2)
    picture = a.plot or os.path.join(a.results, "repeatability.png")
    plot(picture, data, figures)
    print(f"wrote {out} and {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
