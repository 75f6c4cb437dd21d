"""`edgeslim convert SRC -o OUT.gguf [--quant TYPE | --target NAME | --bpw X | --size S] [--family ggml|affine]
[--group 32|64] [--allocate erank|sensitivity|uniform|hybrid] [--calib FILE] [--calib-tokens N] [--no-calib]
[--gptq | --no-gptq] [--prune magnitude|wanda|sparsegpt [--sparsity S] [--pattern unstructured|2:4|4:8]
[--owl [LAMBDA]] [--prune-choice]] [--widen | --no-widen] [--ctx N] [--force]`."""
from __future__ import annotations

import argparse

from edgeslim.tables import AFFINE_GROUPS
from edgeslim.targets import DEFAULT_CTX, TARGETS

from .allocate import SIGNALS
from .calibrate import add_calib_args
from .plan import FAMILIES, QUANT_HELP
from .prune import METHODS, OWL_LAMBDA, PATTERNS


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
    parser.add_argument("--prune", choices=METHODS,
                        help="prune the decoder blocks' matrices and store them in sparse types (edgeslim only: "
                             "llama.cpp cannot read them): magnitude |w|, wanda |w|*||x|| (calibration), sparsegpt "
                             "(mask and error compensation on the calibration Hessians, pruned with the quantization)")
    parser.add_argument("--sparsity", type=float, metavar="S",
                        help="fraction of each pruned matrix's weights to drop (default 0.5; fixed by an N:M --pattern)")
    parser.add_argument("--pattern", choices=PATTERNS,
                        help="where the pruned weights may be: unstructured (default: anywhere, the same count per row), "
                             "2:4 or 4:8 (2 of every 4 / 4 of every 8 consecutive weights kept)")
    parser.add_argument("--owl", type=float, nargs="?", const=OWL_LAMBDA, metavar="LAMBDA",
                        help=f"per-layer sparsity (OWL): layers with more outliers pruned less, within +-LAMBDA "
                             f"(default {OWL_LAMBDA}) of --sparsity; unstructured only")
    parser.add_argument("--prune-choice", action="store_true",
                        help="with --target/--bpw/--size: the allocator chooses per matrix between the dense types "
                             "and the pruned ones by measured error per byte (default: every decoder matrix pruned)")
    parser.add_argument("--widen", action=argparse.BooleanOptionalAction, default=None,
                        help="zero-pad the hidden (and FFN) width to a multiple of 256 so K and IQ types fit every "
                             "row (exact; Llama-shaped HF folders; the file is a wider model llama.cpp loads). "
                             "Default: only when the budget is below what 32-wide rows such as 576 allow")
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
            gptq=args.gptq, group=args.group, force=args.force, prune=args.prune, sparsity=args.sparsity,
            pattern=args.pattern, owl=args.owl, prune_choice=args.prune_choice, widen=args.widen)
    return 0
