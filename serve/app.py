"""The HTTP API (FastAPI, versioned under /v1) over a `service.Service`, with auth, body limits and metrics.

    POST   /v1/sessions                 multipart `file` (+ window, slice, axis, frame) -> 201 session
    POST   /v1/sessions/{id}/predict    JSON prompts -> masks as COCO RLE, best first
    GET    /v1/sessions/{id}/mask       ?format=png|nifti|dicom-seg: the last mask as a file
    DELETE /v1/sessions/{id}            -> 204
    GET    /healthz, /readyz, /metrics, /v1/openapi.json

Every refused request answers a JSON `{"error": message, "status": code}`; an unexpected exception answers 500
and the server keeps serving. `Guard`, a plain ASGI middleware, checks the bearer token (hmac.compare_digest),
refuses bodies over the upload limit (413, from Content-Length or while streaming) and records the latency of
every request by route template.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from sammed_edge.runtime.errors import InputError

from . import schemas
from .engine import Prompt
from .service import Busy, Service
from .sessions import UnknownSession
from .uploads import Options, TooLarge

log = logging.getLogger(__name__)

API_VERSION = "1"
OPEN_PATHS = ("/healthz", "/readyz")  # probes answer without the token
REASONS = {401: "unauthorized", 404: "not_found", 413: "too_large", 503: "busy"}
ERRORS = {400: {"model": schemas.ErrorBody}, 404: {"model": schemas.ErrorBody}, 413: {"model": schemas.ErrorBody},
          422: {"model": schemas.ErrorBody}, 503: {"model": schemas.ErrorBody}}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class _Overflow(Exception):
    """The request body grew past the limit while streaming in."""


class Guard:
    """ASGI middleware: bearer token, body size limit, per-route latency and refusal counters.

    Args:
        app: the ASGI app.
        get_service: returns the service (its limits and metrics).
        token: the bearer token required on every path but the probes, or None for none.
    """

    def __init__(self, app: Any, get_service: Callable[[], Service], token: str | None = None) -> None:
        self.app = app
        self.get_service = get_service
        self.token = token.encode() if token else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        service = self.get_service()
        status: dict[str, int] = {}

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        refusal = self._refuse(scope, service)
        if refusal is not None:
            await refusal(scope, receive, send_status)
        else:
            await self._forward(scope, receive, send_status, service.limits.max_upload_bytes)
        code = status.get("code", 500)
        metrics = service.metrics
        metrics.requests.labels(scope["method"], _route(scope), str(code)).observe(time.perf_counter() - start)
        if code >= 400:
            metrics.rejected.labels(REASONS.get(code, "bad_request" if code < 500 else "error")).inc()

    def _refuse(self, scope: dict, service: Service) -> JSONResponse | None:
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if self.token is not None and scope["path"] not in OPEN_PATHS:
            given = headers.get("authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + self.token):
                return error(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                             {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        limit = service.limits.max_upload_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return error(413, f"request body of {int(length)} bytes exceeds the limit of {limit} bytes")
        return None

    async def _forward(self, scope: dict, receive: Callable, send: Callable, limit: int) -> None:
        received = 0
        overflow = False
        started = False

        async def counted() -> dict:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflow = True
                    raise _Overflow()
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if overflow:
                return  # the 413 below replaces whatever the app answered to the cut body
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except _Overflow:
            pass
        except Exception as exc:  # noqa: BLE001 - a request never takes the server down
            log.exception("request %s %s failed", scope.get("method"), scope.get("path"))
            if not started:
                await error(500, f"internal error ({type(exc).__name__}); the request was not completed")(scope, receive, send)
            return
        if overflow and not started:
            await error(413, f"request body exceeds the limit of {limit} bytes")(scope, receive, send)


def _route(scope: dict) -> str:
    """The route template of a request ("/v1/sessions/{session_id}/predict"), never the raw path."""
    app = scope.get("app")
    router = getattr(app, "router", None)
    for route in getattr(router, "routes", ()):
        match, _ = route.matches({**scope, "type": "http"})
        if match == Match.FULL:
            return route.path
    return "unmatched"


def create_app(get_service: Callable[[], Service], token: str | None = None, sweep_seconds: float | None = None) -> FastAPI:
    """The FastAPI app.

    Args:
        get_service: returns the service the routes call (called per request; under Ray Serve the service is
            made in the ingress replica, after the app).
        token: bearer token required on every path but /healthz and /readyz (None: no auth, loopback only).
        sweep_seconds: how often expired sessions are dropped in the background (None: ttl / 4, at most 60 s).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def sweep() -> None:
            while True:
                service = get_service()
                await asyncio.sleep(sweep_seconds or min(service.limits.session_ttl / 4, 60.0))
                service.expire()

        task = asyncio.create_task(sweep())
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(title="SAM-Med2D Edge segmentation service", version=API_VERSION, lifespan=lifespan,
                  openapi_url="/v1/openapi.json", docs_url="/v1/docs", redoc_url=None)
    app.add_middleware(Guard, get_service=get_service, token=token)
    _handlers(app)

    @app.post("/v1/sessions", status_code=201, response_model=schemas.SessionCreated, responses=ERRORS)
    async def create_session(
        file: UploadFile = File(..., description="PNG/JPEG/TIFF, DICOM or NIfTI"),
        window: str | None = Form(None, description="DICOM/NIfTI window: a preset or CENTER,WIDTH"),
        slice: int | None = Form(None, description="NIfTI slice (default: middle)"),  # noqa: A002 - the CLI's name
        axis: int = Form(2, description="NIfTI slice axis"),
        frame: int = Form(0, description="frame of a multi-frame DICOM"),
    ) -> dict[str, Any]:
        data = await file.read()
        return await get_service().create(data, file.filename, Options(window or None, slice, axis, frame))

    @app.post("/v1/sessions/{session_id}/predict", response_model=schemas.PredictResponse, responses=ERRORS)
    async def predict(session_id: str, body: schemas.PredictRequest) -> dict[str, Any]:
        prompt = Prompt(body.points, body.labels, body.box, body.multimask)
        return await get_service().predict(session_id, prompt, body.use_previous_mask)

    @app.get("/v1/sessions/{session_id}/mask", response_class=Response, responses=ERRORS)
    async def mask(session_id: str, format: str = Query("png", description="png, nifti or dicom-seg")) -> Response:  # noqa: A002
        content, media, name = await get_service().mask(session_id, format)
        return Response(content, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.delete("/v1/sessions/{session_id}", status_code=204, response_class=Response, responses=ERRORS)
    async def delete(session_id: str) -> Response:
        await get_service().delete(session_id)
        return Response(status_code=204)

    @app.get("/healthz", response_model=schemas.Health)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=schemas.Readiness, responses={503: {"model": schemas.Readiness}})
    async def readyz() -> JSONResponse:
        service = get_service()
        try:
            ready, facts = await asyncio.to_thread(service.ready)
        except Exception as exc:  # noqa: BLE001 - not ready is an answer, not a crash
            ready, facts = False, {"detail": f"{type(exc).__name__}: {exc}"}
        body = {"ready": ready, **facts, "sessions": len(service.store)}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        service = get_service()
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    return app


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(TooLarge)
    async def too_large(request: Request, exc: TooLarge) -> JSONResponse:
        return error(413, str(exc))

    @app.exception_handler(InputError)
    async def bad_input(request: Request, exc: InputError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(UnknownSession)
    async def unknown(request: Request, exc: UnknownSession) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        return error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            detail = next(p for p in problems if p.get("type") == "json_invalid").get("ctx", {}).get("error", "")
            return error(400, f"malformed JSON body: {detail}".rstrip(": "))
        parts = []
        for p in problems:
            where = ".".join(str(part) for part in p.get("loc", ()) if part != "body") or "body"
            parts.append(f"{where}: {p.get('msg')}")
        return error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

