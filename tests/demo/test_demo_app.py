"""The Gradio app: page content, the default bundle, and the server process (torch-free, loopback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sammed_edge.demo import app
from sammed_edge.demo import state as st
from sammed_edge.demo.engine import DemoSession, SessionStore
from sammed_edge.demo.examples import example_by_name
from sammed_edge.demo.render import png_data_url, render_overlay


def test_page_content_follows_the_session(engine):
    empty = DemoSession()
    assert "Load an image" in app.status_markdown(empty)
    assert json.loads(app.state_json(empty))["seq"] == 0
    opened = engine.open(empty, example_by_name("NIfTI MR").path)
    clicked = engine.click(opened, (300, 300))
    assert "example4d.nii.gz" in app.status_markdown(clicked) and "slice 12 of 24" in app.status_markdown(clicked)
    assert "&lt;b&gt;" in app.status_markdown(clicked, "<b>")  # errors are escaped
    latency = app.latency_markdown(clicked)
    assert "encoder (last run)" in latency and "last click: decoder" in latency
    data = json.loads(app.state_json(clicked))
    assert data["seq"] == 2 and data["image"]["kind"] == "nifti" and data["image"]["count"] == 24
    assert data["mask"]["sha256"] == data["objects"][0]["sha256"]
    assert data["objects"][0]["clicks"] == [[75, 75, 1]]  # shown 4 times enlarged
    assert "<table>" in app.objects_html(clicked)


def test_build_app(engine):
    blocks = app.build_app(engine)
    ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    assert {"canvas", "page-state", "mode", "undo", "reset", "new-object", "candidates", "slice", "window"} <= ids


def test_inline_image_sends_pictures_inside_the_answer():
    picture = np.zeros((8, 12, 3), np.uint8)
    picture[2:5, 3:9] = (200, 30, 10)
    component = app.inline_image(interactive=False, elem_id="canvas")
    data = component.postprocess(picture)
    assert data.path is None and data.url == png_data_url(picture)  # nothing for the browser to fetch
    assert component.postprocess(None) is None
    assert component.get_block_name() == "image"  # drawn (and clicked) by Gradio's own image component


def test_explicit_bundle_must_exist(tmp_path):
    with pytest.raises(SystemExit, match="not a bundle"):
        app.ensure_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    assert app.ensure_bundle(tmp_path) == tmp_path


def test_default_bundle_is_built_once_in_a_child_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_run(command, check=False):
        calls.append(command)
        Path(command[command.index("--out") + 1], "manifest.json").parent.mkdir(parents=True)
        Path(command[command.index("--out") + 1], "manifest.json").write_text("{}")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(app.subprocess, "run", fake_run)
    assert app.ensure_bundle(None) == app.DEFAULT_BUNDLE
    assert calls == [[sys.executable, "-m", "sammed_edge.export.build", "--target", "onnx-fp32", "--out",
                      str(app.DEFAULT_BUNDLE)]]
    assert app.ensure_bundle(None) == app.DEFAULT_BUNDLE and len(calls) == 1  # not rebuilt

    monkeypatch.setattr(app, "DEFAULT_BUNDLE", Path("elsewhere"))
    monkeypatch.setattr(app.subprocess, "run", lambda command, check=False: subprocess.CompletedProcess(command, 1))
    with pytest.raises(SystemExit, match="export extra"):
        app.ensure_bundle(None)


def test_server_process_is_torch_free_on_loopback(demo_server):
    from gradio_client import Client

    info = Client(demo_server["url"], verbose=False).predict(api_name="/server_info")
    assert info["torch_imported"] is False
    assert info["backend"] == "onnxruntime"
    log = demo_server["log"].read_text(errors="replace")
    assert "Running on local URL:  http://127.0.0.1:" in log
    assert demo_server["process"].poll() is None


def test_session_store_serialises_a_browser_session_and_keeps_the_latest():
    store = SessionStore(capacity=2)
    with store.hold(DemoSession()) as first:
        assert first.token  # a session gets its token when first stored
        store.put(first.updated())
    newer = store.latest(first.token)[0]
    assert newer.seq == 1
    with store.hold(first) as current:  # an older copy (a page's gr.State) yields the stored, newer value
        assert current is newer
        store.put(current.updated(), "a problem")
    assert store.latest(first.token)[0].seq == 2 and store.latest(first.token)[1] == "a problem"
    with pytest.raises(ValueError, match="token"):
        store.put(DemoSession())
    for _ in range(2):  # two more sessions push the least recently used out
        with store.hold(DemoSession()) as other:
            store.put(other)
    assert store.latest(first.token) is None


def test_direct_click_answers_the_overlay_and_the_page_state(engine):
    store = SessionStore()
    example = example_by_name("CT")
    opened, error = app.update(store, DemoSession(), lambda s: engine.open(s, example.path, window=example.window))
    assert error is None
    click = {"token": opened.token, "x": 200.7, "y": 121.2, "mode": "foreground", "multimask": "auto",
             "opacity": 0.3, "contour": False}
    answer = app.direct_click(engine, store, click)
    assert answer["error"] is None
    expected = engine.click(opened, (200.7, 121.2), "foreground", "auto")
    data = json.loads(answer["state"])
    assert data["seq"] == opened.seq + 1 and data["token"] == opened.token
    assert data["objects"][0]["clicks"] == [[50, 30, 1]]  # CT_small is shown 4 times enlarged: pixel floor(x / 4)
    assert data["mask"]["sha256"] == st.mask_digest(expected.state.active.mask)
    view = expected.view
    assert answer["overlay"] == png_data_url(render_overlay(view.display, expected.state, view.geometry, opacity=0.3,
                                                            contour=False))
    assert store.latest(opened.token)[0].seq == data["seq"]  # the Gradio events see this click

    # mistakes come back as errors, never as a crash, and leave the session as it was
    assert "expired" in app.direct_click(engine, store, {**click, "token": "nope"})["error"]
    assert "malformed" in app.direct_click(engine, store, {**click, "x": "left"})["error"]
    assert "malformed" in app.direct_click(engine, store, {**click, "y": float("nan")})["error"]
    wrong = app.direct_click(engine, store, {**click, "mode": "lasso"})
    assert "unknown click mode" in wrong["error"] and json.loads(wrong["state"])["error"] == wrong["error"]
    assert store.latest(opened.token)[0].state.active.clicks == expected.state.active.clicks


def test_click_route_on_the_server(demo_server):
    """The route the page's script posts to (the browser test drives it from a real page)."""
    import urllib.request

    request = urllib.request.Request(demo_server["url"].rstrip("/") + app.CLICK_ROUTE, method="POST",
                                     data=json.dumps({"token": "unknown"}).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    assert answer["overlay"] is None and "reload the page" in answer["error"]
