"""Load benchmark of the service: concurrent clients uploading an image and clicking, against a real server.

    python -m sammed_edge.serve.bench --bundle out/lite_medsam_clicks-onnx-fp32 --modes local ray --json out/serve-bench.json

Each mode starts its own server process (`sammed-edge-serve`, in-process or `--ray --replicas R`) on a free
loopback port, waits until /readyz answers, and runs `--clients` asyncio clients (httpx) at once: each uploads an
image and sends `--clicks` clicks (the first foreground, later ones alternating, each fed the previous mask). It
reports throughput (clicks/s over the clicked phase), p50/p99 of click and upload latency, errors, 503s retried,
the server's resident memory (its whole process tree) before and after, and the click p50 over an in-process
`Predictor.predict` on the same bundle, image and prompts (`--in-process-rounds`). Under `--ray` it also times
reading an embedding-sized array from Ray's object store in another worker (`object_store_probe`), the cost a
click would pay if embeddings were shared through the store instead of routed by session.

A measurement, not a test: run it on a quiet machine and record the numbers with the machine's state.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sammed_edge.runtime.samples import sample_images


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            with open(f"/proc/{current}/status") as handle:
                total += next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total / 1024


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def clicks_for(image: np.ndarray, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` predict bodies on an image: a foreground click, then more clicks, each with the previous mask."""
    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    points: list[list[float]] = []
    labels: list[int] = []
    bodies = []
    for k in range(count):
        points.append([float(rng.uniform(0.3, 0.7) * width), float(rng.uniform(0.3, 0.7) * height)])
        labels.append(1 if k % 2 == 0 else 0)
        bodies.append({"points": points[-4:], "labels": labels[-4:], "use_previous_mask": k > 0})
    return bodies


async def _client(http, image_png: bytes, bodies: list[dict[str, Any]], stats: dict[str, list]) -> None:
    async def send(method: str, url: str, **kwargs: Any):
        while True:
            start = time.perf_counter()
            response = await http.request(method, url, **kwargs)
            elapsed = (time.perf_counter() - start) * 1e3
            if response.status_code != 503:
                return response, elapsed
            stats["retried_503"].append(1)
            await asyncio.sleep(float(response.headers.get("Retry-After", 1)))

    response, elapsed = await send("POST", "/v1/sessions", files={"file": ("image.png", image_png)})
    if response.status_code != 201:
        stats["errors"].append(f"upload {response.status_code}: {response.text[:200]}")
        return
    stats["upload_ms"].append(elapsed)
    session = response.json()["session"]
    for body in bodies:
        response, elapsed = await send("POST", f"/v1/sessions/{session}/predict", json=body)
        if response.status_code != 200:
            stats["errors"].append(f"click {response.status_code}: {response.text[:200]}")
            continue
        stats["click_ms"].append(elapsed)
        stats["click_done"].append(time.perf_counter())
    await http.delete(f"/v1/sessions/{session}")


async def load(url: str, images_png: list[bytes], bodies: list[list[dict[str, Any]]], clients: int) -> dict[str, Any]:
    """Run `clients` concurrent clients against `url`; returns latency lists and counts."""
    import httpx

    stats: dict[str, list] = {"upload_ms": [], "click_ms": [], "click_done": [], "errors": [], "retried_503": []}
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    from sammed_edge.runtime.client import NO_DELAY

    transport = httpx.AsyncHTTPTransport(socket_options=NO_DELAY, limits=limits)
    async with httpx.AsyncClient(base_url=url, timeout=600, transport=transport) as http:
        start = time.perf_counter()
        await asyncio.gather(*(_client(http, images_png[i % len(images_png)], bodies[i % len(bodies)], stats)
                               for i in range(clients)))
        wall = time.perf_counter() - start
    first_click = min(stats["click_done"], default=start)
    clicked = max(stats["click_done"], default=start) - first_click
    return {
        "clients": clients,
        "wall_s": wall,
        "clicks": len(stats["click_ms"]),
        "click_throughput_per_s": len(stats["click_ms"]) / wall,
        "click_p50_ms": percentile(stats["click_ms"], 50),
        "click_p99_ms": percentile(stats["click_ms"], 99),
        "upload_p50_ms": percentile(stats["upload_ms"], 50),
        "upload_p99_ms": percentile(stats["upload_ms"], 99),
        "errors": len(stats["errors"]),
        "error_samples": stats["errors"][:5],
        "retried_503": len(stats["retried_503"]),
        "clicked_phase_s": clicked,
    }


def in_process_click_ms(bundle: Path, images: list[np.ndarray], bodies: list[list[dict[str, Any]]], threads: int | None,
                        rounds: int) -> float:
    """p50 of `Predictor.predict` (the decoder and post-processing) in this process on the same prompts."""
    from sammed_edge.runtime.predictor import Predictor
    from sammed_edge.runtime.processing import mask_prompt_from_logits

    predictor = Predictor.from_bundle(bundle, threads=threads, cache_size=0)
    times = []
    for image, prompts in list(zip(images, bodies))[:rounds]:
        predictor.set_image(image)
        previous = None
        for body in prompts:
            start = time.perf_counter()
            masks, iou, low_res = predictor.predict(
                point_coords=np.array(body["points"]), point_labels=np.array(body["labels"]), multimask_output=False,
                mask_input=None if previous is None else mask_prompt_from_logits(previous, predictor.policy))
            times.append((time.perf_counter() - start) * 1e3)
            previous = low_res[0]
    return percentile(times, 50)


def object_store_probe(shape: tuple[int, ...], reads: int = 30) -> dict[str, float]:
    """Ms for a Ray worker to read an array of `shape` float32 that another worker put in the object store.

    Every read is of a different object (a click of another session), so no worker-side copy is reused; the
    first read (the reader's connection to the store) is reported apart.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        @ray.remote(num_cpus=0)
        class Holder:
            def put(self, count: int) -> list:
                rng = np.random.default_rng(0)
                return [ray.put(rng.random(shape, dtype=np.float32)) for _ in range(count)]

        @ray.remote(num_cpus=0)
        class Reader:
            def read(self, refs: list) -> list[float]:
                times = []
                for ref in refs:
                    start = time.perf_counter()
                    array = ray.get(ref)
                    float(np.asarray(array).reshape(-1)[-1])
                    times.append((time.perf_counter() - start) * 1e3)
                return times

        holder, reader = Holder.remote(), Reader.remote()
        refs = ray.get(holder.put.remote(reads + 1))
        times = ray.get(reader.read.remote(refs))
        return {"embedding_mib": float(np.prod(shape) * 4 / 2**20), "read_p50_ms": percentile(times[1:], 50),
                "read_p90_ms": percentile(times[1:], 90), "first_read_ms": times[0], "reads": reads}
    finally:
        if started:
            ray.shutdown()


def run_mode(mode: str, args: argparse.Namespace, images_png: list[bytes], bodies: list) -> dict[str, Any]:
    port = _free_port()
    command = [sys.executable, "-m", "sammed_edge.serve.cli", "--bundle", str(args.bundle), "--port", str(port),
               "--max-sessions", str(max(64, args.clients * 2)), "--encode-queue", str(args.clients),
               "--log-level", "warning"]
    if mode == "ray":
        command += ["--ray", "--replicas", str(args.replicas), "--threads", str(args.replica_threads)]
    elif args.threads:
        command += ["--threads", str(args.threads)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        _wait_ready(url, process, timeout=args.start_timeout)
        ready_s = time.perf_counter() - started
        rss_before = tree_rss_mib(process.pid)
        result = asyncio.run(load(url, images_png, bodies, args.clients))
        result.update(mode=mode, start_s=ready_s, rss_before_mib=rss_before, rss_after_mib=tree_rss_mib(process.pid))
        if mode == "ray":
            result["replicas"] = args.replicas
        return result
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_ready(url: str, process: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server at {url} was not ready within {timeout:.0f} s")


def markdown(results: list[dict[str, Any]], in_process_ms: float) -> str:
    lines = ["| server | clients x clicks | clicks/s | click p50 / p99 ms | upload p50 / p99 ms | errors | 503 retried | "
             "RSS before -> after MiB | click p50 over in-process |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        name = "single process" if r["mode"] == "local" else f"Ray Serve, {r['replicas']} replicas"
        lines.append(f"| {name} | {r['clients']} x {r['clicks'] // max(r['clients'], 1)} | {r['click_throughput_per_s']:.1f} | "
                     f"{r['click_p50_ms']:.0f} / {r['click_p99_ms']:.0f} | {r['upload_p50_ms']:.0f} / {r['upload_p99_ms']:.0f} | "
                     f"{r['errors']} | {r['retried_503']} | {r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} | "
                     f"{r['click_p50_ms'] - in_process_ms:+.0f} ms |")
    lines.append(f"\nIn-process `Predictor.predict` p50 on the same prompts: {in_process_ms:.1f} ms.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sammed_edge.serve.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--modes", nargs="+", default=["local", "ray"], choices=("local", "ray"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--threads", type=int, help="threads per graph of the single-process server")
    parser.add_argument("--replica-threads", type=int, default=1, help="threads per graph of each Ray replica")
    parser.add_argument("--images", type=Path, help="dataset folder (SAM-Med2D layout); default: the dev set or phantoms")
    parser.add_argument("--in-process-rounds", type=int, default=4, help="images timed in-process")
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument("--json", type=Path, help="write all results as JSON")
    args = parser.parse_args(argv)

    import cv2

    images = sample_images(min(args.clients, 8), args.images)
    images_png = [cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))[1].tobytes() for image in images]
    bodies = [clicks_for(image, args.clicks, seed) for seed, image in enumerate(images)]
    in_process = in_process_click_ms(args.bundle, images, bodies, args.threads, args.in_process_rounds)
    results = []
    for mode in args.modes:
        results.append(run_mode(mode, args, images_png, bodies))
        print(json.dumps(results[-1]), flush=True)
    report: dict[str, Any] = {"in_process_click_p50_ms": in_process, "results": results, "images": len(images)}
    if "ray" in args.modes:
        from sammed_edge.runtime.bundle import load_bundle

        shape = tuple(load_bundle(args.bundle, verify_hashes=False).contract("encoder").outputs[0].shape)
        report["object_store_probe"] = object_store_probe(tuple(int(n) if isinstance(n, int) else 1 for n in shape))
    print(markdown(results, in_process))
    if "object_store_probe" in report:
        print(f"\nObject-store read of one embedding in another worker: {report['object_store_probe']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
