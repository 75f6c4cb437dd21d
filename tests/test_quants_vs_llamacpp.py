"""Our quantizers against llama.cpp's own (ggml_quantize_chunk via ctypes).

Skips cleanly when llama-cpp-python (its bundled libggml-base) is not installed.
Float types and Q8_0 must produce llama.cpp's bytes exactly; every other type
we write (k-quants, legacy 32-wide, IQ lattice and non-linear, ternary; Q8_0
with an importance vector, which llama.cpp ignores) must reconstruct with an
error no larger than llama.cpp's on the same weights, unweighted without an
importance vector and importance-weighted with one (llama.cpp refuses IQ2_XXS
and IQ2_XS without one: imatrix only).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeslim import quants as Q
from edgeslim.quants import ggml_ref

pytestmark = pytest.mark.skipif(ggml_ref.load() is None, reason="llama.cpp's ggml library is not installed")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STORIES = DATA / "models" / "stories260K" / "stories260K.bin"
EPS = 1e-6


def _stories_matrices() -> dict[str, np.ndarray]:
    """Real trained weights (llama2.c checkpoint), rows re-cut to 256 so the k-quants apply."""
    head = np.fromfile(STORIES, dtype=np.int32, count=7)
    dim, hidden, layers, _, kv_heads, vocab, _ = (int(v) for v in head)
    f = np.fromfile(STORIES, dtype=np.float32, offset=28)
    kv_dim = dim * kv_heads // int(head[3])
    off_w1 = vocab * dim + layers * dim + layers * dim * (2 * dim + 2 * kv_dim) + layers * dim
    return {"stories_embd": f[: vocab * dim].reshape(-1, 256),
            "stories_w1": f[off_w1: off_w1 + layers * hidden * dim].reshape(-1, 256)}


def _cases() -> list[str]:
    return ["normal", "t3"] + (["stories_embd", "stories_w1"] if STORIES.is_file() else [])


def _matrix(name: str) -> np.ndarray:
    rng = np.random.default_rng(2024)
    if name == "normal":
        return rng.standard_normal((32, 1024)).astype(np.float32)
    if name == "t3":
        return (rng.standard_t(3, (32, 1024)) * 0.02).astype(np.float32)
    return np.ascontiguousarray(_stories_matrices()[name])


def _importance(cols: int) -> np.ndarray:
    rng = np.random.default_rng(99)
    return (rng.gamma(0.5, 2.0, cols) + 1e-3).astype(np.float32)  # skewed, like squared activations


def _rel_rms(w, wh, c):
    return float(np.sqrt((c * (w - wh) ** 2).mean() / (c * w * w).mean()))


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0"])
@pytest.mark.parametrize("case", _cases())
def test_bytes_identical_to_llamacpp(qtype, case):
    w = _matrix(case)
    np.testing.assert_array_equal(Q.quantize(w, qtype).data, ggml_ref.quantize(w, qtype))


K_TYPES = ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K"]
ZOO_TYPES = ["Q5_1", "Q5_0", "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS",
             "IQ2_XXS", "IQ1_M", "IQ1_S", "TQ2_0", "TQ1_0"]
NEEDS_IMATRIX = ("IQ2_XXS", "IQ2_XS", "IQ1_S")  # llama.cpp aborts the process without one


@pytest.mark.parametrize("use_importance", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", K_TYPES + ZOO_TYPES)
@pytest.mark.parametrize("case", _cases())
def test_error_not_above_llamacpp(qtype, case, use_importance):
    if qtype in NEEDS_IMATRIX and not use_importance:
        pytest.skip(f"llama.cpp quantizes {qtype} only with an importance matrix")
    w = _matrix(case)
    imp = _importance(w.shape[1]) if use_importance else None
    c = imp if use_importance else np.ones(w.shape[1], np.float32)
    ours = _rel_rms(w, Q.dequantize(Q.quantize(w, qtype, imp)), c)
    theirs = _rel_rms(w, Q.dequantize_raw(ggml_ref.quantize(w, qtype, imp), qtype, w.shape), c)
    assert ours <= theirs * (1 + EPS), f"{qtype} {case}: ours {ours:.6f} > llama.cpp {theirs:.6f}"


def _random_blocks(qtype: str, n_blocks: int, seed: int) -> np.ndarray:
    """Random block bytes with finite, realistic fp16 scales (IQ1_M: d spread over the scales' top nibbles)."""
    from edgeslim.tables import block_fields, quant_info

    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n_blocks, quant_info(qtype).block_bytes), dtype=np.uint8)
    for name, sl in block_fields(qtype).items():
        if name in ("d", "dmin", "m"):
            raw[:, sl] = (rng.standard_normal(n_blocks) * 0.01).astype("<f2").view(np.uint8).reshape(-1, 2)
    if qtype == "IQ1_M":
        raw[:, 55] &= 0xBF  # d's top exponent bit clear: finite
    return raw


@pytest.mark.parametrize("qtype", K_TYPES + ZOO_TYPES)
def test_reference_decoders_match_llamacpp(qtype):
    """Our numpy decoders against llama.cpp's own to_float (its dequantize_row_*), random blocks: within
    1 ulp (the C code may fuse a multiply-add that numpy rounds twice)."""
    raw = _random_blocks(qtype, 24, seed=len(qtype))
    ref = ggml_ref.to_float(raw, qtype)
    ours = Q.dequantize_raw(raw, qtype, ref.shape)
    np.testing.assert_array_max_ulp(ours, ref, maxulp=1)


def test_iq1_m_delta_signs_as_llamacpp():
    """IQ1_M: a clear delta bit means grid + 1/8, a set one grid - 1/8 (llama.cpp's dequantize_row_iq1_m).
    gguf-py's `np.where(qh & 0x08 == 0, delta, -delta)` reads the same: in Python `&` binds tighter
    than `==` (unlike C), so it is (qh & 0x08) == 0 -- not a bug (an earlier note here said it was)."""
    import gguf

    from edgeslim.quants import iq1

    d, l = np.float32(0.5), np.zeros((1, 16), np.int64)  # every sub-scale 2 l + 1 = 1
    idx = np.zeros((1, 32), np.int64)
    dneg = np.zeros((1, 32), bool)
    dneg[0, 1::2] = True  # groups 1, 3, 5, ...: delta negative (nibble bit 3 of the odd groups' qh)
    raw = iq1.pack_m(np.array([d]), l, idx, dneg)
    want = d * (iq1.GRID[0].astype(np.float32)[None, :] + np.where(dneg[0, :, None], -0.125, 0.125))  # (32, 8)
    ref = ggml_ref.to_float(raw, "IQ1_M").reshape(32, 8)
    np.testing.assert_array_equal(ref, want)
    np.testing.assert_array_equal(iq1.decode_m(raw).reshape(32, 8), want)
    np.testing.assert_array_equal(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.IQ1_M).reshape(32, 8), want)
