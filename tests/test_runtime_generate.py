"""Sampling, stop rules, streaming and context limits of the runtime's generation loop."""
from __future__ import annotations

import numpy as np
import pytest

import edgeslim
from edgeslim.errors import InputError
from edgeslim.runtime.generate import StopMatcher
from edgeslim.runtime.sampling import Sampler, SamplingParams, filter_candidates, penalize
from test_runtime_models import tiny_gguf  # noqa: F401  (fixture)

FREE = dict(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)  # sample from the whole distribution


@pytest.fixture(scope="module")
def model(tiny_gguf):  # noqa: F811
    return edgeslim.load(tiny_gguf("llama"), backend="numpy", n_ctx=128)


# -- sampling ----------------------------------------------------------------------
def test_greedy_is_argmax_and_ignores_seed():
    logits = np.array([0.1, 2.0, -1.0, 1.9], np.float32)
    for seed in (0, 1, 2):
        assert Sampler(SamplingParams(temperature=0, seed=seed))(logits, []) == 1


def test_top_k_one_is_greedy():
    logits = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    s = Sampler(SamplingParams(temperature=5.0, top_k=1, top_p=1.0, min_p=0.0, seed=0))
    assert {s(logits, []) for _ in range(20)} == {int(np.argmax(logits))}


def test_filters_top_p_and_min_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    ids, probs = filter_candidates(logits, top_k=0, top_p=0.8, min_p=0.0)
    assert ids.tolist() == [0, 1] and np.isclose(probs.sum(), 0.8)  # smallest prefix reaching 0.8
    ids, _ = filter_candidates(logits, top_k=0, top_p=1.0, min_p=0.25)
    assert ids.tolist() == [0, 1, 2]  # p >= 0.25 * 0.5
    ids, _ = filter_candidates(logits, top_k=3, top_p=1.0, min_p=0.0)
    assert ids.tolist() == [0, 1, 2]


def test_sampling_follows_the_distribution():
    logits = np.log(np.array([0.7, 0.2, 0.1], np.float32))
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=123))
    counts = np.bincount([s(logits, []) for _ in range(3000)], minlength=3) / 3000
    assert np.allclose(counts, [0.7, 0.2, 0.1], atol=0.03)


def test_repetition_penalty_like_llama_cpp():
    x = np.array([2.0, -2.0, 1.0], np.float32)
    penalize(x, [0, 1, 1], 2.0)
    assert x.tolist() == [1.0, -4.0, 1.0]
    s = Sampler(SamplingParams(temperature=0, repeat_penalty=4.0, repeat_last_n=2))
    logits = np.array([3.0, 2.0, 0.0], np.float32)
    assert s(logits, [0]) == 1  # 3/4 < 2
    assert s(logits, [0, 5, 7]) == 0  # token 0 is outside the last 2


def test_bad_sampling_values_are_input_errors():
    for bad in (dict(top_p=0.0), dict(top_k=-1), dict(min_p=2.0), dict(repeat_penalty=0.0)):
        with pytest.raises(InputError):
            Sampler(SamplingParams(**bad))


# -- stop strings ------------------------------------------------------------------
def test_stop_matcher_across_pieces():
    m = StopMatcher(["END", "\n\n"])
    out = []
    for piece in ["Hel", "lo E", "N", "Dmore"]:
        text, hit = m.feed(piece)
        out.append(text)
        if hit:
            break
    assert "".join(out) == "Hello " and hit


def test_stop_matcher_releases_false_starts():
    m = StopMatcher(["STOP"])
    assert m.feed("ab ST") == ("ab ", False)
    assert m.feed("ART") == ("START", False)
    assert m.flush() == ""


def test_generation_stops_at_stop_string(model):
    full = model.generate("Ka lo mi", max_tokens=40, temperature=0)
    assert len(full) > 12
    stop = full[6:10]
    cut = model.generate("Ka lo mi", max_tokens=40, temperature=0, stop=[stop])
    assert cut == full[:full.index(stop)]
    assert model.last_stats.finish_reason == "stop"


# -- determinism and streaming ---------------------------------------------------
def test_seeded_sampling_is_reproducible(model):
    a = model.generate("Ka lo", max_tokens=24, seed=7, **FREE)
    b = model.generate("Ka lo", max_tokens=24, seed=7, **FREE)
    c = model.generate("Ka lo", max_tokens=24, seed=8, **FREE)
    assert a == b
    assert a != c


def test_stream_pieces_join_to_generate(model):
    pieces = list(model.stream("Ka lo", max_tokens=30, temperature=0))
    assert len(pieces) > 3
    assert "".join(pieces) == model.generate("Ka lo", max_tokens=30, temperature=0)


def test_greedy_follows_full_sequence_argmax(model):
    """Prefill + KV-cache decoding picks the argmax of fresh full-sequence logits at every step."""
    prompt = model.tokenize("Ka lo")
    ids = list(prompt)
    for _ in range(12):
        nxt = int(np.argmax(model.logits(ids)[-1]))
        if model.tokenizer.is_eog(nxt):
            break
        ids.append(nxt)
    dec = model.tokenizer.stream_decoder(prev_id=prompt[-1])
    expect = "".join(dec.push(t) for t in ids[len(prompt):]) + dec.flush()
    assert len(ids) > len(prompt)
    assert model.generate(prompt, max_tokens=len(ids) - len(prompt), temperature=0) == expect


def test_stats_are_filled(model):
    model.generate("Ka lo mi ta", max_tokens=10, temperature=0)
    st = model.last_stats
    assert st.prompt_tokens == len(model.tokenize("Ka lo mi ta"))
    assert st.generated_tokens == 10 and st.finish_reason == "length"
    assert st.decode_steps == 9 and st.decode_tps > 0 and st.prompt_tps > 0
    assert "tok/s" in st.summary()


def test_max_tokens_zero(model):
    assert model.generate("Ka", max_tokens=0) == ""
    assert model.last_stats.finish_reason == "length"


# -- context limits ------------------------------------------------------------------
def test_prompt_longer_than_context_is_a_clear_error(tiny_gguf):  # noqa: F811
    small = edgeslim.load(tiny_gguf("llama"), backend="numpy", n_ctx=8)
    with pytest.raises(InputError, match=r"context is 8.*--ctx"):
        small.generate("ka lo mi ta ren so vu pe dor an is the and", max_tokens=4)


def test_generation_stops_when_context_is_full(tiny_gguf):  # noqa: F811
    small = edgeslim.load(tiny_gguf("llama"), backend="numpy", n_ctx=16)
    n_prompt = len(small.tokenize("Ka lo"))
    small.generate("Ka lo", max_tokens=100, temperature=0)
    st = small.last_stats
    assert st.finish_reason in ("context", "eog")
    if st.finish_reason == "context":
        assert st.generated_tokens == 16 - n_prompt + 1
