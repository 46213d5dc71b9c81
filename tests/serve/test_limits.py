"""Refusals over a real server: every bad request gets its 4xx and a message; auth, eviction, TTL, a full queue."""

from __future__ import annotations

import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest

from sammed_edge.serve.engine import Engine
from sammed_edge.serve.service import Limits

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the corrupt files


def _session(http: httpx.Client, png: bytes) -> str:
    created = http.post("/v1/sessions", files={"file": ("image.png", png)})
    assert created.status_code == 201, created.text
    return created.json()["session"]


def _png_header(width: int, height: int) -> bytes:
    """The start of a PNG that claims width x height pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64


def _ct_bytes() -> bytes:
    """pydicom's real CT test file (skips when pydicom or its test data is missing)."""
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        pytest.skip("pydicom's CT_small.dcm test file is not installed")
    with open(path, "rb") as handle:
        return handle.read()


def _error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["status"] == status and all(w in body["error"] for w in words), body


def test_every_bad_request_gets_a_4xx_naming_the_problem(http, images, png_bytes):
    sid = _session(http, png_bytes(images[0]))
    predict = f"/v1/sessions/{sid}/predict"
    height, width = images[0].shape[:2]

    _error(http.post(predict, content=b"{not json", headers={"content-type": "application/json"}), 400, "malformed JSON")
    _error(http.post("/v1/sessions/nope/predict", json={"points": [[1, 1]], "labels": [1]}), 404, "unknown session")
    _error(http.post(predict, json={"points": [[width + 5, 3]], "labels": [1]}), 400, "outside", f"{width} x {height}")
    _error(http.post(predict, json={"box": [10, 10, 5, 20]}), 400, "x1 < x0")
    _error(http.post(predict, json={"points": [[3, 3]], "labels": [1, 0]}), 400, "one label per point")
    _error(http.post(predict, json={"points": [[3, 3]], "labels": [7]}), 400, "point_labels")
    _error(http.post(predict, json={}), 400, "needs a prompt")
    _error(http.post(predict, json={"points": [[3, 3, 3]], "labels": [1]}), 422, "points")
    _error(http.post(predict, json={"point": [[3, 3]]}), 422, "point")
    _error(http.post(predict, json={"points": [[3, 3]], "labels": [1], "use_previous_mask": True}), 400, "no mask yet")
    _error(http.get(f"/v1/sessions/{sid}/mask"), 400, "no mask yet")
    assert http.post(predict, json={"points": [[3, 3]], "labels": [1]}).status_code == 200
    _error(http.get(f"/v1/sessions/{sid}/mask", params={"format": "jpeg"}), 400, "unknown mask format")
    _error(http.get(f"/v1/sessions/{sid}/mask", params={"format": "nifti"}), 400, "DICOM or NIfTI")
    _error(http.get(f"/v1/sessions/{sid}/mask", params={"format": "dicom-seg"}), 400, "DICOM")
    _error(http.delete("/v1/sessions/nope"), 404, "unknown session")

    upload = "/v1/sessions"
    _error(http.post(upload, files={"file": ("notes.txt", b"hello, not an image")}), 400, "unsupported file")
    _error(http.post(upload, files={"file": ("empty.png", b"")}), 400, "empty")
    _error(http.post(upload, files={"file": ("cut.png", png_bytes(images[0])[:200])}), 400, "cut.png", "not a readable image")
    garbage = b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x00garbage" + bytes(range(256)) * 4
    _error(http.post(upload, files={"file": ("garbage.dcm", garbage)}), 400, "garbage.dcm", "no pixel data")
    ct = _ct_bytes()
    _error(http.post(upload, files={"file": ("broken.dcm", ct[: len(ct) * 2 // 3])}), 400, "broken.dcm")
    _error(http.post(upload, files={"file": ("image.png", png_bytes(images[0]))}, data={"window": "lung"}), 400, "window")
    _error(http.post(upload, files={"file": ("image.png", png_bytes(images[0]))}, data={"slice": "x"}), 422, "slice")
    _error(http.post(upload, data={"window": "lung"}), 422, "file")
    _error(http.post(upload, files={"file": ("bomb.png", _png_header(100_000, 100_000))}), 413, "100000 x 100000")
    _error(http.get("/v2/nothing"), 404)
    # nothing above took the server down, nor left the first session broken
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.post(predict, json={"points": [[3, 3]], "labels": [1]}).status_code == 200


def test_body_and_pixel_limits(start_server, images, png_bytes):
    url = start_server(Limits(max_upload_bytes=60_000, max_pixels=90 * 90))
    with httpx.Client(base_url=url, timeout=60) as http:
        big = b"\x89PNG\r\n\x1a\n" + bytes(70_000)
        _error(http.post("/v1/sessions", files={"file": ("big.png", big)}), 413, "exceeds the limit")

        def chunks():  # no Content-Length: the limit applies while the body streams in
            yield (b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
                   b"Content-Type: application/octet-stream\r\n\r\n\x89PNG\r\n\x1a\n")
            for _ in range(3):
                yield b"x" * 30_000

        _error(http.post("/v1/sessions", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}),
               413, "exceeds the limit")
        _error(http.post("/v1/sessions", files={"file": ("large.png", png_bytes(images[1]))}), 413, "pixels")
        assert http.post("/v1/sessions", files={"file": ("small.png", png_bytes(images[0]))}).status_code == 201


def test_auth_refuses_without_the_token_and_accepts_it(start_server, images, png_bytes):
    token = "s3cret-token-0123456789"
    url = start_server(token=token)
    with httpx.Client(base_url=url, timeout=60) as http:
        files = {"file": ("image.png", png_bytes(images[0]))}
        _error(http.post("/v1/sessions", files=files), 401, "bearer token")
        _error(http.post("/v1/sessions", files=files, headers={"Authorization": "Bearer wrong"}), 401)
        _error(http.get("/metrics"), 401)
        assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
        created = http.post("/v1/sessions", files=files, headers={"Authorization": f"Bearer {token}"})
        assert created.status_code == 201, created.text


def test_non_loopback_bind_needs_a_token(tmp_path):
    from sammed_edge.serve.cli import read_token

    with pytest.raises(SystemExit, match="needs --token-file"):
        read_token(None, "0.0.0.0")
    assert read_token(None, "127.0.0.1") is None and read_token(None, "::1") is None
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(SystemExit, match="at least"):
        read_token(short, "0.0.0.0")
    good = tmp_path / "token"
    good.write_text("a-long-enough-token-1234\n")
    assert read_token(good, "0.0.0.0") == "a-long-enough-token-1234"


def test_lru_eviction_and_ttl_expiry(start_server, images, png_bytes):
    url = start_server(Limits(max_sessions=2, session_ttl=1.0))
    click = {"points": [[10, 10]], "labels": [1]}
    with httpx.Client(base_url=url, timeout=60) as http:
        first, second, third = (_session(http, png_bytes(image)) for image in images)
        _error(http.post(f"/v1/sessions/{first}/predict", json=click), 404, "evicted", "at most 2")
        assert http.post(f"/v1/sessions/{second}/predict", json=click).status_code == 200
        assert http.get("/readyz").json()["sessions"] == 2
        time.sleep(1.3)
        _error(http.post(f"/v1/sessions/{third}/predict", json=click), 404, "expired")
        metrics = http.get("/metrics").text
    assert 'sammed_sessions_dropped_total{reason="lru"} 1.0' in metrics
    assert 'sammed_sessions_dropped_total{reason="ttl"}' in metrics


class _HeldEngine(Engine):
    """The real engine whose encodes wait until the test lets them go (to fill the encode queue on purpose)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine.predictor)
        self.release = threading.Event()
        self.entered = threading.Event()

    def encode(self, image: np.ndarray):
        self.entered.set()
        self.release.wait(30)
        return super().encode(image)


def test_full_encode_queue_answers_503_with_retry_after_and_clicks_go_on(start_server, engine, images, png_bytes):
    held = _HeldEngine(engine)
    url = start_server(Limits(encode_queue=0, retry_after=3), engine_=held)
    with httpx.Client(base_url=url, timeout=60) as http:
        held.release.set()
        sid = _session(http, png_bytes(images[0]))
        held.release.clear()
        held.entered.clear()
        results: list[int] = []
        blocked = threading.Thread(target=lambda: results.append(
            http.post("/v1/sessions", files={"file": ("a.png", png_bytes(images[1]))}).status_code))
        blocked.start()
        assert held.entered.wait(30)
        refused = http.post("/v1/sessions", files={"file": ("b.png", png_bytes(images[2]))})
        _error(refused, 503, "queue is full")
        assert refused.headers["Retry-After"] == "3"
        # clicks are not behind the encoder
        assert http.post(f"/v1/sessions/{sid}/predict", json={"points": [[10, 10]], "labels": [1]}).status_code == 200
        held.release.set()
        blocked.join(30)
        assert results == [201]
        metrics = http.get("/metrics").text
    assert 'sammed_rejected_requests_total{reason="busy"} 1.0' in metrics


def test_metrics_expose_latency_per_route_and_counters(http, images, png_bytes):
    sid = _session(http, png_bytes(images[0]))
    for _ in range(3):
        assert http.post(f"/v1/sessions/{sid}/predict", json={"points": [[10, 10]], "labels": [1]}).status_code == 200
    http.post("/v1/sessions/missing/predict", json={"points": [[10, 10]], "labels": [1]})
    text = http.get("/metrics").text
    route = 'route="/v1/sessions/{session_id}/predict"'
    assert f'sammed_request_seconds_count{{method="POST",{route},status="200"}} 3.0' in text
    assert f'sammed_request_seconds_count{{method="POST",{route},status="404"}} 1.0' in text
    assert 'sammed_request_seconds_bucket{le="0.05",method="POST",route="/v1/sessions",status="201"}' in text or \
        'route="/v1/sessions",status="201"' in text
    assert "sammed_encode_seconds_count 1.0" in text and "sammed_decode_seconds_count 3.0" in text
    assert "sammed_open_sessions 1.0" in text
    assert 'sammed_rejected_requests_total{reason="not_found"} 1.0' in text
    assert sid not in text  # session ids never become label values


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".bmp"])
def test_header_sizes_are_read_before_decoding(ext, images):
    import cv2

    from sammed_edge.runtime.errors import InputError
    from sammed_edge.serve.uploads import TooLarge, check_dimensions, raster_size, sniff

    image = images[2]
    data = cv2.imencode(ext, image)[1].tobytes()
    kind = sniff(data)
    assert raster_size(data, kind) == (image.shape[1], image.shape[0])
    check_dimensions(data, kind, image.shape[0] * image.shape[1])
    with pytest.raises(TooLarge, match=f"{image.shape[1]} x {image.shape[0]}"):
        check_dimensions(data, kind, image.shape[0] * image.shape[1] - 1)
    with pytest.raises(InputError, match="header"):
        check_dimensions(data[:12], kind, 10**9)
