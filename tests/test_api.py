"""The Python API: edgeslim.load -> Model; generate / stream / chat / logits, locking, errors."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import edgeslim
from edgeslim.errors import InputError
from edgeslim.runtime.api import BusyError, Model, plain_chat
from test_runtime_models import tiny_gguf  # noqa: F401  (fixture)

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ka lo mi ta?"}]


@pytest.fixture(scope="module")
def model(tiny_gguf):  # noqa: F811
    return edgeslim.load(tiny_gguf("llama"), backend="numpy", n_ctx=256)


def test_load_gives_a_model(model, tiny_gguf):  # noqa: F811
    assert isinstance(model, Model)
    assert model.backend == "numpy" and model.n_ctx == 256
    assert model.hparams.arch == "llama" and model.hparams.n_layer == 2
    assert model.tokenizer.decode(model.tokenize("ka lo", add_bos=False)) == "ka lo"
    default = edgeslim.load(tiny_gguf("llama"), backend="numpy")
    assert default.n_ctx == min(default.hparams.context_length, 4096)
    assert edgeslim.load(tiny_gguf("llama")).backend == "numba"  # auto on Linux


def test_unknown_backend_is_an_input_error(tiny_gguf):  # noqa: F811
    with pytest.raises(InputError, match="unknown backend"):
        edgeslim.load(tiny_gguf("llama"), backend="cuda")


def test_logits_are_fresh_each_call(model):
    ids = [1, 5, 9, 200, 17]
    a = model.logits(ids)
    assert a.shape == (5, model.hparams.n_vocab) and a.dtype == np.float32
    text = model.generate("Ka lo", max_tokens=8, temperature=0)
    b = model.logits(ids)
    np.testing.assert_array_equal(a, b)
    assert model.generate("Ka lo", max_tokens=8, temperature=0) == text
    np.testing.assert_allclose(model.logits(ids[:3]), a[:3], atol=1e-3)  # causal: a prefix gives its rows
    with pytest.raises(InputError):
        model.logits([])


def test_empty_prompt_starts_from_bos(model):
    assert model.tokenize("") == [model.tokenizer.bos_id]
    out = model.generate("", max_tokens=6, temperature=0)
    assert model.last_stats.prompt_tokens == 1 and out


def test_chat_uses_the_template(model):
    text = model.apply_chat_template(CHAT)
    assert "<|im_start|>user\nKa lo mi ta?<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    ids = model.chat_tokens(CHAT)
    assert ids.count(model.tokenizer.bos_id) <= 1
    reply = model.chat(CHAT, max_tokens=10, temperature=0)
    assert reply == "".join(model.stream_chat(CHAT, max_tokens=10, temperature=0))


def test_chat_reuses_the_cached_prefix(model, tiny_gguf):  # noqa: F811
    turn1 = model.chat(CHAT, max_tokens=8, temperature=0)
    history = CHAT + [{"role": "assistant", "content": turn1}, {"role": "user", "content": "Vu pe?"}]
    turn2 = model.chat(history, max_tokens=8, temperature=0)
    st = model.last_stats
    assert st.prompt_evaluated < st.prompt_tokens  # the first turn was not re-read
    fresh = edgeslim.load(tiny_gguf("llama"), backend="numpy", n_ctx=256)
    assert fresh.chat(history, max_tokens=8, temperature=0) == turn2


def test_plain_chat_fallback(tiny_gguf):  # noqa: F811
    m = edgeslim.load(tiny_gguf("llama"), backend="numpy", n_ctx=256)
    m.chat_template = None
    assert m.apply_chat_template(CHAT) == "System: Be brief.\nUser: Ka lo mi ta?\nAssistant:"
    assert "\nUser:" not in m.chat(CHAT, max_tokens=30, seed=1)
    assert plain_chat(CHAT[1:], add_generation_prompt=False) == "User: Ka lo mi ta?"
    with pytest.raises(InputError):
        m.chat([{"content": "no role"}])


def test_one_generation_at_a_time(model):
    started, release = threading.Event(), threading.Event()
    order = []

    def first():
        for i, _ in enumerate(model.stream("Ka lo", max_tokens=30, temperature=0)):
            if i == 0:
                started.set()
                release.wait(10)
        order.append("first")

    def second():
        model.generate("Mi ta", max_tokens=3, temperature=0)
        order.append("second")

    t1 = threading.Thread(target=first)
    t1.start()
    assert started.wait(10)
    with pytest.raises(BusyError):
        model.generate("Mi ta", max_tokens=3, blocking=False)
    with pytest.raises(BusyError):
        model.logits([1, 2], blocking=False)
    t2 = threading.Thread(target=second)
    t2.start()
    t2.join(0.3)
    assert t2.is_alive()  # waiting for the lock
    release.set()
    t1.join(10)
    t2.join(10)
    assert order == ["first", "second"]


def test_abandoned_stream_releases_the_lock(model):
    it = model.stream("Ka lo", max_tokens=50, temperature=0)
    next(it)
    it.close()
    assert model.last_stats.finish_reason == "interrupted"
    assert model.generate("Ka", max_tokens=2, blocking=False) is not None


def test_public_api_has_docstrings():
    for obj in (edgeslim.load, Model, Model.generate, Model.stream, Model.chat, Model.stream_chat,
                Model.logits, Model.perplexity, Model.tokenize, Model.apply_chat_template):
        assert obj.__doc__ and len(obj.__doc__.strip()) > 20, obj
