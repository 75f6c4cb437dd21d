"""edgeslim convert on tiny random HF models: file structure, exact bytes, and the model
rebuilt in torch from the GGUF matching the original within each type's error."""
from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edgeslim.cli import main as cli_main  # noqa: E402
from edgeslim.convert.arch import arch_for_config  # noqa: E402
from edgeslim.arch.llama import llama3_rope_factors  # noqa: E402
from edgeslim.convert.pipeline import convert  # noqa: E402
from edgeslim.convert.vocab import load_vocab  # noqa: E402
from edgeslim.quants import QTensor, dequantize, dequantize_raw, quantize  # noqa: E402
from edgeslim.tables import AFFINE_BIASES_SUFFIX, AFFINE_SCALES_SUFFIX, Keys, TensorNames, TokenType  # noqa: E402

# Upper bounds on each type's weight error (relative RMS over the model, N(0, 0.02) weights;
# measured: F16 2.1e-4, BF16 1.7e-3, Q8_0 5.4e-3, Q6_K 0.017, Q5_K 0.035, Q4_K 0.070, Q3_K 0.14,
# Q2_K 0.26, AFFINE8_G32 3.8e-3, AFFINE4_G64 0.082, AFFINE3_G32 0.146).
WEIGHT_TOL = {
    "F32": 0.0, "F16": 3e-4, "BF16": 2.5e-3, "Q8_0": 7e-3, "Q6_K": 0.022, "Q5_K": 0.045, "Q4_K": 0.09,
    "Q3_K": 0.18, "Q2_K": 0.32, "AFFINE8_G32": 5e-3, "AFFINE4_G64": 0.1, "AFFINE3_G32": 0.18,
}
# A random 2-layer model turns weight error e into logit error of about 2.3-2.9 e.
LOGIT_FACTOR = 3.5
GGML_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K"]


# -- helpers ---------------------------------------------------------------------
def field(reader: gguf.GGUFReader, key: str):
    f = reader.get_field(key)
    return None if f is None else f.contents()


def read_weights(path: Path) -> tuple[gguf.GGUFReader, dict[str, np.ndarray], dict[str, str]]:
    """Every tensor dequantized to float32 in numpy order, checked against gguf-py's
    own dequantizer for ggml types; affine triples merged. Returns (reader, weights, types)."""
    reader = gguf.GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    weights, types = {}, {}
    for t in reader.tensors:
        if t.name.endswith((AFFINE_SCALES_SUFFIX, AFFINE_BIASES_SUFFIX)):
            continue
        shape = tuple(int(d) for d in reversed(t.shape))
        aff = field(reader, Keys.AFFINE.format(name=t.name))
        if aff:
            bits, group = aff
            scales = np.asarray(by_name[t.name + AFFINE_SCALES_SUFFIX].data)
            biases = np.asarray(by_name[t.name + AFFINE_BIASES_SUFFIX].data)
            codes = np.ascontiguousarray(t.data).view(np.uint32)
            q = QTensor(f"AFFINE{bits}_G{group}", (shape[0], shape[1] * 32 // bits), codes, scales, biases)
            weights[t.name], types[t.name] = dequantize(q), q.qtype
            continue
        ref = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if t.tensor_type.name not in ("F32",) and len(shape) == 2:
            ours = dequantize_raw(np.asarray(t.data), t.tensor_type.name, shape)
            np.testing.assert_array_equal(ours, ref, err_msg=f"{t.name} {t.tensor_type.name}")
        weights[t.name], types[t.name] = ref, t.tensor_type.name
    return reader, weights, types


def hf_state_dict(folder: Path, weights: dict[str, np.ndarray]) -> dict:
    """Inverse name map + inverse Q/K permutation: GGUF weights -> HF state dict."""
    arch = arch_for_config(json.loads((folder / "config.json").read_text()))
    sd = {}
    for name, w in weights.items():
        if name == TensorNames.ROPE_FREQS:
            continue
        sd[arch.hf_name(name)] = torch.from_numpy(np.array(arch.untransform(name, w)))
    return sd


def logits_of(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(ids).logits.float().numpy()


@functools.lru_cache(maxsize=8)
def reference(folder: Path):
    """(original model, input ids, its logits), loaded once per folder."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(1))
    return model, ids, logits_of(model, ids)


def rebuilt_logits(folder: Path, weights: dict[str, np.ndarray], ids) -> np.ndarray:
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder)).eval()
    missing, unexpected = model.load_state_dict(hf_state_dict(folder, weights), strict=False)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"} and (not missing or model.config.tie_word_embeddings)
    return logits_of(model, ids)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2)))


def check_roundtrip(folder: Path, out: Path, qtype: str, logit_factor: float = LOGIT_FACTOR
                    ) -> tuple[gguf.GGUFReader, dict, dict]:
    """Convert, re-read, rebuild in torch, compare logits; returns (reader, weights, types)."""
    report = convert(str(folder), out, quant=qtype, progress=False)
    reader, weights, types = read_weights(out)
    _, ids, ref = reference(folder)
    err = rel(rebuilt_logits(folder, weights, ids), ref)
    werr = report["rel_rms_mean"]
    assert werr <= WEIGHT_TOL[qtype], f"{qtype}: weight rel RMS {werr:.3g} > {WEIGHT_TOL[qtype]}"
    assert err <= logit_factor * werr + 1e-6, f"{qtype}: logits rel RMS {err:.3g} for weight error {werr:.3g}"
    if qtype == "F32":
        assert report["rel_rms_max"] == 0.0 and err == 0.0
    assert report["quant"] == qtype and json.loads(field(reader, Keys.ES_REPORT)) == report
    return reader, weights, types


# -- conversions -------------------------------------------------------------------
@pytest.mark.parametrize("qtype", GGML_TYPES + ["AFFINE8_G32", "AFFINE4_G64"])
def test_llama_spm_all_types(tiny_hf_model, tmp_path, qtype):
    folder = tiny_hf_model("llama", "spm")
    reader, weights, types = check_roundtrip(folder, tmp_path / "m.gguf", qtype)
    assert field(reader, Keys.ARCH) == "llama"
    for name, t in types.items():
        assert t == (qtype if weights[name].ndim == 2 else "F32"), name
    assert json.loads(field(reader, Keys.ES_CHOICES)) == types
    if qtype in ("F32", "F16", "Q4_K", "Q8_0"):
        assert field(reader, Keys.FILE_TYPE) == {"F32": 0, "F16": 1, "Q8_0": 7, "Q4_K": 15}[qtype]
    assert field(reader, Keys.QUANT_VERSION) == 2
    assert field(reader, Keys.ES_FAMILY) == ("affine" if qtype.startswith("AFFINE") else "ggml")


def test_f32_is_exact_and_permuted(tiny_hf_model, tmp_path):
    """F32 output equals the checkpoint bit for bit after the documented Q/K interleave."""
    from safetensors.numpy import load_file

    folder = tiny_hf_model("llama", "spm")
    convert(str(folder), tmp_path / "m.gguf", quant="F32", progress=False)
    _, weights, _ = read_weights(tmp_path / "m.gguf")
    hf = load_file(folder / "model.safetensors")
    q_hf, q_gg = hf["model.layers.0.self_attn.q_proj.weight"], weights["blk.0.attn_q.weight"]
    hd = 64
    head = q_hf[:hd]  # head 0, rotate-half order: row i pairs with row i + hd/2
    np.testing.assert_array_equal(q_gg[0:hd:2], head[: hd // 2])
    np.testing.assert_array_equal(q_gg[1:hd:2], head[hd // 2:])
    np.testing.assert_array_equal(weights["blk.1.ffn_down.weight"], hf["model.layers.1.mlp.down_proj.weight"])
    assert not np.array_equal(q_gg, q_hf)


def test_quantized_bytes_equal_quantizer(tiny_hf_model, tmp_path):
    """Each tensor's stored bytes are exactly quants.quantize of the (permuted) checkpoint."""
    from safetensors.numpy import load_file

    folder = tiny_hf_model("llama", "spm")
    convert(str(folder), tmp_path / "m.gguf", quant="Q5_K", progress=False)
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    arch = arch_for_config(json.loads((folder / "config.json").read_text()))
    hf = load_file(folder / "model.safetensors")
    for t in reader.tensors:
        w = arch.transform(t.name, hf[arch.hf_name(t.name)])
        if w.ndim == 2:
            np.testing.assert_array_equal(np.asarray(t.data), quantize(w, "Q5_K").data, err_msg=t.name)


def test_llama3_rope_scaling_bpe(tiny_hf_model, tmp_path):
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 500000.0}
    folder = tiny_hf_model("llama", "bpe-llama3", rope_parameters=rope)
    reader, weights, types = check_roundtrip(folder, tmp_path / "m.gguf", "F32")
    freqs = weights[TensorNames.ROPE_FREQS]
    assert types[TensorNames.ROPE_FREQS] == "F32" and freqs.shape == (32,)
    np.testing.assert_allclose(freqs, llama3_rope_factors(rope, 64), rtol=1e-6)
    # llama.cpp divides the base frequencies by rope_freqs: that must give HF's scaled inv_freq
    model, _, _ = reference(folder)
    base = 1.0 / 500000.0 ** (np.arange(0, 64, 2, dtype=np.float64) / 64)
    np.testing.assert_allclose(base / freqs, model.model.rotary_emb.inv_freq.numpy(), rtol=1e-5)
    assert 1.0 < freqs.max() <= 8.0 and freqs.min() == 1.0
    assert field(reader, "llama.rope.freq_base") == pytest.approx(500000.0)
    assert field(reader, Keys.TOK_PRE) == "llama-bpe"
    check_roundtrip(folder, tmp_path / "q.gguf", "Q4_K")


def test_linear_rope_scaling_keys(tiny_hf_model, tmp_path):
    folder = tiny_hf_model("llama", "spm", rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                            "rope_theta": 10000.0})
    reader, _, _ = check_roundtrip(folder, tmp_path / "m.gguf", "F16")
    assert field(reader, "llama.rope.scaling.type") == "linear"
    assert field(reader, "llama.rope.scaling.factor") == pytest.approx(2.0)


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_K"])
def test_mistral(tiny_hf_model, tmp_path, qtype):
    folder = tiny_hf_model("mistral", "spm", sliding_window=128)
    reader, _, _ = check_roundtrip(folder, tmp_path / "m.gguf", qtype)
    assert field(reader, Keys.ARCH) == "llama"
    assert field(reader, "llama.attention.sliding_window") == 128


@pytest.mark.parametrize("qtype", ["F32", "Q6_K", "AFFINE4_G64", "AFFINE3_G32"])
def test_qwen2_tied_with_biases(tiny_hf_model, tmp_path, qtype):
    folder = tiny_hf_model("qwen2", "bpe-qwen2", tie_word_embeddings=True)
    reader, weights, types = check_roundtrip(folder, tmp_path / "m.gguf", qtype)
    assert field(reader, Keys.ARCH) == "qwen2"
    assert TensorNames.OUTPUT not in weights  # tied: llama.cpp uses token_embd
    assert types["blk.0.attn_q.bias"] == "F32" and weights["blk.1.attn_v.bias"].shape == (128,)
    assert field(reader, Keys.TOK_PRE) == "qwen2"
    assert field(reader, "qwen2.context_length") == 512


def test_sharded_bf16_checkpoint(tmp_path):
    """Sharded bf16 safetensors -> F32 holds exactly the bf16 values; BF16 keeps the bits."""
    from conftest import build_tiny_model
    from transformers import AutoModelForCausalLM

    folder = build_tiny_model(tmp_path / "src", "mistral", "spm")
    model = AutoModelForCausalLM.from_pretrained(folder).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "bf16", max_shard_size="600KB")
    for f in ("tokenizer.model", "tokenizer_config.json"):
        (tmp_path / "bf16" / f).write_bytes((folder / f).read_bytes())
    shard_dir = tmp_path / "bf16"
    assert (shard_dir / "model.safetensors.index.json").is_file() and len(list(shard_dir.glob("*.safetensors"))) > 1
    convert(str(shard_dir), tmp_path / "f32.gguf", quant="F32", progress=False)
    convert(str(shard_dir), tmp_path / "bf16.gguf", quant="BF16", progress=False)
    _, w32, _ = read_weights(tmp_path / "f32.gguf")
    _, w16, _ = read_weights(tmp_path / "bf16.gguf")
    arch = arch_for_config(json.loads((shard_dir / "config.json").read_text()))
    sd = model.state_dict()
    for name, w in w32.items():
        expect = arch.transform(name, sd[arch.hf_name(name)].float().numpy())
        np.testing.assert_array_equal(w, expect, err_msg=name)
        if w.ndim == 2:
            np.testing.assert_array_equal(w16[name], expect, err_msg=name)
    # a BF16 GGUF is a source too: re-quantizing it equals quantizing the same values from F32
    convert(str(tmp_path / "bf16.gguf"), tmp_path / "a.gguf", quant="Q8_0", progress=False)
    convert(str(tmp_path / "f32.gguf"), tmp_path / "b.gguf", quant="Q8_0", progress=False)
    for ta, tb in zip(gguf.GGUFReader(tmp_path / "a.gguf").tensors, gguf.GGUFReader(tmp_path / "b.gguf").tensors):
        np.testing.assert_array_equal(np.asarray(ta.data), np.asarray(tb.data), err_msg=ta.name)


def test_gguf_source_requantizes_like_hf(tiny_hf_model, tmp_path):
    """F32 GGUF -> Q4_K gives the same tensors as HF -> Q4_K, with the metadata copied."""
    folder = tiny_hf_model("llama", "spm")
    convert(str(folder), tmp_path / "f32.gguf", quant="F32", progress=False)
    convert(str(folder), tmp_path / "direct.gguf", quant="Q4_K", progress=False)
    assert cli_main(["convert", str(tmp_path / "f32.gguf"), "-o", str(tmp_path / "re.gguf"), "--quant", "Q4_K"]) == 0
    a, b = gguf.GGUFReader(tmp_path / "direct.gguf"), gguf.GGUFReader(tmp_path / "re.gguf")
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.tensor_type == tb.tensor_type
        np.testing.assert_array_equal(np.asarray(ta.data), np.asarray(tb.data), err_msg=ta.name)
    for key in ("llama.block_count", "llama.rope.freq_base", Keys.TOK_TOKENS, Keys.TOK_SCORES, Keys.TOK_TYPES,
                Keys.CHAT_TEMPLATE, Keys.TOK_BOS, Keys.FILE_TYPE):
        assert field(a, key) == field(b, key), key
        assert a.get_field(key).types == b.get_field(key).types, key
    assert field(b, Keys.ES_SOURCE) == "f32.gguf"
    assert len([k for k in b.fields if k == Keys.ES_REPORT]) == 1


# -- tokenizers ----------------------------------------------------------------------
def test_spm_vocab(tiny_hf_model):
    import sentencepiece as spm

    folder = tiny_hf_model("llama", "spm")
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    n = json.loads((folder / "config.json").read_text())["vocab_size"]
    v = load_vocab(folder, n)
    assert v.model == "llama" and v.pre == "default" and len(v.tokens) == n == sp.vocab_size() + 3
    for i in range(sp.vocab_size()):
        assert v.tokens[i] == sp.IdToPiece(i) and v.scores[i] == pytest.approx(sp.GetScore(i))
    assert v.types[sp.unk_id()] == TokenType.UNKNOWN and v.types[sp.bos_id()] == TokenType.CONTROL
    assert v.types[3] == TokenType.BYTE and v.tokens[3] == "<0x00>"
    assert v.tokens[-1] == f"[PAD{n - 1}]" and v.types[-1] == TokenType.UNUSED
    ids = v.special.special_token_ids
    assert (ids["bos"], ids["eos"], ids["unk"]) == (sp.bos_id(), sp.eos_id(), sp.unk_id())
    assert v.special.add_special_token["bos"] is True and "im_start" in v.special.chat_template


def test_spm_added_tokens(tmp_path):
    from conftest import write_spm_tokenizer

    n = write_spm_tokenizer(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {str(n): {"content": "<|im_end|>", "special": False},
                                   str(n + 1): {"content": "\u2581hello", "special": False}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    v = load_vocab(tmp_path, n + 4)
    assert v.tokens[n] == "<|im_end|>" and v.types[n] == TokenType.CONTROL  # looks special
    assert v.tokens[n + 1] == " hello" and v.types[n + 1] == TokenType.USER_DEFINED
    assert v.scores[n] == -1000.0 and v.types[n + 2] == TokenType.UNUSED


@pytest.mark.parametrize("kind,pre", [("bpe-llama3", "llama-bpe"), ("bpe-qwen2", "qwen2"), ("bpe-gpt2", "gpt-2")])
def test_bpe_vocab(tmp_path, kind, pre):
    from conftest import TOKENIZERS
    from tokenizers import Tokenizer

    n = TOKENIZERS[kind](tmp_path)
    v = load_vocab(tmp_path, n + 2)
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    assert v.model == "gpt2" and v.pre == pre and v.scores is None
    assert v.tokens[:n] == [tok.id_to_token(i) for i in range(n)]
    assert v.tokens[n] == f"[PAD{n}]" and v.types[n] == TokenType.UNUSED
    bos = tok.token_to_id("<|begin_of_text|>")
    assert v.types[bos] == TokenType.CONTROL and v.types[tok.token_to_id("Ġ")] == TokenType.NORMAL
    assert v.special.merges == [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    ids = v.special.special_token_ids
    assert ids["bos"] == bos and ids["eos"] == tok.token_to_id("<|end_of_text|>")
    assert v.special.chat_template.startswith("{% for m in messages %}")


def test_bpe_unknown_pretokenizer_warns(tmp_path, capsys):
    from conftest import write_bpe_tokenizer

    n = write_bpe_tokenizer(tmp_path, r"\p{L}+|\s+|[^\s\p{L}]+")
    assert load_vocab(tmp_path, n).pre == "default"
    assert "pre-tokenizer not recognized" in capsys.readouterr().err


# -- targets and reports ---------------------------------------------------------------
def test_target_picks_best_type_and_reports(tiny_hf_model, tmp_path, capsys):
    folder = tiny_hf_model("llama", "spm")
    out = tmp_path / "t.gguf"
    assert cli_main(["convert", str(folder), "-o", str(out), "--target", "rpi5-8gb", "--ctx", "2048"]) == 0
    err = capsys.readouterr().err
    assert "rpi5-8gb" in err and "KV cache" in err and "fits" in err
    reader = gguf.GGUFReader(out)
    report = json.loads(field(reader, Keys.ES_REPORT))
    fit = report["fit"]
    assert report["quant"] == "Q8_0" and fit["target"] == "rpi5-8gb" and fit["fits"] is True
    assert fit["kv_cache_bytes"] == 2 * 2 * 2048 * 2 * 64 * 2
    assert fit["weights_bytes"] == sum(int(t.n_bytes) for t in reader.tensors)
    assert fit["total_bytes"] == fit["weights_bytes"] + fit["kv_cache_bytes"] + fit["overhead_bytes"]
    assert field(reader, Keys.ES_TARGET) == "rpi5-8gb"
    errs = report["rel_rms"]
    assert set(errs) == {t.name for t in reader.tensors if len(t.shape) == 2}
    assert all(0 < e < 0.02 for e in errs.values())  # Q8_0 on N(0, 0.02) weights


def test_target_affine_family(tiny_hf_model, tmp_path):
    folder = tiny_hf_model("llama", "spm")
    report = convert(str(folder), tmp_path / "a.gguf", family="affine", target="m2-8gb", progress=True)
    assert report["quant"] == "AFFINE8_G64" and report["family"] == "affine"


def test_target_ctx_too_big_picks_smaller(tiny_hf_model, tmp_path):
    """A context that only leaves room for 2-bit weights makes the picker go down the ladder."""
    from edgeslim.convert.plan import plan_bytes
    from edgeslim.convert.pipeline import open_source
    from edgeslim.targets import OVERHEAD_BYTES, TARGETS, kv_cache_bytes

    folder = tiny_hf_model("llama", "spm")
    m = open_source(str(folder))
    usable = TARGETS["rpi5-4gb"].usable_bytes
    room = (plan_bytes(m.tensors, "Q2_K") + plan_bytes(m.tensors, "Q3_K")) // 2
    per_tok = kv_cache_bytes(2, 1, 2, 64)
    ctx = (usable - OVERHEAD_BYTES - room) // per_tok
    report = convert(str(folder), tmp_path / "s.gguf", target="rpi5-4gb", ctx=ctx, calib=False, progress=False)
    from edgeslim.tables import quant_info
    bits = {t: quant_info(t).bpw for t in report["types"]}
    assert max(bits.values()) <= 4.5 and report["fit"]["fits"], bits  # below Q4_K's 4.5 bits everywhere
    assert report["fit"]["headroom_bytes"] >= 0
    report = convert(str(folder), tmp_path / "u.gguf", target="rpi5-4gb", ctx=ctx, allocate="uniform",
                     progress=False)
    assert report["quant"] == "Q2_K" and report["fit"]["headroom_bytes"] >= 0


# -- errors: one line, exit 2, nothing left behind ----------------------------------------
def run_cli(args, capsys) -> tuple[int, str]:
    code = cli_main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    last = err.splitlines()[-1]
    assert last.startswith("edgeslim: ") and "Traceback" not in err
    for n in needles:
        assert n in last, (n, last)


def no_partial_files(folder: Path):
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]


def test_error_missing_folder(tmp_path, capsys):
    code, err = run_cli(["convert", str(tmp_path / "nope"), "-o", str(tmp_path / "o.gguf")], capsys)
    assert_one_line_error(code, err, "no such folder")
    assert not (tmp_path / "o.gguf").exists()


def test_error_missing_config(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    code, err = run_cli(["convert", str(tmp_path / "m"), "-o", str(tmp_path / "o.gguf")], capsys)
    assert_one_line_error(code, err, "config.json")


def test_error_pickle_only(tmp_path, capsys):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1,
                                               "num_attention_heads": 1, "vocab_size": 8}))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    code, err = run_cli(["convert", str(d), "-o", str(tmp_path / "o.gguf")], capsys)
    assert_one_line_error(code, err, "never unpickles", "safetensors")
    no_partial_files(tmp_path)


def test_error_no_tokenizer(tiny_hf_model, tmp_path, capsys):
    d = tmp_path / "m"
    d.mkdir()
    for f in ("config.json", "model.safetensors"):
        (d / f).write_bytes((tiny_hf_model("llama", "spm") / f).read_bytes())
    code, err = run_cli(["convert", str(d), "-o", str(tmp_path / "o.gguf")], capsys)
    assert_one_line_error(code, err, "tokenizer.model or tokenizer.json")
    no_partial_files(tmp_path)


def test_error_unsupported_arch(tmp_path, capsys):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}))
    code, err = run_cli(["convert", str(d), "-o", str(tmp_path / "o.gguf")], capsys)
    assert_one_line_error(code, err, "gpt_neox", "llama", "mistral", "qwen2")


def test_error_existing_output(tiny_hf_model, tmp_path, capsys):
    out = tmp_path / "o.gguf"
    out.write_bytes(b"keep me")
    code, err = run_cli(["convert", str(tiny_hf_model("llama", "spm")), "-o", str(out)], capsys)
    assert_one_line_error(code, err, "already exists", "--force")
    assert out.read_bytes() == b"keep me"
    assert run_cli(["convert", str(tiny_hf_model("llama", "spm")), "-o", str(out), "--force"], capsys)[0] == 0
    assert out.read_bytes()[:4] == b"GGUF"


def test_error_unknown_target(tiny_hf_model, tmp_path, capsys):
    code, err = run_cli(["convert", str(tiny_hf_model("llama", "spm")), "-o", str(tmp_path / "o.gguf"),
                         "--target", "pdp11"], capsys)
    assert_one_line_error(code, err, "pdp11", "m2-8gb", "rpi5-8gb", "x86-16gb")


def test_error_too_big_for_target(tiny_hf_model, tmp_path, capsys):
    out = tmp_path / "o.gguf"
    code, err = run_cli(["convert", str(tiny_hf_model("llama", "spm")), "-o", str(out),
                         "--target", "rpi5-4gb", "--ctx", "50000000"], capsys)
    assert_one_line_error(code, err, "does not fit rpi5-4gb", "smallest ggml types", "the minimum", "KV cache")
    code, err = run_cli(["convert", str(tiny_hf_model("llama", "spm")), "-o", str(out),
                         "--target", "rpi5-4gb", "--ctx", "50000000", "--quant", "Q8_0"], capsys)
    assert_one_line_error(code, err, "does not fit rpi5-4gb")
    assert not out.exists()
    no_partial_files(tmp_path)


def test_error_unknown_quant(tiny_hf_model, tmp_path, capsys):
    code, err = run_cli(["convert", str(tiny_hf_model("llama", "spm")), "-o", str(tmp_path / "o.gguf"),
                         "--quant", "Q7_K"], capsys)
    assert_one_line_error(code, err, "Q7_K", "Q4_K")


def test_error_quantized_gguf_source(tiny_hf_model, tmp_path, capsys):
    src = tmp_path / "q.gguf"
    convert(str(tiny_hf_model("llama", "spm")), src, quant="Q4_K", progress=False)
    code, err = run_cli(["convert", str(src), "-o", str(tmp_path / "o.gguf"), "--quant", "Q2_K"], capsys)
    assert_one_line_error(code, err, "already quantized", "Q4_K")
    assert not (tmp_path / "o.gguf").exists()


def test_family_affine_bits_shorthand(tiny_hf_model, tmp_path, capsys):
    out = tmp_path / "a.gguf"
    assert run_cli(["convert", str(tiny_hf_model("llama", "spm")), "-o", str(out), "--family", "affine",
                    "--quant", "6"], capsys)[0] == 0
    assert json.loads(field(gguf.GGUFReader(out), Keys.ES_REPORT))["quant"] == "AFFINE6_G64"
    code, err = run_cli(["convert", str(tiny_hf_model("llama", "spm")), "-o", str(tmp_path / "b.gguf"),
                         "--family", "affine", "--quant", "Q4_K"], capsys)
    assert_one_line_error(code, err, "Q4_K", "--family")


def test_error_hub_id_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["convert", "no-such-org/no-such-model", "-o", str(tmp_path / "o.gguf")], capsys)
    assert_one_line_error(code, err, "no-such-org/no-such-model", "download")


def test_failure_midway_leaves_no_file(tiny_hf_model, tmp_path, monkeypatch):
    """An exception while streaming removes the temp file and writes no output."""
    import edgeslim.convert.transform as transform

    def boom(w, qtype, importance=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(transform, "quantize", boom)
    with pytest.raises(RuntimeError):
        convert(str(tiny_hf_model("llama", "spm")), tmp_path / "o.gguf", quant="Q8_0", progress=False)
    assert list(tmp_path.iterdir()) == []


# -- inspect ---------------------------------------------------------------------------
def test_inspect_affine_and_json(tiny_hf_model, tmp_path, capsys):
    out = tmp_path / "a.gguf"
    convert(str(tiny_hf_model("qwen2", "bpe-qwen2", tie_word_embeddings=True)), out, quant="AFFINE4_G64",
            progress=False)
    capsys.readouterr()
    assert cli_main(["inspect", str(out), "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    rows = {t["name"]: t for t in info["tensors"]}
    assert not any(n.endswith((".scales", ".biases")) for n in rows)
    q = rows["blk.0.attn_q.weight"]
    assert q["type"] == "AFFINE4_G64" and q["shape"] == [256, 256] and q["bpw"] == pytest.approx(4.5)
    assert rows["blk.0.attn_q.bias"]["type"] == "F32"
    assert info["total"]["bytes"] == out.stat().st_size - _data_offset(out)
    assert info["checksum_ok"] is True and info["edgeslim"][Keys.ES_REPORT]["quant"] == "AFFINE4_G64"
    assert cli_main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "AFFINE4_G64" in text and '"rel_rms_mean"' in text and "bits per weight" in text


def _data_offset(path: Path) -> int:
    """Bytes before tensor data plus alignment padding between tensors (for the totals check)."""
    from edgeslim.gguf_file import GGUFFile

    f = GGUFFile(path)
    infos = sorted(f.tensors.values(), key=lambda t: t.offset)
    padding = sum(b.offset - (a.offset + a.nbytes) for a, b in zip(infos, infos[1:]))
    tail = path.stat().st_size - (infos[-1].offset + infos[-1].nbytes)
    return f.data_start + padding + tail


def test_inspect_imports_no_torch(tiny_hf_model, tmp_path):
    out = tmp_path / "m.gguf"
    convert(str(tiny_hf_model("llama", "spm")), out, quant="Q8_0", progress=False)
    code = ("import sys; from edgeslim.cli import main; rc = main(['inspect', sys.argv[1]]); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Q8_0" in res.stdout and "blk.1.ffn_down.weight" in res.stdout


def test_relative_rms_helper():
    from edgeslim.convert.transform import relative_rms

    w = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    d = w * 1.01
    assert relative_rms(w, d) == pytest.approx(0.01, rel=1e-5)
    assert relative_rms(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32)) == 0.0
    assert math.isinf(relative_rms(np.zeros((1, 2), np.float32), np.ones((1, 2), np.float32)))


# -- llama.cpp itself loads the ggml-family files ----------------------------------------
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64, "rope_theta": 500000.0}
LLAMA_CPP_MODELS = {
    "llama-spm": ("llama", "spm", {}),
    "llama3-bpe": ("llama", "bpe-llama3", {"rope_parameters": LLAMA3_ROPE}),
    "mistral": ("mistral", "spm", {"sliding_window": 128}),
    "qwen2-tied": ("qwen2", "bpe-qwen2", {"tie_word_embeddings": True}),
}


@pytest.mark.parametrize("which", list(LLAMA_CPP_MODELS))
def test_llama_cpp_loads_and_agrees(tiny_hf_model, tmp_path, which):
    """llama.cpp (llama-cpp-python) reads our metadata, tokenizer and tensors: F32 logits equal
    HF's, Q4_K logits equal our own dequantized rebuild (up to llama.cpp's activation
    quantization), and it tokenizes like the HF tokenizer."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    from conftest import sample_text

    kind, tok, overrides = LLAMA_CPP_MODELS[which]
    folder = tiny_hf_model(kind, tok, **overrides)
    _, ids, ref = reference(folder)
    toks = ids[0].tolist()
    for qtype, against, tol in (("F32", "hf", 1e-3), ("Q4_K", "rebuilt", 0.03)):
        out = tmp_path / f"{qtype}.gguf"
        convert(str(folder), out, quant=qtype, progress=False)
        llm = llama_cpp.Llama(str(out), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
        llm.eval(toks)
        got = np.asarray(llm.scores[: len(toks)])
        expect = ref[0] if against == "hf" else rebuilt_logits(folder, read_weights(out)[1], ids)[0]
        assert rel(got, expect) < tol, (qtype, rel(got, expect))
    hf = AutoTokenizer.from_pretrained(folder)
    assert (llm.token_bos(), llm.token_eos()) == (hf.bos_token_id, hf.eos_token_id)
    lines = sample_text(40, seed=5) + ["Hello  world 3333 's", " leading space", "a\nb\n\nc"]
    if tok == "spm":  # the reference is sentencepiece itself (transformers 5 drops a leading space)
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        for line in lines:
            assert llm.tokenize(line.encode(), add_bos=False, special=False) == sp.encode(line), line
    else:
        for line in lines + ["<|im_start|>user hi<|im_end|>"]:
            got = llm.tokenize(line.encode(), add_bos=False, special=True)
            assert got == hf.encode(line, add_special_tokens=False), line


# -- Gemma 3 ---------------------------------------------------------------------------------
GEMMA3_LOGIT_FACTOR = 15.0
@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q4_K"])
def test_gemma3(tiny_hf_model, tmp_path, qtype):
    """Gemma3ForCausalLM: llama.cpp's names and keys, norms stored as 1 + w, rebuilt logits equal HF's."""
    from conftest import GEMMA3
    from safetensors.numpy import load_file

    folder = tiny_hf_model("gemma3", "spm", **GEMMA3)
    # the post-norms rescale small random-model signals to full size, amplifying weight error:
    # measured logit/weight error ratio 10.4 (Q8_0), 7.9 (Q4_K), 5.5 (F16) on these random models
    reader, weights, types = check_roundtrip(folder, tmp_path / "m.gguf", qtype, GEMMA3_LOGIT_FACTOR)
    assert field(reader, Keys.ARCH) == "gemma3" and TensorNames.OUTPUT not in weights  # tied
    assert field(reader, "gemma3.attention.sliding_window") == 16
    assert field(reader, "gemma3.attention.sliding_window_pattern") == [True, True, False]
    assert field(reader, "gemma3.rope.freq_base") == pytest.approx(1e6)
    assert field(reader, "gemma3.rope.freq_base_swa") == pytest.approx(1e4)
    assert field(reader, "gemma3.rope.scaling.type") == "linear"
    assert field(reader, "gemma3.final_logit_softcapping") == pytest.approx(30.0)
    assert field(reader, "gemma3.attention.scale") is None  # query_pre_attn_scalar == head_dim
    assert field(reader, Keys.TOK_ADD_SPACE_PREFIX) is False
    hf = load_file(folder / "model.safetensors")
    for gg, name in (("blk.1.post_ffw_norm.weight", "model.layers.1.post_feedforward_layernorm.weight"),
                     ("blk.0.attn_k_norm.weight", "model.layers.0.self_attn.k_norm.weight"),
                     ("output_norm.weight", "model.norm.weight")):
        np.testing.assert_array_equal(weights[gg], hf[name] + np.float32(1.0))
        assert types[gg] == "F32"
    assert types["blk.2.ffn_up.weight"] == qtype


def test_gemma3_query_scalar_and_default_pattern(tiny_hf_model, tmp_path):
    from conftest import GEMMA3_DEFAULT

    folder = tiny_hf_model("gemma3", "spm", **GEMMA3_DEFAULT)
    reader, _, _ = check_roundtrip(folder, tmp_path / "m.gguf", "F16", GEMMA3_LOGIT_FACTOR)
    assert field(reader, "gemma3.attention.scale") == pytest.approx(256 ** -0.5)
    assert field(reader, "gemma3.attention.sliding_window_pattern") is None  # transformers' default: period 6


def test_gemma3_llama_cpp_agrees(tiny_hf_model, tmp_path):
    """llama.cpp runs our Gemma 3 file: logits equal HF's; it tokenizes like edgeslim."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from conftest import GEMMA3, sample_text

    from edgeslim.tokenizer import load_tokenizer

    folder = tiny_hf_model("gemma3", "spm", **GEMMA3)
    _, ids, ref = reference(folder)
    out = tmp_path / "m.gguf"
    convert(str(folder), out, quant="F32", progress=False)
    llm = llama_cpp.Llama(str(out), n_ctx=64, logits_all=True, verbose=False, n_threads=1, type_k=0, type_v=0)
    toks = ids[0].tolist()
    llm.eval(toks)
    assert rel(np.asarray(llm.scores[: len(toks)]), ref[0]) < 1e-3
    tok = load_tokenizer(out)
    for line in sample_text(30, seed=6) + ["Hello  world 3333 's", " leading space", "a\nb\n\nc"]:
        assert llm.tokenize(line.encode(), add_bos=True, special=False) == tok.encode(line), line


@pytest.mark.slow
def test_gemma3_budget_conversion_with_gptq(tiny_hf_model, tmp_path):
    """A calibrated budget conversion of Gemma 3 (calibration reads the family description,
    GPTQ rounds on its Hessians): the file runs, close to the original model."""
    import edgeslim
    from conftest import GEMMA3

    folder = tiny_hf_model("gemma3", "spm", **GEMMA3)
    out = tmp_path / "g.gguf"
    report = convert(str(folder), out, bpw=5.5, calib_tokens=512, progress=False)
    assert report["gptq"] is True and report["calibration"]["tokens"] > 0
    assert {n for n in report["rel_out"]} >= {"blk.2.ffn_down.weight", "blk.0.attn_q.weight"}
    _, ids, ref = reference(folder)
    got = edgeslim.load(out, backend="numpy", kv_dtype="float32").logits(ids[0].numpy())
    assert rel(got, ref[0]) < GEMMA3_LOGIT_FACTOR * report["rel_rms_mean"]


def test_gemma3_gguf_source(tiny_hf_model, tmp_path):
    """An F32 Gemma 3 GGUF re-quantizes like the HF folder, its metadata (layer pattern array included) copied."""
    from conftest import GEMMA3

    folder = tiny_hf_model("gemma3", "spm", **GEMMA3)
    convert(str(folder), tmp_path / "f32.gguf", quant="F32", progress=False)
    convert(str(folder), tmp_path / "direct.gguf", quant="Q8_0", progress=False)
    convert(str(tmp_path / "f32.gguf"), tmp_path / "re.gguf", quant="Q8_0", progress=False)
    a, b = gguf.GGUFReader(tmp_path / "direct.gguf"), gguf.GGUFReader(tmp_path / "re.gguf")
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.name == tb.name
        np.testing.assert_array_equal(np.asarray(ta.data), np.asarray(tb.data), err_msg=ta.name)
    for key in ("gemma3.attention.sliding_window_pattern", "gemma3.rope.freq_base_swa",
                "gemma3.final_logit_softcapping", Keys.TOK_ADD_SPACE_PREFIX):
        assert field(a, key) == field(b, key), key
