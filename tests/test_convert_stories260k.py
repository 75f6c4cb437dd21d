"""Re-quantizing a real trained model: ../shared/data/models/stories260K/stories260K.gguf (F32).

Its rows are 64 wide (Q4_K's 256 does not divide them -> Q8_0) and 172 wide
(ffn_down: not even Q8_0's 32 -> F16). Skips cleanly without ../shared.
"""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

from edgeslim.convert.pipeline import convert
from edgeslim.quants import quantize
from edgeslim.tables import Keys

STORIES = "models/stories260K/stories260K.gguf"


@pytest.fixture(scope="module")
def stories(shared_data):
    path = shared_data / STORIES
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def tensors(path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def as_float(t) -> np.ndarray:
    shape = tuple(int(d) for d in reversed(t.shape))
    return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32).reshape(shape)


@pytest.fixture(scope="module")
def q8(stories, tmp_path_factory):
    out = tmp_path_factory.mktemp("stories") / "q8.gguf"
    report = convert(str(stories), out, quant="Q8_0", progress=False)
    return out, report


def test_q8_0_types_bytes_and_fallback(stories, q8, capsys):
    out, report = q8
    src, dst = tensors(stories), tensors(out)
    assert list(src) == list(dst)  # same tensors, same order
    for name, t in dst.items():
        w = as_float(src[name])
        if w.ndim == 1:
            assert t.tensor_type.name == "F32"
            np.testing.assert_array_equal(as_float(t), w)
        elif w.shape[1] == 172:  # ffn_down: 172 % 32 != 0
            assert t.tensor_type.name == "F16"
            np.testing.assert_array_equal(as_float(t), w.astype(np.float16).astype(np.float32))
        else:
            assert t.tensor_type.name == "Q8_0"
            np.testing.assert_array_equal(np.asarray(t.data), quantize(w, "Q8_0").data)
            assert np.sqrt(np.mean((as_float(t) - w) ** 2) / np.mean(w ** 2)) < 0.01
    assert sorted(report["fallbacks"]) == [f"blk.{i}.ffn_down.weight" for i in range(5)]
    assert all(v == {"requested": "Q8_0", "used": "F16", "row": 172} for v in report["fallbacks"].values())


def test_q8_0_codes_match_llama2c_export(shared_data, q8):
    """Independent reference: llama2.c's own Q8_0 export of the same weights (group 32, scale max/127)."""
    path = shared_data / "models/stories260K/stories260K_q80.bin"
    if not path.is_file():
        pytest.skip("stories260K_q80.bin is missing")
    raw = path.read_bytes()
    pos = 256 + 4 * (5 * 64 * 2 + 64)  # header, then fp32 norms

    def take(n_weights):
        nonlocal pos
        codes = np.frombuffer(raw, np.int8, n_weights, pos)
        scales = np.frombuffer(raw, np.float32, n_weights // 32, pos + n_weights)
        pos += n_weights + 4 * (n_weights // 32)
        return codes, scales

    dst = tensors(q8[0])
    order = [("token_embd.weight", 512 * 64)]
    for gg, n in (("attn_q", 64 * 64), ("attn_k", 32 * 64), ("attn_v", 32 * 64), ("attn_output", 64 * 64),
                  ("ffn_gate", 172 * 64), ("ffn_down", 64 * 172), ("ffn_up", 172 * 64)):
        order += [(f"blk.{i}.{gg}.weight", n) for i in range(5)]
    for name, n in order:
        codes, scales = take(n)
        if "ffn_down" in name:
            continue  # F16 in our file (llama2.c groups across its 172-wide rows)
        blocks = np.asarray(dst[name].data).reshape(-1, 34)
        np.testing.assert_array_equal(blocks[:, 2:].view(np.int8).reshape(-1), codes, err_msg=name)
        np.testing.assert_array_equal(blocks[:, :2].copy().view(np.float16).reshape(-1),
                                      scales.astype(np.float16), err_msg=name)
    assert pos == len(raw)


def test_metadata_copied(stories, q8):
    a, b = gguf.GGUFReader(stories), gguf.GGUFReader(q8[0])
    for key, f in a.fields.items():
        if key.startswith("GGUF."):
            continue
        g = b.get_field(key)
        assert g is not None, key
        assert g.types == f.types and g.contents() == f.contents(), key
    assert b.get_field(Keys.FILE_TYPE).contents() == 7
    assert b.get_field(Keys.QUANT_VERSION).contents() == 2
    assert b.get_field(Keys.ES_SOURCE).contents() == "stories260K.gguf"
    report = json.loads(b.get_field(Keys.ES_REPORT).contents())
    assert report["fit"]["kv_cache_bytes"] == 2 * 5 * 4096 * 4 * 8 * 2


def test_q4_k_falls_back_to_q5_0(stories, tmp_path, capsys):
    out = tmp_path / "q4.gguf"
    report = convert(str(stories), out, quant="Q4_K", progress=False)
    err = capsys.readouterr().err
    assert "rows of 64 are not a multiple of Q4_K's block of 256" in err and "use Q5_0" in err
    types = {n: t.tensor_type.name for n, t in tensors(out).items()}
    assert types["token_embd.weight"] == types["blk.3.attn_k.weight"] == types["output.weight"] == "Q5_0"
    assert types["blk.0.ffn_down.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    assert "Q4_K" not in types.values()
    assert gguf.GGUFReader(out).get_field(Keys.FILE_TYPE).contents() == 15
    assert len(report["fallbacks"]) == 37


def test_rebuilt_in_torch_reproduces_greedy_text(shared_data, stories, q8):
    """The HF model rebuilt from the GGUF (inverse permutation) continues exactly like the
    reference greedy decode; the Q8_0 file's logits stay close to F32's."""
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgeslim.convert.arch import arch_for_config

    config = dict(model_type="llama", hidden_size=64, intermediate_size=172, num_hidden_layers=5,
                  num_attention_heads=8, num_key_value_heads=4, vocab_size=512, rms_norm_eps=1e-5,
                  max_position_embeddings=512, tie_word_embeddings=False)
    arch = arch_for_config(config)

    def model_from(path):
        model = LlamaForCausalLM(LlamaConfig(**config)).eval()
        sd = {arch.hf_name(n): torch.from_numpy(np.array(arch.untransform(n, as_float(t))))
              for n, t in tensors(path).items()}
        model.load_state_dict(sd, strict=True)
        return model

    expect = [int(x) for x in (shared_data / "models/stories260K/greedy_256_ids.txt").read_text().split()][:33]
    f32 = model_from(stories)
    with torch.no_grad():
        out = f32.generate(torch.tensor([[1]]), max_new_tokens=32, do_sample=False)
        ids = torch.tensor([expect])
        ref, q = f32(ids).logits, model_from(q8[0])(ids).logits
    assert out[0].tolist() == expect
    assert float(((q - ref) ** 2).mean().sqrt() / (ref ** 2).mean().sqrt()) < 0.02
