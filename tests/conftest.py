"""Shared fixtures: tiny random Hugging Face models and tokenizers, built offline in a temp dir.

    tiny_hf_model("llama", tokenizer="spm")       -> Path of a folder (config.json,
    tiny_hf_model("qwen2", tokenizer="bpe-qwen2")     model.safetensors, tokenizer files)

Models are random (seeded), 2 layers, hidden 256, so every block type applies;
folders are cached per session by their arguments. Tokenizers are trained in
the test on generated text: SentencePiece (or the bundled demo
`edgeslim/demo/tokenizer.model` when present) and byte-level BPE with the
Llama-3 or Qwen2 pre-tokenizer regex.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_SPM = REPO / "edgeslim" / "demo" / "tokenizer.model"

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Gemma 3 with its real proportions shrunk (head_dim > hidden/heads, one KV head): local, local,
# global layers (a pattern llama.cpp reads from the file), window 16 (< the 40-token test),
# linear RoPE scaling on the global layer only, final logit soft-capping.
GEMMA3 = {"num_hidden_layers": 3, "num_key_value_heads": 1, "head_dim": 64, "query_pre_attn_scalar": 64,
          "sliding_window": 16, "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
          "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                              "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}},
          "final_logit_softcapping": 30.0, "tie_word_embeddings": True}
# transformers' defaults (both layers local, query_pre_attn_scalar 256 != head_dim: the attention.scale key)
GEMMA3_DEFAULT = {"num_key_value_heads": 1, "head_dim": 64, "sliding_window": 8, "tie_word_embeddings": True}
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def load_script(name: str):
    """A module from scripts/NAME.py (the scripts are not a package), loaded afresh."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sample_text(n_lines: int = 400, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English lines (words from syllables, digits, punctuation)."""
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ta", "ren", "so", "vu", "pe", "dor", "an", "is", "the", "and", "un", "ex", "ly"]
    words = ["".join(rng.choice(syll) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    lines = []
    for _ in range(n_lines):
        ws = [rng.choice(words) for _ in range(rng.randint(4, 14))]
        if rng.random() < 0.3:
            ws.insert(rng.randrange(len(ws)), str(rng.randint(0, 99999)))
        lines.append(" ".join(ws).capitalize() + rng.choice([".", "!", "?", ",", "'s", " :)"]))
    return lines


def write_spm_tokenizer(folder: Path, vocab_size: int = 400) -> int:
    """tokenizer.model (+ tokenizer_config.json); returns the number of pieces."""
    import sentencepiece as spm

    if DEMO_SPM.is_file():
        proto = DEMO_SPM.read_bytes()
    else:
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sample_text()), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
            byte_fallback=True, character_coverage=1.0, minloglevel=2,
            remove_extra_whitespaces=False)  # as Llama's tokenizer.model (llama.cpp never collapses spaces)
        proto = buf.getvalue()
    (folder / "tokenizer.model").write_bytes(proto)
    n = spm.SentencePieceProcessor(model_proto=proto).vocab_size()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizer", "chat_template": CHAT_TEMPLATE}))
    return n


def write_bpe_tokenizer(folder: Path, regex: str | None, vocab_size: int = 500) -> int:
    """Byte-level BPE tokenizer.json trained here (regex None: plain GPT-2 ByteLevel);
    specials <|begin_of_text|>, <|end_of_text|>, <|im_start|>, <|im_end|>. Returns its size."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    if regex is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sample_text(), trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": True,
        "chat_template": CHAT_TEMPLATE, "tokenizer_class": "PreTrainedTokenizerFast"}))
    return tok.get_vocab_size()


TOKENIZERS = {
    "spm": lambda d: write_spm_tokenizer(d),
    "bpe-llama3": lambda d: write_bpe_tokenizer(d, LLAMA3_REGEX),
    "bpe-qwen2": lambda d: write_bpe_tokenizer(d, QWEN2_REGEX),
    "bpe-gpt2": lambda d: write_bpe_tokenizer(d, None),
}


def model_config(kind: str, vocab_size: int, **overrides):
    """A transformers config for a tiny model of `kind` (llama, mistral, qwen2, gemma3, phi3)."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "gemma3": Gemma3TextConfig,
           "phi3": Phi3Config}[kind]
    kw = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=512, rms_norm_eps=1e-5,
              bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=False)
    kw.update(overrides)
    return cls(**kw)


def build_tiny_model(folder: Path, kind: str, tokenizer: str = "spm", seed: int = 0, extra_vocab: int = 3,
                     **overrides) -> Path:
    """Write a random tiny HF model of `kind` with `tokenizer` into `folder`; returns the folder.

    The config's vocab_size is the tokenizer's size + `extra_vocab` (padding rows,
    as real models often have). Weights are seeded normal(0, 0.02) with norms
    around 1 so every tensor carries signal.
    """
    import torch
    from transformers import AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    n_tok = TOKENIZERS[tokenizer](folder)
    config = model_config(kind, n_tok + extra_vocab, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory):
    """Factory: tiny_hf_model(kind, tokenizer="spm", **config_overrides) -> cached folder Path."""
    cache: dict[str, Path] = {}

    def make(kind: str, tokenizer: str = "spm", **overrides) -> Path:
        key = json.dumps([kind, tokenizer, overrides], sort_keys=True, default=str)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"hf-{kind}-{tokenizer}")
            cache[key] = build_tiny_model(folder, kind, tokenizer, **overrides)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_gguf(tmp_path_factory) -> Path:
    """The bundled demo model converted to Q8_0 once per session (needs no torch: safetensors in,
    one type for every matrix)."""
    from edgeslim.convert.pipeline import convert
    from edgeslim.demo import DEMO_DIR

    out = tmp_path_factory.mktemp("demo") / "demo-q8_0.gguf"
    convert(str(DEMO_DIR), out, quant="Q8_0", progress=False)
    return out
