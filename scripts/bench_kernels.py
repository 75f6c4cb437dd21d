"""Micro-benchmark of the decode mat-vec kernels (edgeslim.runtime.kernels.linear, T=1).

For each weight type and shape (rows x cols) it builds random valid weights,
keeps enough copies to exceed the last-level cache (so weights stream from
DRAM, as in real decoding), and reports the best time per call, the stored
(GGUF) bytes per second, and the same figure for llama.cpp's own mat-vec
(ggml_mul_mat through the ggml shared libraries of llama-cpp-python, when it is
installed) on the same weights and thread count.  The machine's read bandwidth
(numba prange sum, all threads) is printed for scale.

    python scripts/bench_kernels.py                      # every type (llama.cpp's and affine), three shapes
    python scripts/bench_kernels.py --types Q4_K Q8_0 --shapes 4096x4096 --reps 20
    python scripts/bench_kernels.py --T 32               # prefill-sized batches
    python scripts/bench_kernels.py --decode-sim Q4_K    # every matmul of a TinyLlama decode step
    python scripts/bench_kernels.py --types Q4_K@2:4 Q8_0@50%   # sparse types vs the dense type of equal size
    NUMBA_NUM_THREADS=1 python scripts/bench_kernels.py --cpu-time   # 1 thread, CPU-time clock

Timing note: on a shared machine other processes preempt one of the two
threads and every parallel call then waits a scheduler tick (ms); take the
best of several runs, or compare single-threaded with --cpu-time.
"""
from __future__ import annotations

import argparse
import ctypes
import time
from pathlib import Path

import numpy as np
from numba import get_num_threads, njit, prange

from edgeslim.runtime import kernels as K
from edgeslim.tables import GGMLType, block_fields, parse_affine, quant_info, sparse_info

SHAPES = ((2048, 5632), (5632, 2048), (4096, 4096))
TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS",
         "IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0", "F16", "BF16",
         "AFFINE4_G64", "AFFINE4_G32", "AFFINE8_G64", "AFFINE2_G64", "AFFINE3_G64", "AFFINE5_G64", "AFFINE6_G64")
STREAM_BYTES = 160 << 20  # total weight bytes cycled through per timing round (> L3)



def random_weight(qtype: str, rows: int, cols: int, rng) -> dict:
    """Random valid stored weight: {'data', 'scales', 'biases'} as prepare() takes them."""
    aff = parse_affine(qtype)
    if aff:
        bits, group = aff
        codes = rng.integers(0, 256, (rows, cols * bits // 8), dtype=np.uint8)
        s = rng.uniform(1e-3, 1e-2, (rows, cols // group)).astype(np.float16)
        b = rng.uniform(-0.05, 0.05, (rows, cols // group)).astype(np.float16)
        return {"data": codes, "scales": s, "biases": b}
    if qtype in ("F16", "BF16"):
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        raw = w.astype(np.float16).view(np.uint8) if qtype == "F16" else (w.view(np.uint32) >> 16).astype(np.uint16)
        return {"data": raw.view(np.uint8)}
    info = quant_info(qtype)
    nb = cols // info.block
    raw = rng.integers(0, 256, (rows, nb, info.block_bytes), dtype=np.uint8)
    fields = block_fields(qtype)
    for name, sl in fields.items():
        if name in ("d", "dmin", "m"):  # the f16 scales (everything else random)
            d = rng.uniform(-0.01, 0.01, (rows, nb)).astype(np.float16)
            raw[..., sl] = d.view(np.uint8).reshape(rows, nb, 2)
    if qtype == "IQ1_M":  # its f16 d lives in the top nibbles of the four u16 scales
        sc = raw[..., fields["scales"]].copy().view("<u2")
        d = rng.uniform(-0.01, 0.01, (rows, nb, 1)).astype(np.float16).view("<u2")
        nib = np.concatenate([(d >> (4 * i)) & 15 for i in range(4)], axis=-1).astype("<u2")
        raw[..., fields["scales"]] = ((sc & 0x0FFF) | (nib << 12)).view(np.uint8)
    return {"data": raw.reshape(rows, -1)}


def stored_bytes(qtype: str, rows: int, cols: int) -> int:
    return rows * quant_info(qtype).nbytes(cols)


def copies(qtype: str, rows: int, cols: int) -> int:
    """Weights cycled per timing round: STREAM_BYTES in all (beyond the caches), at most 1000
    (ggml's default graph holds 2048 nodes)."""
    return max(2, min(1000, -(-STREAM_BYTES // stored_bytes(qtype, rows, cols))))


@njit(parallel=True, cache=True)
def _read_sum(a):
    n = a.shape[0]
    nt = 16
    part = np.zeros(nt, np.int64)
    for t in prange(nt):
        s = 0
        for i in range(t * n // nt, (t + 1) * n // nt):
            s += a[i]
        part[t] = s
    return part.sum()


def read_bandwidth(reps: int = 5) -> float:
    a = np.ones(256 << 17, np.int64)  # 256 MiB
    _read_sum(a)
    best = min(_timed(lambda: _read_sum(a)) for _ in range(reps))
    return a.nbytes / best / 1e9


CLOCK = time.perf_counter  # --cpu-time: time.process_time (robust on a shared machine, 1 thread only)


def _timed(fn) -> float:
    t = CLOCK()
    fn()
    return CLOCK() - t


def bench_edgeslim(qtype, rows, cols, reps, rng, T=1):
    n = copies(qtype, rows, cols)
    ws = [K.prepare(qtype, shape=(rows, cols), **random_weight(qtype, rows, cols, rng)) for _ in range(n)]
    x = rng.standard_normal((T, cols)).astype(np.float32)
    for w in ws:
        K.linear(w, x)
    best = min(_timed(lambda: [K.linear(w, x) for w in ws]) for _ in range(reps)) / n
    return best, ws[0].nbytes


# ----------------------------------------------------------------------------- llama.cpp (ggml) reference
class _GGML:
    """ggml_mul_mat through ctypes, on the libraries shipped with llama-cpp-python."""

    class Params(ctypes.Structure):
        _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]

    def __init__(self):
        import llama_cpp

        lib = Path(llama_cpp.__file__).parent / "lib"
        ctypes.CDLL(str(lib / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
        self.base = ctypes.CDLL(str(lib / "libggml-base.so"))
        self.cpu = ctypes.CDLL(str(lib / "libggml-cpu.so"))
        b, c, P = self.base, self.cpu, ctypes.c_void_p
        b.ggml_init.restype, b.ggml_init.argtypes = P, [self.Params]
        b.ggml_new_tensor_2d.restype = P
        b.ggml_new_tensor_2d.argtypes = [P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        b.ggml_mul_mat.restype, b.ggml_mul_mat.argtypes = P, [P, P, P]
        b.ggml_new_graph.restype, b.ggml_new_graph.argtypes = P, [P]
        b.ggml_build_forward_expand.argtypes = [P, P]
        b.ggml_get_data.restype, b.ggml_get_data.argtypes = P, [P]
        b.ggml_free.argtypes = [P]
        c.ggml_graph_compute_with_ctx.restype = ctypes.c_int
        c.ggml_graph_compute_with_ctx.argtypes = [P, P, ctypes.c_int]
        c.ggml_cpu_init()

    def bench_many(self, mats, reps, rng, threads):
        """Seconds for one graph holding a mul_mat per (qtype, (rows, cols)) with T = 1."""
        b = self.base
        mem = sum(stored_bytes(q, *s) + 8 * sum(s) + 4096 for q, s in mats) + (64 << 20)
        ctx = b.ggml_init(self.Params(mem, None, False))
        try:
            gf = b.ggml_new_graph(ctx)
            xs = {}
            for q, (rows, cols) in mats:
                if cols not in xs:
                    xs[cols] = b.ggml_new_tensor_2d(ctx, int(GGMLType.F32), cols, 1)
                    xv = rng.standard_normal(cols).astype(np.float32)
                    ctypes.memmove(b.ggml_get_data(xs[cols]), xv.ctypes.data, xv.nbytes)
                w = b.ggml_new_tensor_2d(ctx, int(GGMLType[q]), cols, rows)
                raw = np.ascontiguousarray(random_weight(q, rows, cols, rng)["data"])
                ctypes.memmove(b.ggml_get_data(w), raw.ctypes.data, raw.nbytes)
                b.ggml_build_forward_expand(gf, b.ggml_mul_mat(ctx, w, xs[cols]))
            run = lambda: self.cpu.ggml_graph_compute_with_ctx(ctx, gf, threads)  # noqa: E731
            run()
            return min(_timed(run) for _ in range(reps))
        finally:
            b.ggml_free(ctx)

    def bench(self, qtype, rows, cols, reps, rng, threads, T=1):
        """Seconds per mat-mul: one graph of n independent mul_mats (like a decode step)."""
        if parse_affine(qtype):
            return None
        b = self.base
        n = copies(qtype, rows, cols)
        mem = n * (stored_bytes(qtype, rows, cols) + 4 * T * (rows + cols) + 4096) + (64 << 20) + 8 * T * cols
        ctx = b.ggml_init(self.Params(mem, None, False))
        try:
            gf = b.ggml_new_graph(ctx)
            x = b.ggml_new_tensor_2d(ctx, int(GGMLType.F32), cols, T)
            xv = rng.standard_normal(cols * T).astype(np.float32)
            ctypes.memmove(b.ggml_get_data(x), xv.ctypes.data, xv.nbytes)
            for _ in range(n):
                w = b.ggml_new_tensor_2d(ctx, int(GGMLType[qtype]), cols, rows)
                raw = np.ascontiguousarray(random_weight(qtype, rows, cols, rng)["data"])
                ctypes.memmove(b.ggml_get_data(w), raw.ctypes.data, raw.nbytes)
                b.ggml_build_forward_expand(gf, b.ggml_mul_mat(ctx, w, x))
            run = lambda: self.cpu.ggml_graph_compute_with_ctx(ctx, gf, threads)  # noqa: E731
            run()
            return min(_timed(run) for _ in range(reps)) / n
        finally:
            b.ggml_free(ctx)


# TinyLlama-1.1B: (rows, cols) of one block's matmuls, 22 blocks, then the classifier
TINYLLAMA = dict(blocks=22, mats=((2048, 2048), (256, 2048), (256, 2048), (2048, 2048),
                                  (5632, 2048), (5632, 2048), (2048, 5632)), output=(32000, 2048))


def decode_sim(qtype, out_qtype, reps, rng, ggml, threads):
    """Every matmul of one TinyLlama decode step (weights only, no attention): tokens/s."""
    shapes = [s for _ in range(TINYLLAMA["blocks"]) for s in TINYLLAMA["mats"]]
    ws = [K.prepare(qtype, shape=s, **random_weight(qtype, *s, rng)) for s in shapes]
    ws.append(K.prepare(out_qtype, shape=TINYLLAMA["output"], **random_weight(out_qtype, *TINYLLAMA["output"], rng)))
    xs = {c: rng.standard_normal((1, c)).astype(np.float32) for c in (2048, 5632)}
    step = lambda: [K.linear(w, xs[w.shape[1]]) for w in ws]  # noqa: E731
    step()
    t = min(_timed(step) for _ in range(reps))
    nbytes = sum(stored_bytes(qtype, *s) for s in shapes) + stored_bytes(out_qtype, *TINYLLAMA["output"])
    line = f"decode-sim {qtype}+{out_qtype} output: {1 / t:5.1f} tok/s ({nbytes / t / 1e9:.1f} GB/s)"
    if ggml:
        tg = ggml.bench_many([(qtype, s) for s in shapes] + [(out_qtype, TINYLLAMA["output"])], reps, rng, threads)
        line += f"   llama.cpp ggml_mul_mat: {1 / tg:5.1f} tok/s   ratio {tg / t:.2f}"
    print(line, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", nargs="*", default=list(TYPES))
    ap.add_argument("--shapes", nargs="*", default=[f"{r}x{c}" for r, c in SHAPES])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--T", type=int, default=1, help="activations per call (1 = decode; >1 = prefill batch)")
    ap.add_argument("--no-ggml", action="store_true", help="skip the llama.cpp comparison")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with process CPU time (for NUMBA_NUM_THREADS=1 runs on a busy machine)")
    ap.add_argument("--decode-sim", nargs="*", metavar="QTYPE",
                    help="instead: all matmuls of a TinyLlama-1.1B decode step in these types "
                         "(classifier Q6_K, or F16 for float types), vs llama.cpp")
    args = ap.parse_args(argv)
    global CLOCK
    if args.cpu_time:
        if get_num_threads() != 1:
            ap.error("--cpu-time needs NUMBA_NUM_THREADS=1 (CPU time sums over threads)")
        CLOCK = time.process_time
    rng = np.random.default_rng(0)
    threads = get_num_threads()
    bw = read_bandwidth()
    ggml = None
    if not args.no_ggml:
        try:
            ggml = _GGML()
        except (ImportError, OSError, AttributeError) as e:
            print(f"(llama.cpp comparison unavailable: {e})")
    print(f"threads={threads}  T={args.T}  avx2_kernels={K.USE_AVX2}  read bandwidth {bw:.1f} GB/s (numba prange sum)")
    if args.decode_sim is not None:
        for q in args.decode_sim or ["Q4_K", "Q8_0"]:
            out_q = "Q6_K" if quant_info(q).family in ("ggml", "affine") else "F16"
            decode_sim(q, out_q, args.reps, rng, None if parse_affine(q) else ggml, threads)
        return
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    sparse = [t for t in args.types if sparse_info(t) is not None]
    if sparse:  # edgeslim's sparse types: against the dense type of the closest size (bench_sparse.py)
        import bench_sparse  # same folder

        bench_sparse.CLOCK = CLOCK
        bench_sparse.bench_kernels(sparse, shapes, args.reps)
    print(f"{'type':13s} {'shape':>10s} {'us/call':>8s} {'GB/s':>6s} {'xread':>6s} "
          f"{'ggml us':>8s} {'ggml GB/s':>9s} {'vs ggml':>7s}")
    for qtype in (t for t in args.types if t not in sparse):
        for rows, cols in shapes:
            shp = f"{rows}x{cols}"
            t, _ = bench_edgeslim(qtype, rows, cols, args.reps, rng, args.T)
            nbytes = stored_bytes(qtype, rows, cols)
            gbs = nbytes / t / 1e9
            line = f"{qtype:13s} {shp:>10s} {t * 1e6:8.0f} {gbs:6.1f} {gbs / bw:6.2f}"
            tg = ggml.bench(qtype, rows, cols, args.reps, rng, threads, args.T) if ggml else None
            if tg:
                line += f" {tg * 1e6:8.0f} {nbytes / tg / 1e9:9.1f} {tg / t:7.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
