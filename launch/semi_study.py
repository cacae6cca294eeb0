"""Does semi-supervised training help? The three settings of launch/configs/semi.py over several seeds.

    python -m launch.semi_study --seeds 0 1 2 --out runs/semi_study
    python -m launch.semi_study --seeds 0 1 2 --out runs/semi_study --markdown docs/semi_supervised.md

Trains ``labelled_only`` (6 labelled patients, supervised), ``semi`` (the same 6 plus 40 unlabelled,
:mod:`vitijax.tasks.lesion_semi`) and ``all_labelled`` (all 46 labelled: the ceiling) with each seed,
same network, steps and labelled batch, and scores each on the same held-out synthetic patients
(the ``test`` split). Prints and writes (``OUT/study.json``, and ``--markdown``) test Dice and
F-Vitiligo MAE per run, their mean and spread per setting, and the share of the gap between
``labelled_only`` and ``all_labelled`` that ``semi`` closes. Finished runs are kept and reused, so an
interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _gap_closed(semi: float, low: float, high: float) -> float:
    """The share of the way from ``low`` (labelled only) to ``high`` (all labelled) that ``semi`` goes."""
    return (semi - low) / (high - low) if high != low else float("nan")


def summarise(runs: dict[str, dict[int, dict[str, float]]]) -> dict:
    """{setting: {dice_mean, dice_sd, dice_min, dice_max, mae_...}, gap_closed: {dice, mae}} of the runs
    {setting: {seed: {'dice', 'ratio_mae'}}} (Dice in %, MAE in pp)."""
    out: dict = {}
    for setting, by_seed in runs.items():
        row = {"seeds": sorted(by_seed)}
        for key, name in (("dice", "dice"), ("ratio_mae", "mae")):
            vals = [by_seed[s][key] for s in sorted(by_seed)]
            row.update({f"{name}_mean": statistics.fmean(vals), f"{name}_min": min(vals), f"{name}_max": max(vals),
                        f"{name}_sd": statistics.stdev(vals) if len(vals) > 1 else float("nan")})
        out[setting] = row
    if {"semi", "labelled_only", "all_labelled"} <= set(out):
        s, lo, hi = out["semi"], out["labelled_only"], out["all_labelled"]
        out["gap_closed"] = {"dice": _gap_closed(s["dice_mean"], lo["dice_mean"], hi["dice_mean"]),
                             "mae": _gap_closed(s["mae_mean"], lo["mae_mean"], hi["mae_mean"])}
    return out


def describe_settings(steps: int | None = None) -> str:
    """What the three settings of launch/configs/semi.py are, read from the config itself."""
    from launch.configs import semi

    c = semi.get_config("semi")
    n = steps or c.num_steps
    return (f"Settings of `launch/configs/semi.py` (DDRNet-{c.model.variant}, {c.input.size[0]}x{c.input.size[1]} "
            f"masked crops, {n} steps of {c.batch_size} labelled crops, AdamW {c.optimizer.lr:g} "
            f"{c.optimizer.schedule}) on `synthetic_uv_vitiligo/semi` and `semi_full` (the same validation and "
            f"test patients). `semi` adds {c.data.unlabelled_ratio * c.batch_size} unlabelled crops per step, a "
            f"teacher with EMA decay {c.loss.ema_decay:g} (warmed up as min(d, 1 - 1/(t + 1))), pseudo-labels at "
            f"confidence {c.loss.confidence:g}, "
            f"weight {c.loss.unlabelled_weight:g} ramped over {c.loss.rampup_steps} steps, cutout "
            f"{c.augment.cutout:g}. Figures: the test split of held-out patients, face region, pooled pixels; "
            "`semi` is scored with its teacher.")


def markdown(summary: dict, runs: dict, command: str, settings: str = "") -> str:
    """The page docs/semi_supervised.md: what was run, the table, the gap closed, the command."""
    lines = ["# Semi-supervised training: measured", "",
             "Made by the command at the end on the machine that ran it; do not edit by hand. " + settings, "",
             "| setting | labelled patients | unlabelled | test Dice % (mean ± sd, min-max) | "
             "F-Vitiligo MAE pp (mean ± sd, min-max) | per seed (Dice / MAE) |", "|---|---|---|---|---|---|"]
    who = {"labelled_only": ("6", "0"), "semi": ("6", "40"), "all_labelled": ("46", "0")}
    for setting in ("labelled_only", "semi", "all_labelled"):
        if setting not in summary:
            continue
        r = summary[setting]
        per = ", ".join(f"{runs[setting][s]['dice']:.1f} / {runs[setting][s]['ratio_mae']:.2f}" for s in r["seeds"])
        lines.append(f"| {setting} | {who[setting][0]} | {who[setting][1]} | {r['dice_mean']:.1f} ± {r['dice_sd']:.1f} "
                     f"({r['dice_min']:.1f}-{r['dice_max']:.1f}) | {r['mae_mean']:.2f} ± {r['mae_sd']:.2f} "
                     f"({r['mae_min']:.2f}-{r['mae_max']:.2f}) | {per} |")
    if "gap_closed" in summary:
        g = summary["gap_closed"]
        lines += ["", f"Share of the labelled-only → all-labelled gap that semi-supervised training closes: "
                  f"Dice {100 * g['dice']:.0f} %, F-Vitiligo MAE {100 * g['mae']:.0f} %."]
    lines += ["", f"Produced by `{command}`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.semi_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--settings", nargs="+", default=["labelled_only", "semi", "all_labelled"])
    p.add_argument("--out", default="runs/semi_study")
    p.add_argument("--steps", type=int, help="override the configs' num_steps (same for every setting)")
    p.add_argument("--markdown", help="also write the table to this file")
    a = p.parse_args(argv)

    from launch.configs import semi
    from vitijax.train import train_and_evaluate

    unknown = [s for s in a.settings if s not in semi.SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown}; choose from {', '.join(semi.SETTINGS)}")
    runs: dict[str, dict[int, dict[str, float]]] = {}
    todo = [(setting, seed) for setting in a.settings for seed in a.seeds]
    start = time.perf_counter()
    for k, (setting, seed) in enumerate(todo):
        workdir = os.path.join(a.out, setting, f"seed{seed}")
        done = os.path.join(workdir, "final_metrics.json")
        if os.path.isfile(done) and a.steps:  # a finished run is reused only if it ran the steps asked for
            with open(os.path.join(workdir, "config.json")) as f:
                ran = json.load(f).get("num_steps")
            if ran != a.steps:
                p.error(f"{workdir} ran {ran} steps, not --steps {a.steps}: choose another --out")
        if not os.path.isfile(done):
            c = semi.get_config(setting)
            c.seed = seed
            if a.steps:
                c.num_steps = a.steps
            print(f"=== {setting}, seed {seed} ({k + 1}/{len(todo)}; {time.perf_counter() - start:.0f} s so far)",
                  flush=True)
            train_and_evaluate(c, workdir)
        with open(done) as f:
            test = json.load(f)["test"]
        runs.setdefault(setting, {})[seed] = {"dice": 100 * test["dice"], "ratio_mae": test["ratio_mae"]}
    summary = summarise(runs)
    command = "python -m launch.semi_study " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(summary, runs, command, describe_settings(a.steps))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "study.json"), "w") as f:
        json.dump({"runs": runs, "summary": summary, "command": command}, f, indent=2)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
