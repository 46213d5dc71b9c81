"""Click-to-segment demo: a Gradio page over the torch-free runtime.

    python demo/app.py                                   # default bundle out/lite_medsam_clicks-onnx-fp32 (built once)
    python demo/app.py --bundle DIR --host 127.0.0.1 --port 7860
    python -m sammed_edge.demo.app --help

The page loads PNG / JPEG / TIFF, DICOM (CT window presets or a manual level / width, frames) and NIfTI (slice
slider and axis) files, or one of the example images that ship with pydicom and nibabel. Clicks add foreground or
background points or box corners to the active object; each new prompt feeds the object's previous mask back to
the model. Objects get distinct colours and are exported together as a PNG label map, a NIfTI label map aligned
with the input, or DICOM-SEG.

The layout and the Gradio wiring live here; what the handlers do is in `engine.py` (and `state.py`), which the
tests drive without a browser.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio.data_classes import ImageData

from sammed_edge.demo import state as st
from sammed_edge.demo.engine import (
    MODES, WINDOW_CHOICES, DemoSession, Engine, SessionStore, dicom_seg_available, window_value,
)
from sammed_edge.demo.examples import Example, find_examples
from sammed_edge.demo.render import candidate_at, label_color, png_data_url, render_candidates, render_overlay
from sammed_edge.runtime.errors import InputError

log = logging.getLogger("sammed_edge.demo")

DEFAULT_BUNDLE = Path("out") / "lite_medsam_clicks-onnx-fp32"
DEFAULT_OPACITY = 0.45
MODE_LABELS = {"foreground": "foreground click (+)", "background": "background click (−)", "box": "box: two corners"}
MULTIMASK_LABELS = {"auto": "3 for a lone click, else 1", "always": "always 3", "never": "always 1"}
MAX_UPLOAD = "512mb"
SESSION_CAPACITY = 64  # browser sessions kept (images, masks, undo steps); the least recently used go first


# ------------------------------------------------------------------------------------------- pictures


def inline_image(**kwargs: Any) -> gr.Image:
    """An output `gr.Image` whose pictures travel inside the event's answer, as PNG data URLs.

    A plain `gr.Image` answer names a file that the browser fetches in a second request once the answer has
    arrived; for a 512 x 512 overlay that request (and Gradio's default PNG encoding) cost ~30 ms of each click
    on this machine. Here the picture is encoded once (`render.png_data_url`) and shown as soon as the answer is
    read. It stays Gradio's own image component (only its `postprocess` differs), so clicks on it report the same
    `SelectData`. Values: an h x w x 3 uint8 RGB array or None. (A subclass would do the same, but Gradio writes a
    `.pyi` file beside the module of every component subclass when the class is created.)
    """
    component = gr.Image(type="numpy", **kwargs)

    def postprocess(value: np.ndarray | None) -> ImageData | None:
        if value is None:
            return None
        return ImageData(url=png_data_url(value), orig_name=f"{component.elem_id or 'image'}.png", mime_type="image/png")

    component.postprocess = postprocess
    return component


# ------------------------------------------------------------------------------------------- bundle


def ensure_bundle(path: str | Path | None) -> Path:
    """The bundle to serve: `path`, else the default bundle, built once when it does not exist.

    The build runs `python -m sammed_edge.export.build --target onnx-fp32` (the same as `python export/build.py`)
    in a child process that shows its progress on this terminal; torch stays out of the demo's own process.

    Raises:
        SystemExit: `path` is not a bundle, or the build failed (its message says what to do).
    """
    if path is not None:
        bundle = Path(path)
        if not (bundle / "manifest.json").is_file():
            raise SystemExit(f"{bundle} is not a bundle folder (no manifest.json); build one with export/build.py")
        return bundle
    bundle = DEFAULT_BUNDLE
    if (bundle / "manifest.json").is_file():
        return bundle
    command = [sys.executable, "-m", "sammed_edge.export.build", "--target", "onnx-fp32", "--out", str(bundle)]
    print(f"No bundle at {bundle}: building the default one once ({' '.join(command[1:])}).", flush=True)
    print("This fetches the LiteMedSAM weights, exports and verifies two graphs: a few minutes.", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, check=False)
    if result.returncode != 0 or not (bundle / "manifest.json").is_file():
        raise SystemExit(
            f"building the default bundle failed (exit code {result.returncode}); it needs the export extra "
            "(pip install 'sammed-edge[export]') and the weights (see README), or pass --bundle DIR"
        )
    print(f"Built {bundle} in {time.perf_counter() - start:.0f} s.", flush=True)
    return bundle


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


# ------------------------------------------------------------------------------------------- app


def build_app(engine: Engine, examples: list[Example] | None = None, title: str = "SAM-Med2D Edge",
              sessions: SessionStore | None = None) -> Any:
    """The Gradio page over `engine`.

    Clicks on the image take the direct route when the server has it (`serve`, `CLICK_SCRIPT`), else Gradio's
    `select` event; both end in `Engine.click` on the same stored session.

    Args:
        engine: the handlers (and the predictor).
        examples: example images offered as buttons (default: those installed, `find_examples()`).
        title: page title.
        sessions: where the browser sessions live (shared with the direct click route); default: a new store.

    Returns:
        A `gradio.Blocks`.
    """
    examples = find_examples() if examples is None else examples
    sessions = SessionStore(capacity=SESSION_CAPACITY) if sessions is None else sessions
    exports = tempfile.mkdtemp(prefix="sammed-demo-")
    describe = engine.predictor.describe()
    model_line = (f"model **{describe['model']}** ({describe['family']}) · target {describe['target']['name']} · "
                  f"backend {describe['encoder']['backend']} {describe['encoder'].get('version', '')}")

    def page(session: DemoSession, opacity: float, contour: bool, error: str | None = None, overlay: bool = True) -> tuple:
        """Values of `outputs`, the components every handler updates (the overlay skipped unless `overlay`)."""
        view, state = session.view, session.state
        if view is None or state is None:
            return (session, None, gr.update(choices=[], value=None), None, status_markdown(session, error),
                    latency_markdown(session), objects_html(session), state_json(session, error))
        picture = session_overlay(session, opacity, contour) if overlay else gr.skip()
        strip = render_candidates(view.display, state)
        prediction = state.active.prediction if state.active.has_prompt else None
        if prediction is not None:
            choices = [(f"#{i + 1} · IoU {float(v):.3f}", i) for i, v in enumerate(prediction.iou)]
            candidates = gr.update(choices=choices, value=state.active.chosen)
        else:
            candidates = gr.update(choices=[], value=None)
        return (session, picture, candidates, strip, status_markdown(session, error), latency_markdown(session),
                objects_html(session), state_json(session, error))

    def respond(session: DemoSession, opacity: float, contour: bool, action: Callable[[DemoSession], DemoSession],
                with_controls: bool = False) -> tuple:
        """Run `action` (`update`) and answer with the whole page."""
        new, error = update(sessions, session, action)
        return page(new, opacity, contour, error) + ((controls(new) if error is None else (gr.skip(),) * 3)
                                                     if with_controls else ())

    def refresh(session: DemoSession, opacity: float, contour: bool) -> tuple:
        """The page (all but the overlay) for the browser session's latest value, with its last error."""
        with sessions.hold(session) as current:
            stored = sessions.latest(current.token)
        error = stored[1] if stored is not None else None
        values = page(current, opacity, contour, error, overlay=False)
        return values[:1] + values[2:]

    def controls(new: DemoSession) -> tuple:
        """Window, slice slider and axis controls for the image just opened."""
        view = new.view
        if view is None:
            return (gr.skip(),) * 3
        win = view.window
        choice = "auto" if win is None else ("manual" if isinstance(win, tuple) else win)
        return (gr.update(value=choice, interactive=view.kind != "raster"),
                gr.update(minimum=0, maximum=max(view.count - 1, 1), value=view.index, interactive=view.count > 1),
                gr.update(value=view.axis, interactive=view.kind == "nifti"))

    # Gradio's usage analytics would send requests off this machine; a medical demo stays quiet.
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        # Abandoned sessions (images, masks, undo steps) are dropped after an idle hour.
        session = gr.State(DemoSession(), time_to_live=3600)
        gr.Markdown(f"## {title}: click to segment\n{model_line}")
        with gr.Row():
            with gr.Column(scale=1, min_width=340):
                upload = gr.File(label="Image: PNG, JPEG, TIFF, DICOM, NIfTI", type="filepath", file_count="single",
                                 height=110, elem_id="upload")
                example_buttons = []
                if examples:
                    gr.Markdown("Examples (test files shipped with pydicom and nibabel):")
                    with gr.Row():
                        example_buttons = [(gr.Button(e.name, size="sm", min_width=60, elem_id=f"example-{i}"), e)
                                           for i, e in enumerate(examples)]
                mode = gr.Radio([(MODE_LABELS[m], m) for m in MODES], value="foreground", label="A click adds",
                                elem_id="mode")
                multimask = gr.Radio([(MULTIMASK_LABELS[m], m) for m in st.MULTIMASK_CHOICES], value="auto",
                                     label="Mask candidates per prediction", elem_id="multimask")
                with gr.Row():
                    undo_button = gr.Button("Undo", size="sm", min_width=60, elem_id="undo")
                    reset_button = gr.Button("Reset", size="sm", min_width=60, elem_id="reset")
                    new_button = gr.Button("New object", size="sm", min_width=60, variant="primary",
                                           elem_id="new-object")
                candidates = gr.Radio(choices=[], label="Mask candidates (predicted IoU)", elem_id="candidates")
                strip = inline_image(show_label=False, interactive=False, buttons=[],
                                 elem_id="candidate-strip")
                with gr.Row():
                    opacity = gr.Slider(0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="overlay opacity",
                                        elem_id="opacity", scale=3)
                    contour = gr.Checkbox(True, label="contour", elem_id="contour", scale=1)
                with gr.Accordion("DICOM / NIfTI", open=True):
                    window = gr.Dropdown(list(WINDOW_CHOICES), value="auto", label="window (CT presets, or manual)",
                                         elem_id="window")
                    with gr.Row():
                        level = gr.Number(40, label="level (Enter)", elem_id="level", min_width=80)
                        width = gr.Number(400, label="width (Enter)", elem_id="width", min_width=80)
                    index = gr.Slider(0, 1, value=0, step=1, label="slice (NIfTI) / frame (DICOM)", interactive=False,
                                      elem_id="slice")
                    axis = gr.Radio([0, 1, 2], value=2, label="NIfTI slice axis", elem_id="axis")
                with gr.Accordion("Export", open=True):
                    with gr.Row():
                        png_button = gr.Button("Mask PNG", size="sm", min_width=60, elem_id="export-png")
                        nifti_button = gr.Button("NIfTI labels", size="sm", min_width=60, elem_id="export-nifti")
                        seg_button = gr.Button("DICOM-SEG", size="sm", min_width=60, elem_id="export-seg",
                                               interactive=dicom_seg_available())
                    download = gr.File(label="download", interactive=False, visible=False, elem_id="download")
            with gr.Column(scale=2):
                status = gr.Markdown(status_markdown(DemoSession()), elem_id="status")
                canvas = inline_image(label="Click on the image", interactive=False,
                                  buttons=["download"], elem_id="canvas")
                latency = gr.Markdown(latency_markdown(DemoSession()), elem_id="latency")
                objects = gr.HTML("", elem_id="objects")
                page_state = gr.Textbox(state_json(DemoSession()), visible="hidden", elem_id="page-state")
                # pressed by `CLICK_SCRIPT` after a direct click, to bring the rest of the page up to date
                refresh_button = gr.Button("refresh", visible="hidden", elem_id="refresh")

        outputs = [session, canvas, candidates, strip, status, latency, objects, page_state]
        view_controls = [window, index, axis]
        common = dict(api_visibility="private")

        def on_upload(s: DemoSession, op: float, co: bool, path: str | None, choice: str, lvl: float, wid: float) -> tuple:
            def action(current: DemoSession) -> DemoSession:
                if not path:
                    raise InputError("no file received")
                return engine.open(current, path, window=window_value(choice, lvl, wid))

            return respond(s, op, co, action, with_controls=True)

        def on_example(example: Example) -> Callable:
            def handler(s: DemoSession, op: float, co: bool) -> tuple:
                return respond(s, op, co, lambda current: engine.open(current, example.path, window=example.window),
                               with_controls=True)

            return handler

        def on_reslice(s: DemoSession, op: float, co: bool, choice: str, lvl: float, wid: float, idx: float, ax: int) -> tuple:
            def action(current: DemoSession) -> DemoSession:
                view, _ = current.require()
                changed_axis = view.kind == "nifti" and int(ax) != view.axis
                return engine.reslice(current, window=window_value(choice, lvl, wid),
                                      index=None if changed_axis else int(idx), axis=int(ax))

            return respond(s, op, co, action, with_controls=True)

        def on_select(s: DemoSession, op: float, co: bool, how: str, multi: str, evt: gr.SelectData) -> tuple:
            return respond(s, op, co, lambda current: engine.click(current, evt.index, how, multi))

        def on_choose(s: DemoSession, op: float, co: bool, value: Any) -> tuple:
            return respond(s, op, co, lambda current: engine.choose(current, int(value)) if value is not None else current)

        def on_strip(s: DemoSession, op: float, co: bool, evt: gr.SelectData) -> tuple:
            return respond(s, op, co, lambda current: engine.choose(current, candidate_at(evt.index[0])))

        def on(action: Callable[[DemoSession], DemoSession]) -> Callable:
            def handler(s: DemoSession, op: float, co: bool) -> tuple:
                return respond(s, op, co, action)

            return handler

        prefix = [session, opacity, contour]
        with_view = outputs + view_controls
        upload.upload(on_upload, prefix + [upload, window, level, width], with_view, **common)
        for button, example in example_buttons:
            button.click(on_example(example), prefix, with_view, **common)
        reslice_inputs = prefix + [window, level, width, index, axis]
        window.input(on_reslice, reslice_inputs, with_view, **common)
        level.submit(on_reslice, reslice_inputs, with_view, **common)
        width.submit(on_reslice, reslice_inputs, with_view, **common)
        # `input` is the user's doing only (dragging, or typing a number), unlike `change`; while dragging, the
        # slices passed over are skipped but the last one is always read.
        index.input(on_reslice, reslice_inputs, with_view, trigger_mode="always_last", **common)
        axis.input(on_reslice, reslice_inputs, with_view, **common)
        # A click is the latency-critical event: answered outside Gradio's queue (the predictor is thread-safe) and
        # without the progress overlay, which costs a repaint per click.
        canvas.select(on_select, prefix + [mode, multimask], outputs, queue=False, show_progress="hidden", **common)
        refresh_button.click(refresh, prefix, outputs[:1] + outputs[2:], queue=False, show_progress="hidden", **common)
        candidates.input(on_choose, prefix + [candidates], outputs, **common)
        strip.select(on_strip, prefix, outputs, **common)
        undo_button.click(on(engine.undo), prefix, outputs, **common)
        reset_button.click(on(engine.reset), prefix, outputs, **common)
        new_button.click(on(engine.new_object), prefix, outputs, **common)
        opacity.change(on(lambda s: s), prefix, outputs, trigger_mode="always_last", **common)
        contour.change(on(lambda s: s), prefix, outputs, **common)

        def exporter(fmt: str) -> Callable:
            def run(s: DemoSession) -> tuple:
                with sessions.hold(s) as current:
                    try:
                        path = engine.export(current, fmt, tempfile.mkdtemp(dir=exports))
                    except InputError as exc:
                        return status_markdown(current, str(exc)), gr.update(value=None, visible=False)
                return (status_markdown(current) + f" · wrote {html.escape(path.name)}",
                        gr.update(value=str(path), visible=True))

            return run

        for button, fmt in ((png_button, "png"), (nifti_button, "nifti"), (seg_button, "dicom-seg")):
            button.click(exporter(fmt), [session], [status, download], **common)

        def server_info() -> dict:
            """Model, backend and whether torch is imported in the server process (it must not be)."""
            return {"model": describe["model"], "family": describe["family"], "target": describe["target"]["name"],
                    "backend": describe["encoder"]["backend"], "torch_imported": "torch" in sys.modules}

        gr.api(server_info, api_name="server_info")
    return app


# ------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Click-to-segment demo (Gradio) on the torch-free runtime.")
    parser.add_argument("--bundle", type=Path, help=f"bundle folder (default: {DEFAULT_BUNDLE}, built once if missing)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--cache-size", type=int, default=32, help="image embeddings kept for instant revisits")
    parser.add_argument("--threads", type=int, help="CPU threads per graph (default: the backend's choice)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests

    bundle = ensure_bundle(args.bundle)
    engine = Engine.from_bundle(bundle, cache_size=args.cache_size, threads=args.threads)
    log.info("bundle %s loaded (%s)", bundle, engine.predictor.describe()["model"])
    serve(engine, host=args.host, port=args.port, quiet=args.quiet)
    return 0


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 7860, quiet: bool = False) -> None:
    """Start the page (`build_app`) with its direct click route (`CLICK_ROUTE`) and serve until interrupted."""
    sessions = SessionStore(capacity=SESSION_CAPACITY)
    app = build_app(engine, sessions=sessions)
    app.queue().launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, quiet=quiet, show_error=True,
                       state_session_capacity=SESSION_CAPACITY, head=CLICK_SCRIPT, prevent_thread_lock=True)

    def click(payload: dict[str, Any]) -> dict[str, Any]:
        return direct_click(engine, sessions, payload)

    # Gradio's catch-all page routes would shadow a route added after them: this one goes first.
    app.server_app.add_api_route(CLICK_ROUTE, click, methods=["POST"])
    routes = app.server_app.router.routes
    routes.insert(0, routes.pop())
    app.block_thread()


if __name__ == "__main__":
    raise SystemExit(main())
