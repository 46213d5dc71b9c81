"""The demo in a real browser: Debian's Chromium driven by Playwright against the demo server.

A click on a known pixel of an example must reach the server as that pixel (Gradio's click coordinates are where
demos usually go wrong when images are scaled), the mask in the page must equal `Predictor.predict` for that
pixel, and the overlay shown must be that mask. The latency of a click on a cached image (from the click to the
new overlay being shown) is printed. On a NIfTI volume, "Propagate" must give the runtime's propagation from the
clicked mask, and the label volume must be offered for download.

Skipped when /usr/bin/chromium is absent, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import statistics
from pathlib import Path

import cv2
import numpy as np
import pytest

from sammed_edge.demo import state as st
from sammed_edge.demo.app import CLICK_ROUTE
from sammed_edge.demo.examples import example_by_name
from sammed_edge.demo.render import display_geometry, render_overlay, to_display
from sammed_edge.runtime import Predictor
from sammed_edge.runtime.io.loading import load_for_segmentation
from sammed_edge.runtime.io.volumes import read_nifti_volume
from sammed_edge.runtime.processing import mask_prompt_from_logits
from sammed_edge.runtime.volume import VolumeSegmenter

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
IN_CI = os.environ.get("CI", "").lower() == "true"
EXAMPLE = "CT"
LATENCY_CLICKS = 10
CLICK_GAP_MS = 400

# Where the browser draws the displayed image inside the <img> element, from its CSS object-fit (the browser's
# rule, not Gradio's code), and the displayed image's natural size.
DRAWN_JS = """
() => {
  const img = document.querySelector('#canvas img');
  const box = img.getBoundingClientRect();
  const style = getComputedStyle(img);
  const nw = img.naturalWidth, nh = img.naturalHeight;
  let sx, sy;
  if (style.objectFit === 'fill') { sx = box.width / nw; sy = box.height / nh; }
  else {
    let s = style.objectFit === 'none' ? 1 : Math.min(box.width / nw, box.height / nh);
    if (style.objectFit === 'scale-down') s = Math.min(s, 1);
    sx = sy = s;
  }
  return {fit: style.objectFit, position: style.objectPosition, nw, nh, sx, sy,
          ox: (box.width - nw * sx) / 2, oy: (box.height - nh * sy) / 2, src: img.src};
}
"""

# Resolves with performance.now() once the <img> shows a new, fully decoded source.
SHOWN_JS = """
(old) => {
  const img = document.querySelector('#canvas img');
  return img && img.src !== old && img.complete && img.naturalWidth > 0 ? performance.now() : false;
}
"""


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is absent (Debian: apt-get install chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, demo_server):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(demo_server["url"])
    # the time of every click on the image, taken before the page's own handlers see it (window, capture phase)
    page.evaluate("() => window.addEventListener('click', (event) => { if (event.target.closest && "
                  "event.target.closest('#canvas')) window.__clicked = performance.now(); }, true)")
    yield page
    page.close()


def page_state(page) -> dict:
    return json.loads(page.locator("#page-state textarea").input_value())


def wait_update(page, seq: int) -> dict:
    page.wait_for_function(
        # the state box may not be rendered yet, or still empty, right after the page loads or a file is set
        "(seq) => { const box = document.querySelector('#page-state textarea');"
        " return !!(box && box.value) && JSON.parse(box.value).seq > seq; }", arg=seq, timeout=60_000
    )
    return page_state(page)


def click_pixel(page, x: int, y: int, data: dict) -> tuple[dict, float]:
    """Click the centre of image pixel (x, y) where the browser draws it; returns the new state and the latency
    in ms from the click to the new overlay being displayed."""
    page.wait_for_function(SHOWN_JS, arg="", polling="raf", timeout=30_000)  # an image is loaded
    drawn = page.evaluate(DRAWN_JS)
    assert drawn["position"] in ("50% 50%", "center center", "center"), drawn
    height, width = data["size"]
    dh, dw = data["image"]["display_size"]
    assert (drawn["nw"], drawn["nh"]) == (dw, dh)  # the page shows the displayed image file as it is
    dx, dy = (x + 0.5) * dw / width, (y + 0.5) * dh / height
    seq, old = data["seq"], drawn["src"]
    page.locator("#canvas img").click(position={"x": drawn["ox"] + dx * drawn["sx"], "y": drawn["oy"] + dy * drawn["sy"]})
    shown = page.wait_for_function(SHOWN_JS, arg=old, polling="raf", timeout=60_000).json_value()
    latency = shown - page.evaluate("() => window.__clicked")
    return wait_update(page, seq), latency


def displayed_overlay(page) -> np.ndarray:
    """The overlay image the page shows, decoded (RGB)."""
    src = page.evaluate("() => document.querySelector('#canvas img').src")
    # the overlay comes inside the click's answer, as a data URL (`demo.app.inline_image`): no second request
    assert src.startswith("data:image/png;base64,"), src[:80]
    body = base64.b64decode(src.split(",", 1)[1])
    return cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def pick_pixel(predictor: Predictor, image: np.ndarray) -> tuple[int, int]:
    """A pixel whose single-click mask is non-empty and differs from its neighbours' (so a click that lands one
    pixel off is caught by the mask as well as by the echoed coordinates); the largest such mask."""
    predictor.set_image(image)
    height, width = image.shape[:2]
    best, best_size = None, -1
    for y in np.linspace(0.2 * height, 0.8 * height, 5).astype(int):
        for x in np.linspace(0.2 * width, 0.8 * width, 5).astype(int):
            masks = [predictor.predict(point_coords=[[px, py]], point_labels=[1], best_only=True)[0][0]
                     for px, py in ((x, y), (x + 1, y), (x, y + 1))]
            size = int(masks[0].sum())
            if size > best_size and not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[0], masks[2]):
                best, best_size = (int(x), int(y)), size
    assert best is not None and best_size > 0, "no pixel of the example gives a usable single-click mask"
    return best


def test_click_segments_the_clicked_pixel(page, demo_server, capsys):
    example = example_by_name(EXAMPLE)
    image = load_for_segmentation(example.path, window=example.window).image
    predictor = Predictor.from_bundle(demo_server["bundle"])
    x, y = pick_pixel(predictor, image)

    page.get_by_role("button", name=EXAMPLE, exact=True).click()
    data = wait_update(page, 0)
    assert data["error"] is None and data["image"]["name"] == example.path.name
    assert data["size"] == list(image.shape[:2])
    geometry = display_geometry(image.shape[:2])
    assert data["image"]["display_size"] == list(geometry.display_size)

    # the first click: the server receives exactly this pixel and answers with Predictor.predict's mask
    data, _ = click_pixel(page, x, y, data)
    assert data["error"] is None
    assert data["objects"][0]["clicks"] == [[x, y, 1]]
    predictor.set_image(image)
    expected = st.Prediction(*predictor.predict(point_coords=[[x, y]], point_labels=[1]))
    chosen = int(np.argmax(expected.iou))
    mask = expected.masks[chosen]
    assert data["mask"] == {"pixels": int(mask.sum()), "sha256": st.mask_digest(mask)}
    assert data["torch_imported"] is False
    # it went the page's direct route (`app.CLICK_SCRIPT`), not Gradio's select event
    assert page.evaluate("(route) => performance.getEntriesByType('resource').some(e => e.name.endsWith(route))",
                         CLICK_ROUTE)

    # the overlay shown is that mask (and the click), drawn over the displayed image
    state = st.with_prediction(st.click(st.new_session(image.shape[:2]), x, y), expected)
    shown = displayed_overlay(page)
    base = to_display(image, geometry)
    np.testing.assert_array_equal(shown, render_overlay(base, state, geometry))
    inside = to_display(mask, geometry)
    assert (shown[inside] != base[inside]).any(axis=1).mean() > 0.9  # the mask is tinted

    # a second click feeds the first mask back, as Predictor.predict with that mask prompt does (two clicks are
    # unambiguous: the single-mask output)
    x2, y2 = min(x + 7, image.shape[1] - 1), max(y - 5, 0)
    data, _ = click_pixel(page, x2, y2, data)
    assert data["objects"][0]["clicks"] == [[x, y, 1], [x2, y2, 1]]
    masks, _, _ = predictor.predict(point_coords=[[x, y], [x2, y2]], point_labels=[1, 1], multimask_output=False,
                                    mask_input=mask_prompt_from_logits(expected.low_res[chosen], predictor.policy))
    assert data["mask"]["sha256"] == st.mask_digest(masks[0])

    # latency of clicks on the cached image, from the click to the new overlay on screen
    latencies = []
    for step in range(LATENCY_CLICKS):
        page.wait_for_timeout(CLICK_GAP_MS)  # a person's pace: the page settles (side panel refreshed) between clicks
        data, latency = click_pixel(page, (x + 3 * step) % image.shape[1], (y + 11) % image.shape[0], data)
        assert data["error"] is None and data["timings"]["click_cached"]
        latencies.append(latency)
    server = data["timings"]
    with capsys.disabled():
        print(f"\ndemo click latency on a cached image ({demo_server['bundle'].name}, Chromium): median "
              f"{statistics.median(latencies):.0f} ms, all {[round(v) for v in latencies]} ms; last click in the "
              f"server {server['click_ms']:.0f} ms (decoder {server['decode_ms']:.0f} ms)")

    # undo in the page goes back one click
    seq = data["seq"]
    page.locator("#undo").click()
    data = wait_update(page, seq)
    assert len(data["objects"][0]["clicks"]) == 1 + LATENCY_CLICKS

    # without a session token in the page (the script's cue) a click takes Gradio's select event, same result
    page.evaluate("() => { const f = document.querySelector('#page-state textarea'); const d = JSON.parse(f.value);"
                  " d.token = null; f.value = JSON.stringify(d); }")
    clicks = data["objects"][0]["clicks"]
    data, _ = click_pixel(page, x, y, data)
    assert data["error"] is None and data["objects"][0]["clicks"] == clicks + [[x, y, 1]]
    assert data["token"]  # Gradio's answer brings the token back

    # the NIfTI label map of a DICOM input is offered for download
    page.locator("#export-nifti").click()
    page.wait_for_selector("#download a", timeout=30_000)
    assert "CT_small-labels.nii.gz" in page.locator("#download").inner_text().replace("\n", "")


def test_errors_are_shown_and_the_server_stays_up(page, demo_server, tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02" * 100)
    page.locator("#upload input[type=file]").set_input_files(str(bad))
    data = wait_update(page, 0)
    assert data["error"] and "broken.dcm" in data["error"]
    # the status line renders its Markdown after the hidden state field has changed: wait for it
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('⚠')", timeout=10_000)
    page.get_by_role("button", name="MR", exact=True).click()
    data = wait_update(page, data["seq"])
    assert data["error"] is None and data["image"]["name"] == "MR_small.dcm"
    assert demo_server["process"].poll() is None


def test_volume_propagation_in_the_page(page, demo_server):
    example = example_by_name("NIfTI anatomical")
    loaded = load_for_segmentation(example.path)
    predictor = Predictor.from_bundle(demo_server["bundle"])
    x, y = pick_pixel(predictor, loaded.image)
    page.get_by_role("button", name=example.name, exact=True).click()
    data = wait_update(page, 0)
    assert data["error"] is None and data["volume"]["slices"] == data["image"]["count"]
    data, _ = click_pixel(page, x, y, data)
    assert data["error"] is None and data["mask"]["pixels"] > 0

    page.locator("#propagate").click()
    data = wait_update(page, data["seq"])
    assert data["error"] is None, data["error"]
    index = data["image"]["index"]
    slices = data["volume"]["labels"]["1"]
    assert index in slices

    # the page's label volume is the runtime's propagation from the clicked mask
    predictor.set_image(loaded.image)
    masks, iou, low_res = predictor.predict(point_coords=[[x, y]], point_labels=[1])
    best = int(np.argmax(iou))
    direct = VolumeSegmenter(predictor, read_nifti_volume(example.path))
    direct.set_mask(index, masks[best], 1, low_res=low_res[best])
    direct.propagate(1)
    assert sorted(direct.structures[1].slices) == slices
    assert data["volume"]["sha256"] == hashlib.sha256(direct.label_volume().tobytes()).hexdigest()

    # the label volume is offered for download
    page.locator("#export-volume").click()
    page.wait_for_selector("#download a", timeout=30_000)
    assert "anatomical-labels3d.nii.gz" in page.locator("#download").inner_text().replace("\n", "")
