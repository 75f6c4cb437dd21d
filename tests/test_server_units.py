"""The server's pieces without HTTP: fair queue order, limits, validation, rendering, and that the
runtime imports without the serve extra (issue 12)."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'edgeslim[serve]')")

from edgeslim.errors import InputError  # noqa: E402
from edgeslim.runtime.generate import GenerationStats  # noqa: E402
from edgeslim.runtime.sampling import SamplingParams  # noqa: E402
from edgeslim.runtime.server.config import ServerConfig  # noqa: E402
from edgeslim.runtime.server.errors import APIError  # noqa: E402
from edgeslim.runtime.server.render import Renderer  # noqa: E402
from edgeslim.runtime.server.scheduler import Job, Scheduler  # noqa: E402
from edgeslim.runtime.server.schemas import chat_request, completion_request, parse_json  # noqa: E402


class FakeDecoder:
    """Stands in for runtime.batch.BatchDecoder: records which prompts ran in which step; steps wait on
    the model's gate."""

    def __init__(self, model, max_batch):
        self.model, self.max_batch, self.active = model, max_batch, []

    def add(self, ids, max_tokens, params, stops, should_stop, owner=None):
        s = SimpleNamespace(owner=owner, name=ids[0], stats=GenerationStats(finish_reason="length"))
        self.active.append(s)
        return s

    def step(self):
        self.model.gate.wait(10)
        self.model.log.append([s.name for s in self.active])
        out = [(s, s.name, True) for s in self.active]
        self.active = []
        return out


class FakeModel:
    """Records the prompts of each step; steps wait on `gate`."""

    def __init__(self):
        self.log, self.gate = [], threading.Event()


def _sched(model, **kw) -> Scheduler:
    return Scheduler(model, make_decoder=FakeDecoder, **kw)


def _job(loop, name, client, deadline=60.0):
    return Job([name], 4, SamplingParams(), [], client, time.monotonic() + deadline, loop)


def test_queue_is_round_robin_over_clients():
    loop = asyncio.new_event_loop()
    model = FakeModel()
    sched = _sched(model, max_queue=10, max_per_client=10)
    try:
        sched.submit(_job(loop, "a0", "alice"))  # starts at once, held by the gate
        while not sched.running:
            time.sleep(0.01)
        for name, client in [("a1", "alice"), ("a2", "alice"), ("a3", "alice"), ("b1", "bob"), ("c1", "carol"),
                             ("b2", "bob")]:
            sched.submit(_job(loop, name, client))
        model.gate.set()
        while len(model.log) < 7:
            time.sleep(0.01)
        assert model.log == [["a0"], ["a1"], ["b1"], ["c1"], ["a2"], ["b2"], ["a3"]]
    finally:
        sched.close()
        loop.close()


def test_queue_limits_and_withdraw():
    loop = asyncio.new_event_loop()
    model = FakeModel()
    sched = _sched(model, max_queue=2, max_per_client=1)
    try:
        sched.submit(_job(loop, "run", "x"))
        while not sched.running:
            time.sleep(0.01)
        waiting = _job(loop, "w1", "alice")
        sched.submit(waiting)
        with pytest.raises(APIError) as err:
            sched.submit(_job(loop, "w2", "alice"))
        assert err.value.status == 429
        sched.submit(_job(loop, "w3", "bob"))
        with pytest.raises(APIError) as err:
            sched.submit(_job(loop, "w4", "carol"))
        assert err.value.status == 503 and err.value.headers["Retry-After"]
        sched.withdraw(waiting)  # the client hung up: its place is freed, it never runs
        assert sched.waiting == 1 and waiting.cancel.is_set()
        sched.submit(_job(loop, "w5", "carol"))
        model.gate.set()
        while len(model.log) < 3:
            time.sleep(0.01)
        assert model.log == [["run"], ["w3"], ["w5"]]
    finally:
        sched.close()
        loop.close()


def test_jobs_are_batched_up_to_max_batch_round_robin():
    loop = asyncio.new_event_loop()
    model = FakeModel()
    sched = _sched(model, max_queue=10, max_per_client=10, max_batch=3)
    try:
        sched.submit(_job(loop, "a0", "alice"))
        while not sched.running:
            time.sleep(0.01)
        for name, client in [("a1", "alice"), ("a2", "alice"), ("b1", "bob"), ("c1", "carol"), ("b2", "bob")]:
            sched.submit(_job(loop, name, client))
        model.gate.set()
        while sum(map(len, model.log)) < 6:
            time.sleep(0.01)
        assert model.log == [["a0"], ["a1", "b1", "c1"], ["a2", "b2"]]
    finally:
        sched.close()
        loop.close()


CFG = ServerConfig()


def test_validation_details():
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(APIError, match="'max_tokens' must be an integer"):
        chat_request({"messages": msgs, "max_tokens": True}, CFG)  # a bool is not a number
    with pytest.raises(APIError, match="'temperature' must be a number"):
        chat_request({"messages": msgs, "temperature": float("nan")}, CFG)
    with pytest.raises(APIError, match="frequency_penalty"):
        chat_request({"messages": msgs, "frequency_penalty": 0.5}, CFG)
    req = chat_request({"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                         {"type": "text", "text": "b"}]},
                                     {"role": "assistant", "content": None}],
                        "max_completion_tokens": 7, "stop": "x", "seed": -1, "top_k": 5, "user": "u"}, CFG)
    assert req.messages == [{"role": "system", "content": "ab"}, {"role": "assistant", "content": ""}]
    assert req.max_tokens == 7 and req.stop == ["x"] and req.user == "u"
    assert req.params.seed == (1 << 64) - 1 and req.params.top_k == 5 and req.params.temperature == 1.0
    assert completion_request({"prompt": ["Once"]}, CFG).prompt == "Once"
    assert completion_request({"prompt": [1, 2, 3]}, CFG).prompt == [1, 2, 3]
    with pytest.raises(APIError, match="'echo'"):
        completion_request({"prompt": "x", "echo": True}, CFG)
    with pytest.raises(APIError, match="JSON object"):
        parse_json(b"null")
    with pytest.raises(APIError, match="not valid JSON"):
        parse_json(b"[" * 100000)  # deep nesting is a 400, not a crash


def test_render_maps_finish_reasons_and_usage():
    st = GenerationStats(prompt_tokens=10, prompt_evaluated=4, generated_tokens=3, finish_reason="time_limit")
    chat = Renderer(True, "m")
    whole = chat.whole("abc", st)
    assert whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13,
                              "prompt_tokens_details": {"cached_tokens": 6}}
    final = chat.final(GenerationStats(finish_reason="eog"), include_usage=True)
    assert final[0]["choices"][0]["finish_reason"] == "stop" and final[1]["choices"] == []
    assert Renderer(False, "m").chunk("x")["choices"][0]["text"] == "x"


def test_size_flag():
    from edgeslim.runtime.server.cli import parse_size

    assert parse_size("4MiB") == 4 << 20 and parse_size("512k") == 512 << 10 and parse_size("100") == 100
    for bad in ("lots", "-1", "4GB", ""):
        with pytest.raises(InputError):
            parse_size(bad)


def test_runtime_imports_without_the_serve_extra():
    code = ("import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
            "import edgeslim, edgeslim.runtime.api, edgeslim.cli\n"
            "from edgeslim.cli import main\n"
            "sys.exit(main(['serve', 'x.gguf']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == "edgeslim: edgeslim serve needs starlette and uvicorn: pip install 'edgeslim[serve]'"


def test_parallel_is_lowered_to_what_fits(monkeypatch, capsys):
    from types import SimpleNamespace as NS

    import edgeslim.fit_check as fc
    from edgeslim.errors import FitError
    from edgeslim.runtime.server import cli

    def fake_fit(path, target, ctx, backend="auto", cache_slots=1):
        return NS(fits=cache_slots <= limit, fit=NS(ctx=512, total_bytes=1, weights_bytes=1, kv_bytes=1,
                                                    target=NS(usable_bytes=1)))

    monkeypatch.setattr(fc, "fit", fake_fit)
    limit = 2
    args = NS(model="m.gguf", ctx=512, backend="numba", kv_dtype="float16", cache_slots=1, parallel=4)
    assert cli.check_fits(args) == 2 and args.parallel == 2 and args.cache_slots == 1
    assert "--parallel 2" in capsys.readouterr().err
    limit = 0
    with pytest.raises(FitError, match="available"):
        cli.check_fits(NS(model="m.gguf", ctx=512, backend="numba", kv_dtype="float16", cache_slots=1, parallel=4))
