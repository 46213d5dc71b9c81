"""The same HTTP API as a Ray Serve application: one ingress replica and R model replicas.

    ingress (FastAPI, `app.create_app`)              model replicas x R (`engine.Engine` each)
      sessions, limits, uploads decoded,   ---->     one embedding per session, encoded on first use,
      the image in the object store,      session    LRU of `max_sessions` per replica
      last mask + low-res logits          affinity

Clicks of a session go to the replica that holds its embedding: the session id is Ray Serve's multiplexed model
id, so the router prefers the replica that "loaded" it (`serve.multiplexed`; docs/serving.md gives the
measurement behind routing instead of moving embeddings through the object store). The ingress keeps each
session's image (an object-store reference it owns) and its last mask, so a replica holds nothing that cannot be
rebuilt: when one dies, the next click of its sessions lands on a surviving replica, whose loader re-encodes the
image. A call that dies with its replica is retried on another; if none answers the client gets 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from sammed_edge.runtime.errors import InputError

from .engine import Engine, Prediction, Prompt
from .service import Busy, Limits, Service
from .sessions import Session, UnknownSession

log = logging.getLogger(__name__)

APP_NAME = "sammed"
MODEL_DEPLOYMENT = "SegmentationModel"
INGRESS_DEPLOYMENT = "SegmentationIngress"
# calls that died with a replica are retried this often, this far apart, before the client is told 503
ATTEMPTS = 6
RETRY_DELAY = 0.5
INGRESS_ONGOING = 1024

# the ingress replica's service, set in its process by `Ingress.__init__` and read by the app's routes
_SERVICES: dict[str, Service] = {}


def _ingress_service() -> Service:
    return _SERVICES["ingress"]


def _import_ray():
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise SystemExit(f"--ray needs Ray Serve: pip install 'sammed-edge[ray]' ({exc})") from None
    return ray, serve


class ModelReplica:
    """A model replica's work: encode a session's image once, decode its clicks (wrapped by `serve.deployment`).

    Args:
        bundle: bundle folder.
        threads: CPU threads per graph.
    """

    def __init__(self, bundle: str, threads: int | None = None) -> None:
        self.engine = Engine.from_bundle(bundle, threads=threads)
        self._images: OrderedDict[str, Any] = OrderedDict()  # session -> image reference, for the loader
        self._encode_ms: dict[str, float] = {}
        self.encodes = 0

    def _remember(self, session_id: str, image_box: list) -> None:
        self._images[session_id] = image_box[0]
        self._images.move_to_end(session_id)
        while len(self._images) > 4096:
            self._images.popitem(last=False)

    async def _load(self, session_id: str) -> Any:
        """Encode a session's image. `model_deployment` wraps it in `serve.multiplexed` under the same name, so
        that it runs only when this replica does not hold the session's embedding (yet, or any more)."""
        image = await self._images[session_id]
        view, encode_ms = await asyncio.to_thread(self.engine.encode, image)
        self._encode_ms[session_id] = encode_ms
        self.encodes += 1
        return view

    async def encode(self, image_box: list) -> dict[str, Any]:
        from ray import serve

        session_id = serve.get_multiplexed_model_id()
        self._remember(session_id, image_box)
        await self._load(session_id)
        replica = serve.get_replica_context().replica_id.unique_id
        return {"encode_ms": self._encode_ms.pop(session_id, 0.0), "replica": replica}

    async def predict(self, image_box: list, prompt: Prompt, previous: np.ndarray | None) -> Prediction:
        from ray import serve

        session_id = serve.get_multiplexed_model_id()
        self._remember(session_id, image_box)
        view = await self._load(session_id)
        reencoded = self._encode_ms.pop(session_id, None)
        prediction = await asyncio.to_thread(self.engine.predict, view, prompt, previous)
        if reencoded is not None:
            prediction.timings_ms["reencode"] = reencoded
        return prediction

    def describe(self) -> dict[str, Any]:
        facts = self.engine.describe()
        return {"model": facts.get("model"), "target": facts.get("target", {}).get("name"), "encodes": self.encodes}


def model_deployment(replicas: int, max_sessions: int, num_cpus: float = 0.0):
    """`ModelReplica` as a Ray Serve deployment of `replicas` replicas holding up to `max_sessions` embeddings each."""
    _, serve = _import_ray()

    class SegmentationModel(ModelReplica):
        # the same attribute name: Ray Serve recognises a multiplexed method by it
        _load = serve.multiplexed(max_num_models_per_replica=max_sessions)(ModelReplica._load)

    return serve.deployment(name=MODEL_DEPLOYMENT, num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus},
                            max_ongoing_requests=64)(SegmentationModel)


class RayService(Service):
    """The ingress's service: sessions here, embeddings on the model replicas (routed by session id).

    Args:
        model: DeploymentHandle of the model deployment.
        limits: the service's bounds.
    """

    def __init__(self, model: Any, limits: Limits) -> None:
        super().__init__(limits)
        self.model = model
        self.retried = 0

    async def _call(self, method: str, session: Session, *args: Any) -> Any:
        import ray

        image = session.extra.get("image")
        if image is None:
            raise UnknownSession(f"session {session.id} was dropped while the request ran")
        handle = getattr(self.model.options(multiplexed_model_id=session.id), method)
        for attempt in range(ATTEMPTS):
            try:
                return await handle.remote([image], *args)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, InputError):
                    raise InputError(str(cause)) from None
                if not isinstance(cause, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
                    raise
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                log.warning("model replica unavailable (%s); retrying session %s elsewhere", type(exc).__name__, session.id[:8])
            self.retried += 1
            await asyncio.sleep(RETRY_DELAY * (attempt + 1))
        raise Busy("no model replica answered; retry shortly", self.limits.retry_after)

    async def _encode(self, session: Session) -> float:
        import ray

        session.extra["image"] = await asyncio.to_thread(ray.put, session.loaded.image)
        answer = await self._call("encode", session)
        session.extra["replica"] = answer["replica"]
        return float(answer["encode_ms"])

    async def _predict(self, session: Session, prompt: Prompt, previous: np.ndarray | None) -> Prediction:
        return await self._call("predict", session, prompt, previous)

    def _release(self, session: Session) -> None:
        session.extra.pop("image", None)  # the object store frees the image once no one refers to it

    def ready(self) -> tuple[bool, dict[str, Any]]:
        facts = self.model.describe.remote().result(timeout_s=30)
        return True, {**facts, "verified": True, "retried": self.retried}


def application(bundle: str | Path, limits: Limits, token: str | None = None, replicas: int = 2,
                threads: int | None = None):
    """The bound Ray Serve application: ingress (the FastAPI app) over `replicas` model replicas."""
    _, serve = _import_ray()
    from .app import create_app

    app = create_app(_ingress_service, token=token)

    # Ray Serve's default of 5 requests at a time per replica would queue clicks behind slow uploads at the proxy;
    # the ingress bounds its own work (encode queue, session count)
    @serve.deployment(name=INGRESS_DEPLOYMENT, num_replicas=1, ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=INGRESS_ONGOING)
    @serve.ingress(app)
    class SegmentationIngress:
        def __init__(self, model: Any, limits: Limits) -> None:
            from sammed_edge.serve import ray_app  # the module itself, where the routes look the service up

            ray_app._SERVICES["ingress"] = RayService(model, limits)

    model = model_deployment(replicas, limits.max_sessions).bind(str(Path(bundle).resolve()), threads)
    return SegmentationIngress.bind(model, limits)


def start(bundle: str | Path, limits: Limits, token: str | None = None, host: str = "127.0.0.1", port: int = 8000,
          replicas: int = 2, threads: int | None = None, num_cpus: int | None = None) -> None:
    """Start a local Ray instance (unless connected) and deploy the application on http://host:port."""
    ray, serve = _import_ray()
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(bundle, limits, token=token, replicas=replicas, threads=threads), name=APP_NAME,
              route_prefix="/")


def run_ray(bundle: Path, limits: Limits, token: str | None, host: str, port: int, replicas: int,
            threads: int | None) -> int:
    """`sammed-edge serve --ray`: deploy and serve until interrupted."""
    ray, serve = _import_ray()
    start(bundle, limits, token=token, host=host, port=port, replicas=replicas, threads=threads)
    log.warning("serving %s on http://%s:%d with %d model replicas (Ray Serve); Ctrl-C stops", bundle, host, port, replicas)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
