"""A picture of a report page for the docs, taken by a headless Chromium installed on this machine.

    python -m launch.screenshot PAGE.html --out docs/picture.jpg [--width 1100] [--height 6000] [--crop Y0 Y1] [--scale 0.7]

Opens ``PAGE.html`` (a file, or an http:// address) in the system's Chromium (``chromium``,
``chromium-browser`` or ``google-chrome`` on the PATH; nothing is downloaded), takes a screenshot of a
``--width`` x ``--height`` window, keeps the rows ``--crop Y0 Y1`` (pixels from the top of the page)
and scales the result by ``--scale``. README names each docs picture's command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    """The first Chromium on the PATH, or None."""
    return next((p for p in (shutil.which(b) for b in BROWSERS) if p), None)


def screenshot(page: str, out: str, width: int = 1100, height: int = 6000, crop: tuple[int, int] | None = None,
               scale: float = 1.0, browser: str | None = None) -> str:
    """Writes the PNG ``out`` of ``page``; returns ``out``. Raises RuntimeError when there is no browser or it
    fails."""
    from PIL import Image

    browser = browser or find_browser()
    if browser is None:
        raise RuntimeError(f"no Chromium on the PATH (looked for {', '.join(BROWSERS)}); on Debian: apt install chromium")
    url = page if "://" in page else "file://" + os.path.abspath(page)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "page.png")
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--virtual-time-budget=5000", f"--window-size={width},{height}", f"--screenshot={raw}", url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or not os.path.isfile(raw):
            raise RuntimeError(f"{browser} could not take the screenshot of {page}: {done.stderr.strip()[-400:]}")
        im = Image.open(raw).convert("RGB")
        if crop is not None:
            im = im.crop((0, crop[0], im.width, min(crop[1], im.height)))
        if scale != 1.0:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        im.save(out, optimize=True, quality=88)  # quality: for .jpg
    return out


def browser_driver(width: int = 1400, height: int = 900):
    """A Selenium WebDriver on the system's headless Chromium through its chromium-driver (Debian's chromium
    and chromium-driver; Selenium Manager is told to stay offline, so no browser or driver is downloaded).
    RuntimeError when either is missing. Used for pages that must run their script before the picture (the
    review page) and by the browser tests."""
    browser, driver = find_browser(), shutil.which("chromedriver")
    if browser is None or driver is None:
        raise RuntimeError("no Chromium with its driver on the PATH (chromium and chromedriver); on Debian: "
                           "apt install chromium chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.screenshot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("page")
    p.add_argument("--out", required=True)
    p.add_argument("--width", type=int, default=1100)
    p.add_argument("--height", type=int, default=6000)
    p.add_argument("--crop", type=int, nargs=2, metavar=("Y0", "Y1"))
    p.add_argument("--scale", type=float, default=1.0)
    a = p.parse_args(argv)
    if not (a.page.startswith("http") or os.path.isfile(a.page)):
        print(f"error: {a.page}: no such file", file=sys.stderr)
        return 2
    try:
        screenshot(a.page, a.out, a.width, a.height, tuple(a.crop) if a.crop else None, a.scale)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
