"""`edgeslim sweep`: the grid, cache keys, Pareto fronts and the answer; a small sweep of the demo model
end to end (table, JSON, charts, resumed without redoing points); pruned points once convert() prunes."""
from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeslim.demo import DEMO_DIR
from edgeslim.errors import InputError
from edgeslim.sweep.grid import Point, make_grid, point_key
from edgeslim.sweep.report import answer, interpolate_log, pareto

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def convert_prunes() -> bool:
    from edgeslim.convert.pipeline import convert

    return {"prune", "sparsity", "pattern"} <= set(inspect.signature(convert).parameters)


def sweep_cli(out: Path, *extra, timeout: int = 900) -> subprocess.CompletedProcess:
    args = ["sweep", DEMO_DIR, "-o", out, "--ctx", 64, "--chunks", 2, "--tasks", "next,copy", "--task-n", 10,
            "--backend", "numpy", "--decode-tokens", 8, "--peers", "none", "--no-progress", *extra]
    return subprocess.run([sys.executable, "-m", "edgeslim.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


# -- pieces -------------------------------------------------------------------------------------
def test_grid_dedupes_dense_points_and_skips_impossible_patterns():
    pts, notes = make_grid([8, 4], [0, 0.25, 0.5], ["unstructured", "2:4"], ["type"], ["wanda"])
    dense = [p for p in pts if p.dense]
    assert [p.qtype() for p in dense] == ["Q8_0", "Q4_K"]  # one dense point per bits, not per pattern
    assert Point(4, 0.5, "2:4", "type", "wanda") in pts and Point(4, 0.25, "2:4", "type", "wanda") not in pts
    assert notes == ["skipped 2:4 at 25%: the 2:4 pattern fixes sparsity at 50%"]
    assert Point(4, 0.5, "2:4", "type", "wanda").convert_kwargs() == {
        "quant": "Q4_K", "prune": "wanda", "sparsity": 0.5, "pattern": "2:4"}
    assert Point(3.5, allocate="erank").convert_kwargs() == {"bpw": 3.5, "allocate": "erank", "family": "ggml",
                                                             "group": 64}
    assert Point(4, family="affine").qtype() == "AFFINE4_G64"


@pytest.mark.parametrize("bits,alloc,needle", [(7, "type", "no single ggml type"), (1, "erank", "not a usable"),
                                               (3.5, "type", "no single ggml type")])
def test_grid_rejects_bits_that_cannot_be_made(bits, alloc, needle):
    with pytest.raises(InputError, match=needle):
        make_grid([bits], [0], ["unstructured"], [alloc], ["wanda"])


def test_point_key_changes_with_every_input():
    setup = {"ctx": 64, "text": "abc"}
    k = point_key(Point(4), "src", setup)
    assert k == point_key(Point(4), "src", dict(setup)) and len(k) == 16
    assert len({k, point_key(Point(3), "src", setup), point_key(Point(4), "other", setup),
                point_key(Point(4), "src", {**setup, "ctx": 128}),
                point_key(Point(4, 0.5, "2:4", prune="wanda"), "src", setup)}) == 5


def test_pareto_fronts_and_answer():
    pts = [{"key": c, "file_bytes": b, "kl_mean": kl, "decode_tps": t, "method": "edgeslim", "label": c,
            "status": "ok", "sparsity": s}
           for c, b, kl, t, s in [("a", 1, 0.5, 10, 0), ("b", 2, 0.6, 30, 0), ("c", 3, 0.1, 20, 0),
                                  ("d", 4, 0.05, 5, 0), ("s", 2.5, 0.1, 1, 0.5)]]
    assert [r["key"] for r in pareto(pts, "kl_mean")] == ["a", "s", "d"]
    assert [r["key"] for r in pareto(pts, "decode_tps", lower_is_better=False)] == ["a", "b"]
    assert interpolate_log([(2, 0.6), (3, 0.1)], 2.5) == pytest.approx((0.6 * 0.1) ** 0.5)
    assert interpolate_log([(2, 0.6), (3, 0.1)], 5) is None
    text = answer(pts)
    assert text.startswith("Sparse + more bits beats dense + fewer bits") and "1 of 1 compared" in text
    assert text.endswith("decode at 0.05x the tokens/s of the dense file nearest in size.")  # s 1 vs c 20
    assert "No sparse point" in answer([p for p in pts if not p["sparsity"]])
    big = dict(pts[-1], key="t", label="t", file_bytes=5, kl_mean=0.2)  # larger and worse than d: a loss
    small = dict(pts[-1], key="u", label="u", file_bytes=0.5, kl_mean=0.9)  # smaller than every dense file
    text = answer(pts + [big, small])
    assert "sometimes beats" in text and "1 of 2 compared" in text and "worse than a smaller dense file" in text
    assert "u at 0.00 MB: no dense file of equal or smaller size" in text
    assert "decode at 0.05-0.20x the tokens/s" in text  # s vs c, t vs d (5 tok/s), u vs a (10)
    assert answer(pts[:4] + [small]).startswith("No sparse point can be compared")


# -- end to end on the demo model ------------------------------------------------------------------
def test_sweep_demo_small_grid_is_measured_charted_and_resumed(tmp_path):
    out = tmp_path / "sw"
    first = sweep_cli(out, "--bits", "8,4", "--sparsity", "0,0.5")
    assert first.returncode == 0, first.stderr
    data = json.loads((out / "sweep.json").read_text())
    res = {r["label"]: r for r in data["results"]}
    f16, q8, q4 = res["F16"], res["Q8_0"], res["Q4_K"]
    assert all(r["status"] == "ok" for r in (f16, q8, q4))
    assert q4["file_bytes"] < q8["file_bytes"] < f16["file_bytes"]
    assert f16["kl_mean"] == 0 and 0 < q8["kl_mean"] < q4["kl_mean"]
    assert q4["ppl_base"] == pytest.approx(f16["ppl"], rel=1e-6)
    for r in (f16, q8, q4):
        assert r["decode_tps"] > 0 and r["peak_rss_bytes"] > 10 * 2**20
        assert set(r["tasks"]) == {"next-frequent", "next-rare", "copy", "copy/first"}
        assert all(t["n"] == 10 for t in r["tasks"].values())
    pruned = res["Q4_K 50% unstructured wanda"]
    assert pruned["status"] == ("ok" if convert_prunes() else "unavailable")
    md = (out / "sweep.md").read_text()
    assert "| edgeslim | Q4_K |" in md and "**Answer:**" in md and "![quality.png](quality.png)" in md
    assert "| Δ next-frequent |" in md and len(f16["tasks"]["copy"]["outcomes"]) == 10  # paired deltas vs F16
    for png in ("quality.png", "speed.png"):
        data_png = (out / png).read_bytes()
        assert data_png.startswith(PNG_MAGIC) and len(data_png) > 20_000
    assert [p.name for p in (out / "files").glob("*.gguf")] == [f"{f16['key']}.gguf"]  # only the KL base kept
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "points").glob("*.json")}
    again = sweep_cli(out, "--bits", "8,4", "--sparsity", "0,0.5")
    assert again.returncode == 0, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "points").glob("*.json")} == stamps  # nothing redone
    assert json.loads((out / "sweep.json").read_text())["results"] == data["results"]


def test_sweep_bad_flags_are_one_line_errors(tmp_path):
    for extra, needle in [(("--bits", "7"), "no single ggml type"), (("--patterns", "3:4"), "--patterns takes"),
                          (("--tasks", "bogus"), "unknown task")]:
        out = sweep_cli(tmp_path / "bad", *extra)
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.slow
@pytest.mark.skipif(not convert_prunes(), reason="convert() has no prune/sparsity/pattern keywords yet")
def test_sweep_sparsity_axis_degrades_quality(tmp_path):
    out = tmp_path / "sp"
    run = sweep_cli(out, "--bits", "8", "--sparsity", "0,0.25,0.5", "--patterns", "unstructured,2:4",
                    "--prune", "magnitude")
    assert run.returncode == 0, run.stderr
    res = {r["label"]: r for r in json.loads((out / "sweep.json").read_text())["results"]}
    kls = [res[k]["kl_mean"] for k in ("Q8_0", "Q8_0 25% unstructured magnitude", "Q8_0 50% unstructured magnitude")]
    assert kls[0] < kls[1] < kls[2]
    assert res["Q8_0 50% 2:4 magnitude"]["status"] == "ok"


@pytest.mark.slow
def test_sweep_puts_peer_files_on_the_same_axes(tmp_path):
    from edgeslim.sweep.peers import llama_bin

    bin_dir = llama_bin("/work/lcp/lcp-build/bin")
    have_mlx = importlib.util.find_spec("mlx_lm") is not None
    if bin_dir is None and not have_mlx:
        pytest.skip("neither llama-quantize nor mlx_lm is installed")
    out = tmp_path / "peers"
    run = sweep_cli(out, "--bits", "4", "--tasks", "copy", "--peers", "llama.cpp,mlx-lm",
                    *(["--llama-bin", bin_dir] if bin_dir else []))
    assert run.returncode == 0, run.stderr
    res = {r["label"]: r for r in json.loads((out / "sweep.json").read_text())["results"]}
    want = {"llama.cpp Q4_K_M": bin_dir is not None, "mlx-lm 4-bit g64": have_mlx}
    for label, available in want.items():
        assert res[label]["status"] == ("ok" if available else "unavailable"), res[label]
        if available:  # a 4-bit peer file sits between our Q4_K and F16 in size and diverges from F16
            assert 0 < res[label]["kl_mean"] and res[label]["file_bytes"] < res["F16"]["file_bytes"]
    assert "llama.cpp" in (out / "sweep.md").read_text()
