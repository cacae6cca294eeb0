"""Full-resolution synthetic UV photographs with their truth: try and score ``launch.analyze`` without data.

    python -m launch.synthesize --patients 3 --visits 2 --seed 1000 --out runs/heldout

writes the folder layout that ``launch.analyze``, ``launch.evaluate --bundle
... --photos`` and the ``uv_vitiligo`` builder read::

    OUT/images/<patient>/<visit>/<view>.png          the photo, 2832x4240 by default (--size H W)
    OUT/face_masks/<patient>/<visit>/<view>.png      true face mask, 0 / 255
    OUT/vitiligo_masks/<patient>/<visit>/<view>.png  true vitiligo mask, 0 / 255
    OUT/unassessable_masks/<patient>/<visit>/<view>.png  true unassessable (glare) mask, 0 / 255: the chain
                                                     evaluator scores a glare-aware network's share on it
    OUT/truth.csv                                    patient, visit, view, subtype, ratio (F-Vitiligo, %),
                                                     face and vitiligo pixels, face box (x0 y0 x1 y1)

``--acquisition varied`` lets exposure, focus, noise and lamp tone stray per
photo as in a busy clinic (``vitijax.data.synthetic.VARIED``): the photos on
which the "needs review" decision is calibrated and tested; ``--acquisition glare``
draws a glare gain per photo from none to strong (``synthetic.GLARE``);
``--acquisition follow-up`` re-photographs each patient as a clinic does on
another day (``synthetic.FOLLOW_UP``: the head turned, nodded and tilted by up
to about 10 degrees, the camera nearer or farther, the framing moved, the day's
exposure and lamp tone; lesions may also fade), the photos ``launch.analyze``'s
follow-up registers. ``--shots N`` adds repeat shots of every view at every
visit (``<view>-shot<k>.png``, k = 1 .. N-1), from which ``launch.repeatability``
computes the smallest detectable change.

Patients are ``S<seed>_P<index>``; the bundled training set uses seed 0, so
any other seed gives patients no network has seen. Photos are rendered by
``vitijax.data.synthetic.render`` (its docstring says what is drawn and how the
truth is defined).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time


def synthesize(out: str, patients: int, visits: int, size: tuple[int, int], seed: int,
               views: tuple[str, ...], progress=None, acquisition=None, shots: int = 1,
               diffuse: bool = False) -> list[dict]:
    """Renders every (patient, visit, view, shot) into ``out``; returns the truth rows (also in truth.csv)."""
    from vitijax.data import synthetic
    from vitijax.data.io import write_png
    from vitijax.run_log import format_seconds

    rows = []
    total = patients * visits * len(views) * shots
    t0 = time.perf_counter()
    for index in range(patients):
        patient = synthetic.make_patient(seed, index, diffuse=diffuse)
        pid = f"S{seed}_P{index:03d}"
        for visit, view, shot in ((v, w, k) for v in range(visits) for w in views for k in range(shots)):
            s = synthetic.render(patient, visit, view, size, acquisition, shot=shot)
            rel = os.path.join(pid, str(visit), f"{view}-shot{shot}.png" if shot else f"{view}.png")
            write_png(os.path.join(out, "images", rel), s.image)
            write_png(os.path.join(out, "face_masks", rel), s.face_mask * 255)
            write_png(os.path.join(out, "vitiligo_masks", rel), s.vitiligo_mask * 255)
            write_png(os.path.join(out, "unassessable_masks", rel), s.unassessable_mask * 255)
            rows.append({"patient": pid, "visit": visit, "view": view, "shot": shot, "subtype": s.subtype,
                         "ratio": round(s.ratio, 6), "face_pixels": int(s.face_mask.sum()),
                         "vitiligo_pixels": int(s.vitiligo_mask.sum()),
                         "unassessable_pixels": int(s.unassessable_mask.sum()), "glare": round(s.glare, 4),
                         "face_box": " ".join(str(v) for v in s.face_box)})
            if progress is not None:
                done = len(rows)
                rate = done / (time.perf_counter() - t0)
                print(f"photo {done}/{total} ({100 * done / total:.0f}%)  {rate:.2f} photos/s  "
                      f"ETA {format_seconds((total - done) / rate)}", file=progress, flush=True)
    with open(os.path.join(out, "truth.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    from vitijax.data.synthetic import PAPER_SIZE, VIEWS

    p = argparse.ArgumentParser(prog="python -m launch.synthesize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patients", type=int, required=True)
    p.add_argument("--visits", type=int, default=2)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=PAPER_SIZE,
                   help="photo height and width in pixels (default: the paper's 4240 2832)")
    p.add_argument("--seed", type=int, default=1000, help="data set seed (0 is the bundled training set's)")
    p.add_argument("--views", nargs="+", default=list(VIEWS), choices=VIEWS)
    p.add_argument("--acquisition", choices=("standard", "varied", "glare", "follow-up"), default="standard",
                   help="standard: the controlled photography of the bundled data sets; varied: exposure x0.5-1.6, "
                   "up to 5x blur, up to 15 grey levels of noise, +-15 %% lamp tone, drawn per photo; glare: a glare "
                   "gain 0-3 per photo (none to strong); follow-up: pose, distance, framing, exposure and lamp tone "
                   "of another day per photo, and lesions that may fade")
    p.add_argument("--shots", type=int, default=1, help="photos of every view at every visit (repeat shots "
                   "<view>-shot<k>.png after the first)")
    p.add_argument("--out", required=True, help="output folder (must not hold photos yet)")
    a = p.parse_args(argv)
    if a.patients < 1 or a.visits < 1 or a.shots < 1:
        p.error("--patients, --visits and --shots must be at least 1")
    if min(a.size) < 32:
        p.error(f"--size {a.size[0]} {a.size[1]} is too small for a face (at least 32 pixels a side)")
    if os.path.isdir(os.path.join(a.out, "images")):
        print(f"error: {a.out} already holds images/; choose a new folder", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    from vitijax.data.synthetic import FOLLOW_UP, GLARE, VARIED

    rows = synthesize(a.out, a.patients, a.visits, tuple(a.size), a.seed, tuple(a.views), progress=sys.stderr,
                      acquisition={"varied": VARIED, "glare": GLARE, "follow-up": FOLLOW_UP}.get(a.acquisition),
                      shots=a.shots, diffuse=a.acquisition == "follow-up")
    print(f"wrote {len(rows)} photos of {a.patients} patients ({a.size[1]}x{a.size[0]}) with their masks to "
          f"{a.out}; truth: {os.path.join(a.out, 'truth.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
