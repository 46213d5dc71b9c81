"""The GPU report: its CPU dry run measures both parts end to end; recorded reports merge and render; on a GPU the
CUDA provider really runs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sammed_edge.export.studies import gpu_report
from sammed_edge.runtime.samples import phantom

RECORDED = Path(__file__).resolve().parents[2] / "docs" / "gpu-report.json"


@pytest.fixture(scope="module")
def phantom_dataset(tmp_path_factory) -> Path:
    """Two phantom images with their lesion masks, in SAM-Med2D's layout."""
    root = tmp_path_factory.mktemp("phantoms")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    mapping = {}
    for i, size in enumerate((96, 128)):
        image, mask = phantom(size, seed=i)
        cv2.imwrite(str(root / "images" / f"p{i}.png"), image)
        cv2.imwrite(str(root / "masks" / f"p{i}_lesion.png"), mask.astype(np.uint8) * 255)
        mapping[f"masks/p{i}_lesion.png"] = f"images/p{i}.png"
    (root / "label2image.json").write_text(json.dumps(mapping))
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(tiny_model.state_dict(), path)
    return path


def _run(args: list[str]) -> tuple[int, dict]:
    out = Path(args[args.index("--out") + 1])
    code = gpu_report.main(args)
    return code, json.loads((out / "gpu-report.json").read_text())


def test_cpu_dry_run_measures_both_parts(tmp_path, phantom_dataset, tiny_checkpoint, tiny_bundle):
    docs = tmp_path / "gpu.md"
    docs.write_text("# GPU\n\nprose kept\n")
    code, report = _run(["--device", "cpu", "--model", str(tiny_checkpoint), "--bundle", str(tiny_bundle),
                         "--data", str(phantom_dataset), "--runs", "2", "--risk-images", "2",
                         "--out", str(tmp_path / "out"), "--docs", str(docs)])
    assert code == 0, report
    assert report["images"] == 2 and report["masks"] == 2

    auto = report["autocast"]
    assert set(auto["dice"]) == {"float32", "bfloat16"} and set(auto["risk"]) == {"bfloat16"}
    assert auto["masks"] == 2 and all(ms > 0 for ms in auto["encoder_ms"].values())
    bf16 = auto["dice"]["bfloat16"]
    assert 0 <= bf16["box_worst_mask_delta"] <= 100 and "clicks_mean_delta" in bf16
    # bf16 really ran: the embedding differs from fp32, but not wildly
    assert 0 < auto["risk"]["bfloat16"]["variants"]["autocast"]["embedding_rel_max"] < 0.5

    ort = report["onnxruntime"]
    assert ort["providers"] == ["CPUExecutionProvider"]
    assert set(ort["placement"]["encoder"]) == {"CPUExecutionProvider"} and ort["placement"]["decoder"]["CPUExecutionProvider"] > 0
    # the CPU stands in for the GPU: the same provider gives the same numbers
    assert ort["embedding_rel_error"] == {"gpu": 0.0}
    assert ort["dice"]["gpu"] == ort["dice"]["cpu"] and ort["dice"]["masks"] == 2
    assert ort["dice"]["gpu_vs_cpu"]["box_worst_mask_delta"] == 0.0 and "gpu_tf32" not in ort["timing_ms"]
    assert ort["timing_ms"]["gpu"]["click"] > 0 and ort["timing_ms"]["cpu"]["encoder"] > 0

    text = docs.read_text()
    assert text.startswith("# GPU\n\nprose kept\n") and "<!-- gpu-report: begin -->" in text
    assert "| bfloat16 |" in text and "CUDA provider" in text


def test_a_failing_part_is_recorded_and_the_other_still_runs(tmp_path, phantom_dataset, tiny_bundle):
    code, report = _run(["--device", "cpu", "--model", str(tmp_path / "missing.pth"), "--bundle", str(tiny_bundle),
                         "--data", str(phantom_dataset), "--runs", "1", "--out", str(tmp_path / "out")])
    assert code == 1
    assert "missing.pth" in report["autocast"]["error"]
    assert "error" not in report["onnxruntime"] and report["onnxruntime"]["dice"]["masks"] == 2


def test_recorded_report_splits_merges_and_renders(tmp_path):
    recorded = json.loads(RECORDED.read_text())
    assert recorded["environment"]["device"] == "cuda" and "CUDAExecutionProvider" in recorded["onnxruntime"]["providers"]
    common = {k: recorded[k] for k in ("environment", "images", "masks")}
    autocast_only = {**common, "environment": {**common["environment"], "onnxruntime": "cpu build"}, "autocast": recorded["autocast"]}
    ort_only = {**common, "onnxruntime": recorded["onnxruntime"]}
    assert gpu_report.merge([autocast_only, ort_only]) == recorded

    paths = []
    for name, report in (("a", autocast_only), ("b", ort_only)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    assert gpu_report.main(["--render", *map(str, paths), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "gpu-report.md").read_text()
    timing = recorded["onnxruntime"]["timing_ms"]["gpu"]
    assert recorded["environment"]["gpu"] in text and f"| encoder (median ms) | {timing['encoder']:.2f} |" in text
    assert "CUDA provider, TF32" in text

    with pytest.raises(ValueError, match="two reports"):
        gpu_report.merge([recorded, ort_only])
    other_gpu = {**ort_only, "environment": {**common["environment"], "gpu": "another card"}}
    with pytest.raises(ValueError, match="differ"):
        gpu_report.merge([autocast_only, other_gpu])


@pytest.mark.gpu
def test_cuda_provider_runs_the_bundle(tmp_path, phantom_dataset, tiny_checkpoint, tiny_bundle):
    ort = pytest.importorskip("onnxruntime")
    if not torch.cuda.is_available() or "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs a CUDA GPU and onnxruntime-gpu")
    code, report = _run(["--model", str(tiny_checkpoint), "--bundle", str(tiny_bundle), "--data", str(phantom_dataset),
                         "--runs", "3", "--risk-images", "2", "--out", str(tmp_path / "out")])
    assert code == 0, report
    assert report["onnxruntime"]["providers"][0] == "CUDAExecutionProvider"
    assert report["onnxruntime"]["placement"]["encoder"].get("CUDAExecutionProvider", 0) > 0
    # fp32 by default on the GPU; TF32 only when asked for
    assert report["onnxruntime"]["embedding_rel_error"]["gpu"] < 1e-4 < report["onnxruntime"]["embedding_rel_error"]["gpu_tf32"]
    assert set(report["autocast"]["dice"]) == {"float32", "float16", "bfloat16"}
