"""The families the README names, on real-shaped configs (few layers, real width ratios, head
layouts and features): converted, run by every CPU backend, compared with transformers and
llama.cpp.

    llama3.2   Llama-3.2-1B's ratios: 8 heads / 2 KV heads, FFN 4x, llama3 RoPE scaling
               (factor 32, original context 64 so it matters here), tied embeddings, BPE
    mistral    Mistral-7B v0.1's ratios: 8 / 2 heads, FFN 3.5x, sliding window 16
    qwen2.5    Qwen2.5-0.5B's ratios: 7 heads of 32 / 1 KV head, FFN 5.4x, q/k/v biases, tied
    gemma3     see conftest.GEMMA3
    phi3       Phi-3-mini's ratios: heads of 96, FFN 2.7x, fused qkv and gate|up tensors

Mistral's sliding window: the runtime runs a "llama" file like llama.cpp does, which does not
apply the window; logits equal transformers' while the context fits the window (4096 tokens
for Mistral-7B v0.1, later Mistrals have none) and follow llama.cpp past it (checked below).
"""
from __future__ import annotations

import numpy as np
import pytest

import edgeslim
from conftest import GEMMA3

torch = pytest.importorskip("torch")

from test_convert import check_roundtrip, field, reference  # noqa: E402
from test_runtime_models import hf_logits, rel_err  # noqa: E402

LLAMA32_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64, "rope_theta": 500000.0}
FAMILIES = {  # name -> (transformers kind, tokenizer, config overrides, quant type for the round trip)
    "llama3.2": ("llama", "bpe-llama3", dict(hidden_size=256, intermediate_size=1024, num_attention_heads=8,
                                             num_key_value_heads=2, rope_parameters=LLAMA32_ROPE,
                                             tie_word_embeddings=True, max_position_embeddings=1024), "Q4_K"),
    "mistral": ("mistral", "spm", dict(hidden_size=256, intermediate_size=896, num_attention_heads=8,
                                       num_key_value_heads=2, sliding_window=16), "Q8_0"),
    "qwen2.5": ("qwen2", "bpe-qwen2", dict(hidden_size=224, intermediate_size=1216, num_attention_heads=7,
                                           num_key_value_heads=1, tie_word_embeddings=True,
                                           rope_parameters={"rope_type": "default", "rope_theta": 1e6}), "Q8_0"),
    "gemma3": ("gemma3", "spm", GEMMA3, "Q8_0"),
    "phi3": ("phi3", "spm", dict(hidden_size=192, intermediate_size=512, num_attention_heads=2,
                                 num_key_value_heads=2), "Q8_0"),
}
N = 40  # tokens: past Mistral's and Gemma's windows of 16


@pytest.fixture(scope="module")
def converted(tiny_hf_model, tmp_path_factory):
    """name -> (HF folder, F32 GGUF path), converted once per module."""
    from edgeslim.convert.pipeline import convert

    cache = {}

    def make(name):
        if name not in cache:
            kind, tok, over, _ = FAMILIES[name]
            folder = tiny_hf_model(kind, tok, **over)
            tmp = tmp_path_factory.mktemp("fam")
            # the file's general.name comes from the folder name; llama.cpp looks Phi-3's special tokens
            # up by name when general.name says "phi3", and the test tokenizer has none of them
            src = tmp / "tiny-model"
            src.symlink_to(folder, target_is_directory=True)
            out = tmp / f"{name}.gguf"
            convert(str(src), out, quant="F32", progress=False)
            cache[name] = (folder, out)
        return cache[name]

    return make


def _window(name: str) -> int | None:
    return FAMILIES[name][2].get("sliding_window") if FAMILIES[name][0] == "mistral" else None


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_runtime_matches_transformers(converted, name, backend):
    folder, path = converted(name)
    model = edgeslim.load(path, backend=backend, kv_dtype="float32")
    ids = np.random.default_rng(1).integers(0, model.hparams.n_vocab - 3, N)
    ref, got = hf_logits(folder, ids), model.logits(ids)
    w = _window(name)
    if w is None:
        assert rel_err(got, ref) <= 1e-4
    else:  # llama.cpp's "llama" graph: no window; equal up to it, different after
        assert rel_err(got[:w], ref[:w]) <= 1e-4 and rel_err(got[w:], ref[w:]) > 1e-3


@pytest.mark.parametrize("name", list(FAMILIES))
def test_converter_round_trip(tiny_hf_model, tmp_path, name):
    from test_convert import GEMMA3_LOGIT_FACTOR, LOGIT_FACTOR

    kind, tok, over, qtype = FAMILIES[name]
    factor = GEMMA3_LOGIT_FACTOR if kind == "gemma3" else LOGIT_FACTOR
    reader, weights, _ = check_roundtrip(tiny_hf_model(kind, tok, **over), tmp_path / "m.gguf", qtype, factor)
    if name == "llama3.2":
        assert weights["rope_freqs.weight"].max() == pytest.approx(32.0)
    if name == "mistral":
        assert field(reader, "llama.attention.sliding_window") == 16


@pytest.mark.parametrize("name", list(FAMILIES))
def test_mlx_matches_numpy(converted, name):
    pytest.importorskip("mlx.core")
    _, path = converted(name)
    ref = edgeslim.load(path, backend="numpy", kv_dtype="float32")
    got = edgeslim.load(path, backend="mlx", kv_dtype="float32")
    ids = np.random.default_rng(2).integers(0, ref.hparams.n_vocab - 3, N)
    assert rel_err(got.logits(ids), ref.logits(ids)) <= 1e-4


@pytest.mark.parametrize("name", list(FAMILIES))
def test_llama_cpp_matches_transformers(converted, name):
    llama_cpp = pytest.importorskip("llama_cpp")
    folder, path = converted(name)
    _, ids, ref = reference(folder)  # 24 tokens (Gemma's window of 16 applies, Mistral's not: compare 16)
    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1, type_k=0, type_v=0)
    llm.eval(ids[0].tolist())
    n = _window(name) or ids.shape[1]
    got = np.asarray(llm.scores[:n])
    assert float(np.abs(got - ref[0][:n]).max() / np.abs(ref[0][:n]).max()) <= 1e-3
