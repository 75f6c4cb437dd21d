"""Batched decode (runtime/batch.py): a step over B sequences equals B single steps, and a batch of
generations produces what each produces alone."""
from __future__ import annotations

import numpy as np
import pytest

import edgeslim
from edgeslim.runtime.batch import BatchDecoder, forward_rows
from edgeslim.runtime.sampling import SamplingParams
from test_runtime_models import tiny_gguf  # noqa: F401  (fixture)

PROMPTS = ["Ka lo mi ta", "Dor an is the and un ex ly ren so", "Vu"]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_forward_rows_equals_one_sequence_at_a_time(tiny_gguf, backend):  # noqa: F811
    m = edgeslim.load(tiny_gguf("llama", "Q8_0"), backend=backend, n_ctx=64)
    be = m._backend
    seqs = [m.tokenize(p) for p in PROMPTS]
    nxt = [11, 23, 5]
    alone, batched = [], [be.new_cache(64) for _ in seqs]
    for ids, c, t in zip(seqs, batched, nxt):
        single = be.new_cache(64)
        be.forward(ids, single)
        alone.append(be.forward([t], single)[-1])
        be.forward(ids, c)
    rows = forward_rows(be, nxt, batched)  # (3, V)
    assert rows.shape == (3, m.hparams.n_vocab)
    assert [c.pos for c in batched] == [len(s) + 1 for s in seqs]
    np.testing.assert_allclose(rows, np.stack(alone), rtol=0, atol=2e-3 * np.abs(np.stack(alone)).max())


def _run(bd: BatchDecoder, m, jobs) -> list[str]:
    texts = {}
    for i, (prompt, n, stops, seed) in enumerate(jobs):
        p = SamplingParams(temperature=0.0 if seed is None else 0.9, seed=seed)
        bd.add(m.tokenize(prompt), n, p, stops, lambda: None, owner=i)
        texts[i] = ""
    while bd.active:
        for s, text, _ in bd.step():
            texts[s.owner] += text
    return [texts[i] for i in range(len(jobs))]


def test_a_batch_generates_what_each_generates_alone(demo_gguf):
    m = edgeslim.load(demo_gguf, backend="numba", n_ctx=256)
    jobs = [("Once upon a time", 40, [], None), ("The dog", 25, [], 3), ("Lily wanted", 30, ["park"], None),
            ("Tom", 0, [], None)]
    batched = _run(BatchDecoder(m, max_batch=4), m, jobs)
    for (prompt, n, stops, seed), got in zip(jobs, batched):
        kw = dict(temperature=0.0 if seed is None else 0.9, seed=seed)
        assert got == m.generate(prompt, n, stop=stops or None, **kw), prompt
    assert batched[3] == "" and len(batched[0].split()) > 10


def test_batch_streams_stop_on_their_own(demo_gguf):
    m = edgeslim.load(demo_gguf, backend="numba", n_ctx=256)
    bd = BatchDecoder(m, max_batch=3)
    flags = {"a": False}
    a = bd.add(m.tokenize("Once upon a time"), 100, SamplingParams(temperature=0), [],
               lambda: "cancelled" if flags["a"] else None, owner="a")
    b = bd.add(m.tokenize("Once upon a time"), 20, SamplingParams(temperature=0), [], lambda: None, owner="b")
    for _ in range(5):
        bd.step()
    flags["a"] = True
    done = {s.owner: s for s, _, fin in bd.step() if fin}
    assert "a" in done and a.stats.finish_reason == "cancelled" and a.stats.generated_tokens == 6
    while bd.active:
        bd.step()
    assert b.stats.finish_reason == "length" and b.stats.generated_tokens == 20
    follow_up = list(b.session.tokens) + m.tokenize(" The end.", add_bos=False)
    c = bd.add(follow_up, 5, SamplingParams(temperature=0), [], lambda: None)
    assert c.session is b.session and c.stats.prompt_evaluated <= 5  # a conversation continues on its cache
