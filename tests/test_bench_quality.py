"""scripts/bench_quality.py's verdicts and parsing, on made-up results (no model, no llama.cpp)."""
from __future__ import annotations

import sys

import pytest

from conftest import REPO, load_script

sys.path.insert(0, str(REPO / "scripts"))
report = load_script("_quality_report")
score = load_script("_quality_score")


def _r(method, config, nbytes, kl, bpw=None, series=None):
    return {"id": f"{method}-{config}", "method": method, "config": config, "series": series or method,
            "status": "ok", "file_bytes": nbytes, "bpw": bpw if bpw is not None else nbytes / 1e6, "kl_mean": kl}


LCP = [_r("llama.cpp", "Q2_K", 3.0e6, 0.10), _r("llama.cpp+imatrix", "IQ3_XXS", 3.5e6, 0.05),
       _r("llama.cpp", "Q3_K_S", 4.0e6, 0.06),  # not on the envelope: bigger and worse than IQ3_XXS
       _r("llama.cpp+imatrix", "IQ4_XS", 4.6e6, 0.02), _r("mlx-lm", "4-bit", 4.0e6, 0.001)]


def test_envelope_and_the_file_of_equal_or_larger_size():
    env = report.lcp_envelope(LCP)
    assert env == [(3.0e6, 0.10), (3.5e6, 0.05), (4.6e6, 0.02)]  # mlx-lm is not llama.cpp
    assert report.best_at_or_above(env, 3.5e6) == (3.5e6, 0.05)  # equal size
    assert report.best_at_or_above(env, 3.6e6) == (4.6e6, 0.02)  # the next larger file, not interpolated
    # the next larger file is Q3_K_S (4.0 MB, off the envelope): the best no larger than it is IQ3_XXS
    assert report.best_at_or_above(env, 3.6e6, [r["file_bytes"] for r in LCP[:4]]) == (3.5e6, 0.05)
    assert report.best_at_or_above(env, 5e6) is None
    near = report.envelope([(3.0e6, 0.1), (3.001e6, 0.08), (3.2e6, 0.05)])  # imatrix twin 0.03% larger: same size
    assert report.best_at_or_above(near, 2.9e6) == (3.001e6, 0.08)
    assert report.best_at_most(env, 4.0e6) == (3.5e6, 0.05) and report.best_at_most(env, 2e6) is None


def test_goal1_ratio_per_size_and_verdict():
    mine = [_r("edgeslim", "b3.0", 3.0e6, 0.06, 3.0, "edgeslim erank"),   # vs Q2_K: 0.6x
            _r("edgeslim", "b3.6", 3.6e6, 0.016, 3.6, "edgeslim erank"),  # vs IQ4_XS (larger): 0.8x
            _r("edgeslim", "b6", 6.0e6, 0.001, 6.0, "edgeslim erank")]    # outside 2.5-5.0: not counted
    line, rows = report.goal1(LCP + mine, "edgeslim erank")
    assert [round(x["ratio"], 3) for x in rows] == [0.6, 0.32]  # 3.6 MB: vs IQ3_XXS (Q3_K_S, 4.0 MB, is next)
    assert rows[1]["peer"] == "llama.cpp+imatrix IQ3_XXS" and "MET (worst 0.60x" in line
    mine[1]["kl_mean"] = 0.04  # 0.8x IQ3_XXS
    line, rows = report.goal1(LCP + mine, "edgeslim erank")
    assert "NOT MET at 1 of 2 sizes" in line
    table = report.goal1_table(rows)
    assert "**0.80x**" in table[-1] and "0.60x" in table[-2]


def test_goal2_compares_with_the_best_file_up_to_4_bpw():
    mine = [_r("edgeslim", "b3.0", 3.0e6, 0.06, 3.0, "edgeslim erank")]
    assert "NOT MET" in report.goal2(LCP + mine, "edgeslim erank")  # llama.cpp's best up to 4.0 bpw: 0.05
    mine[0]["kl_mean"] = 0.05
    assert ": MET" in report.goal2(LCP + mine, "edgeslim erank")
    assert "UNTESTED" in report.goal2(LCP, "edgeslim erank")


ROWS = """chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p
   1      20.2021 ±    3.0963       0.03154 ±    0.01114       0.00816 ±    0.00066     2.884 ±  0.308 %    92.157 ±  1.687 %
   2      15.6715 ±    1.6875       0.00620 ±    0.00860       0.00786 ±    0.00067     2.506 ±  0.196 %    93.725 ±  1.075 %
"""


def test_scores_are_read_from_chunk_row_n():
    """llama.cpp's logging thread can drop its last lines at exit: the scorer runs one window more and
    reads the running means of row N (the first N windows)."""
    assert score.parse_chunks(ROWS, 1)["kl_mean"] == pytest.approx(0.00816)
    assert score.parse_chunks(ROWS, 2) == pytest.approx({"ppl": 15.6715, "ppl_error": 1.6875, "kl_mean": 0.00786,
                                                         "kl_p99": None, "top1_same": 0.93725})
    with pytest.raises(score.ScoreError, match="no chunk row 3"):
        score.parse_chunks(ROWS, 3)
