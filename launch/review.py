"""Review and correct an analysis in the browser, then export the approved photos for training.

    python -m launch.review RESULTS_DIR                      # serve the review page and open it
    python -m launch.review RESULTS_DIR --export ROOT        # approved photos -> the uv_vitiligo layout
    python -m launch.review RESULTS_DIR --verify             # check the audit log's hash chain
    python -m launch.review RESULTS_DIR --screenshot docs/review.jpg   # a picture of the page (README)

``RESULTS_DIR`` is a ``launch.analyze`` output folder. The server binds to 127.0.0.1 (``--host`` to
change it) on a free port (``--port``), makes a random access token and prints the page's address
with it; every request needs the token. Nothing is fetched from the internet: the page's script and
style ship with vitijax. It serves files under RESULTS_DIR only (and the photos the study record
names, by their number) and writes only under RESULTS_DIR: the corrections, the study record and
the audit log (``vitijax/review/corrections.py``). The page lists the photos with those that most
need a look first; a reviewer zooms, toggles the layers, paints the lesion or face mask (brush,
eraser, polygon, undo/redo, keys), sees F-Vitiligo, the change since the baseline and the F-VASI
estimate recomputed, and saves, approves or rejects with a comment.

``--export ROOT`` writes the approved photos with their corrected masks as ``ROOT/images``,
``face_masks`` and ``vitiligo_masks`` (the uv_vitiligo layout): then ``python -m
launch.build_dataset --name uv_vitiligo --manual-dir ROOT`` and ``python -m launch.train ...
--config.init_from=BUNDLE`` fine-tune the bundle's lesion network on them (README). The model's
against the corrected masks, as Dice per photo and overall: ``RESULTS_DIR/review/report.html``.
"""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.review", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a launch.analyze output folder (with results.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="print the address, do not open a browser")
    p.add_argument("--export", metavar="ROOT", help="write the approved photos and corrected masks in the "
                   "uv_vitiligo layout to ROOT (a new folder) and exit")
    p.add_argument("--verify", action="store_true", help="check the audit log (hash chain, mask files) and exit")
    p.add_argument("--screenshot", metavar="FILE", help="serve, take a picture of the page with the system's "
                   "Chromium (launch.screenshot) and exit")
    a = p.parse_args(argv)

    from vitijax.review import corrections as corr

    try:
        review = corr.Corrections(a.results)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.verify:
        n, problems = corr.verify_audit(review.out)
        for line in problems:
            print(line, file=sys.stderr)
        print(f"{n} audit entries; " + (f"{len(problems)} problems" if problems else "the chain and the mask files check out"))
        return 1 if problems else 0
    if a.export:
        try:
            report = review.export(a.export)
        except (ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        s = corr.summary(review.study())
        print(f"exported {report['photos']} approved photos to {a.export} (uv_vitiligo layout); lesion Dice of the "
              f"model against the reviewed masks: {s['lesion_dice_mean']:.3f} per photo, {s['lesion_dice_pooled']:.3f} "
              f"pooled ({corr.write_report(review.out, review.study())})")
        print(f"next: python -m launch.build_dataset --name uv_vitiligo --manual-dir {a.export} --data-dir DATA_DIR")
        return 0

    from vitijax.review import server

    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {a.host}: other machines can reach the review (the token still guards it)",
              file=sys.stderr)
    app, token = server.make_app(review.out)
    try:
        sock = server.bind(a.host, a.port)
    except OSError as e:
        print(f"error: cannot listen on {a.host}:{a.port}: {e}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/?token={token}"
    if a.screenshot:
        return _screenshot(app, sock, url, a.screenshot)
    print(f"review of {review.out}: open {url}  (Ctrl+C stops; corrections are saved as you go)", flush=True)
    page = None
    if not a.no_browser:
        # through a private file under RESULTS_DIR/review (not /tmp, which a snap browser does not share): the
        # token never shows on a command line (ps), and the file goes when the server stops
        import html

        os.makedirs(review.dir, exist_ok=True)
        page = os.path.join(review.dir, f".open-{port}.html")
        fd = os.open(page, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'<!doctype html><meta http-equiv="refresh" content="0;url={html.escape(url)}">'
                    f'<a href="{html.escape(url)}">open the review</a>')
        webbrowser.open("file://" + page)
    import uvicorn

    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off")).run(sockets=[sock])
    finally:
        if page and os.path.exists(page):
            os.remove(page)
    return 0


def _screenshot(app, sock, url: str, out: str) -> int:
    """Serves in a thread, opens the page in headless Chromium, waits until its first photo is open (the
    one that most needs a look) and saves the window as ``out``. Nothing is written under RESULTS_DIR."""
    import time

    from PIL import Image

    from launch.screenshot import browser_driver
    from vitijax.review import server

    srv = server.serve_in_thread(app, sock)
    try:
        d = browser_driver(1500, 900)
    except (RuntimeError, ImportError) as e:
        srv.should_exit = True
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        d.get(url)
        t = time.time()
        while not d.execute_script("return document.body.dataset.ready") and time.time() - t < 120:
            time.sleep(0.1)
        time.sleep(0.5)  # the last frame drawn
        png = out + ".png"
        d.save_screenshot(png)
        Image.open(png).convert("RGB").save(out, quality=85, optimize=True)
        os.remove(png)
    finally:
        d.quit()
        srv.should_exit = True
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
