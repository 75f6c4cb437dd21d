"""Task accuracy (`edgeslim eval --tasks`) and KL divergence against a base file (`--kl-base`)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgeslim.demo import DEMO_DIR
from edgeslim.runtime.tasks import build_items, format_results, score, wilson
from edgeslim.runtime.tasks.common import Tok, read_corpus
from edgeslim.runtime.tasks.next_token import buckets


@pytest.fixture(scope="module")
def demo_gguf(tmp_path_factory):
    """Factory: demo_gguf(quant) -> the demo model converted to that type (cached)."""
    from edgeslim.convert.pipeline import convert

    folder, made = tmp_path_factory.mktemp("demo"), {}

    def make(quant: str = "F16"):
        if quant not in made:
            made[quant] = folder / f"demo-{quant}.gguf"
            convert(str(DEMO_DIR), made[quant], quant=quant, progress=False)
        return made[quant]

    return make


@pytest.fixture(scope="module")
def demo_model(demo_gguf):
    import edgeslim

    return edgeslim.load(demo_gguf("F16"), backend="numpy", n_ctx=256)


def cli(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


# -- pieces -------------------------------------------------------------------------------------
def test_wilson_interval_known_values():
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(5, 10)
    assert abs(lo - 0.2366) < 1e-4 and abs(hi - 0.7634) < 1e-4
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and abs(hi - 0.2775) < 1e-4
    lo, hi = wilson(100, 100)
    assert hi == 1.0 and abs(lo - 0.9630) < 1e-4


def test_paired_difference_moves_only_with_changed_probes():
    from edgeslim.runtime.tasks import paired_difference

    assert paired_difference("1" * 50 + "0" * 50, "1" * 50 + "0" * 50) == (0.0, 0.0, 0.0)
    d, lo, hi = paired_difference("1" * 80 + "0" * 20, "1" * 70 + "0" * 30)  # 10 of 100 probes lost
    assert d == pytest.approx(-0.10) and lo < -0.10 < hi < 0  # a clear loss, even with 100 probes
    assert paired_difference("1100", "0011")[0] == 0.0


def test_frequency_buckets():
    ids = np.array([0] * 50 + [1] * 30 + [2] * 12 + [3] * 5 + [4] * 2 + [5] * 1)
    label = buckets(ids, 7)
    assert label.tolist() == [1, 0, 0, 2, 2, 2, 0]  # 0 holds the first half; 3,4,5 the last 10%; 6 never occurs


def test_items_are_deterministic_and_well_formed(demo_model):
    tok = demo_model.tokenizer
    text = read_corpus(None)
    a = build_items(tok, "all", text, 30, 0, 256)
    b = build_items(tok, "all", text, 30, 0, 256)
    c = build_items(tok, "all", text, 30, 1, 256)
    assert [(i.ids, i.probes) for i in a] == [(i.ids, i.probes) for i in b]
    assert [i.ids for i in a] != [i.ids for i in c]
    rows: dict[str, int] = {}
    for item in a:
        assert len(item.ids) <= 256 and item.ids[0] == tok.bos_id
        for p in item.probes:
            rows[p.group] = rows.get(p.group, 0) + 1
            assert 0 <= p.pos < len(item.ids)
            if p.group.startswith(("next", "copy")):  # the target is the token that follows in the item
                assert item.ids[p.pos + 1] == p.target
            else:  # recall / cloze: the prompt ends where the answer word starts
                assert p.pos == len(item.ids) - 1 and tok.decode([p.target]).strip()
            if p.choices:
                assert p.target in p.choices and len(set(p.choices)) == len(p.choices)
    assert rows == {"next-frequent": 30, "next-rare": 30, "copy": 30, "copy/first": 30, "recall": 30, "cloze": 30}


def test_cloze_answer_occurs_earlier_in_the_prompt(demo_model):
    tok = Tok(demo_model.tokenizer)
    for item in build_items(demo_model.tokenizer, "cloze", read_corpus(None), 20, 3, 256):
        (p,) = item.probes
        word = demo_model.tokenizer.decode([p.target]).strip()
        assert word and word in demo_model.tokenizer.decode(item.ids[len(tok.start()):])


def test_score_counts_rows_and_choices(demo_model):
    items = build_items(demo_model.tokenizer, "recall,next", read_corpus(None), 12, 0, 256)
    V = demo_model.tokenizer.vocab_size

    def oracle(ids):  # the right answer everywhere: every probe is correct
        out = np.zeros((len(ids), V + 3), np.float32)  # 3 padding columns past the vocabulary
        out[np.arange(len(ids) - 1), ids[1:]] = 1.0
        out[:, V:] = 9.0  # padding rows must never win
        for it in items:
            if it.ids == ids:
                for p in it.probes:
                    out[p.pos, p.target] = 5.0
        return out

    res = {r.name: r for r in score(oracle, items, ["recall", "next"], V)}
    assert all(r.n == 12 and r.accuracy == 1.0 for r in res.values())
    assert res["recall/choice"].chance == pytest.approx(0.25) and res["recall"].chance is None
    wrong = {r.name: r for r in score(lambda ids: -oracle(ids), items, ["recall", "next"], V)}
    assert all(r.correct == 0 for r in wrong.values())
    assert "recall/choice" in format_results(list(res.values()))


# -- the demo model ----------------------------------------------------------------------------
def test_demo_model_finds_frequent_tokens_easier_than_rare(demo_model):
    from edgeslim.runtime.tasks import run_tasks

    res = {r.name: r for r in run_tasks(demo_model, "next", n=80)}
    freq, rare = res["next-frequent"], res["next-rare"]
    assert freq.n == rare.n == 80
    assert freq.interval[0] > rare.interval[1]  # the intervals do not overlap
    assert freq.accuracy > 0.4


def test_cli_tasks_json_and_table(demo_gguf):
    out = cli("eval", demo_gguf("F16"), "--tasks", "copy,cloze", "--task-n", 8, "--backend", "numpy", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)["tasks"]}
    assert set(rows) == {"copy", "copy/first", "cloze"}
    assert all(r["n"] == 8 and r["lo"] <= r["accuracy"] <= r["hi"] for r in rows.values())
    table = cli("eval", demo_gguf("F16"), "--tasks", "copy", "--task-n", 4, "--backend", "numpy")
    assert table.returncode == 0 and "copy/first" in table.stdout and "95% interval" in table.stdout


@pytest.mark.parametrize("args,needle", [
    (("--tasks", "bogus"), "unknown task 'bogus'"),
    ((), "nothing to evaluate"),
    (("--tasks", "all", "--kl-base", "x.gguf"), "--kl-base needs --text"),
    (("--tasks", "all", "--task-text", "/nonexistent.txt"), "does not exist"),
    (("--tasks", "all", "--task-n", "0"), "--task-n 0"),
])
def test_cli_task_errors_are_one_line(demo_gguf, args, needle):
    out = cli("eval", demo_gguf("F16"), *args, "--backend", "numpy")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


# -- KL divergence -------------------------------------------------------------------------------
def test_kl_is_zero_against_itself_and_grows_as_bits_fall(demo_gguf, demo_model):
    import edgeslim

    text = read_corpus(None)[:20000]
    same = demo_model.kl_divergence(demo_model, text, n_ctx=64, n_chunks=3)
    assert same.kl_mean == 0.0 and same.top1_same == 1.0 and same.ppl == same.ppl_base
    kls = []
    for q in ("Q8_0", "Q4_K", "Q2_K"):
        m = edgeslim.load(demo_gguf(q), backend="numpy", n_ctx=64)
        r = m.kl_divergence(demo_model, text, n_chunks=3)
        assert r.n_scored == 3 * 31 and r.ppl_base == pytest.approx(same.ppl)
        kls.append(r.kl_mean)
    assert 0 < kls[0] < kls[1] < kls[2]


def test_runtime_tasks_import_without_torch():
    code = ("import sys, edgeslim.runtime.tasks, edgeslim.runtime.cli_eval; "
            "print(','.join(m for m in ('torch', 'transformers') if m in sys.modules) or 'clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "clean", out.stderr
