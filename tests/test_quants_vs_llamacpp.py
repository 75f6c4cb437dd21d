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
