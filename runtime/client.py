"""A client of the segmentation service's HTTP API (`sammed-edge serve`), the remote twin of `Predictor`.

    from sammed_edge.runtime.client import Client

    with Client("http://127.0.0.1:8000") as client:
        session = client.create_session("ct.dcm", window="abdomen")
        masks, ious, timings = client.predict(session["session"], points=[[120, 80]], labels=[1])

It needs only httpx (`pip install 'sammed-edge[client]'`) and numpy: masks arrive as COCO RLE and are decoded
with `runtime.io.rle`, the code the server encodes them with. A 503 (encoder queue full, or a model replica
being replaced) is retried after the server's Retry-After, a bounded number of times.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from .io.rle import decode_rle


# A request's headers and body leave in separate writes; without TCP_NODELAY, Nagle's algorithm may hold the body
# back until the server's delayed ACK (up to 40 ms on Linux) on every click.
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


class ServerError(Exception):
    """The server refused a request; `status` is the HTTP status and the message the server's error text.

    (A server that cannot be reached raises the built-in `ConnectionError`.)
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def _httpx():
    try:
        import httpx
    except ImportError as exc:
        raise ImportError("the service client needs httpx: pip install 'sammed-edge[client]'") from exc
    return httpx


class Client:
    """Synchronous client of one service.

    Args:
        url: the service's base URL, e.g. "http://127.0.0.1:8000".
        token: bearer token, when the server requires one.
        timeout: seconds per request.
        retries: how often a 503 (or a dropped connection) is retried, waiting the server's Retry-After.
        max_wait: the longest wait between retries, in seconds.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0, retries: int = 8, max_wait: float = 5.0) -> None:
        httpx = _httpx()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout,
                                  transport=httpx.HTTPTransport(socket_options=NO_DELAY))
        self.retries = retries
        self.max_wait = max_wait
        self.retried = 0

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any):
        httpx = _httpx()
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if attempt == self.retries:
                    raise ConnectionError(f"cannot reach the service at {self._http.base_url}: {exc}") from exc
                self.retried += 1
                time.sleep(min(0.2 * 2**attempt, self.max_wait))
                continue
            if response.status_code == 503 and attempt < self.retries:
                self.retried += 1
                time.sleep(min(float(response.headers.get("Retry-After", 1) or 1), self.max_wait))
                continue
            if response.status_code >= 400:
                try:
                    message = response.json().get("error", response.text)
                except ValueError:
                    message = response.text
                raise ServerError(response.status_code, message)
            return response
        raise AssertionError("unreachable")

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz").json()

    def ready(self) -> dict[str, Any]:
        return self._request("GET", "/readyz").json()

    def create_session(self, image: str | Path | bytes, filename: str | None = None, window: str | None = None,
                       slice: int | None = None, axis: int | None = None, frame: int | None = None) -> dict[str, Any]:  # noqa: A002
        """Upload an image file (path or bytes) and encode it; returns {"session", "height", "width", "encode_ms"}."""
        if isinstance(image, (str, Path)):
            data, filename = Path(image).read_bytes(), filename or Path(image).name
        else:
            data = bytes(image)
        fields = {k: str(v) for k, v in (("window", window), ("slice", slice), ("axis", axis), ("frame", frame)) if v is not None}
        files = {"file": (filename or "upload", data, "application/octet-stream")}
        return self._request("POST", "/v1/sessions", files=files, data=fields).json()

    def predict(self, session: str, points: Any = None, labels: Any = None, box: Any = None,
                use_previous_mask: bool = False, multimask: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """Segment a session's image from prompts in its pixel coordinates.

        Returns:
            masks: C x H x W bool, best predicted IoU first.
            ious: (C,) float32.
            timings: the server's timings in ms.
        """
        body: dict[str, Any] = {"use_previous_mask": bool(use_previous_mask), "multimask": bool(multimask)}
        if points is not None:
            body["points"] = np.asarray(points, dtype=np.float64).reshape(-1, 2).tolist()
            body["labels"] = None if labels is None else np.asarray(labels).reshape(-1).astype(int).tolist()
        if box is not None:
            body["box"] = np.asarray(box, dtype=np.float64).reshape(-1).tolist()
        answer = self._request("POST", f"/v1/sessions/{session}/predict", json=body).json()
        masks = np.stack([decode_rle(m["rle"]) for m in answer["masks"]])
        ious = np.array([m["iou"] for m in answer["masks"]], dtype=np.float32)
        return masks, ious, answer.get("timings_ms", {})

    def mask_file(self, session: str, format: str = "png") -> bytes:  # noqa: A002
        """The session's last mask written by the server: png, nifti or dicom-seg."""
        return self._request("GET", f"/v1/sessions/{session}/mask", params={"format": format}).content

    def delete(self, session: str) -> None:
        self._request("DELETE", f"/v1/sessions/{session}")
