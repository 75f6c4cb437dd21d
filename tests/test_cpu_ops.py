"""The numba block steps (runtime/cpu_ops.py) against the numpy reference (runtime/ops.py)."""
from __future__ import annotations

import numpy as np
import pytest

from edgeslim.runtime import cpu_ops, kernels
from edgeslim.runtime.kv_cache import KVCache
from edgeslim.runtime.ops import Rope, attention, rms_norm, swiglu


def test_f16_bits_read_every_pattern():
    bits = np.arange(1 << 16, dtype=np.uint16)
    ref = bits.view(np.float16).astype(np.float32)
    got = cpu_ops.f16_bits_to_f32(bits)
    finite = np.isfinite(ref)
    assert np.array_equal(got[finite].view(np.uint32), ref[finite].view(np.uint32))  # incl. -0, subnormals


def test_f16_bits_write_rounds_like_numpy():
    rng = np.random.default_rng(0)
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    halves = halves[np.isfinite(halves)]
    mids = (halves[:-1].astype(np.float64) + halves[1:]) / 2  # ties between neighbours (sorted runs)
    x = np.concatenate([
        rng.standard_normal(200_000).astype(np.float32) * np.float32(10.0) ** rng.integers(-9, 6, 200_000),
        halves, halves * np.float32(1.0004883), mids.astype(np.float32),
        np.array([65519, 65520, 1e9, -1e9, np.inf, -np.inf, 0.0, -0.0, 2 ** -25, 2 ** -24 * 1.5], np.float32),
    ]).astype(np.float32)
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16).view(np.uint16)
    assert np.array_equal(cpu_ops.f32_to_f16_bits(x), ref)
    assert np.isnan(cpu_ops.f32_to_f16_bits(np.array([np.nan], np.float32)).view(np.float16)[0])


def test_rms_norm_and_swiglu_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 96)).astype(np.float32)
    w = rng.standard_normal(96).astype(np.float32)
    np.testing.assert_allclose(cpu_ops.rms_norm(x, w, 1e-5), rms_norm(x, w, 1e-5), rtol=1e-5, atol=1e-6)
    gu = (rng.standard_normal((2, 2 * 64)) * 30).astype(np.float32)  # large |gate|: exp overflow side
    ref = swiglu(gu[:, :64], gu[:, 64:])
    np.testing.assert_allclose(cpu_ops.swiglu_halves(gu), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("n_head,n_kv,n_rot", [(4, 2, 16), (4, 4, 8), (6, 1, 16)])
@pytest.mark.parametrize("T", [1, 5])
def test_attend_f16_matches_numpy_path(neox, n_head, n_kv, n_rot, T):
    check_attend(neox, n_head, n_kv, n_rot, T, start=7, n_ctx=32, window=0)


@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("start", [3, 9, 30])
def test_attend_f16_sliding_window_ring(T, start):
    """A window of 6 positions in a ring of 6 + RING_SLACK slots, wrapped several times."""
    import edgeslim.runtime.kv_cache as kv

    old = kv.RING_SLACK
    kv.RING_SLACK = 3  # ring of 9 slots: >= window + T - 1
    try:
        check_attend(True, 4, 2, 16, T, start=start, n_ctx=64, window=6)
    finally:
        kv.RING_SLACK = old


def check_attend(neox, n_head, n_kv, n_rot, T, start, n_ctx, window):
    """cpu_ops' attention (both compilations) equals the numpy path on the same cache:
    same outputs, same fp16 bits written; window > 0 uses a ring cache."""
    rng = np.random.default_rng(2)
    hd = 16
    rope = Rope(n_rot, 10000.0, n_ctx, neox)
    ref_cache = KVCache(1, n_kv, hd, n_ctx, windows=(window,))
    ring = ref_cache.ring(0)
    assert bool(ring) == bool(window)
    for a in (ref_cache.k[0], ref_cache.v[0]):  # earlier positions (every slot, so a stale one would show)
        a[:] = rng.standard_normal(a.shape).astype(np.float16)
    ref_cache.pos = start
    q = rng.standard_normal((T, n_head, hd)).astype(np.float32)
    k = rng.standard_normal((T, n_kv, hd)).astype(np.float32)
    v = rng.standard_normal((T, n_kv, hd)).astype(np.float32)
    saved = [ref_cache.k[0].copy(), ref_cache.v[0].copy()]

    qr, kr = rope(q, start), rope(k, start)  # the numpy path of CPUBackend.attend
    kc, vc, kpos0 = ref_cache.window_view(0, kr, v)
    want = attention(qr, kc, vc, start, 0.3, window, kpos0)  # (T, H*Hd)

    qkv = np.concatenate([q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)], axis=1)  # (T, (H+2Hkv)*Hd)
    ours = KVCache(1, n_kv, hd, n_ctx, windows=(window,))
    for fn in (cpu_ops.attend_serial, cpu_ops.attend_parallel):
        ours.k[0][:], ours.v[0][:] = saved
        got = fn(qkv, n_head, rope.cos, rope.sin, neox, ours.k16[0], ours.v16[0], start, 0.3, window, ring)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
        assert np.array_equal(ours.k16[0], ref_cache.k16[0]) and np.array_equal(ours.v16[0], ref_cache.v16[0])


def test_geglu_and_head_norms_match_numpy():
    from edgeslim.runtime.ops import geglu

    rng = np.random.default_rng(4)
    gu = (rng.standard_normal((2, 2 * 64)) * 5).astype(np.float32)
    np.testing.assert_allclose(cpu_ops.geglu_halves(gu), geglu(gu[:, :64], gu[:, 64:]), rtol=1e-5, atol=1e-5)
    H, Hkv, hd = 4, 2, 16
    qkv = rng.standard_normal((3, (H + 2 * Hkv) * hd)).astype(np.float32)
    qw, kw = rng.standard_normal(hd).astype(np.float32), rng.standard_normal(hd).astype(np.float32)
    want = qkv.copy()
    want[:, :H * hd] = rms_norm(qkv[:, :H * hd].reshape(-1, hd), qw, 1e-6).reshape(3, -1)
    want[:, H * hd:(H + Hkv) * hd] = rms_norm(qkv[:, H * hd:(H + Hkv) * hd].reshape(-1, hd), kw, 1e-6).reshape(3, -1)
    cpu_ops.head_norms(qkv, H, Hkv, hd, qw, kw, 1e-6)
    np.testing.assert_allclose(qkv, want, rtol=1e-5, atol=1e-6)


def test_concat_rows_equals_separate_matmuls():
    rng = np.random.default_rng(3)
    from edgeslim.quants import quantize

    parts = []
    for rows in (64, 32, 32):
        w = rng.standard_normal((rows, 256)).astype(np.float32)
        qt = quantize(w, "Q4_K")
        parts.append(kernels.prepare("Q4_K", qt.data, (rows, 256)))
    fused = kernels.concat_rows(parts)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    want = np.concatenate([kernels.linear(p, x) for p in parts], axis=1)
    np.testing.assert_array_equal(kernels.linear(fused, x), want)
    other = kernels.prepare("F32", rng.standard_normal((8, 256)).astype(np.float32).view(np.uint8), (8, 256))
    assert kernels.concat_rows([parts[0], other]) is None  # different types are not fused


def test_exp_is_accurate_over_the_float_range():
    from numba import njit

    x = np.concatenate([np.linspace(-87, 88, 200_001), [-1e30, -200.0, 100.0, 1e30]]).astype(np.float32)
    got = njit(lambda a: np.array([cpu_ops._exp(v) for v in a], np.float32))(x)
    ref = np.exp(np.clip(x, -87, 88).astype(np.float64))
    assert np.max(np.abs(got / ref - 1)) < 4e-7  # clamped outside [-87, 88]: tiny / huge, never 0 or inf


@pytest.mark.parametrize("T", [3, 9])  # below and above ACT_PARALLEL_ROWS (serial and parallel copies)
def test_gated_activations_on_many_rows(T):
    from edgeslim.runtime.ops import geglu

    gu = (np.random.default_rng(5).standard_normal((T, 2 * 80)) * 8).astype(np.float32)
    np.testing.assert_allclose(cpu_ops.swiglu_halves(gu), swiglu(gu[:, :80], gu[:, 80:]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cpu_ops.geglu_halves(gu), geglu(gu[:, :80], gu[:, 80:]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T,start,window,kpos0,n_head,n_kv,hd", [
    (40, 0, 0, 0, 8, 2, 16),  # a prompt: causal over itself, several query blocks
    (21, 30, 0, 0, 4, 4, 18),  # continuing a cache; head size not a multiple of 4
    (33, 0, 7, 0, 6, 1, 8),  # sliding window inside the prompt
    (20, 50, 12, 38, 4, 2, 5),  # a ring layer's view: keys from position 38 on
])
def test_attention_f32_matches_numpy(T, start, window, kpos0, n_head, n_kv, hd):
    rng = np.random.default_rng(6)
    S = start + T - kpos0
    q = rng.standard_normal((T, n_head, hd)).astype(np.float32)
    kt = rng.standard_normal((n_kv, hd, S)).astype(np.float32)
    v = rng.standard_normal((n_kv, S, hd)).astype(np.float32)
    want = attention(q, kt, v, start, 0.3, window, kpos0)  # (T, H*Hd)
    np.testing.assert_allclose(cpu_ops.attention_f32(q, kt, v, start, 0.3, window, kpos0), want, rtol=1e-5,
                               atol=2e-6)
