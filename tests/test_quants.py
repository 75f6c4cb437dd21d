"""numpy reference quantizers: layouts against gguf-py / MLX, error bounds, API edges."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from edgeslim import quants as Q
from edgeslim.errors import FormatError, InputError, UnsupportedError
from edgeslim.quants import affine
from edgeslim.tables import GGML_WRITABLE, quant_info

AFFINE_TYPES = [f"AFFINE{b}_G{g}" for b in (2, 3, 4, 5, 6, 8) for g in (32, 64)]
QUANTIZED = [t for t in GGML_WRITABLE if quant_info(t).family != "float"] + AFFINE_TYPES

# relative RMS error ceilings (about 15% above what the quantizers reach) on
# N(0, 1) and on heavy-tailed student-t (df=3) weights, 16 x 1024
MAX_REL_RMS = {
    "F32": (0.0, 0.0), "F16": (3e-4, 3e-4), "BF16": (2e-3, 2e-3), "Q8_0": (0.006, 0.0095),
    "Q6_K": (0.019, 0.028), "Q5_K": (0.040, 0.052), "Q4_K": (0.080, 0.105),
    "Q3_K": (0.165, 0.215), "Q2_K": (0.29, 0.34),
    "AFFINE8_G32": (0.0046, 0.006), "AFFINE8_G64": (0.0056, 0.0082),
    "AFFINE6_G32": (0.0185, 0.024), "AFFINE6_G64": (0.022, 0.033),
    "AFFINE5_G32": (0.038, 0.050), "AFFINE5_G64": (0.046, 0.067),
    "AFFINE4_G32": (0.079, 0.103), "AFFINE4_G64": (0.093, 0.138),
    "AFFINE3_G32": (0.166, 0.215), "AFFINE3_G64": (0.19, 0.275),
    "AFFINE2_G32": (0.34, 0.42), "AFFINE2_G64": (0.375, 0.50),
}


def _weights(kind: str, rows: int = 16, cols: int = 1024, seed: int = 1234) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal((rows, cols)).astype(np.float32)
    return (rng.standard_t(3, (rows, cols)) * 0.02).astype(np.float32)


def _rel_rms(w, wh, weights=None):
    c = np.ones(w.shape[1], np.float32) if weights is None else weights
    return float(np.sqrt((c * (w - wh) ** 2).mean() / (c * w * w).mean()))


def _importance(cols: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(cols) ** 4 * 10 + 0.01).astype(np.float32)


# ---------------------------------------------------------------------------
# ggml family: layouts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["normal", "t3"])
@pytest.mark.parametrize("qtype", GGML_WRITABLE)
def test_dequantize_matches_gguf_bit_for_bit(qtype, kind):
    w = _weights(kind, rows=5, cols=768)
    w[1, :256] = 0.0  # an all-zero super-block
    w[2, 256:512] = 0.37  # a constant positive one
    q = Q.quantize(w, qtype)
    assert q.data.dtype == np.uint8 and q.data.shape == (5, Q.row_bytes(qtype, 768))
    ours = Q.dequantize(q)
    ref = gguf.quants.dequantize(q.data, gguf.GGMLQuantizationType[qtype])
    assert ours.dtype == np.float32 and ours.shape == w.shape
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
    np.testing.assert_array_equal(Q.dequantize_raw(q.data.reshape(-1), qtype, w.shape), ours)
    assert not ours[1, :256].any()


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0"])
def test_bytes_match_gguf_quantize(qtype):
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((6, 256)) * np.logspace(-6, 4, 256)).astype(np.float32)
    w[0, :32] = 0.0
    w[1, :32] = np.arange(32) * 0.5 - 8  # ties in x / d for Q8_0 (roundf: half away from zero)
    w[2, :32] = np.float32(127 * 3.0) * np.sign(rng.standard_normal(32))
    ref = gguf.quants.quantize(w, gguf.GGMLQuantizationType[qtype]).reshape(6, -1).view(np.uint8)
    np.testing.assert_array_equal(Q.quantize(w, qtype).data, ref)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_bf16_and_f16_special_values():
    w = np.array([[np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-45, 3.4e38, 70000.0]], np.float32)
    for qtype in ("BF16", "F16"):
        ref = gguf.quants.quantize(w, gguf.GGMLQuantizationType[qtype]).view(np.uint8)
        np.testing.assert_array_equal(Q.quantize(w, qtype).data, ref.reshape(1, -1))
    np.testing.assert_array_equal(Q.dequantize(Q.quantize(w, "F32")).view(np.uint32), w.view(np.uint32))


# ---------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["normal", "t3"])
@pytest.mark.parametrize("qtype", list(MAX_REL_RMS))
def test_round_trip_error_bound(qtype, kind):
    w = _weights(kind)
    err = _rel_rms(w, Q.dequantize(Q.quantize(w, qtype)))
    assert err <= MAX_REL_RMS[qtype][kind == "t3"], f"{qtype} on {kind}: relative RMS {err:.5f}"


@pytest.mark.parametrize("qtype", QUANTIZED)
def test_importance_lowers_weighted_error(qtype):
    """The importance-weighted search beats the unweighted one on the weighted metric."""
    w = _weights("t3", rows=8, cols=512, seed=5)
    imp = _importance(512)
    plain = _rel_rms(w, Q.dequantize(Q.quantize(w, qtype)), imp)
    weighted = _rel_rms(w, Q.dequantize(Q.quantize(w, qtype, imp)), imp)
    assert weighted < plain, f"{qtype}: weighted {weighted:.5f} vs plain {plain:.5f}"


def test_q8_0_with_importance_never_worse_than_ggml_rule():
    w = _weights("t3", rows=8, cols=512, seed=9)
    imp = _importance(512, seed=2)
    blocks = lambda x: (imp * (w - x) ** 2).reshape(-1, 32).sum(1)  # noqa: E731
    ours = blocks(Q.dequantize(Q.quantize(w, "Q8_0", imp)))
    ggml = blocks(Q.dequantize(Q.quantize(w, "Q8_0")))
    assert np.all(ours <= ggml) and ours.sum() < ggml.sum()


# grids without an exact 0 (IQ4's table, the lattices' magnitudes): rows mixing 0 and -1.5 cannot be exact
NO_EXACT_ZERO = ("IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S")


@pytest.mark.parametrize("qtype", QUANTIZED)
def test_zero_and_constant_rows(qtype):
    w = np.zeros((3, 512), np.float32)
    w[1] = 0.25
    w[2, ::2] = -1.5
    out = Q.dequantize(Q.quantize(w, qtype))
    assert not out[0].any()
    assert np.all(np.isfinite(out))
    if qtype in NO_EXACT_ZERO:
        assert np.sqrt(((out - w) ** 2).mean() / (w * w).mean()) < 0.5  # IQ2_XXS: 0.45, its grid lacks the pattern
    else:
        np.testing.assert_allclose(out, w, atol=2e-3 * 1.5)


# ---------------------------------------------------------------------------
# affine family vs MLX
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_affine_pack_round_trip(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, (3, 128)).astype(np.uint32)
    words = affine.pack(codes, bits)
    assert words.dtype == np.uint32 and words.shape == (3, 128 * bits // 32)
    np.testing.assert_array_equal(affine.unpack(words, bits), codes)
    # the row is one little-endian bit stream: code i at bits [i*bits, (i+1)*bits)
    stream = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little").reshape(3, 128, bits)
    np.testing.assert_array_equal((stream * (1 << np.arange(bits))).sum(-1), codes)


@pytest.mark.parametrize("qtype", AFFINE_TYPES)
def test_affine_matches_mlx(qtype):
    mx = pytest.importorskip("mlx.core")
    bits, group = quant_info(qtype).bits, quant_info(qtype).block
    w = _weights("t3", rows=6, cols=256, seed=11)
    wq, s, b = mx.quantize(mx.array(w), group_size=group, bits=bits)
    s, b = np.array(s), np.array(b)
    # same scales/biases -> identical packed words
    np.testing.assert_array_equal(affine.pack(affine.codes_for(w, s, b, bits, group), bits), np.array(wq))
    mlx_deq = np.array(mx.dequantize(wq, mx.array(s), mx.array(b), group_size=group, bits=bits))
    np.testing.assert_array_equal(affine.dequantize(np.array(wq), s, b, bits, group), mlx_deq)
    # our quantization: mx.dequantize reads it identically, and it is at least as accurate
    q = Q.quantize(w, qtype)
    assert q.data.dtype == np.uint32 and q.data.shape == (6, 256 * bits // 32)
    assert q.scales.dtype == np.float16 and q.scales.shape == (6, 256 // group) == q.biases.shape
    ours = Q.dequantize(q)
    theirs = np.array(mx.dequantize(mx.array(q.data), mx.array(q.scales.astype(np.float32)),
                                    mx.array(q.biases.astype(np.float32)), group_size=group, bits=bits))
    np.testing.assert_array_equal(ours, theirs)
    assert _rel_rms(w, ours) <= _rel_rms(w, mlx_deq)


# ---------------------------------------------------------------------------
# API edges
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("qtype,cols,expected", [
    ("Q4_K", 4096, "Q4_K"), ("Q4_K", 96, "Q5_0"), ("q2_k", 100, "F16"), ("Q6_K", 288, "Q8_0"),
    ("Q5_K", 576, "Q5_1"), ("Q3_K", 640, "IQ4_NL"), ("Q2_K", 896, "IQ4_NL"), ("IQ4_XS", 960, "IQ4_NL"),
    ("IQ2_XXS", 576, "IQ4_NL"), ("IQ3_S", 576, "IQ4_NL"), ("IQ1_M", 576, "IQ4_NL"), ("TQ1_0", 576, "Q4_0"),
    ("TQ2_0", 512, "TQ2_0"), ("IQ2_S", 100, "F16"), ("Q4_0", 48, "F16"), ("Q5_1", 64, "Q5_1"),
    ("Q8_0", 64, "Q8_0"), ("Q8_0", 48, "F16"), ("F16", 7, "F16"), ("BF16", 3, "BF16"), ("F32", 5, "F32"),
    ("AFFINE4_G64", 128, "AFFINE4_G64"), ("AFFINE4_G64", 96, "AFFINE4_G32"), ("AFFINE3_G64", 80, "F16"),
    ("AFFINE8_G32", 32, "AFFINE8_G32"), ("AFFINE2_G32", 48, "F16"),
])
def test_fallback_type(qtype, cols, expected):
    assert Q.fallback_type(qtype, cols) == expected


def test_row_bytes():
    assert Q.row_bytes("Q4_K", 512) == 288
    assert Q.row_bytes("Q8_0", 64) == 68
    assert Q.row_bytes("F16", 10) == 20
    assert Q.row_bytes("AFFINE4_G64", 128) == 64 + 2 * 2 * 2


def test_one_dimensional_input_is_one_row():
    v = _weights("normal", rows=1, cols=256)[0]
    q = Q.quantize(v, "Q6_K")
    assert q.shape == (1, 256)
    np.testing.assert_array_equal(Q.dequantize(q)[0], Q.dequantize(Q.quantize(v[None], "Q6_K"))[0])


def test_errors():
    w = _weights("normal", rows=2, cols=256)
    with pytest.raises(InputError, match="Q5_0"):
        Q.quantize(w[:, :96], "Q4_K")
    with pytest.raises(UnsupportedError):
        Q.quantize(w, "Q7_K")
    with pytest.raises(UnsupportedError):
        Q.quantize(w, "Q8_K")  # a ggml type edgeslim does not write
    with pytest.raises(InputError, match="importance"):
        Q.quantize(w, "Q4_K", np.ones(255, np.float32))
    with pytest.raises(InputError, match="importance"):
        Q.quantize(w, "Q4_K", -np.ones(256, np.float32))
    bad = w.copy()
    bad[0, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        Q.quantize(bad, "Q4_K")
    with pytest.raises(InputError):
        Q.quantize(np.zeros((2, 2, 256), np.float32), "Q4_K")
    raw = Q.quantize(w, "Q4_K").data
    with pytest.raises(FormatError):
        Q.dequantize_raw(raw.reshape(-1)[:-1], "Q4_K", (2, 256))
    with pytest.raises(FormatError):
        Q.dequantize_raw(raw, "Q4_K", (2, 300))


@pytest.mark.parametrize("qtype", QUANTIZED)
def test_zero_importance_columns_still_quantized(qtype):
    """Columns (here a whole 256-block) of zero importance are not thrown away."""
    w = _weights("normal", rows=4, cols=512, seed=21)
    imp = _importance(512)
    imp[:256] = 0.0
    out = Q.dequantize(Q.quantize(w, qtype, imp))
    plain = Q.dequantize(Q.quantize(w, qtype))
    assert _rel_rms(w[:, :256], out[:, :256]) <= 1.5 * _rel_rms(w[:, :256], plain[:, :256])


def test_dequantize_raw_accepts_bytes():
    w = _weights("normal", rows=2, cols=256)
    q = Q.quantize(w, "Q5_K")
    np.testing.assert_array_equal(Q.dequantize_raw(q.data.tobytes(), "Q5_K", (2, 256)), Q.dequantize(q))
