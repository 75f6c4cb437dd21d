"""llama.cpp's legacy, IQ and ternary types: numpy references bit-exact with gguf-py, encoders' bytes read back
identically by gguf-py, grids and tables taken from gguf-py, error bounds."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from edgeslim import quants as Q
from edgeslim.quants import iq1, iq2, iq3, iq4
from edgeslim.tables import GGML_WRITABLE, quant_info

ZOO = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS",
       "IQ1_M", "IQ1_S", "TQ2_0", "TQ1_0"]
WRITABLE_ZOO = [t for t in ZOO if t in GGML_WRITABLE]

# byte offsets of each block's fp16 scales (the test's own reading of ggml's structs): random bytes
# there could be NaN/inf, so the test writes finite values
FP16_AT = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "TQ1_0": (52,), "TQ2_0": (64,), "IQ1_M": ()}

# relative RMS error ceilings (about 15% above what the encoders reach) on N(0, 1) and student-t(3) weights
MAX_REL_RMS = {
    "Q5_1": (0.039, 0.050), "Q5_0": (0.046, 0.074), "Q4_1": (0.080, 0.105), "Q4_0": (0.092, 0.145),
    "IQ4_NL": (0.084, 0.113), "IQ4_XS": (0.085, 0.115), "IQ3_S": (0.15, 0.19), "IQ3_XXS": (0.20, 0.24),
    "IQ2_S": (0.27, 0.37), "IQ2_XS": (0.33, 0.39), "IQ2_XXS": (0.38, 0.46), "IQ1_M": (0.48, 0.53),
    "IQ1_S": (0.51, 0.63), "TQ2_0": (0.50, 0.70), "TQ1_0": (0.50, 0.70),
}


def _valid_blocks(qtype: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """Random bytes for a (rows, cols) tensor whose fp16 scales are finite and of realistic size."""
    info = quant_info(qtype)
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows * cols // info.block, info.block_bytes), dtype=np.uint8)
    for at in FP16_AT.get(qtype, (0,)):
        raw[:, at:at + 2] = (rng.standard_normal(len(raw)) * 0.01).astype("<f2").view(np.uint8).reshape(-1, 2)
    if qtype == "IQ1_M":  # d is spread over the top nibbles of four uint16: clear its top exponent bit
        raw[:, 55] &= 0xBF
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("shape", [(1, 256), (3, 512), (5, 1024)])
@pytest.mark.parametrize("qtype", ZOO)
def test_reference_decoders_bit_exact_with_gguf(qtype, shape):
    raw = _valid_blocks(qtype, *shape, seed=shape[1] + len(qtype))
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    ours = Q.dequantize_raw(raw, qtype, shape)
    assert ours.dtype == np.float32 and ours.shape == shape
    assert np.isfinite(ref).all()
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL"])
def test_32_wide_types_read_odd_widths(qtype):
    raw = _valid_blocks(qtype, 3, 96, seed=5)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    np.testing.assert_array_equal(Q.dequantize_raw(raw, qtype, (3, 96)).view(np.uint32), ref.view(np.uint32))


def test_grids_and_tables_come_from_gguf():
    q = gguf.quants
    for grid, cls in [(iq2.GRID_XXS, q.IQ2_XXS), (iq2.GRID_XS, q.IQ2_XS), (iq2.GRID_S, q.IQ2_S),
                      (iq3.GRID_XXS, q.IQ3_XXS), (iq3.GRID_S, q.IQ3_S), (iq1.GRID, q.IQ1_S)]:
        assert grid.dtype == np.int8 and grid.shape == cls.grid_shape
        np.testing.assert_array_equal(grid.astype(np.float32), np.asarray(cls.grid).reshape(cls.grid_shape))
    assert iq2.KSIGNS.shape == (128,) and iq2.KSIGNS.tobytes() == q.IQ2_XXS.ksigns
    np.testing.assert_array_equal(iq2.KSIGNS & 127, np.arange(128))  # 7 stored bits, the 8th is parity
    assert not (iq2.SIGN_BITS.sum(1) % 2).any()
    np.testing.assert_array_equal(iq4.KVALUES, q.IQ4_NL.kvalues)


def _weights(kind: str, rows: int = 16, cols: int = 1024, seed: int = 1234) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal((rows, cols)).astype(np.float32)
    return (rng.standard_t(3, (rows, cols)) * 0.02).astype(np.float32)


def _rel_rms(w, wh, c=None):
    c = np.ones(w.shape[1], np.float32) if c is None else c
    return float(np.sqrt((c * (w - wh) ** 2).mean() / (c * w * w).mean()))


@pytest.mark.parametrize("use_importance", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", WRITABLE_ZOO)
def test_encoder_bytes_read_identically_by_gguf(qtype, use_importance):
    w = _weights("t3", rows=6, cols=768, seed=len(qtype))
    w[1, :256] = 0.0  # an all-zero super-block
    w[2, 256:512] = 0.37  # a constant one
    imp = np.random.default_rng(4).gamma(0.5, 2.0, 768).astype(np.float32) if use_importance else None
    q = Q.quantize(w, qtype, imp)
    assert q.data.dtype == np.uint8 and q.data.shape == (6, Q.row_bytes(qtype, 768))
    ours = Q.dequantize(q)
    ref = gguf.quants.dequantize(q.data, gguf.GGMLQuantizationType[qtype])
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
    assert not ours[1, :256].any()
    # a constant block is no harder than random weights (the lattice grids hold few constant points)
    assert _rel_rms(w[2:3, 256:512], ours[2:3, 256:512]) <= MAX_REL_RMS[qtype][0]


@pytest.mark.parametrize("kind", ["normal", "t3"])
@pytest.mark.parametrize("qtype", list(MAX_REL_RMS))
def test_round_trip_error_bound(qtype, kind):
    w = _weights(kind)
    err = _rel_rms(w, Q.dequantize(Q.quantize(w, qtype)))
    assert err <= MAX_REL_RMS[qtype][kind == "t3"], f"{qtype} on {kind}: relative RMS {err:.5f}"


def test_iq1_s_keeps_one_delta_per_sub_block():
    """IQ1_S's search picks the delta sign per sub-block of 32; IQ1_M's per group of 8 may differ."""
    w = _weights("t3", rows=4, cols=512, seed=6)
    raw = Q.quantize(w, "IQ1_M").data.reshape(-1, 56)
    assert iq1.unpack_m(raw)[3].reshape(-1, 8, 4).std(-1).any()  # mixed signs inside sub-blocks of 32
    raw = Q.quantize(w, "IQ1_S").data.reshape(-1, 50)
    assert iq1.unpack_s(raw)[2].any() and not iq1.unpack_s(raw)[2].all()


def test_lattice_parity_signs_are_even():
    """IQ2_XXS / IQ2_XS / IQ3_XXS store 7 sign bits per 8 weights: the decoded signs must match the weights'
    own everywhere but at most one flipped weight per odd group."""
    w = _weights("normal", rows=4, cols=512, seed=3)
    for qtype, unpack in [("IQ2_XXS", iq2.unpack_xxs), ("IQ2_XS", iq2.unpack_xs), ("IQ3_XXS", iq3.unpack_xxs)]:
        q = Q.quantize(w, qtype)
        neg = unpack(q.data.reshape(-1, quant_info(qtype).block_bytes))[2].reshape(-1, 8)
        want = (w < 0).reshape(-1, 8)
        flips = (neg != want).sum(1)
        np.testing.assert_array_equal(flips, want.sum(1) % 2)


@pytest.mark.parametrize("qtype", ["TQ1_0", "TQ2_0"])
def test_ternary_search_is_exact(qtype):
    """For one block the search's d is the best over every threshold (brute force over k largest |x|)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    imp = rng.gamma(0.5, 2.0, 256).astype(np.float32)
    got = (imp * (x - Q.dequantize(Q.quantize(x, qtype, imp))) ** 2).sum()
    order = np.argsort(-np.abs(x[0]))
    best = np.inf
    for k in range(1, 257):
        s = np.zeros(256, np.float32)
        s[order[:k]] = np.sign(x[0, order[:k]])
        d = np.float32(np.float16((imp * np.abs(x[0]) * (s != 0)).sum() / (imp * (s != 0)).sum()))
        t = np.clip(np.rint(x[0] / d), -1, 1)
        best = min(best, float((imp * (x[0] - d * t) ** 2).sum()))
    assert got <= best * (1 + 1e-5)


@pytest.mark.parametrize("qtype", ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S"])
def test_lattice_nearest_is_exact(qtype):
    """lattice_nearest's bounded search returns the brute-force optimum over the whole grid (importance-
    weighted, with and without a required sign flip, either delta sign for IQ1, cold and warm-started)."""
    from edgeslim.quants import lattice_nearest as LN
    spec = {"IQ2_XXS": iq2.XXS, "IQ2_XS": iq2.XS, "IQ2_S": iq2.S, "IQ3_XXS": iq3.XXS, "IQ3_S": iq3.S,
            "IQ1_S": iq1.S}[qtype]
    t, D, n = spec.index, spec.dim, 300
    rng = np.random.default_rng(len(qtype))
    x = rng.standard_normal((n, D)).astype(np.float32)
    x[:10] = 0.0  # zero slots: every point ties
    a = x if spec.signed else np.abs(x)
    w = (rng.gamma(0.5, 2.0, (n, D)) + 1e-3).astype(np.float32)
    a64, w64 = a.astype(np.float64)[:, None], w.astype(np.float64)[:, None]  # (n, 1, D)
    for shift in ((spec.delta, -spec.delta) if spec.delta else (0.0,)):
        G = spec.grid.astype(np.float64) + shift  # (P, D)
        e = (np.abs(a).max(1) / np.abs(G).max() * rng.uniform(0.6, 1.4, n)).astype(np.float32)
        ev = e.astype(np.float64)
        err = (w64 * (a64 - ev[:, None, None] * G) ** 2).sum(-1)  # (n, P) brute force
        flip_err = err + (4 * ev[:, None, None] * w64 * a64 * G).min(-1)  # with the cheapest flip
        mode, pair = np.zeros(n, np.int8), np.zeros(0, np.intp)
        if spec.parity:  # 1: flipped; 2, 3: both, as the two slots of a pair that flips one sign
            mode[:] = rng.integers(0, 3, n)
            pair = np.nonzero(mode[0::2] == 2)[0] * 2
            mode[pair + 1] = 3
        want = [np.where(mode[:, None] == 1, flip_err, err), flip_err]
        warm = np.full((2, n), -1, np.int32)
        for _ in range(2):
            out_i, out_f = np.empty((2, n, 2), np.int32), np.empty((2, n, 3))
            LN.nearest_points(a, w, e, mode, shift, t.levels, t.codes, t.M, t.ptr, t.yu, t.yv, t.pts, warm,
                              out_i, out_f)
            if spec.parity:  # a pair's flip goes where it costs less: row 0 holds the pair's exact optimum
                best = np.minimum(flip_err[pair].min(1) + err[pair + 1].min(1), err[pair].min(1) + flip_err[pair + 1].min(1))
                np.testing.assert_allclose(out_f[0, pair, 0] + out_f[0, pair + 1, 0], best, rtol=1e-9, atol=1e-30)
                assert ((out_i[0, pair, 1] >= 0) != (out_i[0, pair + 1, 1] >= 0)).all()
            single = np.setdiff1d(np.arange(n), np.concatenate([pair, pair + 1]))
            for r, rows in ((0, single), (1, np.setdiff1d(np.nonzero(mode == 2)[0], pair))):
                g, flip, got = out_i[r, rows, 0], out_i[r, rows, 1], out_f[r, rows, 0]
                np.testing.assert_allclose(got, want[r][rows].min(1), rtol=1e-9, atol=1e-30)
                np.testing.assert_allclose(got, want[r][rows, g], rtol=1e-9, atol=1e-30)
                assert ((flip >= 0) == ((mode[rows] == 1) | (r == 1))).all()
                # the error from the point's statistics: sum w a^2 - 2 e m1 + e^2 m2
                stats = ((w64[rows, 0] * a64[rows, 0] ** 2).sum(1) - 2 * ev[rows] * out_f[r, rows, 1]
                         + ev[rows] ** 2 * out_f[r, rows, 2])
                np.testing.assert_allclose(stats, got, rtol=1e-6, atol=1e-9)
            warm = np.roll(out_i[:, :, 0], 1, axis=1)  # a wrong start must not change the answer
