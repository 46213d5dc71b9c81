"""Click-to-segment demo: a Gradio page over the torch-free runtime.

    python demo/app.py                                   # default bundle out/lite_medsam_clicks-onnx-fp32 (built once)
    python demo/app.py --bundle DIR --host 127.0.0.1 --port 7860
    python -m sammed_edge.demo.app --help

The page loads PNG / JPEG / TIFF, DICOM (CT window presets or a manual level / width, frames) and NIfTI (slice
slider and axis) files, or one of the example images that ship with pydicom and nibabel. Clicks add foreground or
background points or box corners to the active object; each new prompt feeds the object's previous mask back to
the model. Objects get distinct colours and are exported together as a PNG label map, a NIfTI label map aligned
with the input, or DICOM-SEG. For a NIfTI volume, the neighbouring slices are encoded in the background, and
"Propagate" carries the slice's objects through the volume (their masks then show on every slice the slider
reaches, where clicks correct them and a new propagation redoes both sides); "NIfTI volume" exports them.

The layout and the Gradio wiring live here; the panels and the direct click route in `page.py`; what the handlers
do is in `engine.py` (`state.py`) and `volume.py`, which the tests drive without a browser.
"""

from __future__ import annotations

import argparse
import html
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio.data_classes import ImageData

from sammed_edge.demo import state as st
from sammed_edge.demo import volume as dv
from sammed_edge.demo.engine import (
    MODES, WINDOW_CHOICES, DemoSession, Engine, SessionStore, dicom_seg_available, window_value,
)
from sammed_edge.demo.examples import Example, find_examples
from sammed_edge.demo.page import (  # the page's panels and click route, re-exported for the app's users
    CLICK_ROUTE, CLICK_SCRIPT, DEFAULT_OPACITY, direct_click, latency_markdown, objects_html, session_overlay,
    state_json, status_markdown, update,
)
from sammed_edge.demo.render import candidate_at, png_data_url, render_candidates
from sammed_edge.runtime.errors import InputError

log = logging.getLogger("sammed_edge.demo")

DEFAULT_BUNDLE = Path("out") / "lite_medsam_clicks-onnx-fp32"
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
                    propagate_button = gr.Button("Propagate this slice's objects through the volume", size="sm",
                                                 elem_id="propagate")
                with gr.Accordion("Export", open=True):
                    with gr.Row():
                        png_button = gr.Button("Mask PNG", size="sm", min_width=60, elem_id="export-png")
                        nifti_button = gr.Button("NIfTI labels", size="sm", min_width=60, elem_id="export-nifti")
                        seg_button = gr.Button("DICOM-SEG", size="sm", min_width=60, elem_id="export-seg",
                                               interactive=dicom_seg_available())
                        volume_button = gr.Button("NIfTI volume", size="sm", min_width=60, elem_id="export-volume")
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
                return dv.attach(engine, engine.open(current, path, window=window_value(choice, lvl, wid)))

            return respond(s, op, co, action, with_controls=True)

        def on_example(example: Example) -> Callable:
            def handler(s: DemoSession, op: float, co: bool) -> tuple:
                return respond(s, op, co, lambda current: dv.attach(engine, engine.open(current, example.path,
                                                                                      window=example.window)),
                               with_controls=True)

            return handler

        def on_reslice(s: DemoSession, op: float, co: bool, choice: str, lvl: float, wid: float, idx: float, ax: int) -> tuple:
            def action(current: DemoSession) -> DemoSession:
                view, _ = current.require()
                changed_axis = view.kind == "nifti" and int(ax) != view.axis
                return dv.attach(engine, engine.reslice(current, window=window_value(choice, lvl, wid),
                                                        index=None if changed_axis else int(idx), axis=int(ax)))

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

        def on_propagate(s: DemoSession, op: float, co: bool, progress: gr.Progress = gr.Progress()) -> tuple:
            def report(done: int, total: int) -> None:
                progress((done, total), desc="propagating", unit="slices")

            return respond(s, op, co, lambda current: dv.propagate(current, report))

        propagate_button.click(on_propagate, prefix, outputs, **common)
        undo_button.click(on(engine.undo), prefix, outputs, **common)
        reset_button.click(on(engine.reset), prefix, outputs, **common)
        new_button.click(on(engine.new_object), prefix, outputs, **common)
        opacity.change(on(lambda s: s), prefix, outputs, trigger_mode="always_last", **common)
        contour.change(on(lambda s: s), prefix, outputs, **common)

        def exporter(fmt: str) -> Callable:
            def run(s: DemoSession) -> tuple:
                with sessions.hold(s) as current:
                    try:
                        folder = tempfile.mkdtemp(dir=exports)
                        path = dv.export(current, folder) if fmt == "volume" else engine.export(current, fmt, folder)
                    except InputError as exc:
                        return status_markdown(current, str(exc)), gr.update(value=None, visible=False)
                return (status_markdown(current) + f" · wrote {html.escape(path.name)}",
                        gr.update(value=str(path), visible=True))

            return run

        for button, fmt in ((png_button, "png"), (nifti_button, "nifti"), (seg_button, "dicom-seg"), (volume_button, "volume")):
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
