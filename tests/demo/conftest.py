"""Fixtures of the demo tests: the bundle to serve, an engine on it, and a running demo server.

Interaction and plumbing tests use the tiny random bundle of `tests/conftest.py` (built in the test session), so
they need no download. Tests about real masks use the bundle named by $SAMMED_BUNDLE (e.g.
out/lite_medsam_clicks-onnx-fp32, which `make run` builds) and skip without it. The server and the browser test serve
$SAMMED_BUNDLE when it is set, else the tiny bundle: what they check (the clicked pixel, mask equality with
`Predictor.predict`, the overlay, no torch in the server) does not depend on the model.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sammed_edge.demo.engine import DemoSession, Engine


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a real browser (Debian's /usr/bin/chromium) against the demo")


@pytest.fixture(scope="session")
def real_bundle() -> Path:
    """The real model bundle named by $SAMMED_BUNDLE; skip when unset."""
    value = os.environ.get("SAMMED_BUNDLE")
    if not value:
        pytest.skip("set SAMMED_BUNDLE to a real bundle (e.g. out/lite_medsam_clicks-onnx-fp32 from `make run`) to test real masks")
    path = Path(value)
    if not (path / "manifest.json").is_file():
        pytest.fail(f"SAMMED_BUNDLE={value} is not a bundle folder")
    return path


@pytest.fixture(scope="session")
def served_bundle(request: pytest.FixtureRequest) -> Path:
    """$SAMMED_BUNDLE when set, else the tiny test bundle (built only when needed)."""
    value = os.environ.get("SAMMED_BUNDLE")
    if value:
        return Path(value)
    return request.getfixturevalue("tiny_bundle")


@pytest.fixture(scope="session")
def engine(tiny_bundle: Path) -> Engine:
    """Demo handlers over the tiny bundle (a small cache, to exercise hits and misses)."""
    return Engine.from_bundle(tiny_bundle, cache_size=4)


@pytest.fixture
def session() -> DemoSession:
    return DemoSession()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the demo server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the demo server did not answer at {url} within {timeout:.0f} s")


@pytest.fixture(scope="session")
def demo_server(served_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """`python -m sammed_edge.demo.app` on a free loopback port, in its own process; yields url, bundle, log."""
    port = free_port()
    log = tmp_path_factory.mktemp("demo-server") / "server.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost"}
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "sammed_edge.demo.app", "--bundle", str(served_bundle), "--port", str(port)],
            stdout=handle, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        try:
            wait_for_http(url, process)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}\n{log.read_text(errors='replace')[-4000:]}")
        yield {"url": url, "bundle": served_bundle, "log": log, "process": process}
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
