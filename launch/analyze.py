"""Analyse new photographs: masks, F-Vitiligo and a treatment follow-up report, offline.

    python -m launch.analyze --model models/vitijax_synthetic PHOTOS_OR_FOLDERS... --out results/

``--model`` is an inference bundle from ``launch.export``. Photos: files or
folders laid out ``<patient>/<visit>/<view>.<ext>`` (JPEG, PNG, TIFF; any
size; EXIF orientation applied; 8 or 16 bit; grey and RGBA converted), or
``--manifest FILE.csv`` (columns image, patient, visit, view[, face_mask]);
see ``vitijax/data/photos.py``. For each photo: face box (the bundle's
face-box network, else RetinaFace), crop, face mask (the bundle's face-mask
network, else an ellipse in the RetinaFace box; or ``--face-mask
ground_truth`` with the manifest's masks), the lesion network on the masked
crop, masks pasted back at full resolution, F-Vitiligo in percent, quality
flags. Then, per patient and view, every later photo is registered onto the
baseline (the earliest visit) and compared with it on the face both show: the
change of F-Vitiligo and whether it exceeds the smallest detectable change, a
change map, the lesions tracked one by one (new, gone, enlarged, shrunk, merged,
split) with their repigmentation pattern, and an F-VASI estimate with the
F-VASI50/75 calls (``vitijax/followup/visits.py``; ``--no-follow-up`` skips
it). Everything goes into the study record ``results.json``
(``vitijax/study.py``) and the reports. What is written where:
``vitijax/report/followup.py``.

A file that cannot be read, a photo without a face, an empty face mask: the
photo is listed with the reason (ratio undefined) and the rest is analysed.
``--tta`` runs the lesion network on the crop and its mirror image, keeps a
lesion either sees (see ``vitijax/segmenter.py`` for the measurement behind
this), and writes a per-pixel uncertainty map.

Whole archives: reading and decoding the next photos and writing the last
ones' pictures overlap the networks (:func:`analyze_stream`), and
``--processes N`` shares the photos among N processes on this machine, each
on its share of the cores, as one JAX cluster whose process 0 writes the one
report; on several hosts, start one process per host with ``--coordinator
HOST:PORT --num-processes N --process-id I`` and a shared ``--out``
(:mod:`vitijax.cluster`). The results do not depend on how many processes
there are, nor on which photos share a batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time


def build_analyzer(a):
    """(Analyzer, description of the networks) from the bundle and the options."""
    from vitijax import face as face_lib
    from vitijax import face_mask as face_mask_lib
    from vitijax.checkpoint import load_bundle
    from vitijax.pipeline import Analyzer
    from vitijax.segmenter import Segmenter

    parts, info = load_bundle(a.model)
    lesion = Segmenter(*parts["lesion"], where=f"{a.model} (lesion)", expect="lesion", batch_size=a.batch_size)
    mask_kind = a.face_mask or ("network" if "face_mask" in parts else "ellipse")
    if mask_kind == "network" and "face_mask" not in parts:
        raise ValueError(f"{a.model}: the bundle has no face-mask network; export one with "
                         "launch.export --face-mask-workdir, or choose --face-mask ellipse")
    seg = Segmenter(*parts["face_mask"], where=f"{a.model} (face mask)", expect="face_mask", batch_size=a.batch_size) \
        if mask_kind == "network" else None
    detector = a.detector
    if detector == "auto":
        detector = "face-box" if "face_box" in parts else "retinaface"
    if detector == "face-box" and "face_box" not in parts:
        raise ValueError(f"{a.model}: the bundle has no face-box network; export one with "
                         "launch.export --face-box-workdir, or choose --detector retinaface")
    box_model = face_lib.FaceBoxModel(*parts["face_box"], where=f"{a.model} (face box)") \
        if detector == "face-box" else None
    review_rule = info.get("review_rule")  # calibrated for this bundle (launch.evaluate --calibrate), if any
    analyzer = Analyzer(lesion, face_mask_lib.make(mask_kind, seg), box_model, flips=a.tta,
                        keep_probability=a.probability,
                        review_rule={k: (op, float(t)) for k, (op, t) in review_rule.items()} if review_rule else None)
    nets = {"lesion": {k: parts["lesion"][1].get(k) for k in ("variant", "input", "step", "validation_dice")},
            "face_mask": mask_kind if seg is None else {"source": "network", **{
                k: parts["face_mask"][1].get(k) for k in ("variant", "input", "step", "validation_dice")}},
            "face_box": "RetinaFace MobileNet-0.25 (pretrained)" if box_model is None else {
                "source": "face-box network", **{k: parts["face_box"][1].get(k) for k in ("step", "validation_iou")}},
            "tta": {"flips": analyzer.flips, "scales": list(analyzer.scales)}}
    return analyzer, {"bundle": os.path.abspath(a.model), "vitijax_version": info.get("vitijax_version"),
                      "networks": nets, "face_mask": mask_kind, "detector": detector, "crop_margin": analyzer.margin}


def read_inputs(batch, needs_truth):
    """(rows, loaded): a row per PhotoInput of ``batch`` (status "failed" with the reason where the photo, or
    its annotated face mask when ``needs_truth``, cannot be read) and (input, row, photo [h, w, 3] uint8,
    face mask [h, w] {0, 1} or None) of each photo that was read. Reasons do not repeat the path: the row's
    ``file`` holds it."""
    from vitijax.data.io import ImageReadError, read_mask, read_photo

    rows, loaded = [], []
    for inp in batch:
        row = {"patient": inp.patient, "visit": inp.visit, "view": inp.view, "shot": inp.shot, "file": inp.path,
               "status": "failed",
               "reason": "", "ratio": math.nan, "flags": [], "files": {}}
        rows.append(row)
        try:
            photo = read_photo(inp.path)
            truth = None
            if needs_truth:
                if not inp.face_mask:
                    raise ImageReadError(inp.path, "no face_mask for it in the manifest (--face-mask ground_truth)")
                truth = read_mask(inp.face_mask, photo.shape[:2])
        except ImageReadError as e:
            row["reason"] = e.problem if e.path == inp.path else str(e)
            continue
        except (OSError, ValueError) as e:
            row["reason"] = str(e)
            continue
        loaded.append((inp, row, photo, truth))
    return rows, loaded


def analyze_loaded(analyzer, loaded, needs_truth, on_result=None):
    """Analyses photos from :func:`read_inputs` as one batch; fills their rows (summary, status, reason) and
    returns (input, row, photo, result) of each analysed one. One photo's failure never stops the others.

    ``on_result(inp, photo, result, row)`` is called for every photo analysed, before its pictures are
    written (the chain evaluator scores it there, on exactly what ``analyze`` computed)."""
    from vitijax.pipeline import RATIO_UNDEFINED

    if not loaded:
        return []
    photos = [photo for _, _, photo, _ in loaded]
    truths = [truth for _, _, _, truth in loaded] if needs_truth else None
    try:
        results = analyzer(photos, truths, views=[inp.view for inp, _, _, _ in loaded])
    except Exception:  # noqa: BLE001  one photo's failure must not take the batch: retry one by one
        results = []
        for inp, row, photo, truth in loaded:
            try:
                results.append(analyzer([photo], [truth] if needs_truth else None, views=[inp.view])[0])
            except Exception as e:  # noqa: BLE001
                row["reason"] = f"analysis failed: {type(e).__name__}: {e}"
                results.append(None)
    analysed = []
    for (inp, row, photo, _), res in zip(loaded, results):
        if res is None:
            continue
        row.update(res.summary())
        if math.isfinite(res.ratio):
            row["status"] = "ok"
        else:
            row["status"] = "no ratio"
            row["reason"] = "ratio undefined: " + "; ".join(f for f in res.flags if f in RATIO_UNDEFINED)
        if on_result is not None:
            on_result(inp, photo, res, row)
        analysed.append((inp, row, photo, res))
    return analysed


def write_outputs(out, analysed) -> None:
    """Writes the pictures of each (input, row, photo, result) of :func:`analyze_loaded` and puts their paths in
    the row; a photo whose pictures cannot be written is "failed", with the reason."""
    from vitijax.report.followup import write_photo

    for inp, row, photo, res in analysed:
        try:
            row["files"] = write_photo(out, inp, photo, res)
        except OSError as e:
            row.update(status="failed", reason=f"could not write its outputs: {e}")
            continue
        row["outputs"] = row["files"]["outputs"]


def analyze_batch(analyzer, batch, out, needs_truth, on_result=None):
    """Rows of one batch of PhotoInputs: read, analyse, write, one after the other (see :func:`analyze_stream`
    for many photos)."""
    rows, loaded = read_inputs(batch, needs_truth)
    write_outputs(out, analyze_loaded(analyzer, loaded, needs_truth, on_result))
    return rows


def analyze_stream(analyzer, inputs, out, needs_truth, batch_size, on_result=None, who=""):
    """Rows of ``inputs`` (PhotoInputs), in their order, analysed ``batch_size`` photos at a time.

    Reading and decoding overlap the networks: while one batch is analysed, a thread reads the next and
    another writes the previous one's pictures (PNG and JPEG coding release Python's lock, so on two cores
    they run beside XLA). At most three batches of photos are in memory. After each batch a progress line
    goes to stderr (``who`` in front: which process), with photos/s and ETA, and the reason of every photo
    of it that got no ratio."""
    from concurrent.futures import ThreadPoolExecutor

    from vitijax.run_log import format_seconds

    batches = [inputs[s:s + batch_size] for s in range(0, len(inputs), batch_size)]
    rows: list[dict] = []
    t0 = time.perf_counter()

    def report(batch_rows):
        rows.extend(batch_rows)
        for r in batch_rows:
            if r["status"] != "ok":
                print(f"  {r['file']}: {r['reason'] or r['status']}", file=sys.stderr, flush=True)
        done = len(rows)
        rate = done / (time.perf_counter() - t0)
        print(f"{who}photo {done}/{len(inputs)} ({100 * done / len(inputs):.0f}%)  {rate:.2f} photos/s  "
              f"ETA {format_seconds((len(inputs) - done) / rate if rate > 0 else math.nan)}", file=sys.stderr,
              flush=True)

    with ThreadPoolExecutor(1, thread_name_prefix="read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
        ahead = reader.submit(read_inputs, batches[0], needs_truth) if batches else None
        writing = None  # (rows, future) of the batch whose pictures are being written
        for k in range(len(batches)):
            batch_rows, loaded = ahead.result()
            if k + 1 < len(batches):
                ahead = reader.submit(read_inputs, batches[k + 1], needs_truth)
            analysed = analyze_loaded(analyzer, loaded, needs_truth, on_result)
            del loaded
            if writing is not None:
                writing[1].result()
                report(writing[0])
            writing = (batch_rows, writer.submit(write_outputs, out, analysed))
            del analysed
        if writing is not None:
            writing[1].result()
            report(writing[0])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.analyze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="*", help="photo files and/or folders")
    p.add_argument("--model", required=True, help="inference bundle (python -m launch.export)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--manifest", help="CSV with columns image, patient, visit, view[, face_mask]")
    p.add_argument("--face-mask", choices=("network", "ellipse", "ground_truth"),
                   help="face-mask source (default: the bundle's network, else ellipse)")
    p.add_argument("--detector", choices=("auto", "face-box", "retinaface"), default="auto",
                   help="face finder (auto: the bundle's face-box network, else RetinaFace)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (the mirrored crop; a lesion either "
                   "view sees is kept) and an uncertainty map")
    p.add_argument("--probability", action="store_true", help="also write the lesion probability map")
    p.add_argument("--no-follow-up", action="store_true", help="skip the follow-up (registration of every visit "
                   "onto the baseline, change maps, lesion tracks, F-VASI): ratios and overlays only")
    p.add_argument("--batch-size", type=int, default=4,
                   help="photos read and analysed together; the networks always run on batches of this size (the "
                        "last padded), so the results do not depend on which photos share a batch")
    p.add_argument("--processes", type=int, default=1,
                   help="processes on this machine sharing the photos, each on its share of the CPU cores; "
                        "they form one JAX cluster and process 0 writes the one report")
    p.add_argument("--coordinator", help="several hosts: HOST:PORT of process 0, with --num-processes and "
                   "--process-id; every process gets the same photos, options and --out (a shared folder)")
    p.add_argument("--num-processes", type=int, help="several hosts: processes in the cluster")
    p.add_argument("--process-id", type=int, help="several hosts: this process's id, 0 .. N-1 (0 writes the report)")
    a = p.parse_intermixed_args(argv)  # photos may come before, between or after the options
    if not a.photos and not a.manifest:
        p.error("give photos, folders or --manifest")
    if a.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {a.batch_size}")
    if a.processes < 1:
        p.error(f"--processes must be at least 1, got {a.processes}")
    cluster_opts = (a.coordinator, a.num_processes, a.process_id)
    if any(v is not None for v in cluster_opts) and not all(v is not None for v in cluster_opts):
        p.error("--coordinator, --num-processes and --process-id go together")
    if a.num_processes is not None and not 0 <= a.process_id < a.num_processes:
        p.error(f"--process-id must be 0 .. {a.num_processes - 1}, got {a.process_id}")

    from vitijax import cluster

    children = []
    if a.processes > 1 and a.coordinator is None:  # this process is 0; it starts the others, before JAX starts
        passed = list(sys.argv[1:] if argv is None else argv)
        a.coordinator, children = cluster.spawn_local("launch.analyze", passed, a.processes)
        a.num_processes, a.process_id = a.processes, 0
    try:
        return _run(a, children)
    finally:
        for child in children:
            child.wait()


def _run(a, children) -> int:
    from vitijax import cluster, compile_cache
    from vitijax.checkpoint import CheckpointError
    from vitijax.data.photos import find_photos
    from vitijax.report.followup import write_results

    n, pid = a.num_processes or 1, a.process_id or 0
    who = f"process {pid}/{n}: " if n > 1 else ""
    compile_cache.enable()
    try:
        if n > 1:
            cluster.join(a.coordinator, n, pid)
        inputs, problems = find_photos(a.photos, a.manifest)
        if n > 1:
            cluster.same_everywhere("photos or options", {
                "inputs": [dataclasses.astuple(i) for i in inputs],
                "options": {k: v for k, v in vars(a).items() if k not in ("process_id", "processes")}})
        analyzer, info = build_analyzer(a)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {who}{e}", file=sys.stderr)
        return 2
    if pid == 0:
        for path, why in problems:
            print(f"skipped {path}: {why}", file=sys.stderr)
    if not inputs:
        print("error: no photos to analyse", file=sys.stderr)
        return 2
    mine = cluster.shard(inputs, n, pid)
    share = f" ({len(mine)} of them in this process, 1 of {n})" if n > 1 else ""
    print(f"{who}analysing {len(inputs)} photos{share} with {a.model} (lesion "
          f"{info['networks']['lesion'].get('variant')}, face mask {info['face_mask']}, face box {info['detector']}) "
          f"-> {a.out}", flush=True)
    os.makedirs(a.out, exist_ok=True)
    t0 = time.perf_counter()
    rows = analyze_stream(analyzer, [inp for _, inp in mine], a.out, a.face_mask == "ground_truth", a.batch_size,
                          who=who)
    if n > 1:
        cluster.hand_in(a.out, pid, [(i, r) for (i, _), r in zip(mine, rows)])
        if pid != 0:
            print(f"{who}{len(rows)} photos done; process 0 writes the report", flush=True)
            cluster.leave()
            return 0
        try:
            rows = cluster.collect(a.out, n, children)
        except RuntimeError as e:
            print(f"error: {e}; the photos it had are not in the report", file=sys.stderr)
            return 1
        cluster.leave()
    seconds = time.perf_counter() - t0
    follow = None
    if not a.no_follow_up:
        from vitijax.followup.visits import follow_up

        t1 = time.perf_counter()
        follow = follow_up(a.out, rows)
        if follow["pairs"]:
            print(f"follow-up: {follow['pairs']} photos registered onto their baselines in "
                  f"{time.perf_counter() - t1:.1f} s; smallest detectable change {follow['sdc_pp']:.2f} pp "
                  f"({follow['sdc_source']})", flush=True)
    paths = write_results(a.out, rows, problems, info, follow)
    print(f"{len(rows)} photos in {seconds:.1f} s: {len(rows) / seconds:.2f} photos/s with {n} process(es)", flush=True)
    print(summary_line(rows, problems) + f"  Report: {paths['index']}  Table: {paths['csv']}")
    # Non-zero when nothing got a ratio: a script or a person must not mistake an empty analysis for a result.
    return 0 if any(r["status"] == "ok" for r in rows) else 1


def summary_line(rows, problems) -> str:
    """One line: how many photos got a ratio, how many of those need review, and why the others got none."""
    ok = [r for r in rows if r["status"] == "ok"]
    no_face = sum(bool({"no face", "photo too small"} & set(r.get("flags", []))) for r in rows)
    no_ratio = sum(r["status"] == "no ratio" for r in rows) - no_face
    unreadable = sum(r["status"] == "failed" for r in rows) + len(problems)
    review = sum(bool(r.get("needs_review")) for r in ok)
    return (f"{len(ok)} of {len(rows) + len(problems)} photos analysed with a ratio ({review} need review); "
            f"no face: {no_face}; face mask unusable: {no_ratio}; unreadable or failed: {unreadable}.")


if __name__ == "__main__":
    sys.exit(main())
