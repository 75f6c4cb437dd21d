"""Budgets on models whose rows are not multiples of 256 (SmolLM2-135M is 576 wide).

K and IQ types need rows of 256k weights; the allocator gives such tensors the 32-wide
legacy types, so a budget is reachable down to the sum of each tensor's smallest fitting
type. Below that the converter widens the model to 768 (convert/widen.py, exact); with
--no-widen such a budget is refused with that minimum and the tensors that set it.
Every file written must load and score in llama.cpp (skipped without llama-cpp-python).
"""
from __future__ import annotations

import math

import gguf
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edgeslim.convert.candidates import family_types, minimum_note  # noqa: E402
from edgeslim.convert.pipeline import convert  # noqa: E402
from edgeslim.errors import FitError  # noqa: E402
from edgeslim.tables import is_quantizable, quant_info  # noqa: E402

W576 = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
            num_hidden_layers=1, tie_word_embeddings=True)
BUDGETS = (2.5, 3.0, 3.5, 4.0)


@pytest.fixture(scope="module")
def w576(tiny_hf_model):
    return tiny_hf_model("llama", "spm", **W576)


def _matrices(path) -> dict[str, tuple[str, tuple[int, int], int]]:
    """{name: (type, (rows, cols), bytes)} of the weight matrices of a GGUF file."""
    r = gguf.GGUFReader(path)
    return {t.name: (t.tensor_type.name, (int(t.shape[1]), int(t.shape[0])), int(t.n_bytes))
            for t in r.tensors if is_quantizable(t.name, len(t.shape))}


def _minimum_bpw(f16_path, lowest: bool = False) -> tuple[float, str]:
    mats = _matrices(f16_path)
    need, note = minimum_note({n: s for n, (_, s, _) in mats.items()}, family_types("ggml", lowest=lowest))
    return 8 * need / sum(r * c for _, (r, c), _ in mats.values()), note


@pytest.fixture(scope="module")
def f16(w576, tmp_path_factory):
    out = tmp_path_factory.mktemp("w576") / "f16.gguf"
    convert(str(w576), out, quant="F16", progress=False)
    return out


def _llama_cpp_logits(path, toks: list[int]) -> np.ndarray:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1, type_k=0, type_v=0)
    llm.eval(toks)
    return np.asarray(llm.scores[: len(toks)], np.float64)  # (T, V)


def _kl(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean KL(ref || got) over positions of (T, V) logits."""
    lp = ref - np.logaddexp.reduce(ref, axis=1, keepdims=True)
    lq = got - np.logaddexp.reduce(got, axis=1, keepdims=True)
    return float((np.exp(lp) * (lp - lq)).sum(axis=1).mean())


def test_budget_below_the_minimum_names_the_row_width(w576, f16, tmp_path):
    """--no-widen: the floor (IQ1 types let in as the last resort) and the row width that sets it."""
    least, _ = _minimum_bpw(f16, lowest=True)
    with pytest.raises(FitError) as err:
        convert(str(w576), tmp_path / "o.gguf", bpw=math.floor(10 * least) / 10 - 0.05, calib=False, progress=False,
                widen=False)
    msg = str(err.value)
    assert "rows of 576 (not a multiple of 256) take at least" in msg and "blk.*.attn_q.weight" in msg
    assert f"give --bpw {math.ceil(100 * least) / 100}" in msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bpw", BUDGETS + ("least",))
def test_converts_at_each_budget_and_llama_cpp_scores_it(w576, f16, tmp_path, bpw):
    """At each budget: a file within it (bits over the original model's matrix weights) whose every
    type fits its rows, widened to 768 exactly when the budget is below the 32-wide floor, and
    llama.cpp's logits close to the F16 file's ("least": the floor itself, rounded up)."""
    least, _ = _minimum_bpw(f16)
    if bpw == "least":
        bpw = math.ceil(100 * least) / 100
    out = tmp_path / f"{bpw}.gguf"
    report = convert(str(w576), out, bpw=bpw, calib=False, progress=False)
    widened = {"hidden": [576, 768], "ffn": [1536, 1536], "heads": [9, 12]}  # a dummy head per kv group
    assert report.get("widened") == (widened if bpw < least else None)
    mats = _matrices(out)
    n = sum(r * c for _, (r, c), _ in _matrices(f16).values())
    assert 8 * sum(b for *_, b in mats.values()) / n <= bpw
    for name, (t, (_, cols), _) in mats.items():
        assert cols % quant_info(t).block == 0, (name, t)
    if bpw < least:  # every matrix is 256-wide
        assert {cols for _, (_, cols), _ in mats.values()} <= {768, 1536}
    toks = [1] + list(range(5, 45))
    kl = _kl(_llama_cpp_logits(f16, toks), _llama_cpp_logits(out, toks))
    # widened budgets leave 1.9-3.0 bits per widened weight (IQ1_S..IQ3_S on random weights)
    assert np.isfinite(kl) and kl < (0.2 if bpw < least else 0.05), kl
