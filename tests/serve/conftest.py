"""Fixtures of the service tests: one engine on the tiny test bundle, and real servers on ephemeral ports.

`start_server(limits=..., token=..., engine=...)` runs uvicorn in a thread on 127.0.0.1:0 (the real app, the real
HTTP stack) and returns its base URL; every server is stopped at the end of the test. The masks the tests compare
come from `Predictor` on the same bundle, so they do not depend on the model being a good one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from sammed_edge.runtime.predictor import Predictor  # noqa: E402
from sammed_edge.runtime.samples import phantom  # noqa: E402
from sammed_edge.serve.app import create_app  # noqa: E402
from sammed_edge.serve.engine import Engine  # noqa: E402
from sammed_edge.serve.service import Limits, LocalService  # noqa: E402

THREADS = 1


class Server:
    """uvicorn serving an app in a background thread."""

    def __init__(self, app) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def engine(tiny_bundle: Path) -> Engine:
    return Engine.from_bundle(tiny_bundle, threads=THREADS)


@pytest.fixture(scope="session")
def reference(tiny_bundle: Path) -> Predictor:
    """A plain `Predictor` on the same bundle and threads: what the service's masks must equal."""
    return Predictor.from_bundle(tiny_bundle, threads=THREADS, cache_size=0)


@pytest.fixture
def start_server(engine: Engine) -> Iterator[Callable[..., str]]:
    servers: list[tuple[Server, LocalService]] = []

    def start(limits: Limits | None = None, token: str | None = None, engine_: Engine | None = None) -> str:
        service = LocalService(engine_ or engine, limits or Limits())
        server = Server(create_app(lambda: service, token=token))
        servers.append((server, service))
        return server.url

    yield start
    for server, service in servers:
        server.stop()
        service.close()


@pytest.fixture
def server(start_server) -> str:
    """A server with the default limits."""
    return start_server()


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


def png_bytes(image: np.ndarray) -> bytes:
    """An H x W x 3 uint8 RGB image as PNG file bytes."""
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))
    assert ok
    return encoded.tobytes()


@pytest.fixture(name="png_bytes")
def png_bytes_fixture() -> Callable[[np.ndarray], bytes]:
    return png_bytes


@pytest.fixture
def images() -> list[np.ndarray]:
    """Three phantoms of different sizes (non-square, so that x/y or H/W mix-ups show)."""
    return [phantom(size, seed=seed)[0][: size - 16] for size, seed in ((96, 1), (128, 2), (112, 3))]

