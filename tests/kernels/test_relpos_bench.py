"""The GPU benchmark's measurements, run small on CPU (interpreter, stub timer), and the package's layering."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import torch

from sammed_edge.export.models import build_model, image_encoder_vit
from sammed_edge.kernels.triton import DISABLE_ENV, bench

KERNELS = Path(__file__).resolve().parents[2] / "kernels"


def _stub_timer(fn, warmup, reps, *, eager=True, graph=True):
    # outputs, fused-call counts and errors are what is checked here; each interpreted forward costs a second
    return {**({"eager_ms": 0.05} if eager else {}), **({"graph_ms": 0.01} if graph else {})}


def test_attention_rows_and_markdown(kernel_device):
    rows = bench.bench_attention("fp16", 16, 0, 1, shapes=(("tiny window", 2, (3, 5)),),
                                 device=kernel_device.type, timer=_stub_timer)
    assert [r["method"] for r in rows] == ["fused (triton)", "sdpa + materialised bias", "sdpa, no bias (floor)"]
    assert all(r["max_abs_err_vs_fp32"] < 3e-3 for r in rows[:2]) and "max_abs_err_vs_fp32" not in rows[2]
    results = {"environment": {"gpu": "none", "torch": torch.__version__, "triton": "-", "cuda": None},
               "attention": rows, "encoder": []}
    table = bench.markdown(results)
    assert table.count("| tiny window | 16 | fp16 |") == 3


def test_sweep_includes_the_default_and_reports_the_best(kernel_device):
    rows = bench.sweep_launch_configs("fp16", 16, 0, 1, shapes=(("tiny", 1, (4, 4)),), configs=((16, 16, 1),),
                                      device=kernel_device.type, timer=_stub_timer)
    assert sum(row["default"] for row in rows) == 1 and len(rows) == 2
    table = bench.markdown({"environment": {"gpu": "-", "torch": "-", "triton": "-", "cuda": None},
                            "attention": [], "sweep": rows, "encoder": []})
    assert "| tiny | 16 | fp16 |" in table


def test_encoder_rows_with_and_without_the_kernel(kernel_device, monkeypatch):
    if kernel_device.type == "cpu":  # the guard wants CUDA; here the interpreter stands in for it
        monkeypatch.setattr(image_encoder_vit, "relpos_attention_supported",
                            lambda *args: os.environ.get(DISABLE_ENV) != "1")
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    encoder = build_model("sam_med2d_vit_b", embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[1], img_size=64,
                          out_chans=32).image_encoder
    rows = bench.bench_encoder(encoder, 0, 1, device=kernel_device.type, timer=_stub_timer)
    assert [r["fused_calls_per_forward"] for r in rows] == [2, 0]
    assert rows[0]["rel_l2_diff_vs_sdpa"] < 2e-2
    assert os.environ.get(DISABLE_ENV) is None  # restored
    assert "| sam_med2d_vit_b encoder | bf16 | fused (triton) | 2 |" in bench.markdown(
        {"environment": {"gpu": "-", "torch": "-", "triton": "-", "cuda": None}, "attention": [], "encoder": rows})


def test_triton_package_imports_nothing_of_ours():
    # kernels/ is a leaf, inside functions too: the benchmark is given its encoder (export/studies/relpos_bench.py)
    for path in sorted((KERNELS / "triton").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith("sammed_edge"), f"{path.name}: from {node.module} import"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("sammed_edge") for a in node.names), path.name
