"""The MLX backend against the numpy reference: exact transcoding of Q8_0/Q4_K/Q5_K, affine weights used
as stored, logits of tiny random Llama / Mistral / Llama-3 / Qwen2 GGUFs, the KV cache, threads, and
stories260K's golden greedy output. Skipped when mlx does not import (runs on MLX's CPU device here)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from _llamacpp_files import random_blocks, write_llamacpp_copy  # noqa: E402  (tests/ helper)
from edgeslim.errors import InputError, UnsupportedError  # noqa: E402
from edgeslim.gguf_write import GGUFOut  # noqa: E402
from edgeslim.quants import affine, quantize  # noqa: E402
from edgeslim.runtime.backends import get_backend  # noqa: E402
from edgeslim.runtime.backends.mlx_backend import MLXBackend, MLXCache, load_weight  # noqa: E402
from edgeslim.runtime.backends.mlx_transcode import TRANSCODED, pack_codes, transcode  # noqa: E402
from edgeslim.runtime.backends.numpy_backend import NumpyBackend  # noqa: E402
from edgeslim.runtime.loader import WeightSource, open_model  # noqa: E402
from edgeslim.tables import Keys, TensorNames  # noqa: E402

# tiny model families: GGUF architecture and what each one exercises
ARCHS = {
    "llama": dict(arch="llama", n_head=4, n_head_kv=2),
    "mistral": dict(arch="llama", n_head=8, n_head_kv=2, rope_base=1e6),  # GQA 4x, head 32
    "llama3": dict(arch="llama", n_head=4, n_head_kv=1, rope_base=5e5, tied=True, rope_freqs=True,
                   linear_scale=2.0),
    "qwen2": dict(arch="qwen2", n_head=4, n_head_kv=2, rope_base=1e6, n_rot=32),  # biases, NEOX, partial rotary
}
QUANTS = ["Q8_0", "Q4_K", "Q5_K", "Q6_K", "AFFINE4_G64", "AFFINE3_G32"]
N_VOCAB, N_EMBD, N_FF, N_LAYER, N_CTX = 300, 256, 512, 2, 64
PROMPT = [5, 17, 280, 3, 99, 42, 42, 7, 150, 299, 0, 64]


def write_tiny_gguf(path, qtype="F32", arch="llama", n_head=4, n_head_kv=2, rope_base=10000.0, n_rot=None,
                    tied=False, rope_freqs=False, linear_scale=None, seed=0):
    """A random 2-layer model with every 2-D weight stored as `qtype`; returns path.

    Matrices ~ N(0, 1/cols) and embeddings ~ N(0, 1) keep activations and logits of order 1."""
    rng = np.random.default_rng(seed)
    hd = N_EMBD // n_head
    fmt = {k: getattr(Keys, k).format(arch=arch) for k in ("CONTEXT", "EMBED", "FFN", "BLOCKS", "HEADS",
                                                              "HEADS_KV", "RMS_EPS", "ROPE_BASE", "ROPE_DIM",
                                                              "ROPE_SCALING_TYPE", "ROPE_SCALING_FACTOR")}
    tensors: dict[str, tuple[np.ndarray, str]] = {}

    def mat(name, rows, cols, scale=None):
        w = rng.standard_normal((rows, cols)).astype(np.float32) * np.float32(scale or cols ** -0.5)
        tensors[name] = (w, qtype)

    def vec(name, n, base):
        tensors[name] = ((base + 0.1 * rng.standard_normal(n)).astype(np.float32), "F32")

    mat(TensorNames.TOKEN_EMBD, N_VOCAB, N_EMBD, scale=1.0)
    vec(TensorNames.OUTPUT_NORM, N_EMBD, 1.0)
    if not tied:
        mat(TensorNames.OUTPUT, N_VOCAB, N_EMBD)
    if rope_freqs:
        tensors[TensorNames.ROPE_FREQS] = (np.linspace(1.0, 8.0, (n_rot or hd) // 2).astype(np.float32), "F32")
    for b in range(N_LAYER):
        vec(TensorNames.ATTN_NORM.format(bid=b), N_EMBD, 1.0)
        vec(TensorNames.FFN_NORM.format(bid=b), N_EMBD, 1.0)
        mat(TensorNames.ATTN_Q.format(bid=b), n_head * hd, N_EMBD)
        mat(TensorNames.ATTN_K.format(bid=b), n_head_kv * hd, N_EMBD)
        mat(TensorNames.ATTN_V.format(bid=b), n_head_kv * hd, N_EMBD)
        mat(TensorNames.ATTN_OUT.format(bid=b), N_EMBD, n_head * hd)
        mat(TensorNames.FFN_GATE.format(bid=b), N_FF, N_EMBD)
        mat(TensorNames.FFN_UP.format(bid=b), N_FF, N_EMBD)
        mat(TensorNames.FFN_DOWN.format(bid=b), N_EMBD, N_FF)
        if arch == "qwen2":
            vec(TensorNames.ATTN_Q_BIAS.format(bid=b), n_head * hd, 0.0)
            vec(TensorNames.ATTN_K_BIAS.format(bid=b), n_head_kv * hd, 0.0)
            vec(TensorNames.ATTN_V_BIAS.format(bid=b), n_head_kv * hd, 0.0)
    with GGUFOut(path, arch=arch, force=True) as out:
        w = out.writer
        for key, val in (("CONTEXT", N_CTX), ("EMBED", N_EMBD), ("FFN", N_FF), ("BLOCKS", N_LAYER),
                         ("HEADS", n_head), ("HEADS_KV", n_head_kv), ("ROPE_DIM", n_rot or hd)):
            w.add_uint32(fmt[key], val)
        w.add_float32(fmt["RMS_EPS"], 1e-5)
        w.add_float32(fmt["ROPE_BASE"], rope_base)
        if linear_scale:
            w.add_string(fmt["ROPE_SCALING_TYPE"], "linear")
            w.add_float32(fmt["ROPE_SCALING_FACTOR"], linear_scale)
        for name, (a, t) in tensors.items():
            out.plan(name, a.shape, t)
        out.begin()
        for name, (a, t) in tensors.items():
            out.write(name, a if a.ndim == 1 else quantize(a, t))
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """Factory: tiny_gguf(family, qtype) -> cached path of a tiny random GGUF."""
    cache = {}

    def make(family="llama", qtype="F32"):
        if (family, qtype) not in cache:
            path = tmp_path_factory.mktemp("mlx") / f"{family}-{qtype}.gguf"
            cache[family, qtype] = write_tiny_gguf(path, qtype, **ARCHS[family])
        return cache[family, qtype]

    return make


def rel_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def both_logits(path, kv_dtype="float32", **kw):
    """Logits of PROMPT (every position) from the numpy reference and the MLX backend."""
    mf = open_model(path)
    ref_b, mlx_b = NumpyBackend(mf, kv_dtype=kv_dtype), MLXBackend(mf, kv_dtype=kv_dtype, **kw)
    ref = ref_b.forward(PROMPT, ref_b.new_cache(N_CTX), n_logits=len(PROMPT))
    got = mlx_b.forward(PROMPT, mlx_b.new_cache(N_CTX), n_logits=len(PROMPT))
    return got, ref, mlx_b


# -- transcoding ---------------------------------------------------------------------------
def awkward_matrix(rng) -> np.ndarray:
    """Rows of very different scales, an all-zero super-block, a constant row and outliers."""
    w = rng.standard_normal((24, 512)).astype(np.float32) * np.exp(2 * rng.standard_normal((24, 1))).astype(np.float32)
    w[1, :256] = 0.0
    w[2] = 0.75
    w[3, ::37] *= 40.0
    w[4] = np.abs(w[4])  # all positive: Q4_K/Q5_K mins of zero
    return w


def quantized(w: np.ndarray, qtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(GGUF bytes, gguf-py's dequantization) of w in qtype: edgeslim's quantizer where it writes the
    type, gguf-py's where it can (Q4_0..Q5_1, TQ*), else random valid blocks (IQ4_NL)."""
    import gguf

    gt = gguf.GGMLQuantizationType[qtype]
    try:
        raw = quantize(w, qtype).data
    except UnsupportedError:
        try:
            raw = gguf.quants.quantize(w, gt)
        except NotImplementedError:
            raw = random_blocks(qtype, *w.shape, np.random.default_rng(3))
    return raw, gguf.quants.dequantize(raw, gt)


@pytest.mark.parametrize("qtype", sorted(TRANSCODED))
def test_transcode_is_bit_exact(qtype):
    """numpy and mx.dequantize of the transcoded weight equal the ggml reference bit for bit."""
    raw, ref = quantized(awkward_matrix(np.random.default_rng(1)), qtype)
    parts = transcode(qtype, raw, ref.shape)
    assert parts.codes.shape == (24, 512 * parts.bits // 32) and parts.group == 32
    np.testing.assert_array_equal(parts.dequantize(), ref)
    got = mx.dequantize(mx.array(parts.codes), mx.array(parts.scales), mx.array(parts.biases),
                        group_size=parts.group, bits=parts.bits)
    np.testing.assert_array_equal(np.array(got), ref)


@pytest.mark.parametrize("bits", [4, 5, 8])
def test_pack_codes_matches_mlx_quantize(bits):
    """The fast byte-aligned packers and the reference packer both give MLX's own bit stream."""
    n = (1 << bits) - 1
    codes = np.random.default_rng(bits).integers(0, n + 1, (8, 128)).astype(np.uint8)
    codes[:, ::32], codes[:, 1::32] = 0, n  # every group spans [0, n]: MLX picks scale 1, bias -n
    packed, scales, biases = mx.quantize(mx.array(codes.astype(np.float32) - n), group_size=32, bits=bits)
    assert np.all(np.array(scales) == 1) and np.all(np.array(biases) == -n)
    np.testing.assert_array_equal(pack_codes(codes, bits), np.array(packed))
    np.testing.assert_array_equal(pack_codes(codes, bits), affine.pack(codes, bits))


def test_scale_dtype_follows_exactness():
    """float16 activations: f16 scales only where f16 holds them exactly, else float32 (or rounded on request)."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 256)).astype(np.float32)

    def held(qtype, mat, **kw):
        q = quantize(mat, qtype)
        src = WeightSource("w", qtype, q.shape, q.data.view(np.uint8) if q.scales is None else q.data,
                           q.scales, q.biases)
        return load_weight(src, mx.float16, **kw)

    assert held("Q8_0", w)[0].scales.dtype == mx.float16  # d and -128 d are fp16 values
    assert held("Q8_0", w * 1e5)[0].scales.dtype == mx.float32  # -128 d overflows fp16
    k4, how = held("Q4_K", w)
    assert (k4.scales.dtype, how) == (mx.float32, "transcoded")  # d*sc needs up to 17 bits
    assert held("Q4_K", w, exact_scales=False)[1] == "rounded"
    aff, how = held("AFFINE4_G64", w)
    assert (aff.scales.dtype, how) == (mx.float16, "affine")
    assert held("Q6_K", w)[1] == "dense"


def test_affine_codes_used_as_stored(tiny_gguf):
    path = tiny_gguf("llama", "AFFINE4_G64")
    mf = open_model(path)
    b = MLXBackend(mf)
    name = TensorNames.FFN_DOWN.format(bid=1)
    stored = np.asarray(mf.weight(name).data).reshape(-1).view(np.uint32)
    np.testing.assert_array_equal(np.array(b.layers[1]["ffn_down"].w).reshape(-1), stored)
    assert b.loaded[name] == ("AFFINE4_G64", "affine")


# -- logits against the numpy reference ---------------------------------------------------------
@pytest.mark.parametrize("family", sorted(ARCHS))
def test_f32_logits_match_numpy(tiny_gguf, family):
    got, ref, _ = both_logits(tiny_gguf(family, "F32"))
    assert got.shape == ref.shape == (len(PROMPT), N_VOCAB) and got.dtype == np.float32
    assert np.abs(ref).max() > 0.5  # the logits carry signal
    assert rel_err(got, ref) <= 1e-4


@pytest.mark.parametrize("qtype", QUANTS)
def test_quantized_logits_match_numpy(tiny_gguf, qtype, capsys):
    """Transcoded and affine weights are exact, so only float32 summation order differs."""
    got, ref, b = both_logits(tiny_gguf("llama", qtype))
    assert rel_err(got, ref) <= 1e-4
    how = {"Q8_0": "transcoded", "Q4_K": "transcoded", "Q5_K": "transcoded", "Q6_K": "dense"}.get(qtype, "affine")
    assert {h for _, h in b.loaded.values()} == {how}
    noted = capsys.readouterr().err
    assert ("Q6_K tensors dequantized to float32" in noted) == (qtype == "Q6_K")


@pytest.mark.parametrize("qtype,how", [("Q4_0", "transcoded"), ("Q5_1", "transcoded"), ("IQ4_NL", "transcoded"),
                                        ("TQ1_0", "transcoded"), ("IQ4_XS", "dense"), ("IQ2_S", "dense")])
def test_llama_cpp_types_match_numpy(tiny_gguf, tmp_path, qtype, how):
    """Files in the types only llama.cpp writes: exact transcodes (or a dense dequantization for the
    lattice types and IQ4_XS), so the logits equal the numpy reference's up to float32 summation."""
    path = write_llamacpp_copy(tiny_gguf("llama", "F32"), tmp_path / f"{qtype}.gguf", qtype)
    got, ref, b = both_logits(path)
    assert rel_err(got, ref) <= 1e-4
    assert {h for _, h in b.loaded.values()} == {how}


def test_qwen2_q4_k_and_default_kv_cache(tiny_gguf):
    """Biases + NEOX on transcoded weights, with the default float16 KV cache on both sides."""
    got, ref, _ = both_logits(tiny_gguf("qwen2", "Q4_K"), kv_dtype="float16")
    assert rel_err(got, ref) <= 1e-3


def test_float16_activations(tiny_gguf):
    """The GPU dtype (run here on CPU): float32 scales for Q4_K, logits within float16 accuracy."""
    got, ref, b = both_logits(tiny_gguf("llama", "Q4_K"), dtype="float16")
    assert b.layers[0]["attn_q"].scales.dtype == mx.float32
    assert rel_err(got, ref) <= 2e-2


# -- KV cache -------------------------------------------------------------------------------
def test_decode_steps_equal_full_sequence(tiny_gguf, monkeypatch):
    monkeypatch.setattr(MLXCache, "STEP", 4)  # so the cache grows (and copies) several times
    b = MLXBackend(open_model(tiny_gguf("llama3", "Q5_K")))
    full = b.forward(PROMPT, b.new_cache(N_CTX), n_logits=len(PROMPT))
    cache = b.new_cache(N_CTX)
    steps = np.concatenate([b.forward([t], cache) for t in PROMPT])
    assert cache.pos == len(PROMPT) and cache.free == N_CTX - len(PROMPT)
    assert rel_err(steps, full) <= 1e-5
    cache.truncate(5)  # keep a prefix, re-run the rest in two chunks
    tail = np.concatenate([b.forward(PROMPT[5:9], cache, n_logits=4), b.forward(PROMPT[9:], cache, n_logits=3)])
    assert rel_err(tail, full[5:]) <= 1e-5
    cache.reset()
    np.testing.assert_allclose(b.forward(PROMPT[:3], cache), full[2:3], rtol=0, atol=1e-5 * np.abs(full).max())
    with pytest.raises(InputError, match="context"):
        b.forward(list(range(N_CTX)), cache)


def test_forward_from_another_thread(tiny_gguf):
    b = get_backend("mlx")(open_model(tiny_gguf("mistral", "Q8_0")))
    cache = b.new_cache(N_CTX)
    first = b.forward(PROMPT[:6], cache)
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("logits", b.forward(PROMPT[6:], cache)))
    worker.start()
    worker.join()
    ref = b.forward(PROMPT, b.new_cache(N_CTX), n_logits=len(PROMPT))
    assert rel_err(out["logits"], ref[-1:]) <= 1e-5 and rel_err(first, ref[5:6]) <= 1e-5


# -- a real model ----------------------------------------------------------------------------
def test_stories260k_greedy_golden(shared_data):
    """Greedy decoding from BOS reproduces the 256 reference ids, and the API's text."""
    import edgeslim

    folder = shared_data / "models" / "stories260K"
    want = [int(t) for t in (folder / "greedy_256_ids.txt").read_text().split()]
    b = MLXBackend(open_model(folder / "stories260K.gguf"))
    cache, ids = b.new_cache(512), [want[0]]
    for _ in range(256):
        ids.append(int(np.argmax(b.forward(ids[-1:], cache)[0])))
    assert ids == want
    model = edgeslim.load(folder / "stories260K.gguf", backend="mlx", n_ctx=512)
    assert model.backend == "mlx"
    text = model.generate("", max_tokens=256, temperature=0)
    assert text == (folder / "greedy_256_text.txt").read_text().rstrip("\n")
