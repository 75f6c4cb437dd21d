"""`edgeslim serve`: the real `openai` client against a real server on loopback, raw HTTP for bad requests,
limits, disconnects, the queue, and a soak of 32 concurrent clients (issue 12).

One server (the demo model, numba backend) serves most tests; tests that need other flags
start their own (numpy backend, faster to start).
"""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from serve_util import read_events, sse_request, start_server
from test_cli_runtime import assert_one_line_error, cli

openai = pytest.importorskip("openai", reason="the openai client is not installed (pip install openai)")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'edgeslim[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install 'edgeslim[serve]')")

STORY = [{"role": "user", "content": "Tell me a story about a cat."}]


@pytest.fixture(scope="module")
def server(demo_gguf, tmp_path_factory):
    srv = start_server(demo_gguf, tmp_path_factory.mktemp("serve") / "serve.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=120)


def _error(resp, status: int, *needles: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    for n in needles:
        assert n in err["message"], err["message"]
    return err


# -- the OpenAI client -------------------------------------------------------------------------
def test_chat_with_the_openai_client(client, server):
    r = client.chat.completions.create(model="anything", messages=STORY, max_tokens=24, temperature=0)
    text = r.choices[0].message.content
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert len(text.split()) >= 5 and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.chat.completions.create(model="x", messages=STORY, max_tokens=24, temperature=0)
    assert again.choices[0].message.content == text  # greedy is deterministic


def test_streaming_chat_matches_the_whole_reply(client):
    whole = client.chat.completions.create(model="m", messages=STORY, max_tokens=30, temperature=0)
    stream = client.chat.completions.create(model="m", messages=STORY, max_tokens=30, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) >= 5  # really streamed, piece by piece
    assert "".join(pieces) == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_and_models(client, server):
    r = client.completions.create(model="m", prompt="Once upon a time", max_tokens=16, temperature=0)
    assert r.object == "text_completion" and len(r.choices[0].text) > 10
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="m", prompt="Once upon a time", max_tokens=16, temperature=0, stream=True))
    assert streamed == r.choices[0].text
    models = client.models.list().data
    assert [m.id for m in models] == ["demo-q8_0"] and models[0].owned_by == "edgeslim"
    assert client.models.retrieve("demo-q8_0").id == "demo-q8_0"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-17")


def test_seed_stop_and_sampling(client):
    kw = dict(model="m", messages=STORY, max_tokens=30, temperature=1.2, top_p=0.9)
    a = client.chat.completions.create(seed=7, **kw).choices[0].message.content
    assert client.chat.completions.create(seed=7, **kw).choices[0].message.content == a
    word = a.split()[3]
    cut = client.chat.completions.create(seed=7, stop=[word, "zzz"], **kw)
    assert word not in cut.choices[0].message.content and cut.choices[0].finish_reason == "stop"
    assert a.startswith(cut.choices[0].message.content)


def test_ignore_eos_runs_past_the_end_of_the_story(client):
    kw = dict(model="m", prompt="Once upon a time", max_tokens=400, temperature=0)
    natural = client.completions.create(**kw)
    assert natural.choices[0].finish_reason == "stop" and natural.usage.completion_tokens < 400
    longer = client.completions.create(extra_body={"ignore_eos": True}, **kw)
    assert longer.choices[0].finish_reason == "length" and longer.usage.completion_tokens == 400
    assert longer.choices[0].text.startswith(natural.choices[0].text)


def test_a_conversation_reuses_its_cached_prefix(client):
    msgs = [{"role": "system", "content": "You tell short stories."}] + STORY
    first = client.chat.completions.create(model="m", messages=msgs, max_tokens=20, temperature=0)
    msgs += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "Tell me a story about a dog."}]
    second = client.chat.completions.create(model="m", messages=msgs, max_tokens=20, temperature=0)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens  # the first turn's prompt (and reply) was not re-read
    assert second.usage.prompt_tokens - cached < second.usage.prompt_tokens // 2


# -- bad requests: clear 4xx, never 500, and the server keeps serving --------------------------
BAD_BODIES = [
    ({"messages": "hello"}, "'messages'"),
    ({"messages": []}, "'messages'"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": 5}]}, "content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "text parts"),
    ({"messages": STORY, "max_tokens": "5"}, "'max_tokens' must be an integer"),
    ({"messages": STORY, "max_tokens": -1}, "'max_tokens'"),
    ({"messages": STORY, "temperature": "hot"}, "'temperature' must be a number"),
    ({"messages": STORY, "temperature": 3}, "'temperature' is 3"),
    ({"messages": STORY, "top_p": 0}, "'top_p'"),
    ({"messages": STORY, "stream": "yes"}, "'stream'"),
    ({"messages": STORY, "stop": 5}, "'stop'"),
    ({"messages": STORY, "stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
    ({"messages": STORY, "n": 2}, "'n' must be 1"),
    ({"messages": STORY, "seed": 1.5}, "'seed'"),
    ({"messages": STORY, "ignore_eos": "yes"}, "'ignore_eos'"),
    ({"messages": STORY, "tools": [{"type": "function"}]}, "not supported"),
    ({"messages": STORY, "logprobs": True}, "logprobs"),
    ({"messages": STORY, "max_tokens": 100000}, "exceed the context"),
    ({"messages": [{"role": "user", "content": "ka " * 3000}]}, "context"),
    ({"messages": STORY * 600}, "at most 512"),
]


@pytest.mark.parametrize("body,needle", BAD_BODIES, ids=[str(i) for i in range(len(BAD_BODIES))])
def test_bad_chat_requests_are_400(server, body, needle):
    _error(httpx.post(server.base + "/v1/chat/completions", json=body, timeout=60), 400, needle)


def test_malformed_and_oversized_requests(server):
    url = server.base + "/v1/chat/completions"
    _error(httpx.post(url, content=b"{not json", timeout=30), 400, "not valid JSON")
    _error(httpx.post(url, content=b"[1, 2]", timeout=30), 400, "JSON object")
    _error(httpx.post(url, content=b"\xff\xfe", timeout=30), 400, "not valid JSON")
    _error(httpx.post(server.base + "/v1/completions", json={"prompt": 5}, timeout=30), 400, "'prompt'")
    _error(httpx.post(server.base + "/v1/completions", json={"prompt": [1, 99999]}, timeout=30), 400, "vocabulary")
    huge = b'{"messages": [{"role": "user", "content": "' + b"a" * (5 << 20) + b'"}]}'
    err = _error(httpx.post(url, content=huge, timeout=60), 413, "limit")
    assert err["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit is enforced while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(80):
            yield b"a" * (64 << 10)
        yield b'"}]}'

    _error(httpx.post(url, content=chunked(), timeout=60), 413, "over the limit")
    _error(httpx.get(server.base + "/v1/nothing", timeout=30), 404, "no route")
    _error(httpx.get(url, timeout=30), 405, "not allowed")
    assert server.get("/health")["status"] == "ok"


def test_the_chat_page_is_served(server):
    page = httpx.get(server.base + "/", timeout=30)
    assert page.status_code == 200 and "<title>edgeslim chat</title>" in page.text
    for asset in ("/static/chat.js", "/static/chat.css"):
        assert httpx.get(server.base + asset, timeout=30).status_code == 200
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from outside the package


# -- disconnects, the queue, time limits -----------------------------------------------------
def test_disconnect_mid_stream_stops_the_generation(server):
    before = server.wait_idle()
    s = sse_request(server.base, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 500,
                                                     "temperature": 0, "stream": True})
    status, events = read_events(s, 6)
    s.close()
    assert status == 200 and len(events) >= 6
    after = server.wait_idle()
    assert after["cancelled"] == before["cancelled"] + 1
    generated = after["generated_tokens"] - before["generated_tokens"]
    assert generated < 100, generated  # far from the 500 asked for: it stopped when the client left
    assert not after["busy"] and after["waiting"] == 0
    r = httpx.post(server.base + "/v1/completions", json={"prompt": "Once", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200  # the slot is free again


def _long_stream(base, user=None, n_events=3):
    body = {"prompt": "Once upon a time", "max_tokens": 400, "stream": True, **({"user": user} if user else {})}
    s = sse_request(base, "/v1/completions", body)
    return s, read_events(s, n_events)


def test_full_queue_answers_503_then_serves_again(demo_gguf, tmp_path):
    srv = start_server(demo_gguf, tmp_path / "q.log", "--backend", "numpy", "--queue", "1", "--parallel", "1")
    try:
        results = []

        def go():
            results.append(_long_stream(srv.base, n_events=1000))

        threads = [threading.Thread(target=go) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        statuses = sorted(st for _, (st, _) in results)
        assert statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses
        assert set(statuses) <= {200, 503}
        r = httpx.post(srv.base + "/v1/completions", json={"prompt": "Once", "max_tokens": 3}, timeout=60)
        assert r.status_code == 200
        # a 503 says why, in OpenAI's shape, with Retry-After
        s, (status, _) = _long_stream(srv.base)  # running
        s2 = sse_request(srv.base, "/v1/completions", {"prompt": "Once", "max_tokens": 400, "stream": True})
        while srv.get("/health")["waiting"] < 1:  # queued
            time.sleep(0.02)
        busy = httpx.post(srv.base + "/v1/completions", json={"prompt": "Once", "max_tokens": 3}, timeout=60)
        for sock in (s, s2):
            sock.close()
        err = _error(busy, 503, "busy")
        assert err["code"] == "queue_full" and busy.headers["retry-after"]
    finally:
        srv.stop()


def test_one_client_over_its_share_gets_429_others_still_served(demo_gguf, tmp_path):
    srv = start_server(demo_gguf, tmp_path / "pc.log", "--backend", "numpy", "--queue", "8", "--per-client", "1",
                       "--parallel", "1")
    try:
        socks = [_long_stream(srv.base, user="greedy")[0]]  # runs
        socks.append(sse_request(srv.base, "/v1/completions", {"prompt": "Once", "max_tokens": 400, "stream": True,
                                                               "user": "greedy"}))
        while srv.get("/health")["waiting"] < 1:  # waits
            time.sleep(0.02)
        over = httpx.post(srv.base + "/v1/completions", json={"prompt": "Once", "max_tokens": 3, "user": "greedy"},
                          timeout=60)
        assert _error(over, 429, "this client")["code"] == "too_many_requests"
        other = httpx.post(srv.base + "/v1/completions", json={"prompt": "Once", "max_tokens": 3, "user": "polite"},
                           timeout=60)
        for s in socks:
            s.close()
        assert other.status_code == 200
    finally:
        srv.stop()


def test_time_limit_ends_a_long_generation(demo_gguf, tmp_path):
    srv = start_server(demo_gguf, tmp_path / "t.log", "--backend", "numpy", "--timeout", "0.4")
    try:
        t0 = time.monotonic()
        r = httpx.post(srv.base + "/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 500,
                                                                "ignore_eos": True}, timeout=60)
        took = time.monotonic() - t0
        body = r.json()
        assert r.status_code == 200 and body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] < 500 and took < 5, (body["usage"], took)
    finally:
        srv.stop()


def test_api_key(demo_gguf, tmp_path):
    srv = start_server(demo_gguf, tmp_path / "k.log", "--backend", "numpy", "--api-key", "sekrit")
    try:
        bad_client = openai.OpenAI(base_url=srv.base + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad_client.models.list()
        _error(httpx.get(srv.base + "/v1/models", timeout=30), 401, "API key")
        good = openai.OpenAI(base_url=srv.base + "/v1", api_key="sekrit", max_retries=0)
        assert good.chat.completions.create(model="m", messages=STORY, max_tokens=4).choices[0].message.content
        assert srv.get("/health")["status"] == "ok"  # health needs no key
    finally:
        srv.stop()


# -- before binding ---------------------------------------------------------------------------
def test_startup_errors_are_one_line(demo_gguf, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        assert_one_line_error(cli("serve", demo_gguf, "--port", port), f"port {port}", "in use")
    finally:
        taken.close()
    assert_one_line_error(cli("serve", tmp_path / "missing.gguf"), "no such file")
    from edgeslim.demo import DEMO_DIR

    assert_one_line_error(cli("serve", DEMO_DIR), "convert it first")
    assert_one_line_error(cli("serve", demo_gguf, "--ctx", 200_000_000, "--port", 0), "available", "--ctx")
    assert_one_line_error(cli("serve", demo_gguf, "--max-body", "lots"), "--max-body")


# -- soak ----------------------------------------------------------------------------------------
def _soak_client(base: str, i: int, until: float, tally: dict, lock: threading.Lock) -> None:
    n = 0
    while time.monotonic() < until:
        n += 1
        kind = (i + n) % 3
        try:
            if kind == 0:  # hang up mid-stream
                s, (status, _) = _long_stream(base, user=f"c{i}", n_events=3)
                s.close()
            elif kind == 1:  # a whole streamed reply
                s = sse_request(base, "/v1/chat/completions", {"messages": STORY, "max_tokens": 12, "stream": True})
                status, events = read_events(s, 10_000)
                s.close()
                assert status != 200 or events[-1] == "[DONE]"
            else:
                status = httpx.post(base + "/v1/completions", json={"prompt": "Once", "max_tokens": 8},
                                    timeout=120).status_code
        except (OSError, httpx.HTTPError) as err:
            status = type(err).__name__
        with lock:
            tally[status] = tally.get(status, 0) + 1
        if status != 200:
            time.sleep(0.2)


@pytest.mark.slow
def test_soak_32_clients_some_hanging_up(server):
    def phase(seconds: float) -> dict:
        tally: dict = {}
        lock = threading.Lock()
        until = time.monotonic() + seconds
        threads = [threading.Thread(target=_soak_client, args=(server.base, i, until, tally, lock))
                   for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 120)
        return tally

    warm = phase(4)
    rss_warm = server.rss_bytes()
    tally = phase(12)
    health = server.wait_idle(60)
    rss_end = server.rss_bytes()
    print(f"soak: warm-up {warm}, measured {tally}, RSS {rss_warm >> 20} -> {rss_end >> 20} MiB, health {health}")
    for t in (warm, tally):
        assert set(t) <= {200, 503}, t  # only answers: served, or a clear "busy"; never a 500 or a reset
    assert tally.get(200, 0) >= 32, tally
    assert health["status"] == "ok" and not health["busy"] and health["waiting"] == 0
    assert rss_end - rss_warm < 64 << 20, (rss_warm, rss_end)
    r = httpx.post(server.base + "/v1/chat/completions", json={"messages": STORY, "max_tokens": 4}, timeout=60)
    assert r.status_code == 200 and json.loads(r.text)["choices"][0]["message"]["content"]
