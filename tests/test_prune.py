"""Pruning (convert/prune.py, sparsegpt.py): masks, SparseGPT vs magnitude, converted files end to end."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgeslim.convert.gptq import hessian_error
from edgeslim.convert.prune import Pruning, nm_mask, owl_sparsities, scores, select_mask
from edgeslim.convert.sparsegpt import sparse_obs, spans
from edgeslim.errors import InputError
from edgeslim.quants import sparse
from edgeslim.tables import Keys, sparse_info

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "edgeslim" / "demo"
PROMPT = [1, 45, 300, 27, 99, 512, 7, 1000]


def correlated_problem(rows=96, cols=512, n=2048, seed=0):
    """(w, H, importance) with correlated, unevenly scaled inputs, as real activations are."""
    rng = np.random.default_rng(seed)
    mix = np.eye(cols) + 0.8 * rng.standard_normal((cols, cols)) / np.sqrt(cols)
    x = (rng.standard_normal((n, cols)) @ mix).astype(np.float32) * rng.uniform(0.3, 3, cols).astype(np.float32)
    return rng.standard_normal((rows, cols)).astype(np.float32), (2 * x.T @ x / n).astype(np.float32), (x * x).mean(0)


# -- masks ------------------------------------------------------------------------------
def test_masks_keep_the_best_scores_in_the_pattern():
    s = np.array([[4, 1, 3, 2, 0, 9, 8, 7]], np.float32)
    assert nm_mask(s, 2, 4).tolist() == [[True, False, True, False, False, True, True, False]]
    w = np.array([[0.1, -3, 2, 0.5]], np.float32)
    assert select_mask(w, "F16@50%", "magnitude").tolist() == [[False, True, True, False]]
    imp = np.array([100, 0.01, 1, 1], np.float32)  # Wanda: |w| * ||x||
    assert select_mask(w, "F16@50%", "wanda", imp).tolist() == [[True, False, True, False]]


@pytest.mark.parametrize("qtype", ["Q8_0@2:4", "Q4_K@4:8", "Q8_0@60%", "F16@2:4", "F16@40%"])
def test_spans_hold_one_value_block_per_row(qtype):
    info = sparse_info(qtype)
    cols = 1024
    sp = spans(info, cols)
    assert sp[0][0] == 0 and sp[-1][1] == cols and all(a[1] == b[0] for a, b in zip(sp, sp[1:]))
    assert sum(k for _, _, k in sp) == info.kept(cols)
    if info.value != "F16":
        assert all(k == {"Q8_0": 32, "Q4_K": 256}[info.value] for _, _, k in sp)


# -- SparseGPT ----------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", ["Q8_0@2:4", "Q4_K@2:4", "Q6_K@4:8", "Q8_0@50%", "F16@50%"])
def test_sparsegpt_output_error_below_magnitude_and_wanda(qtype):
    """At equal sparsity and storage, SparseGPT's output error tr(E H E^T) is below magnitude's and Wanda's
    (each pruned and rounded to nearest), and Wanda with OBS compensation is below Wanda alone."""
    w, H, imp = correlated_problem()
    den = hessian_error(w, np.zeros_like(w), H)

    def err(st):
        return hessian_error(w, sparse.dequantize(st), H) / den

    sg = sparse_obs(w, H, qtype)
    mag = err(sparse.compress(w, select_mask(w, qtype, "magnitude"), qtype))
    wanda = err(sparse.compress(w, select_mask(w, qtype, "wanda", imp), qtype, imp))
    wanda_obs = err(sparse_obs(w, H, qtype, score=scores(w, "wanda", imp)))
    assert err(sg) < 0.75 * mag and err(sg) < wanda and wanda_obs < wanda
    assert sparse.mask_of(sg).sum() == w.shape[0] * sparse_info(qtype).kept(w.shape[1])


def test_sparsegpt_pattern_holds_and_bad_input():
    w, H, _ = correlated_problem(rows=8, cols=256)
    d = sparse.dequantize(sparse_obs(w, H, "Q8_0@2:4"))
    assert ((d.reshape(8, -1, 4) != 0).sum(axis=2) <= 2).all()
    with pytest.raises(InputError, match="does not fit"):
        sparse_obs(w[:, :200], H[:200, :200], "Q4_K@2:4")
    with pytest.raises(InputError, match="shape"):
        sparse_obs(w, H, "Q8_0@2:4", score=np.ones((8, 8)))


def test_owl_sparsities_keep_the_mean_and_spare_outlier_layers():
    s = owl_sparsities({0: (10, 1000), 1: (50, 1000), 2: (40, 2000)}, 0.5, 0.08)
    assert s[1] < s[2] < s[0] and abs(s[1] - s[0]) == pytest.approx(0.16)
    assert (s[0] * 1000 + s[1] * 1000 + s[2] * 2000) / 4000 == pytest.approx(0.5)


# -- converted files ----------------------------------------------------------------------
def _convert(tmp_path, name, **kw):
    from edgeslim.convert.pipeline import convert

    out = tmp_path / f"{name}.gguf"
    report = convert(str(DEMO), out, progress=False, calib_tokens=256, **kw)
    return out, report


def _logits(path, backend="numpy"):
    from edgeslim.runtime.backends import get_backend
    from edgeslim.runtime.loader import open_model

    mf = open_model(path)
    b = get_backend(backend)(mf)
    return b.forward(np.array(PROMPT), b.new_cache(32), n_logits=len(PROMPT))


@pytest.mark.parametrize("method,pattern", [("magnitude", "unstructured"), ("wanda", "4:8"), ("sparsegpt", "2:4"),
                                            ("sparsegpt", "unstructured")])  # every method and every pattern
def test_pruned_demo_model_runs_end_to_end(tmp_path, capsys, method, pattern):
    out, report = _convert(tmp_path, "p", quant="Q4_K", prune=method, pattern=pattern)
    assert "fell back from Q4_K@" in capsys.readouterr().err.splitlines()[-1]  # the last line counts sparse fallbacks
    r = gguf.GGUFReader(out)  # a legal GGUF: gguf-py reads every tensor
    stored = {t.name: t.tensor_type.name for t in r.tensors}
    assert stored["blk.0.attn_q.weight"] in ("Q4_K", "Q8_0") and stored["blk.0.attn_q.weight.sparse_index"] == "I8"
    assert stored["token_embd.weight"] == "Q4_K"  # embeddings and head stay dense
    rec = json.loads(r.get_field(Keys.ES_PRUNE).contents())
    assert rec["method"] == method and rec["pattern"] == pattern and 0.45 <= rec["pruned_share"] <= 0.55
    assert report["prune"]["tensors"]["blk.1.ffn_down.weight"] == pytest.approx(0.5, abs=0.05)
    assert report["gptq"] is (method == "sparsegpt")
    from edgeslim.runtime.loader import open_model

    mf = open_model(out)
    src = mf.weight("blk.0.ffn_gate.weight")
    d = sparse.dequantize_raw(src.data, src.index, src.qtype, src.shape)
    nz = d != 0
    if pattern != "unstructured":
        n, m = (int(v) for v in pattern.split(":"))
        assert ((nz.reshape(d.shape[0], -1, m)).sum(axis=2) <= n).all()  # the N:M pattern holds
    assert nz.mean() <= 0.5
    logits = _logits(out)
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(_logits(out, "numba"), logits, rtol=0, atol=0.05 * np.abs(logits).max())
    import edgeslim

    m = edgeslim.load(out, backend="numba")
    assert len(m.generate("Once upon a time", max_tokens=8, temperature=0)) > 0


def test_pruned_file_on_mlx(tmp_path):
    """MLX dequantizes sparse weights at load: its logits match the numpy reference's."""
    pytest.importorskip("mlx.core")
    out, _ = _convert(tmp_path, "p", quant="Q6_K", prune="magnitude", pattern="2:4")
    ref = _logits(out)
    np.testing.assert_allclose(_logits(out, "mlx"), ref, rtol=0, atol=0.02 * np.abs(ref).max())


def test_pruned_inspect_says_llama_cpp_cannot_read(tmp_path, capsys):
    from edgeslim.cli import main

    out, _ = _convert(tmp_path, "p", quant="Q8_0", prune="magnitude", pattern="2:4")
    assert "llama.cpp cannot read this file" in capsys.readouterr().err  # convert warns once
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Q8_0@2:4" in text and "llama.cpp cannot read this file" in text and "sparse_index" not in text


def test_wanda_prunes_what_matters_least_on_calibration(tmp_path):
    """Wanda's mask minimises the importance-weighted pruned energy sum w^2 x^2 per row, so it is below
    magnitude's on the same weights; SparseGPT's logits are closer to the dense model's than magnitude's."""
    from edgeslim.convert.measure import Calibration, measure_importance
    from edgeslim.runtime.loader import open_model

    imp = measure_importance(Calibration(DEMO, None, "built-in", 256)).by_name
    dense, _ = _convert(tmp_path, "d", quant="F16")
    files = {m: _convert(tmp_path, m, quant="F16", prune=m, gptq=False if m != "sparsegpt" else None)[0]
             for m in ("magnitude", "wanda", "sparsegpt")}
    name = "blk.1.ffn_down.weight"
    w = open_model(dense).weight(name)
    w = np.frombuffer(w.data, np.float16).reshape(w.shape).astype(np.float32)

    def pruned_energy(method):
        src = open_model(files[method]).weight(name)
        kept = sparse.dequantize_raw(src.data, src.index, src.qtype, src.shape) != 0
        return float((w * w * imp[name] * ~kept).sum())

    assert pruned_energy("wanda") < pruned_energy("magnitude")
    ref = _logits(dense)

    def kl(path):
        a, b = ref - ref.max(1, keepdims=True), _logits(path)
        b = b - b.max(1, keepdims=True)
        p, lq = np.exp(a) / np.exp(a).sum(1, keepdims=True), b - np.log(np.exp(b).sum(1, keepdims=True))
        return float((p * (a - np.log(np.exp(a).sum(1, keepdims=True)) - lq)).sum(1).mean())

    assert kl(files["sparsegpt"]) < kl(files["magnitude"])


def test_owl_budget_and_errors(tmp_path):
    out, report = _convert(tmp_path, "owl", quant="Q8_0", prune="wanda", owl=0.1, sparsity=0.5)
    layers = report["prune"]["layer_sparsity"]
    assert len(layers) == 4 and max(layers.values()) - min(layers.values()) > 0.05
    out, report = _convert(tmp_path, "bpw", bpw=5.0, prune="magnitude", pattern="2:4", calib=False, allocate="uniform")
    types = report["allocation"]["tensors"]
    assert report["bpw"] <= 5.0 and all("@2:4" in t["type"] for n, t in types.items() if n.startswith("blk."))
    for kw, needle in [(dict(sparsity=0.5), "--prune"), (dict(prune="magnitude", pattern="2:4", sparsity=0.3), "fixes"),
                       (dict(prune="sparsegpt", gptq=False), "--no-gptq"), (dict(prune="wanda", calib=False), "--no-calib"),
                       (dict(prune="magnitude", family="affine"), "affine"), (dict(prune="lasso"), "--prune"),
                       (dict(prune="wanda", sparsity=1.5), "--sparsity"), (dict(prune="wanda", pattern="2:4", owl=0.1), "--owl")]:
        with pytest.raises(InputError, match=needle):
            _convert(tmp_path, "bad", quant="Q8_0", **kw)
    assert not (tmp_path / "bad.gguf").exists()


def test_pruning_rule_applies_to_decoder_matrices_only():
    p = Pruning("magnitude")
    assert p.applies("blk.3.ffn_down.weight", (4096, 11008))
    assert not p.applies("token_embd.weight", (32000, 4096)) and not p.applies("output.weight", (32000, 4096))
    assert not p.applies("blk.3.attn_norm.weight", (4096,))


def test_allocator_takes_sparse_options_only_where_they_cost_less_error_per_byte():
    """Sparse types are options beside the dense ladder: a matrix whose measured sparse error is low per byte
    goes sparse, one whose pruning error is high stays dense, and the budget holds."""
    from edgeslim.convert.allocate import allocate
    from edgeslim.convert.analyze import TensorAnalysis, effective_types, family_types, tensor_bytes

    types = tuple(t for t in family_types("ggml", top_f16=False) if t in sparse.VALUE_TYPES)  # sparse value types
    shape = (1024, 1024)

    def analysis(name, sparse_rel):  # dense errors 4^-bpw-like, sparse ones as given (relative to energy)
        sse = {t: 1e3 * 4.0 ** -(8 * tensor_bytes(t, shape) / 1024 ** 2) for t in types}
        for t in types:
            sse[f"{t}@2:4"] = sse[t] / 2 + sparse_rel * 1e3
        return TensorAnalysis(name, shape, {"energy": 1e3, "erank_fraction": 1.0}, sse, dict(sse))

    cands = {n: types + tuple(f"{t}@2:4" for t in types) for n in ("blk.0.a.weight", "blk.0.b.weight")}
    analyses = [analysis("blk.0.a.weight", 1e-5), analysis("blk.0.b.weight", 0.3)]
    budget = int(sum(tensor_bytes("Q3_K", shape) for _ in analyses))
    alloc = allocate(analyses, budget, "sensitivity", types=cands)
    chosen = alloc.tensor_types()
    assert "@2:4" in chosen["blk.0.a.weight"] and "@" not in chosen["blk.0.b.weight"]
    assert alloc.total_bytes <= budget
    assert effective_types(["Q4_K@2:4"], 256) == ["Q8_0@2:4"] and effective_types(["Q4_K@2:4"], 258) == ["F16"]


def test_prune_choice_converts_within_budget(tmp_path, tiny_hf_model):
    from edgeslim.convert.pipeline import convert

    out = tmp_path / "choice.gguf"
    report = convert(str(tiny_hf_model("llama", "spm")), out, bpw=5.0, prune="magnitude", pattern="2:4",
                     prune_choice=True, calib=False, allocate="sensitivity", progress=False)
    assert report["bpw"] <= 5.0 and report["prune"]["choice"] is True
    assert set(report["prune"]["tensors"].values()) <= {0.0, 0.5}
    with pytest.raises(InputError, match="--prune-choice"):
        _convert(tmp_path, "bad", quant="Q8_0", prune="magnitude", prune_choice=True)
