"""The contract every architecture file follows, and what Llama-like families share.

An architecture class is built from a Hugging Face `config.json` dict and answers:

    hf_model_types / hf_architectures   which configs it handles
    gguf_arch                          `general.architecture` it writes
    metadata()                         [(GGUF key, value)] for the architecture keys
    gguf_name(hf_name)                 HF tensor name -> GGUF name (None: not written)
    hf_name(gguf_name)                 the inverse (tests and tools)
    transform(gguf_name, w)            array as llama.cpp stores it (Q/K permutation)
    untransform(gguf_name, w)          the inverse
    extra_tensors()                    [(GGUF name, float32 array)] computed from the config

Values in `metadata()` are plain Python: int -> GGUF uint32, float -> float32,
bool, str, list (see `edgeslim.convert.model.put_kv`), as llama.cpp writes them.
"""
from __future__ import annotations

import re

import numpy as np

from edgeslim.errors import UnsupportedError
from edgeslim.tables import Keys, TensorNames

# HF tensors that carry no weights llama.cpp needs (rotary tables are recomputed).
_SKIP = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
_BLOCK = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


class Arch:
    """Llama-shaped decoder: embed -> N x (RMSNorm, attention, RMSNorm, SwiGLU) -> norm -> head."""

    hf_model_types: tuple[str, ...] = ()
    hf_architectures: tuple[str, ...] = ()
    gguf_arch: str = ""

    # HF names outside the blocks
    GLOBAL_MAP: dict[str, str] = {
        "model.embed_tokens.weight": TensorNames.TOKEN_EMBD,
        "model.norm.weight": TensorNames.OUTPUT_NORM,
        "lm_head.weight": TensorNames.OUTPUT,
    }
    # HF names inside block i, after the "model.layers.{i}." prefix
    BLOCK_MAP: dict[str, str] = {
        "input_layernorm.weight": TensorNames.ATTN_NORM,
        "self_attn.q_proj.weight": TensorNames.ATTN_Q,
        "self_attn.k_proj.weight": TensorNames.ATTN_K,
        "self_attn.v_proj.weight": TensorNames.ATTN_V,
        "self_attn.o_proj.weight": TensorNames.ATTN_OUT,
        "post_attention_layernorm.weight": TensorNames.FFN_NORM,
        "mlp.gate_proj.weight": TensorNames.FFN_GATE,
        "mlp.up_proj.weight": TensorNames.FFN_UP,
        "mlp.down_proj.weight": TensorNames.FFN_DOWN,
    }

    def __init__(self, config: dict):
        self.config = config
        c = config
        self.n_layers = int(c["num_hidden_layers"])
        self.hidden = int(c["hidden_size"])
        self.n_heads = int(c["num_attention_heads"])
        self.n_kv_heads = int(c.get("num_key_value_heads") or self.n_heads)
        self.head_dim = int(c.get("head_dim") or self.hidden // self.n_heads)
        self.vocab_size = int(c["vocab_size"])
        self.tied = bool(c.get("tie_word_embeddings", False))
        self.rope = rope_parameters(c)

    # -- metadata ------------------------------------------------------------
    def key(self, template: str) -> str:
        return template.format(arch=self.gguf_arch)

    def metadata(self) -> list[tuple[str, object]]:
        """llama.cpp's architecture keys for this config (ints are uint32, floats float32)."""
        c, k = self.config, self.key
        out: list[tuple[str, object]] = [
            (k(Keys.VOCAB_SIZE), self.vocab_size),
            (k(Keys.CONTEXT), int(c.get("max_position_embeddings") or 4096)),
            (k(Keys.EMBED), self.hidden),
            (k(Keys.BLOCKS), self.n_layers),
            (k(Keys.FFN), int(c["intermediate_size"])),
            (k(Keys.HEADS), self.n_heads),
            (k(Keys.HEADS_KV), self.n_kv_heads),
            (k(Keys.RMS_EPS), float(c.get("rms_norm_eps", 1e-6))),
            (k(Keys.ROPE_DIM), self.head_dim),
            (k(Keys.ROPE_BASE), float(self.rope.get("rope_theta", 10000.0))),
        ]
        if c.get("head_dim") is not None:  # llama.cpp writes these whenever the config names head_dim
            out += [(k(Keys.KEY_LENGTH), self.head_dim), (k(Keys.VALUE_LENGTH), self.head_dim)]
        return out + self.rope_scaling_metadata()

    def rope_scaling_metadata(self) -> list[tuple[str, object]]:
        """linear and yarn scaling as keys; llama3 goes into `rope_freqs.weight` instead."""
        kind, factor = self.rope.get("rope_type", "default"), self.rope.get("factor")
        if kind in ("default", None, "llama3"):
            return []
        if kind == "linear" and factor is not None:
            return [(self.key(Keys.ROPE_SCALING_TYPE), "linear"), (self.key(Keys.ROPE_SCALING_FACTOR), float(factor))]
        if kind == "yarn" and factor is not None:
            return [(self.key(Keys.ROPE_SCALING_TYPE), "yarn"), (self.key(Keys.ROPE_SCALING_FACTOR), float(factor)),
                    (self.key(Keys.ROPE_SCALING_ORIG_CTX), int(self.rope["original_max_position_embeddings"]))]
        raise UnsupportedError(f"rope scaling type {kind!r} is not supported; supported: linear, yarn, llama3")

    # -- tensor names --------------------------------------------------------
    def gguf_name(self, hf_name: str) -> str | None:
        """GGUF name of an HF tensor; None for tensors not written (rotary tables, tied head)."""
        if _SKIP.search(hf_name):
            return None
        if hf_name in self.GLOBAL_MAP:
            name = self.GLOBAL_MAP[hf_name]
            return None if (name == TensorNames.OUTPUT and self.tied) else name
        m = _BLOCK.match(hf_name)
        if m and m.group(2) in self.BLOCK_MAP and int(m.group(1)) < self.n_layers:
            return self.BLOCK_MAP[m.group(2)].format(bid=int(m.group(1)))
        raise UnsupportedError(f"tensor {hf_name!r} has no GGUF name in edgeslim's {self.gguf_arch} map; "
                               "this checkpoint has parts edgeslim does not convert")

    def hf_name(self, gguf_name: str) -> str:
        """Inverse of `gguf_name`."""
        for hf, gg in self.GLOBAL_MAP.items():
            if gg == gguf_name:
                return hf
        for suffix, template in self.BLOCK_MAP.items():
            pattern = re.escape(template).replace(r"\{bid\}", r"(\d+)")
            m = re.fullmatch(pattern, gguf_name)
            if m:
                return f"model.layers.{m.group(1)}.{suffix}"
        raise KeyError(gguf_name)

    # -- arrays --------------------------------------------------------------
    def transform(self, gguf_name: str, w: np.ndarray) -> np.ndarray:
        """The array as llama.cpp stores it for this architecture (identity here)."""
        return w

    def untransform(self, gguf_name: str, w: np.ndarray) -> np.ndarray:
        return w

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        """Tensors computed from the config (none here)."""
        return []


def rope_parameters(config: dict) -> dict:
    """RoPE settings from either config style: transformers 5 `rope_parameters` or
    the older `rope_theta` + `rope_scaling` ({"type"|"rope_type": ..., "factor": ...})."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if "full_attention" in params:  # per-layer-type dicts: the global one
        params = dict(params["full_attention"])
    if "rope_type" not in params and "type" in params:
        params["rope_type"] = params["type"]
    if "rope_theta" not in params and config.get("rope_theta") is not None:
        params["rope_theta"] = config["rope_theta"]
    if "original_max_position_embeddings" not in params and config.get("original_max_position_embeddings"):
        params["original_max_position_embeddings"] = config["original_max_position_embeddings"]
    return params
