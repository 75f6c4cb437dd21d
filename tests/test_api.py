"""The Python API: edgeslim.load -> Model; generate / stream / chat / logits, locking, errors."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import edgeslim
from edgeslim.errors import InputError
from edgeslim.runtime.api import BusyError, Model, plain_chat
from edgeslim.runtime.handle import Generation
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


# -- for desktop apps: cancel, callbacks, time limits, conversations, fit, convert ----------------
def test_cancel_from_another_thread_lands_within_one_token(model):
    gen = model.stream("Ka lo", max_tokens=200, temperature=0)
    assert isinstance(gen, Generation)
    paused, resume = threading.Event(), threading.Event()
    seen = []

    def consume():
        for piece in gen:
            seen.append(piece)
            if len(seen) == 3:
                paused.set()
                resume.wait(10)

    t = threading.Thread(target=consume)
    t.start()
    assert paused.wait(30)
    at_cancel = gen.stats.generated_tokens
    gen.cancel()  # while the consumer holds the third piece: no further token may be computed
    resume.set()
    t.join(30)
    assert gen.stats.finish_reason == "cancelled" and gen.stats.generated_tokens == at_cancel
    # free-running: whatever token is in flight may finish, no more
    gen = model.stream("Ka lo", max_tokens=400, temperature=0)
    first = threading.Event()
    t = threading.Thread(target=lambda: [first.set() for _ in gen])
    t.start()
    assert first.wait(30)
    at_cancel = gen.stats.generated_tokens
    assert model.cancel() is True  # Model.cancel() stops whatever generation is running
    t.join(30)
    assert gen.stats.finish_reason == "cancelled" and gen.stats.generated_tokens <= at_cancel + 1
    assert model.cancel() is False  # nothing running now


def test_callback_streaming_time_limit_and_cancel_event(model):
    pieces = []
    text = model.generate("Ka lo", max_tokens=12, temperature=0, on_text=pieces.append)
    assert "".join(pieces) == text and len(pieces) >= 2
    model.generate("Ka lo", max_tokens=50, temperature=0, on_text=lambda p: False)  # False: stop
    assert model.last_stats.finish_reason == "cancelled" and model.last_stats.generated_tokens == 1
    model.generate("Ka lo", max_tokens=300, temperature=0, time_limit=1e-6)
    assert model.last_stats.finish_reason == "time_limit" and model.last_stats.generated_tokens <= 1
    stop = threading.Event()
    stop.set()
    assert model.chat(CHAT, max_tokens=20, cancel=stop) == ""
    assert model.last_stats.finish_reason == "cancelled"
    with pytest.raises(InputError):
        model.generate("Ka", max_tokens=2, time_limit=0)


def test_cache_slots_keep_interleaved_conversations(tiny_gguf):  # noqa: F811
    def turn2_evaluated(m) -> int:
        a1 = [{"role": "user", "content": "Ka lo mi ta ren so vu pe dor an is?"}]
        b1 = [{"role": "user", "content": "Dor an is the and un ex ly?"}]
        ra = m.chat(a1, max_tokens=6, temperature=0)
        m.chat(b1, max_tokens=6, temperature=0)  # another conversation in between
        m.chat(a1 + [{"role": "assistant", "content": ra}, {"role": "user", "content": "Vu?"}], max_tokens=4,
               temperature=0)
        return m.last_stats.prompt_evaluated

    two = edgeslim.load(tiny_gguf("llama"), backend="numpy", n_ctx=256, cache_slots=2)
    one = edgeslim.load(tiny_gguf("llama"), backend="numpy", n_ctx=256, cache_slots=1)
    assert turn2_evaluated(two) + 10 < turn2_evaluated(one)
    with pytest.raises(InputError):
        edgeslim.load(tiny_gguf("llama"), backend="numpy", cache_slots=0)


def test_fit_before_loading(tiny_gguf):  # noqa: F811
    from edgeslim.demo import DEMO_DIR

    here = edgeslim.fit(tiny_gguf("llama"))
    assert here.fits and here.quant == "F32" and here.source == "gguf" and "fits" in here.text()
    assert not edgeslim.fit(tiny_gguf("llama"), ctx=10**9).fits  # a KV cache of tens of TB
    hf = edgeslim.fit(DEMO_DIR, target="rpi5-4gb")
    assert hf.fits and hf.quant == "Q8_0" and hf.fit.target.name == "rpi5-4gb"
    assert edgeslim.fit(DEMO_DIR, target="m2-8gb", quant="Q4_K").quant == "Q4_K"
    tight = edgeslim.fit(DEMO_DIR, target="rpi5-4gb", ctx=10**7)
    assert not tight.fits and tight.quant is None and "does NOT fit" in tight.advice
    with pytest.raises(InputError):
        edgeslim.fit("/no/such/model")


def test_convert_function_reports_progress(tmp_path):
    from edgeslim.demo import DEMO_DIR

    calls = []
    out = tmp_path / "demo.gguf"
    report = edgeslim.convert(DEMO_DIR, out, quant="Q8_0", progress=lambda *a: calls.append(a))
    assert out.is_file() and report["quant"] == "Q8_0"
    done = [c[0] for c in calls if c[2] == "convert"]
    assert done == sorted(done) and done[-1] == calls[-1][1] > 0
    assert any(c[3] for c in calls)  # tensor names are reported

    def boom(done, total, stage, tensor):
        if done > total // 2:
            raise KeyboardInterrupt  # an app's "cancel conversion"

    with pytest.raises(KeyboardInterrupt):
        edgeslim.convert(DEMO_DIR, tmp_path / "stopped.gguf", quant="Q8_0", progress=boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.gguf"]  # no partial file left
