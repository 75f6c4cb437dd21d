"""Print our quantizers' reconstruction error next to llama.cpp's on the same weights, and their speed.

    python scripts/compare_quantizers.py [--rows 256] [--cols 4096] [--stories PATH] [--types Q4_0,IQ2_S] [--no-mlx]
    python scripts/compare_quantizers.py --gptq --rows 1536 --cols 768 [--types ...]   # GPTQ's CPU time per type

Needs llama-cpp-python installed (its libggml-base is called through ctypes, see
edgeslim/quants/ggml_ref.py) or EDGESLIM_GGML_LIB pointing at a libggml-base.
Errors are relative RMS; with an importance vector both are importance-weighted
(llama.cpp refuses IQ2_XXS / IQ2_XS / IQ1_S without one: those rows are imatrix-only).
"ours Mw/s" is our quantizer's throughput in million weights per CPU-second of this
process (process_time: meaningful on a busy machine; numpy runs single-threaded here),
after one untimed call per type (numba's one-time compile or cache load is not counted).
Also prints MLX's affine error next to ours when mlx is installed.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from edgeslim import quants as Q
from edgeslim.quants import ggml_ref

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads: CPU time = one core's time

from edgeslim.tables import GGML_WRITABLE, quant_info  # noqa: E402

TYPES = tuple(t for t in GGML_WRITABLE if quant_info(t).family == "ggml")
NEEDS_IMATRIX = ("IQ2_XXS", "IQ2_XS", "IQ1_S")  # llama.cpp asserts (aborts the process) without one
DEFAULT_STORIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "models" / "stories260K" / "stories260K.bin"


def rel_rms(w, wh, c):
    return float(np.sqrt((c * (w - wh) ** 2).mean() / (c * w * w).mean()))


def matrices(rows: int, cols: int, stories: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {"normal": rng.standard_normal((rows, cols)).astype(np.float32),
           "student-t3": (rng.standard_t(3, (rows, cols)) * 0.02).astype(np.float32)}
    if stories.is_file():  # llama2.c checkpoint: the token embedding, re-cut to rows of 256
        head = np.fromfile(stories, dtype=np.int32, count=7)
        n = int(head[0]) * int(head[5])
        out["stories260K-embd"] = np.fromfile(stories, dtype=np.float32, offset=28, count=n).reshape(-1, 256)
    return out


def compare_ggml(mats, types):
    print(f"{'weights':18s} {'type':7s} {'imatrix':7s} {'ours':>9s} {'llama.cpp':>9s} {'ratio':>7s} "
          f"{'ours Mw/s':>9s} {'llama s':>7s}")
    for name, w in mats.items():
        imp = (np.random.default_rng(1).gamma(0.5, 2.0, w.shape[1]) + 1e-3).astype(np.float32)
        for qtype in types:
            if w.shape[1] % quant_info(qtype).block:
                continue
            Q.quantize(w[:1], qtype, imp)  # warm-up: the lattice types' numba search compiles (or loads) once
            for im in ((imp,) if qtype in NEEDS_IMATRIX else (None, imp)):
                c = np.ones(w.shape[1], np.float32) if im is None else im
                t0 = time.process_time()
                q = Q.quantize(w, qtype, im)
                t1 = time.process_time()
                ours = rel_rms(w, Q.dequantize(q), c)
                t2 = time.perf_counter()
                raw = ggml_ref.quantize(w, qtype, im)
                t3 = time.perf_counter()
                theirs = rel_rms(w, Q.dequantize_raw(raw, qtype, w.shape), c)
                print(f"{name:18s} {qtype:7s} {'yes' if im is not None else 'no':7s} {ours:9.5f} {theirs:9.5f} "
                      f"{ours / theirs:7.4f} {w.size / max(t1 - t0, 1e-9) / 1e6:9.2f} {t3 - t2:7.2f}", flush=True)


def time_gptq(rows: int, cols: int, types) -> None:
    """CPU seconds of gptq_quantize per type on one (rows, cols) matrix with a correlated Hessian
    (the factorization, shared by every type, is not counted)."""
    from edgeslim.convert.gptq import gptq_quantize, prepare_hessian

    rng = np.random.default_rng(0)
    X = rng.standard_normal((2 * cols, cols)) @ (rng.standard_normal((cols, cols)) * np.arange(1, cols + 1) ** -0.7)
    prep = prepare_hessian((2 * X.T @ X / len(X)).astype(np.float32))
    w = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    print(f"{'type':8s} {'shape':>11s} {'cpu s':>7s} {'Mw/s':>6s}")
    for qtype in types:
        if cols % quant_info(qtype).block:
            continue
        gptq_quantize(w[:1], prep, qtype)  # warm-up (numba compile or cache load)
        t0 = time.process_time()
        gptq_quantize(w, prep, qtype)
        dt = time.process_time() - t0
        print(f"{qtype:8s} {f'{rows}x{cols}':>11s} {dt:7.2f} {w.size / dt / 1e6:6.2f}", flush=True)


def compare_mlx(mats):
    try:
        import mlx.core as mx
    except ImportError:
        print("mlx not installed: affine comparison skipped")
        return
    print(f"\n{'weights':18s} {'type':13s} {'ours':>9s} {'mlx':>9s} {'ratio':>7s}")
    for name, w in mats.items():
        for bits in (2, 3, 4, 5, 6, 8):
            for group in (32, 64):
                qtype = f"AFFINE{bits}_G{group}"
                ours = rel_rms(w, Q.dequantize(Q.quantize(w, qtype)), 1.0)
                wq, s, b = mx.quantize(mx.array(w), group_size=group, bits=bits)
                theirs = rel_rms(w, np.array(mx.dequantize(wq, s, b, group_size=group, bits=bits)), 1.0)
                print(f"{name:18s} {qtype:13s} {ours:9.5f} {theirs:9.5f} {ours / theirs:7.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--stories", type=Path, default=DEFAULT_STORIES)
    ap.add_argument("--types", default=",".join(TYPES), help="comma-separated ggml types (default: all we write)")
    ap.add_argument("--no-mlx", action="store_true", help="skip the affine comparison with MLX")
    ap.add_argument("--gptq", action="store_true", help="time GPTQ per type instead (no llama.cpp needed)")
    args = ap.parse_args()
    types = [quant_info(t).name for t in args.types.split(",") if t]
    if args.gptq:
        time_gptq(args.rows, args.cols, [t for t in types if t not in ("F32", "F16", "BF16")])
        return
    mats = matrices(args.rows, args.cols, args.stories)
    if ggml_ref.load() is None:
        print("llama.cpp's ggml library not found (pip install llama-cpp-python): ggml comparison skipped")
    else:
        compare_ggml(mats, [t for t in types if t not in ("F32", "F16", "BF16")])
    if not args.no_mlx:
        compare_mlx(mats)


if __name__ == "__main__":
    main()
