"""OpenVINO's per-layer profile of a bundle (the tiny bundle's ONNX graphs, run through OpenVINO)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("openvino")

from sammed_edge.export.studies import profile_openvino  # noqa: E402
from sammed_edge.runtime import Predictor  # noqa: E402
from sammed_edge.runtime.backends.base import BackendError  # noqa: E402


def test_profile_sums_the_layers_of_both_graphs(tiny_bundle):
    report = profile_openvino.profile_bundle(tiny_bundle, runs=2, threads=1)
    for graph in ("encoder", "decoder"):
        data = report[graph]
        assert data["median_ms"] > 0 and data["layers_ms"] > 0
        assert data["layers"] and {"name", "type", "implementation", "ms"} <= set(data["layers"][0])
        assert sum(row["ms"] for row in data["by_kind"]) == pytest.approx(data["layers_ms"])
        assert sum(row["count"] for row in data["by_kind"]) == len(data["layers"])
        assert [row["ms"] for row in data["layers"]] == sorted((row["ms"] for row in data["layers"]), reverse=True)
    assert any(row["type"] == "MatMul" or row["type"] == "FullyConnected" for row in report["encoder"]["by_kind"])


def test_cli_prints_tables_and_writes_json(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert profile_openvino.main(["--bundle", str(tiny_bundle), "--graphs", "decoder", "--runs", "1",
                                  "--threads", "1", "--top", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "**decoder**: median run" in printed and "| slowest layers |" in printed
    assert set(json.loads(out.read_text())) == {"decoder"}
    with pytest.raises(SystemExit):
        profile_openvino.main(["--bundle", str(tiny_bundle), "--runs", "0"])


def test_layer_profile_needs_perf_count(tiny_bundle):
    predictor = Predictor.from_bundle(tiny_bundle, backend="openvino", threads=1)
    with pytest.raises(BackendError, match="perf_count"):
        predictor.decoder.layer_profile()
