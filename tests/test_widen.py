"""Widening (convert/widen.py): a model zero-padded to a multiple of 256 computes the same function.

The end-to-end budgets on a 576-wide model (widened below the 32-wide floor, scored by
llama.cpp) are in test_odd_widths.py; here: the exactness, per family, and the refusals.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import edgeslim  # noqa: E402
from edgeslim.convert.pipeline import convert  # noqa: E402
from edgeslim.convert.widen import Widening, widen_tensor  # noqa: E402
from edgeslim.errors import FitError, InputError  # noqa: E402

# hidden 320 -> 512 (ffn 320 -> 512 too), heads 5 x 64 (kv 1) -> 8 (3 dummy heads)
ODD = dict(hidden_size=320, intermediate_size=320, num_attention_heads=5, num_key_value_heads=1, head_dim=64)
# SmolLM2-360M's widths: 960 -> 1024 is 16 heads, which 5 kv heads do not divide: Llama keeps its 15
W960 = dict(hidden_size=960, intermediate_size=512, num_attention_heads=15, num_key_value_heads=5, head_dim=64,
            num_hidden_layers=1, tie_word_embeddings=True)


def test_widen_tensor_pads_by_role():
    # 2 kv heads of 1 query head each (head_dim 2) -> 2 each: a zero dummy after every group's head
    w = Widening(hidden=3, new_hidden=4, ffn=2, new_ffn=4, n_kv=2, group=1, new_group=2, head_dim=2)
    norm = widen_tensor("blk.0.attn_norm.weight", np.array([1.0, 2.0, 3.0], np.float32), w)
    assert np.allclose(norm, [np.sqrt(0.75), 2 * np.sqrt(0.75), 3 * np.sqrt(0.75), 0.0])
    up = widen_tensor("blk.1.ffn_up.weight", np.ones((2, 3), np.float32), w)  # (ffn, hidden)
    assert up.shape == (4, 4) and up[:2, :3].all() and not up[2:].any() and not up[:, 3].any()
    q = np.arange(1, 13, dtype=np.float32).reshape(4, 3)  # (heads * head_dim, hidden)
    wq = widen_tensor("blk.0.attn_q.weight", q, w)
    assert wq.shape == (8, 4) and (wq[0:2, :3] == q[0:2]).all() and (wq[4:6, :3] == q[2:4]).all()
    assert not wq[2:4].any() and not wq[6:8].any() and not wq[:, 3].any()
    out = widen_tensor("blk.1.attn_output.weight", q.T, w)  # (hidden, heads * head_dim)
    assert out.shape == (4, 8) and (out[:3] == wq[:, :3].T).all() and not out[3].any()
    assert widen_tensor("blk.0.attn_q.bias", np.ones(4, np.float32), w).tolist() == [1, 1, 0, 0, 1, 1, 0, 0]
    assert widen_tensor("blk.0.attn_k.weight", np.ones((4, 3), np.float32), w).shape == (4, 4)
    with pytest.raises(ValueError, match="expected 3"):
        widen_tensor("token_embd.weight", np.ones((7, 5), np.float32), w)


def _logits(path, ids) -> np.ndarray:
    return np.asarray(edgeslim.load(path, backend="numpy", kv_dtype="float32").logits(ids), np.float64)


@pytest.mark.parametrize("kind, config, record", [
    ("llama", ODD, {"hidden": [320, 512], "ffn": [320, 512], "heads": [5, 8]}),
    ("qwen2", ODD, {"hidden": [320, 512], "ffn": [320, 512], "heads": [5, 8]}),  # q biases get dummies too
    ("llama", W960, {"hidden": [960, 1024], "ffn": [512, 512], "heads": [15, 15]}),
])
def test_widened_model_computes_the_same_logits(tiny_hf_model, tmp_path, kind, config, record):
    """A budget that keeps every matrix F16, widened or not: the same logits (the norms' scaled
    weights are the only rounding), and the widened file has the widened sizes."""
    folder = tiny_hf_model(kind, "spm", **config)
    plain, wide = tmp_path / "plain.gguf", tmp_path / "wide.gguf"
    convert(str(folder), plain, quant="F16", progress=False)
    report = convert(str(folder), wide, bpw=40, widen=True, calib=False, progress=False)
    assert report["widened"] == record
    assert {t.tensor_type.name for t in gguf.GGUFReader(wide).tensors if len(t.shape) == 2} == {"F16"}
    model = edgeslim.load(wide, backend="numpy")
    assert model.hparams.n_embd == record["hidden"][1] and model.hparams.n_head == record["heads"][1]
    ids = list(range(3, 40))
    a, b = _logits(plain, ids), _logits(wide, ids)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edgeslim-widen-")]  # scratch removed


def test_no_widen_refuses_and_gemma_cannot_widen(tiny_hf_model, tmp_path):
    folder = tiny_hf_model("llama", "spm", **ODD)
    with pytest.raises(FitError, match="rows of 320"):
        convert(str(folder), tmp_path / "o.gguf", bpw=3.0, widen=False, calib=False, progress=False)
    with pytest.raises(InputError, match="--widen pads the model so a budget"):
        convert(str(folder), tmp_path / "o.gguf", quant="Q4_0", widen=True, progress=False)
    gemma = tiny_hf_model("gemma3", "spm", hidden_size=320, intermediate_size=512, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=64)
    with pytest.raises(InputError, match="cannot be widened: the gemma3 family's norms or embedding"):
        convert(str(gemma), tmp_path / "g.gguf", bpw=8, widen=True, calib=False, progress=False)
    phi3 = tiny_hf_model("phi3", "spm", hidden_size=320, intermediate_size=320, num_attention_heads=5,
                         num_key_value_heads=5)  # 512 / 64 = 8 heads, not a multiple of 5 kv heads
    with pytest.raises(InputError, match="llama.cpp's phi3 graph needs n_embd = n_head . head_dim"):
        convert(str(phi3), tmp_path / "p.gguf", bpw=8, widen=True, calib=False, progress=False)
    assert list(tmp_path.iterdir()) == []
