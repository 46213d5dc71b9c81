"""What the demo page shows, and its direct click route: status, latency and object panels, the machine-readable
page state, the overlay of a session, and the route a click on the image takes (`CLICK_SCRIPT`, `direct_click`).

`app.py` lays the page out and wires Gradio's events to these and to `engine.py`.
"""

from __future__ import annotations

import html
import json
import logging
import math
import sys
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from sammed_edge.demo import state as st
from sammed_edge.demo import volume as dv
from sammed_edge.demo.engine import DemoSession, Engine, SessionStore
from sammed_edge.demo.render import label_color, png_data_url, render_overlay
from sammed_edge.runtime.errors import InputError

log = logging.getLogger("sammed_edge.demo")

DEFAULT_OPACITY = 0.45


# ------------------------------------------------------------------------------------------- page content


def status_markdown(session: DemoSession, error: str | None = None) -> str:
    """The status line: an error, or what is loaded and what a click does next."""
    if error:
        return f"**⚠ {html.escape(error)}**"
    view, state = session.view, session.state
    if view is None or state is None:
        return "Load an image: upload a file or pick an example."
    where = ""
    if view.kind == "nifti":
        where = f", slice {view.index} of {view.count} along axis {view.axis}"
    elif view.kind == "dicom" and view.count > 1:
        where = f", frame {view.index} of {view.count}"
    height, width = state.size
    nxt = "click the second box corner" if state.pending_corner is not None else "click on the image"
    return f"**{html.escape(view.name)}** ({view.kind}, {width} x {height}{where}) · object {state.active.label}: {nxt}"


def latency_markdown(session: DemoSession) -> str:
    """The last encoder run and the last click, as measured in the server."""
    timings = session.timings
    parts = []
    if "encode_ms" in timings:
        cached = " · this image's embedding came from the cache" if timings.get("encode_cached") else ""
        parts.append(f"encoder (last run): **{timings['encode_ms']:.0f} ms**{cached}")
    if "click_ms" in timings:
        parts.append(f"last click: decoder **{timings.get('decode_ms', 0.0):.0f} ms**, "
                     f"server total **{timings['click_ms']:.0f} ms**")
    return " | ".join(parts) or "encoder: not run yet"


def objects_html(session: DemoSession) -> str:
    """A table of the objects: colour, label, prompts, pixels, predicted IoU of the chosen candidate."""
    if session.state is None:
        return ""
    rows = []
    for obj in session.state.objects:
        r, g, b = label_color(obj.label)
        positive = sum(c.positive for c in obj.clicks)
        iou = f"{float(obj.prediction.iou[obj.chosen]):.3f}" if obj.mask is not None else "–"
        pixels = int(obj.mask.sum()) if obj.mask is not None else 0
        active = " (active)" if obj is session.state.active else ""
        rows.append(
            f"<tr><td><span style='display:inline-block;width:1em;height:1em;background:rgb({r},{g},{b})'></span>"
            f" {obj.label}{active}</td><td>{positive} + / {len(obj.clicks) - positive} −</td>"
            f"<td>{'yes' if obj.box else 'no'}</td><td>{pixels}</td><td>{iou}</td></tr>"
        )
    head = "<tr><th>object</th><th>clicks</th><th>box</th><th>pixels</th><th>IoU (pred.)</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def state_json(session: DemoSession, error: str | None = None) -> str:
    """Machine-readable page state (a hidden field): update counter, error, image, objects with mask sha256,
    timings, and whether torch is imported in the server process (it must not be)."""
    data: dict[str, Any] = {"seq": session.seq, "token": session.token, "error": error,
                            "torch_imported": "torch" in sys.modules}
    view = session.view
    if view is not None and session.state is not None:
        data.update(st.summary(session.state))
        data["image"] = {"name": view.name, "kind": view.kind, "index": view.index, "axis": view.axis,
                         "count": view.count, "display_size": list(view.geometry.display_size)}
        active = session.state.active
        data["mask"] = {"pixels": int(active.mask.sum()), "sha256": st.mask_digest(active.mask)} if active.mask is not None else None
    data["timings"] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in session.timings.items()}
    data["volume"] = dv.summary(session)
    return json.dumps(data)


# ------------------------------------------------------------------------------------------- handling


def session_overlay(session: DemoSession, opacity: float, contour: bool) -> np.ndarray | None:
    """The overlay the page shows for `session` (`render.render_overlay` of its image), or None without an image."""
    if session.view is None or session.state is None:
        return None
    return render_overlay(session.view.display, session.state, session.view.geometry, opacity=opacity, contour=contour)

CLICK_ROUTE = "/sammed-edge/click"

# The page's click path. Gradio's own `select` event costs ~25 ms of page work per click on a 2-core machine
# (before the request leaves and after the answer arrives) and ~10 ms of its server pipeline; on the direct
# route a click on the image posts its position straight to `direct_click`, shows the overlay that comes back,
# and only then has Gradio refresh the side panel (candidates, objects, latency) through the hidden
# `#refresh` button. Position: the pointer over the picture as the browser draws it (`object-fit`), in
# displayed-image pixels, unrounded (`render.display_to_pixel` floors it). Clicks are sent one at a time, in
# order. Until the page has a session token (before the first image), Gradio's event handles the click.
CLICK_SCRIPT = """
<script>
(() => {
  let queue = Promise.resolve();
  const token = () => {
    try { return JSON.parse(document.querySelector('#page-state textarea').value).token || null; }
    catch (error) { return null; }
  };
  const checked = (id) => { const input = document.querySelector(`#${id} input:checked`); return input ? input.value : null; };
  async function send(body, img) {
    const answer = await fetch(new URL('ROUTE'.slice(1), document.baseURI), {
      method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify(body)});
    const data = await answer.json();
    if (data.overlay) {
      img.src = data.overlay;
      try { await img.decode(); } catch (error) { /* replaced meanwhile: nothing to wait for */ }
    }
    if (data.state) document.querySelector('#page-state textarea').value = data.state;
    // the side panel once the overlay is on screen: its update must not hold up the overlay's frame
    requestAnimationFrame(() => setTimeout(() => document.querySelector('#refresh').click(), 0));
  }
  document.addEventListener('click', (event) => {
    const img = event.target;
    if (!(img instanceof HTMLImageElement) || !img.closest('#canvas') || !img.naturalWidth) return;
    const session = token();
    if (!session) return;
    const box = img.getBoundingClientRect(), style = getComputedStyle(img);
    const nw = img.naturalWidth, nh = img.naturalHeight;
    let sx = box.width / nw, sy = box.height / nh;
    if (style.objectFit !== 'fill') {
      let s = style.objectFit === 'none' ? 1 : Math.min(sx, sy);
      if (style.objectFit === 'scale-down') s = Math.min(s, 1);
      sx = sy = s;
    }
    const x = (event.clientX - box.left - (box.width - nw * sx) / 2) / sx;
    const y = (event.clientY - box.top - (box.height - nh * sy) / 2) / sy;
    event.stopImmediatePropagation();
    event.preventDefault();
    if (x < 0 || y < 0 || x >= nw || y >= nh) return;  // beside the picture
    const opacity = document.querySelector('#opacity input[type=number]');
    const contour = document.querySelector('#contour input');
    const body = {token: session, x, y, mode: checked('mode'), multimask: checked('multimask'),
                  opacity: opacity ? Number(opacity.value) : null, contour: contour ? contour.checked : true};
    queue = queue.then(() => send(body, img)).catch((error) => console.error('click failed', error));
  }, true);
})();
</script>
""".replace("ROUTE", CLICK_ROUTE)


def update(sessions: SessionStore, session: DemoSession, action: Callable[[DemoSession], DemoSession]
           ) -> tuple[DemoSession, str | None]:
    """Apply `action` to the latest value of `session`'s browser session and store the result.

    An InputError (or a crash) keeps the session as it was, except its update counter (so a client sees that an
    answer came), and is returned as the error to show.
    """
    with sessions.hold(session) as current:
        try:
            new, error = action(current), None
        except InputError as exc:
            new, error = current.updated(), str(exc)
        except Exception as exc:  # noqa: BLE001 - the page must stay up and say what went wrong
            log.error("handler failed:\n%s", traceback.format_exc())
            new, error = current.updated(), f"internal error ({type(exc).__name__}: {exc})"
        sessions.put(new, error)
    return new, error


def direct_click(engine: Engine, sessions: SessionStore, payload: dict[str, Any]) -> dict[str, Any]:
    """A click through the page's direct route (`CLICK_ROUTE`, see `CLICK_SCRIPT`).

    Args:
        payload: "token" (the browser session), "x", "y" (the click in displayed-image pixels, unrounded),
            "mode", "multimask", "opacity", "contour" (the page's controls).

    Returns:
        "overlay" (the new overlay as a PNG data URL, or None), "state" (`state_json`) and "error" (or None).
    """
    stored = sessions.latest(str(payload.get("token") or ""))
    if stored is None:
        return {"overlay": None, "state": None, "error": "this page's session has expired: reload the page"}
    try:
        index = (float(payload["x"]), float(payload["y"]))
        mode, multi = str(payload["mode"]), str(payload["multimask"])
        opacity, contour = float(payload.get("opacity", DEFAULT_OPACITY)), bool(payload.get("contour", True))
    except (KeyError, TypeError, ValueError) as exc:
        return {"overlay": None, "state": None, "error": f"malformed click request ({type(exc).__name__}: {exc})"}
    if not all(math.isfinite(v) for v in (*index, opacity)):
        return {"overlay": None, "state": None, "error": "malformed click request (not a finite number)"}
    new, error = update(sessions, stored[0], lambda current: engine.click(current, index, mode, multi))
    overlay = session_overlay(new, opacity, contour)
    return {"overlay": None if overlay is None else png_data_url(overlay), "state": state_json(new, error), "error": error}


