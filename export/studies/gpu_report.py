"""GPU report: a bundle's ONNX graphs on onnxruntime's CUDA provider, and the fp16 / bf16 risk under torch autocast.

    python -m sammed_edge.export.studies.gpu_report --bundle out/lite_medsam-onnx-fp32 --out out/gpu [--parts onnxruntime autocast]

Parts (each recorded on its own; one that fails is recorded with its error and the others still run):
    onnxruntime: the bundle's encoder and decoder on the CUDA execution provider against the CPU provider on the
        same machine: where the nodes ran (onnxruntime's profile), the embedding's error, box and 5-click Dice on
        the dataset, and the runtime benchmark's medians (`runtime.bench.measure_predictor`). The CUDA provider
        runs twice: in fp32 (the backend's default) and with TF32 (`tf32=True`, onnxruntime's own default).
    autocast: the PyTorch model on the GPU in strict fp32 (TF32 off) against `torch.autocast` in fp16 and bf16:
        `precision_risk.measure` (embedding / logits error, flipped mask pixels, with and without the attention
        softmax pinned to fp32), box and 5-click Dice on the dataset, and the encoder's time.

`--device cpu` runs the same code with the CPU standing in for the GPU (bf16 autocast only): a dry run of the
plumbing, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sammed_edge.runtime import Predictor, bench, processing
from sammed_edge.runtime.backends.onnxruntime import execution_providers
from sammed_edge.runtime.contract import ENCODER_INPUT
from sammed_edge.runtime.evaluate import evaluate
from sammed_edge.runtime.io import default_data_root, read_dataset

from ..models import load_model
from ..predictor import TorchPredictor
from . import precision_risk
from .doc_sections import write_section

PARTS = ("onnxruntime", "autocast")
DICE_MODES = ("box", "clicks")


def environment(device: str) -> dict[str, Any]:
    """Versions, and the GPU with its driver."""
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                           "device": device}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / 2**30, 1))
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            env["driver"] = f"unknown ({exc})"
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        env["onnxruntime"] = None
    return env


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """Mean Dice x100 per mode, and the per-mask Dice values."""
    out: dict[str, Any] = {}
    for mode in DICE_MODES:
        values = [record["dice"][mode] for record in result["items"] if "dice" in record]
        out[mode] = round(100 * float(np.mean(values)), 2)
        out[f"{mode}_values"] = values
    return out


def _dice_delta(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, float]:
    """Mean Dice difference (points) and the largest per-mask change, per mode."""
    out = {}
    for mode in DICE_MODES:
        a, b = np.array(ours[f"{mode}_values"]), np.array(ref[f"{mode}_values"])
        out[f"{mode}_mean_delta"] = round(100 * float(np.mean(a - b)), 2)
        out[f"{mode}_worst_mask_delta"] = round(100 * float(np.max(np.abs(a - b))), 2)
    return out


def _strip(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if not k.endswith("_values")}


def _node_placement(path: Path, feeds: dict[str, np.ndarray], providers: list[Any]) -> dict[str, int]:
    """Kernel executions per execution provider in one profiled run of the graph."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = ort.InferenceSession(str(path), options, providers=providers)
        session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    return dict(Counter(e["args"]["provider"] for e in events if e.get("cat") == "Node" and "provider" in e.get("args", {})))


def _embedding_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float32) - ref).max() / np.abs(ref).max())


def onnxruntime_part(bundle: Path, items: list, device: str, runs: int) -> dict[str, Any]:
    """The bundle on the CUDA provider, in fp32 and with TF32, against the CPU provider (with device "cpu", the
    CPU provider stands in for the GPU and there is no TF32 run)."""
    import onnxruntime as ort

    result: dict[str, Any] = {"bundle": str(bundle)}
    if device == "cuda" and hasattr(ort, "preload_dlls"):
        try:  # CUDA / cuDNN from the nvidia pip packages; torch, imported first, has loaded them already
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 - a session that still finds the libraries is all that matters
            result["preload_dlls"] = f"{type(exc).__name__}: {exc}"
    runs_on = {"gpu": Predictor.from_bundle(bundle, backend="onnxruntime", device=device)}
    if device == "cuda":
        runs_on["gpu_tf32"] = Predictor.from_bundle(bundle, backend="onnxruntime", device="cuda", tf32=True)
    runs_on["cpu"] = Predictor.from_bundle(bundle, backend="onnxruntime", device="cpu")
    gpu = runs_on["gpu"]
    providers = gpu.encoder.describe()["providers"]
    if device == "cuda" and providers[0] != "CUDAExecutionProvider":
        raise RuntimeError(f"the CUDA provider was not used: {providers}")
    result["providers"] = providers

    image = bench.bench_image()
    tensor, _ = processing.preprocess_image(image, gpu.policy)
    ref = runs_on["cpu"]._encode(tensor)
    result["embedding_rel_error"] = {name: _embedding_error(p._encode(tensor), ref) for name, p in runs_on.items() if name != "cpu"}
    gpu.set_image(image)
    embedding, geometry = gpu._current()
    height, width = image.shape[:2]
    box = np.array([0.2 * width, 0.2 * height, 0.8 * width, 0.8 * height])
    prompts = processing.check_prompts(geometry, gpu.policy, box=box)
    decoder_feeds = {**processing.decoder_inputs(prompts, geometry, gpu.policy), "image_embeddings": embedding}
    session_providers = execution_providers(device, ort.get_available_providers())  # as the fp32 sessions have them
    result["placement"] = {"encoder": _node_placement(gpu.bundle.path("encoder"), {ENCODER_INPUT: tensor}, session_providers),
                           "decoder": _node_placement(gpu.bundle.path("decoder"), decoder_feeds, session_providers)}

    started = time.perf_counter()
    dice = {name: _summary(evaluate(p, items, modes=DICE_MODES, progress=False, label=f"onnxruntime {name}")) for name, p in runs_on.items()}
    result["dice"] = {**{name: _strip(d) for name, d in dice.items()},
                      **{f"{name}_vs_cpu": _dice_delta(d, dice["cpu"]) for name, d in dice.items() if name != "cpu"},
                      "masks": len(dice["gpu"]["box_values"]), "seconds": round(time.perf_counter() - started, 1)}
    result["timing_ms"] = {}
    for name, predictor in runs_on.items():
        times = bench.measure_predictor(predictor, runs=runs)
        result["timing_ms"][name] = {k: v["median_ms"] for k, v in times.items()}
    return result


class _Autocast(TorchPredictor):
    """TorchPredictor whose encode and decode run under `torch.autocast(dtype)` (None: strict fp32)."""

    def __init__(self, model, device: str, dtype: torch.dtype | None) -> None:
        super().__init__(model, device)
        self.dtype = dtype

    def _context(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def _encode(self, image_tensor):
        with self._context():
            return super()._encode(image_tensor)

    def _decode(self, embedding, inputs, multimask_output):
        with self._context():
            return super()._decode(embedding, inputs, multimask_output)


def _time_encoder(predictor: _Autocast, tensor: np.ndarray, runs: int) -> float:
    """Median ms of one encode, waiting for the GPU to finish it."""
    def once() -> None:
        predictor._encode(tensor)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()

    return bench.time_calls(once, runs, warmup=3)["median_ms"]


def autocast_part(model_name: str, root: Path, device: str, images: int, runs: int) -> dict[str, Any]:
    """Strict fp32 against fp16 / bf16 autocast of the PyTorch model (a registered name or a checkpoint path)."""
    items = read_dataset(root)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # the reference is strict fp32
    try:
        return _autocast_measures(model_name, root, items, device, images, runs)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _autocast_measures(model_name: str, root: Path, items: list, device: str, images: int, runs: int) -> dict[str, Any]:
    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16} if device == "cuda" else {"bfloat16": torch.bfloat16}
    result: dict[str, Any] = {"model": model_name, "risk": {}, "dice": {}, "encoder_ms": {}}
    for name, dtype in dtypes.items():
        result["risk"][name] = precision_risk.measure(model_name, images, dtype, device, root)
    model = load_model(model_name)
    tensor, _ = processing.preprocess_image(bench.bench_image(), model.processing_policy())
    reference = None
    for name, dtype in (("float32", None), *dtypes.items()):
        predictor = _Autocast(model, device, dtype)
        summary = _summary(evaluate(predictor, items, modes=DICE_MODES, progress=False, label=name))
        result["dice"][name] = _strip(summary)
        if reference is None:
            reference = summary
        else:
            result["dice"][name].update(_dice_delta(summary, reference))
        result["encoder_ms"][name] = _time_encoder(predictor, tensor, runs)
    result["masks"] = len(reference["box_values"]) if reference else 0
    return result


def _guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # a part's failure is recorded; the other parts still run
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def _placement(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} on {provider.replace('ExecutionProvider', '')}" for provider, n in sorted(counts.items()))


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"Measured on {env.get('gpu', env['device'])} (driver {env.get('driver', '-')}), torch {env['torch']} "
             f"(CUDA {env['cuda']}), onnxruntime {env.get('onnxruntime')}; {report['masks']} masks of "
             f"{report['images']} dev-set images.", ""]
    ort_part = report.get("onnxruntime")
    if ort_part and "error" not in ort_part:
        t, d, err = ort_part["timing_ms"], ort_part["dice"], ort_part["embedding_rel_error"]
        columns = [c for c in ("gpu", "gpu_tf32", "cpu") if c in t]
        titles = {"gpu": "CUDA provider (fp32)", "gpu_tf32": "CUDA provider, TF32", "cpu": "CPU provider (same machine)"}
        lines += ["**onnxruntime** (`" + Path(ort_part["bundle"]).name + "`, providers " + ", ".join(ort_part["providers"]) + "):", "",
                  "| | " + " | ".join(titles[c] for c in columns) + " |", "|---|" + "---:|" * len(columns)]
        for label, key, fmt in (("encoder (median ms)", "encoder", "{:.2f}"), ("click, decoder + post-processing (median ms)", "click", "{:.2f}"),
                                ("new image + click (median ms)", "end_to_end", "{:.2f}")):
            lines.append(f"| {label} | " + " | ".join(fmt.format(t[c][key]) for c in columns) + " |")
        for label, key in (("box Dice", "box"), ("Dice after 5 clicks", "clicks")):
            lines.append(f"| {label} | " + " | ".join(f"{d[c][key]:.2f}" for c in columns) + " |")
        lines.append("| embedding error vs CPU (max abs / max) | " + " | ".join(f"{err[c]:.1e}" if c in err else "-" for c in columns) + " |")
        lines.append("| worst per-mask Dice change vs CPU (box / 5 clicks) | " + " | ".join(
            f"{d[c + '_vs_cpu']['box_worst_mask_delta']:.2f} / {d[c + '_vs_cpu']['clicks_worst_mask_delta']:.2f}" if c != "cpu" else "-"
            for c in columns) + " |")
        lines += ["", f"Kernels run per provider in one profiled run of the fp32 session: encoder "
                  f"{_placement(ort_part['placement']['encoder'])}, decoder {_placement(ort_part['placement']['decoder'])}.", ""]
    elif ort_part:
        lines += [f"**onnxruntime**: failed: `{ort_part['error']}`", ""]
    auto = report.get("autocast")
    if auto and "error" not in auto:
        lines += [f"**torch autocast** (`{auto['model']}`, reference: fp32 with TF32 off):", "",
                  "| precision | encoder (median ms) | box Dice | Dice after 5 clicks | mean change (box / 5 clicks) | worst per-mask change (box / 5 clicks) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, row in auto["dice"].items():
            mean = f"{row['box_mean_delta']:+.2f} / {row['clicks_mean_delta']:+.2f}" if "box_mean_delta" in row else "-"
            worst = f"{row['box_worst_mask_delta']:.2f} / {row['clicks_worst_mask_delta']:.2f}" if "box_worst_mask_delta" in row else "-"
            lines.append(f"| {name} | {auto['encoder_ms'][name]:.2f} | {row['box']:.2f} | {row['clicks']:.2f} | {mean} | {worst} |")
        lines.append("")
        for name, risk in auto["risk"].items():
            lines.append(precision_risk.markdown(risk))
    elif auto:
        lines += [f"**torch autocast**: failed: `{auto['error']}`", ""]
    return "\n".join(lines).rstrip() + "\n"


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from reports of different parts, measured on the same GPU and dataset.

    The environment is the one of the report holding the onnxruntime part (its onnxruntime is the one measured).

    Raises:
        ValueError: reports from different GPUs, drivers or datasets, or a part in two reports.
    """
    if not reports:
        raise ValueError("no reports to merge")
    keys = ("gpu", "driver", "torch")
    first = reports[0]
    merged: dict[str, Any] = {"environment": first["environment"], "images": first["images"], "masks": first["masks"]}
    for report in reports:
        env = report["environment"]
        if any(env.get(k) != first["environment"].get(k) for k in keys) or (report["images"], report["masks"]) != (first["images"], first["masks"]):
            raise ValueError(f"reports differ in {keys} or dataset: {env} vs {first['environment']}")
        for part in PARTS:
            if part in report:
                if part in merged:
                    raise ValueError(f"the {part} part is in two reports")
                merged[part] = report[part]
                if part == "onnxruntime":
                    merged["environment"] = env
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("out/lite_medsam-onnx-fp32"), help="an onnxruntime bundle")
    parser.add_argument("--model", default="lite_medsam", help="the PyTorch model of the autocast part (name or checkpoint)")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: the development set)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--risk-images", type=int, default=16, help="images of the precision-risk measure")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("out/gpu"))
    parser.add_argument("--render", type=Path, nargs="+", metavar="JSON",
                        help="measure nothing: merge these reports (parts measured separately) into --out")
    parser.add_argument("--docs", type=Path, help="also write the Markdown into this file's `gpu-report` section")
    args = parser.parse_args(argv)
    if args.render:
        report = merge([json.loads(path.read_text()) for path in args.render])
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("no CUDA device (use --device cpu for a dry run)")
        root = args.data or default_data_root()
        if root is None:
            parser.error("no dataset: pass --data or set SAMMED_DATA")
        items = read_dataset(root)
        report = {"environment": environment(args.device), "images": len({i.image for i in items}), "masks": len(items)}
        if "autocast" in args.parts:
            report["autocast"] = _guarded(lambda: autocast_part(args.model, root, args.device, args.risk_images, args.runs))
        if "onnxruntime" in args.parts:
            report["onnxruntime"] = _guarded(lambda: onnxruntime_part(args.bundle, items, args.device, args.runs))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-report.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (args.out / "gpu-report.md").write_text(text)
    if args.docs:
        write_section(args.docs, "gpu-report", text)
    print(text)
    return 1 if any("error" in report.get(part, {}) for part in PARTS) else 0


if __name__ == "__main__":
    raise SystemExit(main())
