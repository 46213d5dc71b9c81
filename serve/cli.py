"""`sammed-edge-serve` (also `sammed-edge serve`): the segmentation service on one bundle, in-process or on Ray Serve.

    sammed-edge serve --bundle out/lite_medsam_clicks-onnx-fp32
    sammed-edge serve --bundle B --host 0.0.0.0 --port 8000 --token-file /etc/sammed/token
    sammed-edge serve --bundle B --ray --replicas 2

Binds loopback by default; any other address needs --token-file (clients send `Authorization: Bearer <token>`).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

from .service import Limits

MIN_TOKEN_CHARS = 16


def build_parser() -> argparse.ArgumentParser:
    defaults = Limits()
    parser = argparse.ArgumentParser(prog="sammed-edge serve", description="HTTP segmentation service on a bundle.")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (from export/build.py)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback needs --token-file)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-sessions", type=int, default=defaults.max_sessions, help="sessions held (LRU beyond)")
    parser.add_argument("--session-ttl", type=float, default=defaults.session_ttl, help="seconds a session may stay unused")
    parser.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / 2**20, help="largest upload")
    parser.add_argument("--max-pixels", type=int, default=defaults.max_pixels, help="largest image, pixels per plane")
    parser.add_argument("--encode-queue", type=int, default=defaults.encode_queue,
                        help="uploads waiting for the encoder beyond the running one; more get 503 + Retry-After")
    parser.add_argument("--predict-workers", type=int, default=defaults.predict_workers, help="threads running clicks")
    parser.add_argument("--threads", type=int, help="CPU threads per graph (default: the backend's choice)")
    parser.add_argument("--token-file", type=Path, help="file holding the bearer token clients must send")
    parser.add_argument("--ray", action="store_true", help="run as a Ray Serve application")
    parser.add_argument("--replicas", type=int, default=2, help="model replicas under --ray")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(path: Path | None, host: str) -> str | None:
    """The bearer token from `path`, required when `host` is not a loopback address.

    Raises:
        SystemExit: a non-loopback host without a token, or an unusable token file.
    """
    if path is None:
        if not is_loopback(host):
            raise SystemExit(f"binding {host} (not loopback) needs --token-file: clients must send a bearer token")
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise SystemExit(f"cannot read the token file {path}: {exc}") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise SystemExit(f"the token in {path} must be at least {MIN_TOKEN_CHARS} characters without spaces")
    return token


def limits_from(args: argparse.Namespace) -> Limits:
    if args.max_sessions < 1 or args.session_ttl <= 0 or args.max_upload_mb <= 0 or args.max_pixels < 1:
        raise SystemExit("--max-sessions, --session-ttl, --max-upload-mb and --max-pixels must be positive")
    if args.encode_queue < 0 or args.predict_workers < 1:
        raise SystemExit("--encode-queue must be >= 0 and --predict-workers >= 1")
    return Limits(max_sessions=args.max_sessions, session_ttl=args.session_ttl,
                  max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                  encode_queue=args.encode_queue, predict_workers=args.predict_workers)


def local_app(bundle: Path, limits: Limits, token: str | None = None, threads: int | None = None):
    """The FastAPI app over an in-process engine on `bundle` (loaded and verified now)."""
    from .app import create_app
    from .engine import Engine
    from .service import LocalService

    service = LocalService(Engine.from_bundle(bundle, threads=threads), limits)
    app = create_app(lambda: service, token=token)
    app.state.service = service
    return app


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = read_token(args.token_file, args.host)
    limits = limits_from(args)
    try:
        import uvicorn
    except ImportError as exc:
        raise SystemExit(f"the service needs the serve extra: pip install 'sammed-edge[serve]' ({exc})") from None
    from sammed_edge.runtime.backends import BackendError
    from sammed_edge.runtime.bundle import BundleError

    if args.ray:
        from .ray_app import run_ray

        return run_ray(args.bundle, limits, token=token, host=args.host, port=args.port, replicas=args.replicas,
                       threads=args.threads)
    try:
        app = local_app(args.bundle, limits, token=token, threads=args.threads)
    except (BundleError, BackendError) as exc:
        print(f"sammed-edge serve: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
