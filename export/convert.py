"""One-time conversion of a checkpoint that safe loading refuses into a plain state dict.

    python -m sammed_edge.export.convert --trust-checkpoint sam-med2d_b.pth sam-med2d_b.safetensors

SAM-Med2D's released `sam-med2d_b.pth` pickles an optimizer object next to {'model': state_dict};
`torch.load(weights_only=True)` refuses it. Run this once on a file you trust; later loads read the output safely.
"""

from __future__ import annotations

import argparse

from sammed_edge.runtime.bundle import sha256_file

from .models.checkpoints import convert_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="checkpoint to convert")
    parser.add_argument("dst", help="output: .safetensors (recommended) or .pth (plain state dict)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow full unpickling of SRC (arbitrary code can run: only for files you trust)")
    args = parser.parse_args(argv)
    out = convert_checkpoint(args.src, args.dst, trust=args.trust_checkpoint)
    print(f"wrote {out} (sha256 {sha256_file(out)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
