"""Runtime forward pass against transformers, across architectures, backends and quant types.

Tiny random Llama / Llama-3 (rope_freqs, tied embeddings) / linear-RoPE Llama /
Mistral (MQA, head_dim != hidden/heads) / Qwen2 (biases, NEOX RoPE, tied) models
are built by conftest's `tiny_hf_model`, converted by `edgeslim.convert`, and
run here. The helpers and the `tiny_gguf` fixture are imported by the other
test_runtime*/test_api/test_cli_runtime modules.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeslim
from edgeslim.runtime.api import Model

from _llamacpp_files import write_llamacpp_copy  # noqa: E402  (tests/ helper)
from conftest import GEMMA3, GEMMA3_DEFAULT

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
VARIANTS = {  # name -> (transformers kind, tokenizer, config overrides)
    "llama": ("llama", "spm", {}),
    "llama3": ("llama", "bpe-llama3", {"rope_parameters": LLAMA3_ROPE, "tie_word_embeddings": True}),
    "linear-rope": ("llama", "spm", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0,
                                                        "factor": 2.0}}),
    "mistral": ("mistral", "spm", {"num_key_value_heads": 1, "head_dim": 32}),
    "qwen2": ("qwen2", "bpe-qwen2", {"tie_word_embeddings": True}),
    "gemma3": ("gemma3", "spm", GEMMA3),
    "gemma3-default": ("gemma3", "spm", GEMMA3_DEFAULT),
}
QUANT_TYPES = ("F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K",
               "AFFINE8_G32", "AFFINE6_G64", "AFFINE5_G32", "AFFINE4_G64", "AFFINE3_G32", "AFFINE2_G64")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_hf_model, tmp_path_factory):
    """Factory: tiny_gguf(variant="llama", quant="F32") -> Path of a converted GGUF (cached)."""
    from edgeslim.convert.pipeline import convert

    cache: dict[tuple[str, str], Path] = {}

    def make(variant: str = "llama", quant: str = "F32") -> Path:
        if (variant, quant) not in cache:
            kind, tok, overrides = VARIANTS[variant]
            out = tmp_path_factory.mktemp("gguf") / f"{variant}-{quant}.gguf"
            convert(str(tiny_hf_model(kind, tok, **overrides)), out, quant=quant, progress=False)
            cache[(variant, quant)] = out
        return cache[(variant, quant)]

    return make


def hf_logits(folder: Path, ids: np.ndarray) -> np.ndarray:
    """transformers float32 logits (T, vocab) of one sequence."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids))[None]).logits[0].numpy()


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref|."""
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def rel_l2(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def random_ids(model: Model, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, model.hparams.n_vocab, n)


def step_logits(model: Model, ids) -> np.ndarray:
    """Logits of each position fed one token at a time through one KV cache: (T, V)."""
    be = model._backend
    cache = be.new_cache(len(ids))
    return np.concatenate([be.forward([int(t)], cache) for t in ids])


# ---------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_f32_logits_match_transformers(tiny_gguf, tiny_hf_model, variant, backend):
    kind, tok, overrides = VARIANTS[variant]
    path = tiny_gguf(variant)
    model = edgeslim.load(path, backend=backend, kv_dtype="float32")
    ids = random_ids(model, 40, seed=1)  # > the numba kernels' small-T path, still one batch
    ref = hf_logits(tiny_hf_model(kind, tok, **overrides), ids)
    assert model.logits(ids).shape == ref.shape
    assert rel_err(model.logits(ids), ref) <= 1e-4


def test_llama3_rope_factors_are_applied(tiny_gguf, tiny_hf_model, monkeypatch):
    """Without rope_freqs the Llama-3 model is measurably wrong: the comparison above has teeth."""
    from edgeslim.runtime.loader import ModelFile

    kind, tok, overrides = VARIANTS["llama3"]
    ids = np.random.default_rng(2).integers(0, 400, 120)
    ref = hf_logits(tiny_hf_model(kind, tok, **overrides), ids)
    monkeypatch.setattr(ModelFile, "rope_freqs", lambda self: None)
    model = edgeslim.load(tiny_gguf("llama3"), backend="numpy", kv_dtype="float32")
    assert rel_err(model.logits(ids), ref) > 1e-3


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_gemma3_sliding_window_ring(tiny_gguf, monkeypatch, backend):
    """Ring caches of window + 2 slots (wrapping several times): chunked prefill, single steps and a
    short truncate give the full-sequence logits; a long truncate falls back to a reset."""
    import edgeslim.runtime.kv_cache as kv

    monkeypatch.setattr(kv, "RING_SLACK", 2)
    model = edgeslim.load(tiny_gguf("gemma3"), backend=backend, kv_dtype="float32")
    ids = random_ids(model, 40, seed=8)
    full = model.logits(ids)
    be = model._backend
    cache = be.new_cache(40)
    assert cache.ring(0) == 18 and cache.ring(2) == 0 and cache.nbytes < 3 * 2 * 64 * 40 * 4
    got = [be.forward(ids[:20], cache, n_logits=20), be.forward(ids[20:21], cache),
           be.forward(ids[21:24], cache, n_logits=3)]
    cache.truncate(22)  # 2 positions back: the rings still hold the window
    assert cache.pos == 22
    got += [be.forward(ids[22:24], cache, n_logits=2)[:0]]
    got += [be.forward([t], cache) for t in ids[24:]]
    assert rel_err(np.concatenate(got), full) <= 1e-5
    cache.truncate(30)  # 10 back: more than the ring can give back
    assert cache.pos == 0
    from edgeslim.runtime.generate import Session

    session = Session(be, 40)
    session.feed(ids[:30])
    assert session.keep_prefix(list(ids[:21]) + [1, 2]) == 0 and session.tokens == []  # 9 back: reset
    session.feed(ids[:30])
    assert session.keep_prefix(list(ids[:29]) + [1]) == 29 and len(session.tokens) == 29


def test_gemma3_numba_fused_ring_matches_numpy(tiny_gguf, monkeypatch):
    """The fp16 cache: numba's fused decode attention over the wrapped rings equals the numpy path."""
    import edgeslim.runtime.kv_cache as kv

    monkeypatch.setattr(kv, "RING_SLACK", 2)
    path = tiny_gguf("gemma3")
    ref, fast = edgeslim.load(path, backend="numpy"), edgeslim.load(path, backend="numba")
    ids = random_ids(ref, 40, seed=11)
    # measured 1.4e-4 (fastmath RoPE can round a key to the neighbouring fp16 value); a wrong slot gives ~1
    assert rel_err(step_logits(fast, ids), step_logits(ref, ids)) <= 1e-3


def test_gemma3_window_and_softcap_are_applied(tiny_gguf, tiny_hf_model):
    """Without the sliding window or the soft-cap the logits are measurably wrong (the tests have teeth)."""
    import dataclasses

    kind, tok, overrides = VARIANTS["gemma3"]
    ids = np.random.default_rng(9).integers(0, 400, 40)
    ref = hf_logits(tiny_hf_model(kind, tok, **overrides), ids)
    for change in ({"n_swa": 0}, {"logit_softcap": 0.0}):
        model = edgeslim.load(tiny_gguf("gemma3"), backend="numpy", kv_dtype="float32")
        be = model._backend
        be.hp = dataclasses.replace(be.hp, **change)
        assert rel_err(model.logits(ids), ref) > 1e-3, change


def test_gemma3_mlx_matches_numpy(tiny_gguf):
    pytest.importorskip("mlx.core")
    path = tiny_gguf("gemma3", "Q8_0")
    ref = edgeslim.load(path, backend="numpy", kv_dtype="float32")
    got = edgeslim.load(path, backend="mlx", kv_dtype="float32")
    ids = random_ids(ref, 40, seed=10)
    assert rel_err(got.logits(ids), ref.logits(ids)) <= 1e-4
    assert rel_err(step_logits(got, ids[:24]), step_logits(ref, ids[:24])) <= 1e-4


@pytest.mark.parametrize("variant", ["llama", "qwen2"])
def test_kv_cache_steps_equal_full_sequence(tiny_gguf, variant):
    model = edgeslim.load(tiny_gguf(variant), backend="numpy", kv_dtype="float32")
    ids = random_ids(model, 24, seed=3)
    full = model.logits(ids)
    assert rel_err(step_logits(model, ids), full) <= 1e-5
    # a prompt in two batches then steps: the same again
    be = model._backend
    cache = be.new_cache(24)
    parts = [be.forward(ids[:10], cache, n_logits=10), be.forward(ids[10:20], cache, n_logits=10),
             np.concatenate([be.forward([t], cache) for t in ids[20:]])]
    assert rel_err(np.concatenate(parts), full) <= 1e-5


def test_fp16_kv_cache_is_close_to_fp32(tiny_gguf):
    path = tiny_gguf("llama")
    exact = edgeslim.load(path, backend="numpy", kv_dtype="float32")
    half = edgeslim.load(path, backend="numpy")  # float16 default
    ids = random_ids(exact, 24, seed=4)
    e = step_logits(exact, ids)
    h = step_logits(half, ids)
    assert 0 < rel_err(h, e) <= 1e-2


@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_numba_matches_numpy_on_quant_type(tiny_gguf, qtype):
    path = tiny_gguf("llama", qtype)
    ref = edgeslim.load(path, backend="numpy", kv_dtype="float32")
    fast = edgeslim.load(path, backend="numba", kv_dtype="float32")
    ids = random_ids(ref, 24, seed=5)
    # prefill (T = 24) and decode (T = 1) both run the packed-integer kernels with int8
    # activations (per-block absmax, sums of the quantized values for the offset terms);
    # measured 1.0e-2 (Q8_0) to 1.6e-2 (k-quants) on this random model; a layout error gives ~1
    assert rel_l2(fast.logits(ids), ref.logits(ids)) <= 3e-2
    assert rel_l2(step_logits(fast, ids[:8]), step_logits(ref, ids[:8])) <= 3e-2


def test_numpy_quantized_model_is_close_to_f32(tiny_gguf):
    """Dequantizing through the numpy references: Q8_0 logits stay close to F32 ones."""
    f32 = edgeslim.load(tiny_gguf("llama"), backend="numpy", kv_dtype="float32")
    q8 = edgeslim.load(tiny_gguf("llama", "Q8_0"), backend="numpy", kv_dtype="float32")
    ids = random_ids(f32, 16, seed=6)
    assert 0 < rel_l2(q8.logits(ids), f32.logits(ids)) <= 2e-2


@pytest.mark.parametrize("qtype", ["Q4_0", "Q5_1", "IQ4_NL", "IQ4_XS", "IQ2_XXS", "IQ3_S", "IQ1_S", "TQ1_0"])
def test_llama_cpp_only_types_run_on_both_backends(tiny_gguf, tmp_path, qtype):
    """Types only llama.cpp writes run natively in the numba backend (no float32 expansion, no
    warning), within int8-activation accuracy of the numpy backend (which dequantizes with gguf-py)."""
    import warnings

    path = write_llamacpp_copy(tiny_gguf("llama"), tmp_path / f"{qtype}.gguf", qtype)
    ref = edgeslim.load(path, backend="numpy", kv_dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = edgeslim.load(path, backend="numba", kv_dtype="float32")
    layer = fast._backend.layers[0]
    assert {p.qtype for k, p in layer.items() if hasattr(p, "qtype")} == {qtype}
    ids = random_ids(ref, 24, seed=7)
    # int8 activations: per mat-vec ~0.5-0.7% relative L2 for all four types (as Q4_K); through this
    # random model's layers the logits end 1-3.4% apart (IQ4_XS's random sub-block scales make the
    # most uneven weights); a layout error gives ~1
    assert rel_l2(fast.logits(ids), ref.logits(ids)) <= 5e-2
    assert rel_l2(step_logits(fast, ids[:8]), step_logits(ref, ids[:8])) <= 5e-2
    if qtype == "Q4_0":  # quantized from the F32 model: still the same model
        f32 = edgeslim.load(tiny_gguf("llama"), backend="numpy", kv_dtype="float32")
        assert 0 < rel_l2(ref.logits(ids), f32.logits(ids)) <= 0.2
