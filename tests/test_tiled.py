"""The tiled prompt path (runtime/kernels/tiled.py): decoded row tiles x activations laid out as an
outer product, for the 256-weight super-block types on hosts with the 512-bit vpdpbusd."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gguf")
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402

from edgeslim.runtime import kernels as K  # noqa: E402
from edgeslim.runtime.kernels import tiled  # noqa: E402
from edgeslim.tables import GGMLType  # noqa: E402

from test_kernels import IQ, KQUANTS, LEGACY, TERNARY, ggml_raw, lossless_x  # noqa: E402

pytestmark = pytest.mark.skipif(not tiled.USE_VNNI512, reason="the host has no 512-bit vpdpbusd (AVX512-VNNI)")
SUPER = KQUANTS + IQ + TERNARY + LEGACY
# 75 rows: a whole row block of 64 and a last row group of 3; 70 activations: a last block of 6
ROWS, COLS, T = 75, 512, 70
assert T >= tiled.MIN_T


def _case(qtype, seed):
    rng = np.random.default_rng(seed)
    raw = ggml_raw(qtype, ROWS, COLS, rng)  # random bytes: scales and codes over their whole range
    return K.prepare(qtype, raw, (ROWS, COLS)), gguf_dequantize(raw, GGMLType[qtype]), rng


@pytest.mark.parametrize("qtype", SUPER)
def test_tiled_prompt_matches_the_weights(qtype):
    """Exact int8 activations (every block reaching 127) and random ones: within float rounding
    of the float64 product with the gguf-dequantized weights, and of the row kernels."""
    p, ref, rng = _case(qtype, 3)
    assert p._tiles is not None
    for x in (lossless_x(T, COLS, rng), rng.standard_normal((T, COLS)).astype(np.float32)):
        y = K.linear(p, x)
        assert any(k[0] == "tile" for k in p._entries), "a prompt of T >= MIN_T takes the tiled path"
        rows = K.linear(p.with_portable(False, tiles=False), x)
        yr = x.astype(np.float64) @ ref.T.astype(np.float64)
        scale = np.abs(x).astype(np.float64) @ np.abs(ref.T).astype(np.float64)
        assert np.all(np.abs(y - rows) <= 1e-5 * scale + 1e-30)
        assert np.all(np.abs(y - yr) <= 0.02 * scale)


@pytest.mark.parametrize("qtype", SUPER)
def test_tiled_lossless_activations_are_exact_to_rounding(qtype):
    p, ref, rng = _case(qtype, 4)
    x = lossless_x(T, COLS, rng)
    y, yr = K.linear(p, x), x.astype(np.float64) @ ref.T.astype(np.float64)
    scale = np.abs(x).astype(np.float64) @ np.abs(ref.T).astype(np.float64)
    assert np.all(np.abs(y - yr) <= 1e-5 * scale + 1e-30)


@pytest.mark.parametrize("qtype", ("Q4_K", "Q6_K", "IQ4_XS", "IQ2_S", "TQ1_0", "Q4_0", "Q5_1", "IQ4_NL"))
def test_tiled_serial_and_parallel_copies_agree(qtype):
    p, _, rng = _case(qtype, 5)
    x = rng.standard_normal((T, COLS)).astype(np.float32)
    nq, nd, ns = p._x_widths
    sp = p._batched
    args = (sp, *p.planes, x, ROWS, nq, nd, ns, sp.xblk, sp.sgroup, sp.unit, p._order, *p._tiles)
    np.testing.assert_array_equal(tiled.TILED[0](*args), tiled.TILED[1](*args))


def test_tiled_path_is_for_super_block_and_32_wide_types_only():
    rng = np.random.default_rng(6)
    p = K.prepare("F16", rng.standard_normal((8, COLS)).astype(np.float16), (8, COLS))
    assert p._tiles is None and K.prepare("Q4_K", ggml_raw("Q4_K", 8, COLS, rng), (8, COLS)).with_portable()._tiles is None


def test_short_prompts_stay_on_the_row_kernels():
    p, _, rng = _case("Q4_K", 7)
    K.linear(p, rng.standard_normal((tiled.MIN_T - 1, COLS)).astype(np.float32))
    assert not any(k[0] == "tile" for k in p._entries)


@pytest.mark.parametrize("qtype", ("Q4_0", "Q5_1", "Q8_0", "IQ4_NL"))
@pytest.mark.parametrize("cols", (576, 640, 96))
def test_tiled_32_wide_rows_with_a_tail(qtype, cols):
    """Rows that are not whole 256-element units (SmolLM2's 576, Gemma 3's 640, 3 blocks only)."""
    rng = np.random.default_rng(8)
    raw = ggml_raw(qtype, 19, cols, rng)
    p, ref = K.prepare(qtype, raw, (19, cols)), gguf_dequantize(raw, GGMLType[qtype])
    x = lossless_x(T, cols, rng)
    y, yr = K.linear(p, x), x.astype(np.float64) @ ref.T.astype(np.float64)
    assert any(k[0] == "tile" for k in p._entries)
    scale = np.abs(x).astype(np.float64) @ np.abs(ref.T).astype(np.float64)
    assert np.all(np.abs(y - yr) <= 1e-5 * scale + 1e-30)
