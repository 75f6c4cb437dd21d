"""Per-matrix measurements: effective rank, moments, per-type (importance-weighted) errors, `inspect --analyze`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeslim.convert import analyze as A
from edgeslim.errors import InputError
from edgeslim.gguf_write import GGUFOut
from edgeslim.quants import dequantize, quantize

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STORIES = SHARED / "models" / "stories260K" / "stories260K.gguf"


def _orth(rng, n, k):
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return q  # (n, k) orthonormal columns


# -- effective rank ------------------------------------------------------------
def test_identity_has_full_effective_rank():
    er, frac, exact = A.effective_rank(np.eye(48, dtype=np.float32))
    assert exact and er == pytest.approx(48, rel=1e-6) and frac == pytest.approx(1.0, rel=1e-6)


def test_rank_k_with_equal_singular_values_has_erank_k():
    rng = np.random.default_rng(0)
    w = (_orth(rng, 80, 6) @ _orth(rng, 120, 6).T).astype(np.float32)  # (80, 120), 6 singular values of 1
    er, frac, _ = A.effective_rank(w)
    assert er == pytest.approx(6, rel=1e-3)
    assert frac == pytest.approx(6 / 80, rel=1e-3)


def test_random_rank_k_product_is_at_most_k():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 8)) @ rng.standard_normal((8, 100))  # rank 8, unequal singular values
    er, frac, _ = A.effective_rank(w)
    assert 5.0 < er <= 8.0 + 1e-6
    assert frac == pytest.approx(er / 64)


def test_erank_of_known_spectrum():
    s = np.array([4.0, 2.0, 1.0, 1.0])
    p = s / s.sum()
    assert A.erank_from_singular_values(s) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert A.erank_from_singular_values(np.zeros(5)) == 0.0


def test_gram_path_matches_svd():
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((600, 700)) * np.linspace(0.1, 2.0, 700)).astype(np.float32)
    assert min(w.shape) > A.EXACT_SVD_DIM  # uses the Gram eigenvalues
    want = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    got = A.singular_values(w)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * want[0])


def test_subsampled_erank_is_flagged_and_close_for_noise():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((300, 500)).astype(np.float32)
    er, frac, exact = A.effective_rank(w, max_dim=None)
    er_s, frac_s, exact_s = A.effective_rank(w, max_dim=150)
    assert exact and not exact_s
    assert frac_s == pytest.approx(frac, abs=0.03)
    assert er_s == pytest.approx(frac_s * 300)


# -- moments -------------------------------------------------------------------
def test_kurtosis_is_pearson_gaussian_3_uniform_1_8():
    rng = np.random.default_rng(4)
    g = A.moments(rng.standard_normal((400, 500)).astype(np.float32))
    u = A.moments(rng.uniform(-1, 1, (400, 500)).astype(np.float32))
    t = A.moments(rng.standard_t(5, (400, 500)).astype(np.float32))  # Pearson kurtosis 9
    assert g["kurtosis"] == pytest.approx(3.0, abs=0.05)
    assert u["kurtosis"] == pytest.approx(1.8, abs=0.02)
    assert t["kurtosis"] > 5.0
    assert g["outlier_share"] == pytest.approx(0.0027, abs=0.0006)  # P(|z| > 3)
    assert u["outlier_share"] == 0.0
    assert g["std"] == pytest.approx(1.0, abs=0.01) and abs(g["mean"]) < 0.01


def test_constant_matrix_moments_do_not_divide_by_zero():
    m = A.moments(np.full((4, 32), 0.5, np.float32))
    assert m["std"] == 0.0 and m["kurtosis"] == 0.0 and m["outlier_share"] == 0.0


def test_tensor_stats_with_importance():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((16, 64)).astype(np.float32)
    imp = rng.uniform(0, 3, 64)
    s = A.tensor_stats(w, imp)
    assert (s["rows"], s["cols"], s["numel"]) == (16, 64, 1024)
    assert s["energy"] == pytest.approx(float((w.astype(np.float64) ** 2).sum()))
    assert s["wenergy"] == pytest.approx(float(((w.astype(np.float64) ** 2).sum(0) * imp).sum()))
    assert s["act_mean"] == pytest.approx(imp.mean()) and s["act_peak"] == pytest.approx(imp.max() / imp.mean())
    assert "wenergy" not in A.tensor_stats(w)
    json.dumps(s)  # plain floats only


# -- errors ----------------------------------------------------------------------
def test_type_errors_fall_with_bits_and_match_direct_measurement():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((8, 512)).astype(np.float32)
    order = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16"]  # one family line: error falls with bits
    errs = A.type_errors(w, order)
    assert list(errs) == order
    assert list(A.type_errors(w, A.family_types("ggml"))) == list(A.family_types("ggml"))  # every candidate
    assert all(errs[a] > errs[b] for a, b in zip(order, order[1:]))
    direct = float(((dequantize(quantize(w, "Q4_K")) - w).astype(np.float64) ** 2).sum())
    assert errs["Q4_K"] == pytest.approx(direct, rel=1e-9)


def test_weighted_error_is_importance_times_column_error():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((8, 256)).astype(np.float32)
    imp = rng.uniform(0.1, 5, 256)
    got = A.measure_errors(w, ["Q3_K", "AFFINE3_G32"], imp)
    for t, (plain, weighted) in got.items():
        d = (dequantize(quantize(w, t, imp)) - w).astype(np.float64) ** 2  # quantized with the importance
        assert plain == pytest.approx(d.sum(), rel=1e-9)
        assert weighted == pytest.approx((d.sum(0) * imp).sum(), rel=1e-9)


def test_fallback_types_are_the_keys():
    w = np.random.default_rng(8).standard_normal((4, 96)).astype(np.float32)  # 96 % 256 != 0, 96 % 64 != 0
    keys = list(A.type_errors(w, A.family_types("ggml")))  # the 32-wide types and the fallbacks onto them
    assert set(keys) == {"IQ4_NL", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16"} and len(keys) == len(set(keys))
    assert list(A.type_errors(w, A.family_types("affine"))) == [f"AFFINE{b}_G32" for b in (2, 3, 4, 5, 6, 8)] + ["F16"]


def test_row_sample_estimates_the_whole_error():
    rng = np.random.default_rng(9)
    w = rng.standard_normal((512, 256)).astype(np.float32)
    full = A.type_errors(w, ["Q4_K"], max_weights=None)["Q4_K"]
    est = A.type_errors(w, ["Q4_K"], max_weights=64 * 256)["Q4_K"]  # 64 of 512 rows
    assert est == pytest.approx(full, rel=0.1)
    assert A.sample_rows(512, 256, 64 * 256).size == 64 and A.sample_rows(10, 256, 64 * 256) is None


def test_bad_importance_and_shapes_raise_input_error():
    w = np.ones((4, 64), np.float32)
    with pytest.raises(InputError, match="64 finite non-negative"):
        A.type_errors(w, ["Q8_0"], np.ones(32))
    with pytest.raises(InputError, match="non-negative"):
        A.type_errors(w, ["Q8_0"], -np.ones(64))
    with pytest.raises(InputError, match="2-D"):
        A.tensor_stats(np.ones((2, 2, 2), np.float32))
    with pytest.raises(InputError, match="family"):
        A.family_types("gptq")


def test_analyze_tensor_record():
    rng = np.random.default_rng(10)
    w = rng.standard_normal((16, 256)).astype(np.float32)
    a = A.analyze_tensor("blk.0.attn_q.weight", w, A.family_types("affine", 64), np.full(256, 2.0))
    assert a.weighted and a.shape == (16, 256) and a.numel == 4096
    assert set(a.sse) == set(A.family_types("affine", 64))
    assert a.wsse["AFFINE4_G64"] == pytest.approx(2.0 * a.sse["AFFINE4_G64"])
    assert 0.05 < a.rel_rms("AFFINE4_G64") < 0.14
    assert A.analyze_tensor("x", w, ["Q4_K"], measure=False).sse == {}


# -- inspect --analyze ------------------------------------------------------------
def _write_mixed(path: Path) -> dict[str, np.ndarray]:
    """A small GGUF with an F16, a Q4_K and an affine matrix; returns what each dequantizes to."""
    rng = np.random.default_rng(11)
    w = {n: rng.standard_normal((8, 256)).astype(np.float32) for n in ("a.weight", "b.weight", "c.weight")}
    q = {"b.weight": quantize(w["b.weight"], "Q4_K"), "c.weight": quantize(w["c.weight"], "AFFINE4_G64")}
    with GGUFOut(path, arch="llama") as out:
        out.plan("a.weight", (8, 256), "F16")
        out.plan("b.weight", (8, 256), "Q4_K")
        out.plan("c.weight", (8, 256), "AFFINE4_G64")
        out.plan("n.weight", (256,), "F32")
        out.begin()
        out.write("a.weight", w["a.weight"].astype(np.float16))
        out.write("b.weight", q["b.weight"])
        out.write("c.weight", q["c.weight"])
        out.write("n.weight", np.ones(256, np.float32))
    return {"a.weight": w["a.weight"].astype(np.float16).astype(np.float32),
            "b.weight": dequantize(q["b.weight"]), "c.weight": dequantize(q["c.weight"])}


def test_analyze_file_dequantizes_every_stored_type(tmp_path):
    from edgeslim.analyze_cmd import analyze_file, load_matrix
    from edgeslim.gguf_file import GGUFFile

    path = tmp_path / "m.gguf"
    want = _write_mixed(path)
    f = GGUFFile(path)
    for name, qtype in (("a.weight", "F16"), ("b.weight", "Q4_K"), ("c.weight", "AFFINE4_G64")):
        np.testing.assert_array_equal(load_matrix(f, name, qtype, (8, 256)), want[name])
    rows = list(analyze_file(str(path)))
    assert [r["name"] for r in rows] == ["a.weight", "b.weight", "c.weight"]  # the norm is skipped
    assert [r["type"] for r in rows] == ["F16", "Q4_K", "AFFINE4_G64"]
    for r in rows:
        assert r["erank"] == pytest.approx(A.effective_rank(want[r["name"]])[0])
    rel = [rows[0]["errors"][t]["rel_rms"] for t in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16")]
    assert all(x > y for x, y in zip(rel, rel[1:]))
    assert set(rows[0]["errors"]) == set(A.family_types("ggml"))
    # values already on the Q4_K grid: re-quantizing to Q4_K is nearly lossless, unlike Q3_K
    assert rows[1]["errors"]["Q4_K"]["rel_rms"] < 0.01 < 0.1 < rows[1]["errors"]["Q3_K"]["rel_rms"]
    json.dumps(rows)


def test_inspect_analyze_cli(tmp_path, capsys):
    from edgeslim.cli import main

    path = tmp_path / "m.gguf"
    _write_mixed(path)
    assert main(["inspect", str(path), "--analyze", "--analyze-family", "affine"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "erank" in out[0] and "AFFINE2_G64" in out[0] and "family affine" in out[0]
    assert [line.split()[0] for line in out[1:]] == ["a.weight", "b.weight", "c.weight"]
    assert main(["inspect", str(path), "--analyze", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["family"] == "ggml" and 0 < rows[1]["erank_fraction"] <= 1


@pytest.mark.skipif(not STORIES.is_file(), reason="../shared/data (stories260K) is absent")
def test_analyze_stories260k():
    from edgeslim.analyze_cmd import analyze_file

    rows = {r["name"]: r for r in analyze_file(str(STORIES))}
    assert len(rows) == 2 + 5 * 7  # embedding, head, 7 matrices per layer
    q = rows["blk.0.attn_q.weight"]
    assert q["shape"] == [64, 64] and 0.3 < q["erank_fraction"] < 1.0 and q["kurtosis"] > 3
    # 64 columns: the k-quants fall back to 32-wide types (Q4_K -> Q5_0); 172 columns: everything to F16
    assert q["errors"]["Q4_K"]["used"] == "Q5_0" and q["errors"]["Q2_K"]["used"] == "IQ4_NL"
    assert rows["blk.0.ffn_down.weight"]["errors"]["Q2_K"]["used"] == "F16"


def test_analysis_modules_import_without_torch():
    import subprocess
    import sys

    code = ("import sys, edgeslim.convert.analyze, edgeslim.convert.allocate, edgeslim.analyze_cmd\n"
            "print(','.join(m for m in ('torch', 'transformers') if m in sys.modules) or 'clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_analysis_pass_on_threads_gives_the_one_thread_answer(monkeypatch):
    """measure.analysis_pass analyzes matrices on several threads: same results, in input order."""
    from edgeslim.convert import measure
    from edgeslim.convert.model import TensorSpec

    rng = np.random.default_rng(3)
    ws = {f"blk.{i}.ffn_up.weight": rng.standard_normal((64, 256)).astype(np.float32) * (i + 1) for i in range(5)}
    mats = [TensorSpec(n, w.shape, lambda w=w: w) for n, w in ws.items()]
    types = ("IQ2_XXS", "Q4_K", "Q8_0")
    got = {}
    for workers in (1, 3):
        monkeypatch.setattr(measure, "ANALYSIS_WORKERS", workers)
        got[workers] = measure.analysis_pass(mats, types, {}, progress=False)
    assert [a.name for a in got[3]] == list(ws)
    assert [(a.sse, a.stats) for a in got[1]] == [(a.sse, a.stats) for a in got[3]]
    assert all(set(a.sse) == set(types) for a in got[3])
