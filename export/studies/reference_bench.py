"""The PyTorch eager reference for `sammed-edge bench`: same protocol, through TorchPredictor, printed as JSON.

    python -m sammed_edge.export.studies.reference_bench --model lite_medsam --runs 10
"""

from __future__ import annotations

import argparse
import json

import torch

from sammed_edge.runtime.bench import measure_predictor

from ..models import load_model
from ..predictor import TorchPredictor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="registered name or checkpoint path")
    parser.add_argument("--config", help="model config JSON for a checkpoint")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = TorchPredictor(load_model(args.model, args.config))
    result = measure_predictor(predictor, runs=args.runs)
    result["torch"] = torch.__version__
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
