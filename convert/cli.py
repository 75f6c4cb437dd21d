"""`edgeslim convert SRC -o OUT.gguf [--quant TYPE] [--family ggml|affine] [--target NAME] [--ctx N] [--force]`."""
from __future__ import annotations

import argparse

from edgeslim.targets import DEFAULT_CTX, TARGETS


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC",
                        help="Hugging Face model folder (config.json + *.safetensors), hub id, or F32/F16/BF16 .gguf")
    parser.add_argument("-o", "--out", required=True, metavar="OUT.gguf", help="output GGUF file")
    parser.add_argument("--quant", metavar="TYPE",
                        help="F32, F16, BF16, Q8_0, Q6_K, Q5_K, Q4_K, Q3_K, Q2_K or AFFINE{2..8}_G{32,64} "
                             "(default: F16, or the best that fits --target)")
    parser.add_argument("--family", choices=("ggml", "affine"),
                        help="type family --target chooses from (ggml: llama.cpp types; affine: MLX layout)")
    parser.add_argument("--target", metavar="NAME", help=f"device to fit: {', '.join(TARGETS)}")
    parser.add_argument("--ctx", type=int, default=DEFAULT_CTX,
                        help=f"context length the KV cache must hold in the fit report (default {DEFAULT_CTX})")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from .pipeline import convert

    convert(args.src, args.out, quant=args.quant, family=args.family, target=args.target,
            ctx=args.ctx, force=args.force)
    return 0
