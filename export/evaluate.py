"""Evaluate a PyTorch checkpoint through TorchPredictor, with the same protocol and reports as `sammed-edge evaluate`.

    python -m sammed_edge.export.evaluate --model lite_medsam --modes box --out out/evaluate/torch
    sammed-edge evaluate --bundle out/lite_medsam-onnx-fp32 --modes box --compare out/evaluate/torch

The second command reports the bundle next to the PyTorch reference, with the difference per modality and source.
"""

from __future__ import annotations

import argparse

import torch

from sammed_edge.runtime import evaluate

from .models import list_models, load_model
from .predictor import TorchPredictor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", choices=list_models(), default="lite_medsam", help="registered model with public weights")
    source.add_argument("--checkpoint", help="checkpoint file")
    parser.add_argument("--config", help="model config JSON for --checkpoint")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    evaluate.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.checkpoint or args.model
    predictor = TorchPredictor(load_model(name, args.config))
    return evaluate.run(args, predictor, label=f"torch:{name}")


if __name__ == "__main__":
    raise SystemExit(main())
