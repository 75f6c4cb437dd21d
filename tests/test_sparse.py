"""Sparse quantized types (edgeslim/quants/sparse.py, tables.sparse_info): layouts, references, GGUF round trip."""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from edgeslim.errors import FormatError, InputError
from edgeslim.quants import dequantize_raw, sparse
from edgeslim.tables import GGMLType, sparse_info

rng = np.random.default_rng(0)


def random_mask(rows: int, cols: int, qtype: str, seed: int = 0) -> np.ndarray:
    """A random mask the sparse type allows."""
    info = sparse_info(qtype)
    r = np.random.default_rng(seed).random((rows, cols))
    if info.pattern.m:
        n, m = info.pattern.n, info.pattern.m
        order = np.argsort(r.reshape(rows, -1, m), axis=2)[:, :, :n]
        mask = np.zeros((rows, cols // m, m), bool)
        np.put_along_axis(mask, order, True, axis=2)
        return mask.reshape(rows, cols)
    order = np.argsort(r, axis=1)[:, :info.kept(cols)]
    mask = np.zeros((rows, cols), bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


TYPES = ["Q8_0@2:4", "Q4_K@2:4", "Q6_K@4:8", "Q2_K@4:8", "F16@2:4", "Q8_0@50%", "Q4_K@50%", "Q5_K@50%", "Q3_K@75%"]


def test_names_geometry_and_ids():
    q = sparse_info("q4_k@2:4")
    assert q.name == "Q4_K@2:4" and q.value == "Q4_K" and q.kept(1024) == 512
    assert q.index_row_bytes(1024) == 86  # 256 groups, 3 per byte
    assert q.nbytes(4, 1024) == 4 * (2 * 144 + 86)
    assert sparse_info("Q8_0@4:8").index_row_bytes(1024) == 112  # 128 groups x 7 bits
    u = sparse_info("Q8_0@70%")
    assert u.kept(1024) == 320 and u.index_row_bytes(1024) == 128  # 30% of 1024 = 307 -> 10 blocks of 32
    assert all(i.type_id > max(int(t) for t in GGMLType) for i in map(sparse_info, TYPES))
    assert len({sparse_info(t).type_id for t in TYPES}) == len({(sparse_info(t).value, sparse_info(t).pattern.name)
                                                                  for t in TYPES})
    assert sparse_info("Q4_K") is None
    for bad in ("Q4_K@3:4", "Q4_K@0%", "Q4_K@100%", "AFFINE4_G64@2:4", "Q4_K@x"):
        with pytest.raises(ValueError):
            sparse_info(bad)
    # unstructured needs something kept and pruned in whole blocks; N:M whole groups and blocks
    assert not sparse_info("Q4_K@50%").fits(256) and sparse_info("Q8_0@50%").fits(256)
    assert not sparse_info("Q4_K@2:4").fits(256) and sparse_info("Q4_K@2:4").fits(512)
    assert sparse.sparse_fallback("Q4_K@2:4", 256) == "Q8_0@2:4"
    assert sparse.sparse_fallback("Q4_K@50%", 768) == "Q8_0@50%"  # Q4_K blocks would give 33%
    assert sparse.sparse_fallback("Q4_K@2:4", 258) is None


def test_combination_codes_are_all_sets_in_order():
    assert [tuple(c) for c in sparse.COMB_2_4] == list(combinations(range(4), 2))
    assert [tuple(c) for c in sparse.COMB_4_8] == list(combinations(range(8), 4))
    assert (sparse.MASK_CODE_2_4 >= 0).sum() == 6 and (sparse.MASK_CODE_4_8 >= 0).sum() == 70


@pytest.mark.parametrize("qtype", ["F16@2:4", "F16@4:8", "F16@50%"])
def test_index_round_trip_and_drawn_layout(qtype):
    info = sparse_info(qtype)
    mask = random_mask(7, 96, qtype, seed=3)
    idx = sparse.pack_index(mask, info)
    assert idx.shape == (7, info.index_row_bytes(96)) and idx.dtype == np.uint8
    assert (sparse.unpack_index(idx, info, 96) == mask).all()
    row = mask[0]
    if info.pattern.index == "comb3":  # byte k = c[3k] + 6 c[3k+1] + 36 c[3k+2]
        codes = [sparse.MASK_CODE_2_4[int(sum(1 << p for p in range(4) if row[4 * g + p]))] for g in range(24)]
        assert list(idx[0]) == [codes[3 * k] + 6 * codes[3 * k + 1] + 36 * codes[3 * k + 2] for k in range(8)]
    elif info.pattern.index == "comb7":  # 7-bit codes, little-endian bit stream
        codes = [int(sparse.MASK_CODE_4_8[int(sum(1 << p for p in range(8) if row[8 * g + p]))]) for g in range(12)]
        stream = sum(c << (7 * g) for g, c in enumerate(codes))
        assert list(idx[0]) == [(stream >> (8 * k)) & 0xFF for k in range(idx.shape[1])]
    else:  # bit j = column j
        assert list(idx[0]) == [sum(int(row[8 * k + b]) << b for b in range(8)) for k in range(12)]


@pytest.mark.parametrize("qtype", TYPES)
def test_reference_round_trip(qtype):
    cols = 512
    w = rng.standard_normal((16, cols)).astype(np.float32)
    mask = random_mask(16, cols, qtype)
    imp = rng.uniform(0.1, 3.0, cols).astype(np.float32)
    st = sparse.compress(w, mask, qtype, imp)
    info = sparse_info(qtype)
    assert st.values.shape == (16, info.kept(cols)) and st.nbytes == info.nbytes(16, cols)
    d = sparse.dequantize(st)
    assert (d[~mask] == 0).all() and (sparse.mask_of(st) == mask).all()
    # the kept weights are exactly the value type's decoding of the compact rows
    kept = dequantize_raw(st.values.data, info.value, st.values.shape)
    np.testing.assert_array_equal(d[mask], kept.reshape(-1))
    rel = np.linalg.norm(d[mask] - w[mask]) / np.linalg.norm(w[mask])
    assert rel < {"Q2_K": 0.45, "Q3_K": 0.25, "Q4_K": 0.12, "Q5_K": 0.06, "Q6_K": 0.03}.get(info.value, 0.01)
    np.testing.assert_array_equal(sparse.dequantize_raw(st.values.data, st.index.view(np.int8), qtype, w.shape), d)


def test_importance_weights_each_kept_weight_by_its_column():
    w = rng.standard_normal((64, 512)).astype(np.float32)
    mask = random_mask(64, 512, "Q4_K@2:4")
    imp = np.where(np.arange(512) % 2 == 0, 100.0, 0.01).astype(np.float32)

    def werr(st):
        e = (sparse.dequantize(st) - w) * mask
        return float((e * e * imp).sum())

    assert werr(sparse.compress(w, mask, "Q4_K@2:4", imp)) < 0.9 * werr(sparse.compress(w, mask, "Q4_K@2:4"))


def test_bad_masks_and_corrupt_indexes():
    w = rng.standard_normal((4, 64)).astype(np.float32)
    mask = random_mask(4, 64, "Q8_0@2:4")
    bad = mask.copy()
    bad[0, :4] = [True, True, True, False]
    with pytest.raises(InputError, match="2:4"):
        sparse.compress(w, bad, "Q8_0@2:4")
    with pytest.raises(InputError, match="exactly 32"):
        sparse.compress(w, random_mask(4, 64, "Q8_0@2:4") & (np.arange(64) > 1), "Q8_0@50%")
    st = sparse.compress(w, mask, "Q8_0@2:4")
    idx = st.index.copy()
    idx[0, 0] = 250
    with pytest.raises(FormatError, match="corrupt"):
        sparse.dequantize_raw(st.values.data, idx, "Q8_0@2:4", (4, 64))
    with pytest.raises(FormatError, match="corrupt"):
        sparse.dequantize_raw(st.values.data, st.index[:, :-1], "Q8_0@2:4", (4, 64))
