"""`edgeslim generate / chat / eval` end to end (subprocesses), golden outputs on stories260K, and
one-line errors for bad files and inputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_runtime_models import tiny_gguf  # noqa: F401  (fixture)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STORIES = SHARED / "models" / "stories260K"
TINYSTORIES = SHARED / "corpora" / "tinystories" / "tinystories_val.txt"
needs_shared = pytest.mark.skipif(not (STORIES / "stories260K.gguf").is_file(), reason="../shared/data is absent")


def cli(*args, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=timeout, env=env)


def assert_one_line_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeslim: "), out.stderr
    assert "Traceback" not in out.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def patched(src: Path, dst: Path, old: bytes, new: bytes, last: bool = False) -> Path:
    """A copy of src with the first (or last) occurrence of `old` replaced by `new` (same length)."""
    raw = src.read_bytes()
    assert len(old) == len(new) and old in raw
    at = raw.rfind(old) if last else raw.find(old)
    dst.write_bytes(raw[:at] + new + raw[at + len(old):])
    return dst


# -- golden outputs -------------------------------------------------------------------
@needs_shared
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_stories260k_greedy_256_is_karpathys_text(backend):
    out = cli("generate", STORIES / "stories260K.gguf", "-p", "", "-n", 256, "--temp", 0, "--backend", backend)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (STORIES / "greedy_256_text.txt").read_text(encoding="utf-8")
    assert "tok/s" in out.stderr and "tok/s" not in out.stdout


@needs_shared
def test_stories260k_perplexity_matches_llama_cpp():
    """llama-perplexity (llama.cpp 0c1e570) on this file, -c 256 --chunks 40: PPL = 3.8232 +/- 0.09686.

    (Over all 1535 chunks both give 4.8752 +/- 0.02346; later stories hold mojibake.)
    """
    out = cli("eval", STORIES / "stories260K.gguf", "--text", TINYSTORIES, "--ctx", 256, "--chunks", 40,
              "--backend", "numpy", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["n_chunks"] == 40 and res["n_scored"] == 40 * 127
    assert abs(res["ppl"] - 3.8232) < 6e-4
    assert abs(res["ppl_error"] - 0.09686) < 6e-5


# -- generate / chat / eval on a tiny model ---------------------------------------------
def test_generate_streams_text_only_to_stdout(tiny_gguf):  # noqa: F811
    path = tiny_gguf("llama")
    out = cli("generate", path, "-p", "Ka lo", "-n", 12, "--temp", 0, "--backend", "numpy")
    assert out.returncode == 0, out.stderr
    again = cli("generate", path, "-p", "Ka lo", "-n", 12, "--temp", 0, "--backend", "numpy", "--no-stats")
    assert again.stdout == out.stdout and again.stderr == ""
    assert out.stdout.endswith("\n") and len(out.stdout.strip()) > 0
    assert "generated: 12 tokens" in out.stderr


def test_generate_seed_and_stop(tiny_gguf):  # noqa: F811
    args = ("generate", tiny_gguf("llama"), "-p", "Ka", "-n", 20, "--temp", 1.5, "--top-k", 0, "--backend", "numpy")
    a, b = cli(*args, "--seed", 3), cli(*args, "--seed", 3)
    assert a.returncode == 0 and a.stdout == b.stdout
    stop = a.stdout.strip()[3:6]
    c = cli(*args, "--seed", 3, "--stop", stop)
    assert stop not in c.stdout and "stop: stop" in c.stderr


def test_chat_repl(tiny_gguf):  # noqa: F811
    script = "/system Be brief.\nKa lo mi?\n/bogus\n/reset\nTa ren so?\n/exit\nnever read\n"
    out = cli("chat", tiny_gguf("llama"), "--backend", "numpy", "-n", 8, "--temp", 0, stdin=script)
    assert out.returncode == 0, out.stderr
    assert "(system prompt set)" in out.stderr and "(history cleared)" in out.stderr
    assert "unknown command /bogus" in out.stderr
    assert len(out.stdout.splitlines()) >= 2  # two replies
    assert "Traceback" not in out.stderr


def test_chat_trims_history_to_the_context(tiny_gguf):  # noqa: F811
    turns = "".join(f"Ka lo mi ta ren so vu pe dor {i}\n" for i in range(12))
    out = cli("chat", tiny_gguf("llama"), "--backend", "numpy", "-n", 8, "--temp", 0, "--ctx", 96, stdin=turns)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr


def test_chat_ends_cleanly_at_eof(tiny_gguf):  # noqa: F811
    out = cli("chat", tiny_gguf("llama"), "--backend", "numpy", stdin="")
    assert out.returncode == 0 and out.stdout == ""


def test_eval_json_on_tiny_model(tiny_gguf, tmp_path):  # noqa: F811
    text = tmp_path / "t.txt"
    text.write_text("Ka lo mi ta ren so vu pe dor an is the and un ex ly.\n" * 40, encoding="utf-8")
    out = cli("eval", tiny_gguf("llama"), "--text", text, "--ctx", 32, "--chunks", 3, "--backend", "numpy", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["n_chunks"] == 3 and res["n_scored"] == 3 * 15
    assert 1.0 < res["ppl"] < 4 * res["n_tokens"] and res["ppl_error"] > 0


# -- one-line errors --------------------------------------------------------------------
def test_truncated_gguf(tiny_gguf, tmp_path):  # noqa: F811
    raw = tiny_gguf("llama").read_bytes()
    for cut in (len(raw) // 2, 100, 10):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(raw[:cut])
        assert_one_line_error(cli("generate", bad, "-p", "hi", "-n", 2), str(bad))


def test_corrupted_gguf(tiny_gguf, tmp_path):  # noqa: F811
    src = tiny_gguf("llama")
    assert_one_line_error(cli("generate", patched(src, tmp_path / "magic.gguf", b"GGUF", b"GGUX"), "-n", 2),
                          "not a GGUF")
    arch = patched(src, tmp_path / "arch.gguf", b"\x05\x00\x00\x00\x00\x00\x00\x00llama",
                   b"\x05\x00\x00\x00\x00\x00\x00\x00gemma")
    assert_one_line_error(cli("generate", arch, "-n", 2), "gemma", "llama", "qwen2")
    gone = patched(src, tmp_path / "gone.gguf", b"blk.1.ffn_down.weight", b"blk.1.ffn_dowX.weight",
                   last=True)  # the tensor record (metadata, before it, may name it too)
    assert_one_line_error(cli("generate", gone, "-n", 2), "blk.1.ffn_down.weight")
    assert_one_line_error(cli("generate", tmp_path / "missing.gguf", "-n", 2), "no such file")


def test_input_errors(tiny_gguf, tmp_path):  # noqa: F811
    path = tiny_gguf("llama")
    assert_one_line_error(cli("generate", path, "-p", "ka lo mi ta ren so vu pe dor an is", "--ctx", 6,
                              "--backend", "numpy"), "--ctx")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    assert_one_line_error(cli("eval", path, "--text", empty, "--backend", "numpy"), "empty")
    short = tmp_path / "short.txt"
    short.write_text("Ka lo mi ta.", encoding="utf-8")
    assert_one_line_error(cli("eval", path, "--text", short, "--ctx", 64, "--backend", "numpy"), "at least 128")
    assert_one_line_error(cli("eval", path, "--text", tmp_path / "nope.txt"), "does not exist")


# -- chat internals ----------------------------------------------------------------------
def test_fit_history_drops_oldest_turns(tiny_gguf):  # noqa: F811
    import edgeslim
    from edgeslim.runtime.cli_chat import fit_history

    model = edgeslim.load(tiny_gguf("llama"), backend="numpy", n_ctx=160)
    history = []
    for i in range(10):
        history += [{"role": "user", "content": f"ka lo mi ta {i}"}, {"role": "assistant", "content": "so vu pe dor"}]
    history.append({"role": "user", "content": "last question"})
    system = {"role": "system", "content": "Be brief."}
    assert len(model.chat_tokens([system] + history)) + 16 > 160  # all of it would not fit
    msgs = fit_history(model, "Be brief.", history, reserve=16)
    assert msgs[0] == system
    assert msgs[1]["role"] == "user" and msgs[-1]["content"] == "last question"
    assert len(model.chat_tokens(msgs)) + 16 <= 160
    assert 2 < len(msgs) < 22 and history == msgs[1:]  # trimmed in place
    assert fit_history(model, None, [{"role": "user", "content": "ka " * 200}], reserve=16) is None


def test_ctrl_c_stops_a_reply_but_not_the_chat():
    from types import SimpleNamespace

    from edgeslim.runtime.cli_chat import _reply

    class Fake:
        last_stats = None

        def stream_chat(self, msgs, n, **kw):
            yield "partial "
            yield "reply"
            raise KeyboardInterrupt

    args = SimpleNamespace(n_predict=8, temp=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0,
                           repeat_last_n=64, seed=None, stop=[], stats=False)
    assert _reply(Fake(), [], args) == "partial reply"
