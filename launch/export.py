"""Export trained networks as one inference bundle for ``launch.analyze``.

    python -m launch.export --workdir runs/synthetic --face-mask-workdir runs/face_mask \
        --face-box-workdir runs/face_box --out models/vitijax_synthetic

``--workdir`` is the lesion network's training run (its ``best/`` is taken,
or give a model checkpoint directory); the face-mask and face-box networks
are optional (without them ``analyze`` uses the ellipse face mask and
RetinaFace). The bundle is one orbax checkpoint: each network's params and
batch statistics, the meta that rebuilds it with its whole input contract
(input size, crop margin, masking, normalisation; ``vitijax/contract.py``),
its training config and the vitijax version. ``analyze`` refuses a bundle
of another vitijax version.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys


def _part(path: str, task: str):
    from vitijax import tasks
    from vitijax.checkpoint import load_model, resolve_model_dir

    directory = resolve_model_dir(path)
    variables, meta = load_model(directory)
    tasks.load(meta, directory, expect=task)  # refuses another task, or a model without its input contract
    config = None
    for cand in (os.path.join(os.path.dirname(directory), "config.json"), os.path.join(directory, "config.json")):
        if os.path.isfile(cand):
            with open(cand) as f:
                config = json.load(f)
            break
    return (variables, meta), {"source": directory, "config": config}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the lesion network's training run (or model checkpoint)")
    p.add_argument("--face-mask-workdir", help="the face-mask network's training run (optional)")
    p.add_argument("--face-box-workdir", help="the face-box network's training run (optional)")
    p.add_argument("--review-rule", help="review_rule.json from launch.evaluate --bundle ... --calibrate: the "
                   "'needs review' rule calibrated on your held-out photos (default: vitijax's, measured on "
                   "synthetic photos)")
    p.add_argument("--out", required=True, help="a new directory for the bundle")
    a = p.parse_args(argv)

    from vitijax.checkpoint import CheckpointError, save_bundle

    try:
        parts, origins = {}, {}
        for name, path in (("lesion", a.workdir), ("face_mask", a.face_mask_workdir),
                           ("face_box", a.face_box_workdir)):
            if path:
                parts[name], origins[name] = _part(path, name)
        extra = {}
        if a.review_rule:
            with open(a.review_rule) as f:
                calibrated = json.load(f)
            rule = calibrated.get("rule")
            if not isinstance(rule, dict) or not all(
                    isinstance(v, list) and len(v) == 2 and v[0] in ("<", ">") for v in rule.values()):
                raise ValueError(f"{a.review_rule}: not a review rule (expected {{'rule': {{signal: ['>', "
                                 "threshold]}}}} as launch.evaluate --calibrate writes)")
            extra["review_rule"] = rule
            extra["review_rule_calibration"] = {k: v for k, v in calibrated.items() if k != "rule"}
        # each part's meta carries its input contract (its "input"): what analyze reads back
        extra.update({"exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "origins": origins})
        out = save_bundle(a.out, parts, extra)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote inference bundle {out}: " + ", ".join(
        f"{k} ({m.get('variant', 'face-box')}, step {m.get('step')}, from {origins[k]['source']})"
        for k, (_, m) in parts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
