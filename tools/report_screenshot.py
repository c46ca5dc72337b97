#!/usr/bin/env python
"""Open a weldiag report in headless Chromium, check that it renders, and save screenshots.

    .venv/bin/python tools/report_screenshot.py weldiag-report/report.html nbs/images/report.png

Checks (exit 1 with one line each when any fails): every embedded image decodes (naturalWidth > 0), every navigation
link points at a section of the page, no image is wider than the page, no console error. Saves the first screen
(1280 px wide) to the given PNG path, and with `--full` the whole page next to it as `<name>_full.jpg`.
"""
import argparse, json, sys
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHECK = """() => {
  const imgs = [...document.images];
  const nav = [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'));
  return {
    images: imgs.length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
    too_wide: imgs.filter(i => i.getBoundingClientRect().right > document.documentElement.clientWidth + 1).map(i => i.alt),
    nav: nav.length,
    dangling: nav.filter(h => !document.querySelector(h)),
    sections: [...document.querySelectorAll('section')].map(s => s.id),
    height: document.documentElement.scrollHeight,
  };
}"""


def screenshot(html:Path, png:Path, width:int=1280, full:bool=False)->dict:
    "Render `html` in headless Chromium; returns the page checks (and 'errors': console errors); writes the screenshots"
    from playwright.sync_api import sync_playwright
    errors = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = b.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(Path(html).resolve().as_uri(), wait_until="load")
            info = page.evaluate(CHECK)
            png.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(png))
            if full: page.screenshot(path=str(png.with_name(png.stem + "_full.jpg")), full_page=True, type="jpeg", quality=70)
        finally: b.close()
    return info | {"errors": errors}


def problems(info:dict)->list:
    "One line per failed check"
    out = []
    if info["broken"]: out.append(f"{len(info['broken'])} of {info['images']} images do not decode: {info['broken']}")
    if info["too_wide"]: out.append(f"images wider than the page: {info['too_wide']}")
    if info["dangling"]: out.append(f"navigation links to no section: {info['dangling']}")
    if info["errors"]: out.append(f"console errors: {info['errors']}")
    return out


def main(argv=None)->int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path); ap.add_argument("png", type=Path)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--full", action="store_true", help="also save the whole page as <name>_full.jpg")
    a = ap.parse_args(argv)
    if not a.html.is_file(): print(f"{a.html}: no such file", file=sys.stderr); return 2
    if not CHROMIUM.exists(): print(f"{CHROMIUM} not found: apt-get install chromium", file=sys.stderr); return 2
    info = screenshot(a.html, a.png, a.width, a.full)
    print(json.dumps(info))
    for line in problems(info): print(f"{a.html}: {line}", file=sys.stderr)
    return 1 if problems(info) else 0


if __name__ == "__main__":
    sys.exit(main())
