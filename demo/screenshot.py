"""Screenshot of the demo after two clicks, for the documentation (docs/demo-two-clicks.png).

    python demo/screenshot.py                          # default bundle, CT example, a box by two clicks
    python demo/screenshot.py --mode foreground --pixels 58,52 60,45 --out /tmp/shot.png

Starts the demo in a child process on a free loopback port, drives Debian's Chromium (/usr/bin/chromium) with
Playwright (no browser download), loads an example, clicks the centres of the given image pixels where the browser
draws them, and saves a screenshot of the whole page.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger("sammed_edge.demo.screenshot")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# The spinal canal of pydicom's CT_small.dcm: LiteMedSAM answers a box well (a single click poorly).
DEFAULT_PIXELS = ["46,40", "72,64"]

# Content box of the displayed image inside its <img> (CSS object-fit, centred) and its natural size.
_DRAWN_JS = """
() => {
  const img = document.querySelector('#canvas img');
  const box = img.getBoundingClientRect(), fit = getComputedStyle(img).objectFit;
  const nw = img.naturalWidth, nh = img.naturalHeight;
  let s = fit === 'none' ? 1 : Math.min(box.width / nw, box.height / nh);
  if (fit === 'scale-down') s = Math.min(s, 1);
  const sx = fit === 'fill' ? box.width / nw : s, sy = fit === 'fill' ? box.height / nh : s;
  return {sx, sy, ox: (box.width - nw * sx) / 2, oy: (box.height - nh * sy) / 2, src: img.src};
}
"""
_LOADED_JS = """
(old) => { const img = document.querySelector('#canvas img');
           return !!img && img.src !== old && img.complete && img.naturalWidth > 0; }
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_http(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the demo exited with code {process.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    raise TimeoutError(f"the demo did not answer at {url} within {timeout:.0f} s")


def _page_state(page: Any) -> dict:
    return json.loads(page.locator("#page-state textarea").input_value())


def _wait_update(page: Any, seq: int) -> dict:
    page.wait_for_function(
        "(seq) => JSON.parse(document.querySelector('#page-state textarea').value).seq > seq", arg=seq, timeout=120_000
    )
    state = _page_state(page)
    if state.get("error"):
        raise RuntimeError(f"the demo reported: {state['error']}")
    return state


def click_pixel(page: Any, x: int, y: int) -> dict:
    """Click the centre of image pixel (x, y) on the page's canvas; returns the page state after the answer."""
    page.wait_for_function(_LOADED_JS, arg="", timeout=30_000)
    state = _page_state(page)
    height, width = state["size"]
    display_h, display_w = state["image"]["display_size"]
    drawn = page.evaluate(_DRAWN_JS)
    u, v = (x + 0.5) * display_w / width, (y + 0.5) * display_h / height
    page.locator("#canvas img").click(position={"x": drawn["ox"] + u * drawn["sx"], "y": drawn["oy"] + v * drawn["sy"]})
    new = _wait_update(page, state["seq"])
    page.wait_for_function(_LOADED_JS, arg=drawn["src"], timeout=30_000)
    return new


def take_screenshot(url: str, out: Path, example: str, mode: str, pixels: list[tuple[int, int]],
                    chromium: str = CHROMIUM, size: tuple[int, int] = (1280, 900)) -> dict:
    """Drive the page at `url`: open `example`, set the click mode, click `pixels`, save a full-page screenshot.

    Returns:
        The page state after the last click.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.goto(url)
            page.get_by_role("button", name=example, exact=True).click()
            state = _wait_update(page, 0)
            page.locator("#mode").get_by_role("radio").nth(["foreground", "background", "box"].index(mode)).check()
            for x, y in pixels:
                state = click_pixel(page, x, y)
            page.mouse.move(0, 0)  # no hover highlight in the picture
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot of the demo after two clicks (for the docs).")
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: the demo's default bundle)")
    parser.add_argument("--out", type=Path, default=Path("docs") / "demo-two-clicks.png")
    parser.add_argument("--example", default="CT", help="example button to press (default CT)")
    parser.add_argument("--mode", choices=["foreground", "background", "box"], default="box")
    parser.add_argument("--pixels", nargs="+", default=DEFAULT_PIXELS, metavar="X,Y",
                        help=f"image pixels to click (default: {' '.join(DEFAULT_PIXELS)})")
    parser.add_argument("--chromium", default=CHROMIUM, help="browser executable (Chromium)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the demo to start")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pixels = [tuple(int(v) for v in item.split(",")) for item in args.pixels]

    port = _free_port()
    command = [sys.executable, "-m", "sammed_edge.demo.app", "--port", str(port), "-q"]
    if args.bundle is not None:
        command += ["--bundle", str(args.bundle)]
    with tempfile.TemporaryFile() as server_log:
        # The demo builds the default bundle on first use and shows its progress: let that reach the terminal.
        process = subprocess.Popen(command, stdout=server_log if args.bundle else None, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/"
            _wait_for_http(url, process, args.timeout)
            state = take_screenshot(url, args.out, args.example, args.mode, pixels, chromium=args.chromium)
        except (RuntimeError, TimeoutError):
            server_log.seek(0)
            sys.stderr.write(server_log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    mask = state.get("mask") or {}
    log.info("wrote %s (%s, %s clicks at %s; mask of %s pixels)", args.out, args.example, args.mode, pixels,
             mask.get("pixels"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
