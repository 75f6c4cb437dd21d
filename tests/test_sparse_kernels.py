"""The numba sparse kernels (runtime/kernels/sparse.py) against the numpy reference (edgeslim/quants/sparse.py)."""
from __future__ import annotations

import numpy as np
import pytest

from edgeslim.errors import FormatError
from edgeslim.quants import sparse as ref
from edgeslim.runtime import kernels
from edgeslim.tables import sparse_info

from test_sparse import random_mask

TYPES = ["Q2_K@2:4", "Q3_K@4:8", "Q4_K@2:4", "Q5_K@4:8", "Q6_K@2:4", "Q8_0@2:4", "F16@4:8",
         "Q2_K@60%", "Q3_K@50%", "Q4_K@70%", "Q5_K@50%", "Q6_K@30%", "Q8_0@50%", "F16@50%"]


def stored(qtype: str, rows: int = 24, cols: int = 1024, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * np.exp(rng.standard_normal((rows, 1)))).astype(np.float32)
    w[0, :64] = 0.0  # an all-zero stretch and an outlier
    w[1, 7] = 40.0
    return ref.compress(w, random_mask(rows, cols, qtype, seed), qtype)


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_bit_exact_with_reference(qtype):
    st = stored(qtype)
    p = kernels.prepare(qtype, st.values.data, st.shape, index=st.index)
    want = ref.dequantize(st)
    got = kernels.dequantize(p)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))
    ids = np.array([5, 0, 23, 5])
    assert np.array_equal(kernels.embed_rows(p, ids), want[ids])


@pytest.mark.parametrize("qtype", ["Q4_K@2:4", "Q6_K@4:8", "Q8_0@50%", "F16@2:4"])
@pytest.mark.parametrize("T", [1, 3, 40])
def test_linear_equals_dense_product(qtype, T):
    st = stored(qtype, rows=40)
    p = kernels.prepare(qtype, st.values.data, st.shape, index=st.index)
    x = np.random.default_rng(1).standard_normal((T, st.shape[1])).astype(np.float32)
    want = x.astype(np.float64) @ ref.dequantize(st).astype(np.float64).T
    got = kernels.linear(p, x)
    assert got.shape == (T, 40)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_fused_rows_and_mismatches():
    a, b = stored("Q4_K@2:4", rows=8, seed=1), stored("Q4_K@2:4", rows=16, seed=2)
    pa, pb = (kernels.prepare(s.qtype, s.values.data, s.shape, index=s.index) for s in (a, b))
    fused = kernels.concat_rows([pa, pb])
    assert fused.shape == (24, 1024)
    np.testing.assert_array_equal(kernels.dequantize(fused), np.concatenate([ref.dequantize(a), ref.dequantize(b)]))
    c = stored("Q8_0@2:4", rows=8)
    assert kernels.concat_rows([pa, kernels.prepare(c.qtype, c.values.data, c.shape, index=c.index)]) is None
    dense = kernels.prepare("Q8_0", c.values.data[:, :34 * 4], (8, 128))
    assert kernels.concat_rows([pa, dense]) is None
    assert kernels.concat_rows([dense, pa]) is None
    with pytest.raises(FormatError, match="corrupt"):
        kernels.prepare("Q4_K@2:4", a.values.data, a.shape, index=a.index[:, :-1])
    with pytest.raises(FormatError, match="no Q4_K@2:4 position index"):
        kernels.prepare("Q4_K@2:4", a.values.data, a.shape)


def test_index_layouts_of_every_pattern_decode_alike():
    """The same mask stored as 2:4, as a bitmap and as 4:8 (2:4 implies 4:8) decodes to the same weights."""
    st = stored("F16@2:4", rows=6, cols=96)
    mask = ref.mask_of(st)
    w = ref.dequantize(st)
    for qt in ("F16@4:8", "F16@50%"):
        assert sparse_info(qt).kept(96) == 48
        other = ref.compress(w, mask, qt)
        p = kernels.prepare(qt, other.values.data, other.shape, index=other.index)
        np.testing.assert_array_equal(kernels.dequantize(p), w)
