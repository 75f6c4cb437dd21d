"""Type allocation under a byte budget: convex-hull greedy vs exact DP, signals, budgets, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeslim.convert import allocate as L
from edgeslim.convert import candidates as C
from edgeslim.convert.analyze import TensorAnalysis, analyze_tensor, effective_types, family_types, type_bytes
from edgeslim.errors import FitError, InputError
from edgeslim.targets import OVERHEAD_BYTES, get_target, kv_cache_bytes
from edgeslim.tables import quant_info

GGML = family_types("ggml")  # the writable candidates, smallest first, and F16
ALL_GGML = C.GGML_CANDIDATES + (C.TOP,)  # llama.cpp's whole menu, writable or not (allocation needs only sizes)


def _total(choice) -> tuple[int, float]:
    return sum(o.bytes for o in choice.values()), sum(o.cost for o in choice.values())


def _instance(rng, n_tensors, n_options, quant_like=False) -> dict[str, list[L.Option]]:
    """Random multiple-choice knapsack: costs fall with bytes, not necessarily convexly."""
    out = {}
    for t in range(n_tensors):
        if quant_like:  # bytes ~ numel * bpw, cost ~ numel * 4^-bpw with noise
            numel = int(rng.choice([64, 128, 256, 512])) * 256
            bpw = [quant_info(q).bpw for q in GGML[:n_options]]
            b = [int(numel * x / 8) for x in bpw]
            c = [numel * rng.uniform(0.5, 2) * 4.0 ** -x * rng.uniform(0.8, 1.25) for x in bpw]
        else:
            b = np.cumsum(rng.integers(1, 20, n_options))
            c = np.sort(rng.uniform(0, 100, n_options))[::-1] * rng.uniform(0.1, 10)
        out[f"t{t}"] = [L.Option(f"o{i}", int(x), float(y)) for i, (x, y) in enumerate(zip(b, c))]
    return out


def _budgets(options, n=25):
    lo = L.min_bytes(options)
    hi = sum(max(o.bytes for o in v) for v in options.values())
    return np.unique(np.linspace(lo, hi + 1, n).astype(int))


# -- knapsack ------------------------------------------------------------------------
def test_lower_hull_drops_dominated_and_non_convex_options():
    opts = [L.Option("a", 10, 100.0), L.Option("b", 20, 60.0), L.Option("c", 30, 55.0),  # c above chord b-d
            L.Option("d", 40, 20.0), L.Option("e", 50, 25.0), L.Option("f", 20, 70.0)]  # e, f dominated
    assert [o.type for o in L.lower_hull(opts)] == ["a", "b", "d"]


@pytest.mark.parametrize("quant_like", [False, True])
def test_greedy_vs_exact_dp(quant_like):
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(40):
        opts = _instance(rng, int(rng.integers(2, 7)), int(rng.integers(3, 8)), quant_like)
        for budget in _budgets(opts, 15):
            g_bytes, g_cost = _total(L.greedy_allocate(opts, int(budget)))
            e_bytes, e_cost = _total(L.exact_allocate(opts, int(budget)))
            lb = L.lower_bound(opts, int(budget))
            assert g_bytes <= budget and e_bytes <= budget
            assert lb <= e_cost * (1 + 1e-9) + 1e-12 <= g_cost * (1 + 1e-9) + 2e-12
            # within one step: greedy - optimum <= greedy - LP bound < the largest single reduction
            max_step = max(max(o.cost for o in v) - min(o.cost for o in v) for v in opts.values())
            assert g_cost - e_cost <= g_cost - lb <= max_step + 1e-9
            gaps.append((g_cost - e_cost) / max(e_cost, 1e-12))
    gaps = np.array(gaps)
    assert np.median(gaps) < 1e-9  # exactly optimal most of the time
    assert gaps.mean() < (0.03 if not quant_like else 0.1)


def test_greedy_is_exact_at_lagrangian_budgets():
    rng = np.random.default_rng(1)
    opts = _instance(rng, 5, 6)
    hulls = {n: L.lower_hull(o) for n, o in opts.items()}
    # every prefix of the steps in order of reduction per byte is optimal for its own byte count
    steps = sorted(((h[i].cost - h[i + 1].cost) / (h[i + 1].bytes - h[i].bytes), h[i + 1].bytes - h[i].bytes)
                   for h in hulls.values() for i in range(len(h) - 1))[::-1]
    budget = L.min_bytes(opts)
    for _, nbytes in steps:
        budget += nbytes
        g = _total(L.greedy_allocate(opts, budget))[1]
        assert g == pytest.approx(_total(L.exact_allocate(opts, budget))[1], rel=1e-12)
        assert L.lower_bound(opts, budget) == pytest.approx(g, rel=1e-12)


@pytest.mark.parametrize("quant_like", [False, True])
def test_bigger_budget_never_increases_error(quant_like):
    rng = np.random.default_rng(2)
    for _ in range(30):
        opts = _instance(rng, int(rng.integers(2, 9)), int(rng.integers(2, 8)), quant_like)
        lo = L.min_bytes(opts)
        hi = sum(max(o.bytes for o in v) for v in opts.values())
        budgets = list(range(lo, hi, max(1, (hi - lo) // 300))) + [hi]
        costs = [_total(L.greedy_allocate(opts, b))[1] for b in budgets]
        assert all(b <= a * (1 + 1e-12) for a, b in zip(costs, costs[1:]))
        assert costs[-1] == pytest.approx(sum(min(o.cost for o in v) for v in opts.values()))


def test_fit_error_names_the_numbers():
    opts = {"a": [L.Option("Q2_K", 1000, 5.0)], "b": [L.Option("Q2_K", 500, 1.0), L.Option("Q8_0", 900, 0.1)]}
    for fn in (L.greedy_allocate, L.exact_allocate):
        with pytest.raises(FitError, match=r"1,500 bytes.*Q2_K.*1,499 bytes"):
            fn(opts, 1499)
    assert _total(L.greedy_allocate(opts, 1500)) == (1500, 6.0)


# -- signals on analyses -----------------------------------------------------------------
def _fake(name, shape=(64, 256), frac=0.8, rel=1.0, weighted=False, act_mean=1.0, scale=1.0) -> TensorAnalysis:
    """A TensorAnalysis with errors energy * rel * 4^-bpw (energy = numel * scale)."""
    numel = shape[0] * shape[1]
    energy = numel * scale
    sse = {t: energy * rel * 4.0 ** -quant_info(t).bpw for t in (*GGML, *effective_types(GGML, shape[1]))}
    stats = {"erank_fraction": frac, "erank": frac * min(shape), "energy": energy, "kurtosis": 3.0,
             "outlier_share": 0.0027}
    if weighted:
        stats["act_mean"] = act_mean
    wsse = {t: e * act_mean for t, e in sse.items()} if weighted else dict(sse)
    return TensorAnalysis(name, shape, stats, sse, wsse, weighted)


def _bits(alloc, name) -> float:
    return quant_info(alloc.tensor_types()[name]).bpw


def test_uniform_picks_the_best_single_type_that_fits():
    an = [_fake(f"t{i}") for i in range(3)]
    n = sum(a.numel for a in an)
    q4, q5 = type_bytes("Q4_K", n), type_bytes("Q5_K", n)
    for budget, want in ((q4, "Q4_K"), (q5 - 1, "Q4_K"), (q5, "Q5_K"), (10 * n, "F16")):
        al = L.allocate(an, budget, "uniform")
        assert set(al.tensor_types().values()) == {want} and al.uniform_type == want
        assert al.total_bytes <= budget


def test_uniform_applies_block_fallbacks():
    an = [_fake("a"), _fake("b", shape=(64, 96))]  # 96 columns: K-quants fall back to 32-wide types
    al = L.allocate(an, 10**9, "uniform", types=GGML[:-1])
    assert al.tensor_types() == {"a": "Q8_0", "b": "Q8_0"}
    assert L.allocate(an, 10**9, "sensitivity", top_f16=False).tensor_types() == {"a": "Q8_0", "b": "Q8_0"}
    assert L.allocate(an, 10**9, "sensitivity").tensor_types() == {"a": "F16", "b": "F16"}
    with pytest.raises(InputError, match="AFFINE2_G64 was not measured"):
        L.allocate(an, 10**9, "sensitivity", family="affine")
    al = L.allocate(an, type_bytes("Q4_K", 64 * 256) + type_bytes("Q5_0", 64 * 96), "uniform")
    assert al.tensor_types() == {"a": "Q4_K", "b": "Q5_0"} and al.uniform_type == "Q4_K"


def test_sensitivity_gives_important_tensors_more_bits():
    rng = np.random.default_rng(3)
    w1, w2 = (rng.standard_normal((32, 256)).astype(np.float32) for _ in range(2))
    plain = [analyze_tensor("a", w1, GGML), analyze_tensor("b", w2, GGML)]
    budget = L.budget_from_bpw(4.5, plain)
    al = L.allocate(plain, budget, "sensitivity")
    assert abs(_bits(al, "a") - _bits(al, "b")) <= 0.5  # alike without calibration (neighbouring types)
    calib = [analyze_tensor("a", w1, GGML, np.full(256, 100.0)), analyze_tensor("b", w2, GGML, np.full(256, 1.0))]
    al = L.allocate(calib, budget, "sensitivity")
    assert _bits(al, "a") > _bits(al, "b") + 2 and al.total_bytes <= budget
    assert al.to_dict()["calibrated"] is True


def test_uncalibrated_tensor_in_a_calibrated_run_shares_the_units():
    an = [_fake("blk.0.w", weighted=True, act_mean=50.0), _fake("blk.1.w", weighted=True, act_mean=50.0),
          _fake("token_embd.weight")]  # no importance: scaled by the median act_mean (50)
    costs = L.tensor_costs(an, "sensitivity", GGML)
    assert costs[2]["Q4_K"] == pytest.approx(costs[0]["Q4_K"])


def test_erank_signal_favours_spread_spectra_and_needs_no_errors():
    an = [_fake("low", frac=0.2), _fake("high", frac=0.95)]
    budget = L.budget_from_bpw(5.0, an)
    al = L.allocate(an, budget, "erank")
    assert _bits(al, "high") > _bits(al, "low")
    bare = [TensorAnalysis(a.name, a.shape, a.stats) for a in an]  # erank only, nothing quantized
    al2 = L.allocate(bare, budget, "erank")
    assert _bits(al2, "high") > _bits(al2, "low") and al2.total_bytes <= budget
    with pytest.raises(InputError, match="needs measured errors"):
        L.allocate(bare, budget, "sensitivity")
    assert L.allocate(bare, budget, "uniform").uniform_type == "Q4_K"  # uniform works without errors


def test_hybrid_tilts_sensitivity_by_erank():
    an = [_fake("low", frac=0.2, rel=1.2), _fake("high", frac=0.95)]  # low-rank one has slightly larger error
    budget = L.budget_from_bpw(5.0, an)
    assert _bits(L.allocate(an, budget, "sensitivity"), "low") >= _bits(L.allocate(an, budget, "sensitivity"), "high")
    al = L.allocate(an, budget, "hybrid")
    assert _bits(al, "high") > _bits(al, "low")
    c = L.tensor_costs(an, "hybrid", GGML)
    assert c[1]["Q4_K"] / c[0]["Q4_K"] == pytest.approx((0.95 / 0.575) / (1.2 * 0.2 / 0.575))


def test_allocation_record_is_json_and_consistent():
    an = [_fake(f"blk.{i}.attn_q.weight", frac=0.3 + 0.1 * i, rel=1 + i) for i in range(4)]
    budget = L.budget_from_bpw(4.0, an)
    al = L.allocate(an, budget, "sensitivity")
    d = json.loads(json.dumps(al.to_dict()))
    assert d["signal"] == "sensitivity" and d["budget_bytes"] == budget and d["total_bytes"] == al.total_bytes
    assert d["total_bytes"] <= budget and d["bpw"] <= 4.0
    assert d["error_lower_bound"] <= d["predicted_error"]
    for name, t in d["tensors"].items():
        assert t["type"] == al.tensor_types()[name] and t["bytes"] == type_bytes(t["type"], 64 * 256)
        assert {"error", "rel_rms", "erank", "erank_fraction", "kurtosis", "outlier_share"} <= set(t)
    assert sum(t["error"] for t in d["tensors"].values()) == pytest.approx(d["predicted_error"], rel=1e-3)


def test_allocate_rejects_bad_input():
    an = [_fake("a")]
    with pytest.raises(InputError, match="signal"):
        L.allocate(an, 10**6, "magic")
    with pytest.raises(InputError, match="twice"):
        L.allocate(an + an, 10**6)
    need = C.minimum_note({"a": an[0].shape}, GGML)[0]
    with pytest.raises(FitError, match=f"need .*{need:,} bytes"):
        L.allocate(an, need - 1)


# -- budgets -----------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("3.9GB", 3_900_000_000), ("500MB", 500_000_000), ("3.5GiB", int(3.5 * 2**30)), ("512mib", 512 * 2**20),
    ("4G", 4 * 2**30), ("1.5 TB", 1_500_000_000_000), ("123", 123), ("10kb", 10_000), (".5GB", 500_000_000),
])
def test_parse_size(text, want):
    assert L.parse_size(text) == want


@pytest.mark.parametrize("text", ["", "GB", "3.9 gigs", "-1GB", "1.2.3GB", "0MB"])
def test_parse_size_rejects(text):
    with pytest.raises(InputError):
        L.parse_size(text)


def test_budget_from_bpw_and_size():
    an = [_fake("a"), _fake("b", shape=(32, 512))]
    assert L.budget_from_bpw(4.5, an) == int(4.5 * 2 * 64 * 256 / 8) == L.budget_from_bpw(4.5, 2 * 64 * 256)
    assert L.budget_from_bpw(np.float32(4.5), an) == L.budget_from_bpw(4.5, an)
    for bad in (0, -1, "x", float("nan")):
        with pytest.raises(InputError, match="--bpw"):
            L.budget_from_bpw(bad, an)
    assert L.budget_from_size(L.parse_size("1MB"), fixed_bytes=1000, metadata_bytes=24) == 1_000_000 - 1024
    with pytest.raises(FitError, match="nothing for the weights"):
        L.budget_from_size(1000, fixed_bytes=1000)


def test_budget_from_target_subtracts_kv_cache_and_overhead():
    t = get_target("m2-8gb")
    kv = kv_cache_bytes(32, 4096, 8, 128)
    assert L.budget_from_target("m2-8gb", 32, 8, 128, fixed_bytes=10**6) == t.usable_bytes - kv - OVERHEAD_BYTES - 10**6
    assert L.budget_from_target("m2-8gb", 32, 8, 128, ctx=2048) > L.budget_from_target("m2-8gb", 32, 8, 128)
    with pytest.raises(FitError, match=r"KV cache .* at ctx 131072"):
        L.budget_from_target("rpi5-4gb", 32, 8, 128, ctx=131072)
    with pytest.raises(InputError, match="unknown target"):
        L.budget_from_target("toaster", 32, 8, 128)


# -- candidates: every writable type, per row width ------------------------------------------
def test_every_writable_ggml_type_is_placed():
    """A type the writer learns joins the allocation unless NOT_CANDIDATES says why not."""
    from edgeslim.tables import GGML_WRITABLE

    for t in GGML_WRITABLE:
        assert t in C.GGML_CANDIDATES or t in C.NOT_CANDIDATES or t == C.TOP, t
    bpw = [quant_info(t).bpw for t in C.GGML_CANDIDATES]
    assert bpw == sorted(bpw)  # smallest first
    assert GGML == tuple(t for t in C.GGML_CANDIDATES if t in GGML_WRITABLE) + ("F16",)


def test_new_writable_types_join_the_candidates(monkeypatch):
    monkeypatch.setattr(C, "GGML_WRITABLE", ("F16", "Q8_0", "Q4_0", "IQ4_NL", "Q4_K", "IQ2_XXS", "TQ2_0"))
    assert C.family_types("ggml") == ("IQ2_XXS", "IQ4_NL", "Q4_0", "Q4_K", "Q8_0", "F16")
    assert C.family_types("ggml", top_f16=False)[-1] == "Q8_0"


def _odd_model(hidden: int, ffn: int, layers: int = 2, vocab: int = 1024) -> list[TensorAnalysis]:
    """Analyses (stats only: the erank signal's nominal costs) of a Llama of these widths."""
    shapes = {"token_embd.weight": (vocab, hidden), "output.weight": (vocab, hidden)}
    for i in range(layers):
        shapes.update({f"blk.{i}.attn_q.weight": (hidden, hidden), f"blk.{i}.attn_k.weight": (hidden // 3, hidden),
                       f"blk.{i}.attn_v.weight": (hidden // 3, hidden), f"blk.{i}.attn_output.weight": (hidden, hidden),
                       f"blk.{i}.ffn_gate.weight": (ffn, hidden), f"blk.{i}.ffn_up.weight": (ffn, hidden),
                       f"blk.{i}.ffn_down.weight": (hidden, ffn)})
    return [TensorAnalysis(n, s, {"erank_fraction": 0.7, "energy": 1.0}) for n, s in shapes.items()]


@pytest.mark.parametrize("hidden,ffn", [(576, 1536), (640, 1728), (896, 4864)])
def test_odd_widths_take_32_wide_types_and_reach_their_minimum(hidden, ffn):
    an = _odd_model(hidden, ffn)
    by_name = {a.name: a for a in an}
    need, note = C.minimum_note({a.name: a.shape for a in an}, ALL_GGML)
    # every tensor at its smallest fitting type: 4.5 bpw (Q4_0 / IQ4_NL) for rows of `hidden`
    want = sum(type_bytes("IQ2_XXS" if a.shape[1] % 256 == 0 else "Q4_0", a.numel) for a in an)
    assert need == want
    assert f"rows of {hidden} (not a multiple of 256) take at least IQ4_NL (4.5 bpw)" in note
    al = L.allocate(an, need, "erank", types=ALL_GGML)  # exactly the minimum is reachable
    assert al.total_bytes <= need
    for n, t in al.tensor_types().items():
        assert by_name[n].shape[1] % quant_info(t).block == 0, (n, t)
        if by_name[n].shape[1] % 256:
            assert quant_info(t).block == 32 and t != "Q8_0", (n, t)  # a legacy type, not the old Q8_0 fallback
    with pytest.raises(FitError, match=rf"need .*{need:,} bytes.*rows of {hidden} \(not a multiple of 256\)"):
        L.allocate(an, need - 1, "erank", types=ALL_GGML)
    bigger = L.allocate(an, L.budget_from_bpw(4.8, an), "erank", types=ALL_GGML)  # between two types
    assert bigger.total_bytes <= L.budget_from_bpw(4.8, an) and bigger.bpw > 4.6
    assert len(set(bigger.tensor_types().values())) > 1


def test_fit_error_blames_the_row_width_not_the_smallest_type():
    """With the K ladder alone a 576-wide tensor falls back to a 32-wide type (IQ4_NL, as llama.cpp):
    the message names the row width and that type, not Q2_K."""
    an = _odd_model(576, 1536)
    types = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "F16")
    need, _ = C.minimum_note({a.name: a.shape for a in an}, types)
    with pytest.raises(FitError) as err:
        L.allocate(an, L.budget_from_bpw(3.5, an), "erank", types=types)
    msg = str(err.value)
    assert f"{need:,} bytes" in msg and "rows of 576 (not a multiple of 256) take at least IQ4_NL (4.5 bpw)" in msg
    assert "blk.*.attn_q.weight" in msg and "Q2_K (2.62 bpw): blk.*.ffn_down.weight" in msg
