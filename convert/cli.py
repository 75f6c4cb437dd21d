"""`edgeslim convert SRC -o OUT.gguf [--quant TYPE | --target NAME | --bpw X | --size S] [--family ggml|affine]
[--group 32|64] [--allocate erank|sensitivity|uniform|hybrid] [--calib FILE] [--calib-tokens N] [--no-calib]
[--gptq | --no-gptq] [--ctx N] [--force]`."""
from __future__ import annotations

import argparse

from edgeslim.tables import AFFINE_GROUPS
from edgeslim.targets import DEFAULT_CTX, TARGETS

from .allocate import SIGNALS
from .calibrate import add_calib_args
from .plan import FAMILIES, QUANT_HELP


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC",
                        help="Hugging Face model folder (config.json + *.safetensors), hub id, or F32/F16/BF16 .gguf")
    parser.add_argument("-o", "--out", required=True, metavar="OUT.gguf", help="output GGUF file")
    parser.add_argument("--quant", metavar="TYPE",
                        help=QUANT_HELP + " (default: F16 unless --target, --bpw or --size is given)")
    parser.add_argument("--target", metavar="NAME",
                        help=f"device to fit, a type per matrix chosen to fill it: {', '.join(TARGETS)}")
    parser.add_argument("--bpw", type=float, metavar="X",
                        help="bits per weight over the weight matrices, a type per matrix (e.g. 4.5)")
    parser.add_argument("--size", metavar="S", help="largest file size, a type per matrix (e.g. 3.9GB, 3.5GiB)")
    parser.add_argument("--family", choices=FAMILIES,
                        help="types to choose from (ggml: llama.cpp's Q2_K..Q8_0; affine: MLX's AFFINE2..8)")
    parser.add_argument("--group", type=int, choices=AFFINE_GROUPS, default=64,
                        help="affine group size for chosen types and for --family affine --quant BITS (default 64)")
    parser.add_argument("--allocate", choices=SIGNALS,
                        help="how types are chosen under a budget (default erank: relative error of each "
                             "type scaled by the matrix's effective rank; chosen by benchmark, docs/quality-ref.md)")
    add_calib_args(parser)
    parser.add_argument("--no-calib", action="store_true",
                        help="never calibrate (plain rounding; sensitivity then uses the plain weight error)")
    parser.add_argument("--gptq", action=argparse.BooleanOptionalAction, default=None,
                        help="GPTQ rounding on calibration Hessians, one decoder layer at a time (HF folder + torch; "
                             "default: on with --target/--bpw/--size whenever calibration runs)")
    parser.add_argument("--ctx", type=int, default=DEFAULT_CTX,
                        help=f"context length the KV cache must hold in the fit report (default {DEFAULT_CTX})")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from .pipeline import convert

    calib = False if args.no_calib else args.calib
    if args.no_calib and args.calib:
        from edgeslim.errors import InputError

        raise InputError("--calib and --no-calib contradict each other; give one")
    convert(args.src, args.out, quant=args.quant, family=args.family, target=args.target, ctx=args.ctx,
            bpw=args.bpw, size=args.size, allocate=args.allocate, calib=calib, calib_tokens=args.calib_tokens,
            gptq=args.gptq, group=args.group, force=args.force)
    return 0
