"""The one description of an architecture family, read by the converter, calibration and the runtime.

A family class says, once:

    name                      `general.architecture` it writes and runs
    hf_model_types/_architectures   which Hugging Face configs it converts
    hf_module, hf_prefix      transformers' modeling module and class-name prefix (calibration
                              builds `{prefix}DecoderLayer`, `{prefix}RotaryEmbedding`, `{prefix}RMSNorm`)
    HF_BLOCK, HF_EMBED, HF_NORM, HF_HEAD   HF module paths of the blocks, embedding, final norm, head
    GLOBAL_MAP, BLOCK_MAP     HF tensor name -> GGUF tensor name (`edgeslim.tables.TensorNames`);
                              the BLOCK_MAP values are also the per-block tensors the runtime requires,
                              each under its role ("attn_q", "attn_q_bias", "ffn_norm", ...)
    permute_qk                Q/K rows interleaved at conversion (HF rotate-half -> ggml normal RoPE)
    rope_neox                 RoPE pairing the runtime applies: ggml "normal" (x[2i], x[2i+1]) or
                              NEOX (x[i], x[i + n_rot/2])
    norm_shift                added to HF norm weights at conversion (Gemma's (1 + w) RMSNorm), so the
                              runtime always multiplies by the stored weight
    activation                gated FFN activation: "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    embed_scale               the embedding rows are multiplied by sqrt(n_embd)
    spm_space_prefix          SentencePiece dummy prefix written for the tokenizer (Gemma: False)
    FUSED                     tensors the numba runtime stacks into one matrix at load
    free_head_dim             llama.cpp's graph for it takes n_embd != n_head * head_dim (its q and
                              attention-output shapes follow head_dim, not n_embd)

Constructed with an HF config dict (the converter) the object also answers metadata(),
gguf_name()/hf_name(), transform()/untransform() and extra_tensors(); constructed without
one (the runtime) it answers block_tensors() and runtime_hparams(). Everything here is
numpy-only: the runtime imports it without torch.
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np

from ..errors import UnsupportedError
from ..tables import Keys, TensorNames

_SKIP = re.compile(r"(^|\.)rotary_emb\.inv_freq$")  # rotary tables are recomputed, never stored
_ROLE = re.compile(r"^blk\.\{bid\}\.(.+)\.(weight|bias)$")

# reads `{arch}.*` metadata: read(key_template, default, kind) -> value (FormatError when missing and no default)
Reader = Callable[..., object]


def role_of(template: str) -> str:
    """'blk.{bid}.attn_q.weight' -> 'attn_q'; 'blk.{bid}.attn_q.bias' -> 'attn_q_bias'."""
    m = _ROLE.match(template)
    if not m:
        raise ValueError(f"{template!r} is not a per-block tensor template")
    return m.group(1) + ("_bias" if m.group(2) == "bias" else "")


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """(n_head*d, ...) HF rotate-half rows -> interleaved pairs (1-D biases too).

        HF head rows   [ a0 a1 ... a(d/2-1) | b0 b1 ... b(d/2-1) ]
        GGUF head rows [ a0 b0 a1 b1 ... a(d/2-1) b(d/2-1) ]
    """
    rest = w.shape[1:]
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `permute_rows`."""
    rest = w.shape[1:]
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


class Family:
    """Llama-shaped decoder: embed -> N x (RMSNorm, attention, RMSNorm, SwiGLU) -> RMSNorm -> head."""

    name = "base"
    hf_model_types: tuple[str, ...] = ()
    hf_architectures: tuple[str, ...] = ()
    hf_module = ""
    hf_prefix = ""

    HF_BLOCK = "model.layers.{bid}."
    HF_EMBED = "model.embed_tokens.weight"
    HF_NORM = "model.norm.weight"
    HF_HEAD = "lm_head.weight"
    GLOBAL_MAP: dict[str, str] = {
        HF_EMBED: TensorNames.TOKEN_EMBD,
        HF_NORM: TensorNames.OUTPUT_NORM,
        HF_HEAD: TensorNames.OUTPUT,
    }
    BLOCK_MAP: dict[str, str] = {  # HF name after HF_BLOCK -> GGUF template
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
    permute_qk = False
    rope_neox = False
    norm_shift = 0.0
    activation = "silu"
    embed_scale = False
    spm_space_prefix: bool | None = None  # tokenizer.ggml.add_space_prefix the converter writes (None: the tokenizer's)
    free_head_dim = False
    FUSED = {"attn_qkv": ("attn_q", "attn_k", "attn_v"), "ffn_gate_up": ("ffn_gate", "ffn_up")}

    def __init__(self, config: dict | None = None):
        self.config = config
        if config is None:
            return
        c = config
        self.n_layers = int(c["num_hidden_layers"])
        self.hidden = int(c["hidden_size"])
        self.n_heads = int(c["num_attention_heads"])
        self.n_kv_heads = int(c.get("num_key_value_heads") or self.n_heads)
        self.head_dim = int(c.get("head_dim") or self.hidden // self.n_heads)
        self.vocab_size = int(c["vocab_size"])
        self.tied = bool(c.get("tie_word_embeddings", False))
        self.rope = rope_parameters(c)

    @property
    def gguf_arch(self) -> str:
        return self.name

    # -- runtime ---------------------------------------------------------------
    @classmethod
    def block_tensors(cls, bid: int) -> dict[str, str]:
        """Required tensors of block `bid`: role -> GGUF tensor name."""
        return {role_of(t): t.format(bid=bid) for t in cls.BLOCK_MAP.values()}

    def runtime_hparams(self, read: Reader) -> dict:
        """Family-specific hyperparameters (HParams fields beyond the common ones) from the file."""
        return {}

    # -- metadata ------------------------------------------------------------
    def key(self, template: str) -> str:
        return template.format(arch=self.name)

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
    def hf_block(self, bid: int) -> str:
        """HF module path prefix of block `bid` ("model.layers.3.")."""
        return self.HF_BLOCK.format(bid=bid)

    def gguf_name(self, hf_name: str) -> str | None:
        """GGUF name of an HF tensor; None for tensors not written (rotary tables, tied head)."""
        if _SKIP.search(hf_name):
            return None
        if hf_name in self.GLOBAL_MAP:
            name = self.GLOBAL_MAP[hf_name]
            return None if (name == TensorNames.OUTPUT and self.tied) else name
        m = self._block_re().match(hf_name)
        if m and m.group(2) in self.BLOCK_MAP and int(m.group(1)) < self.n_layers:
            return self.BLOCK_MAP[m.group(2)].format(bid=int(m.group(1)))
        raise UnsupportedError(f"tensor {hf_name!r} has no GGUF name in edgeslim's {self.name} map; "
                               "this checkpoint has parts edgeslim does not convert")

    def _block_re(self) -> re.Pattern:
        return re.compile("^" + re.escape(self.HF_BLOCK).replace(r"\{bid\}", r"(\d+)") + "(.+)$")

    def hf_name(self, gguf_name: str) -> str:
        """Inverse of `gguf_name`."""
        for hf, gg in self.GLOBAL_MAP.items():
            if gg == gguf_name:
                return hf
        for suffix, template in self.BLOCK_MAP.items():
            m = re.fullmatch(re.escape(template).replace(r"\{bid\}", r"(\d+)"), gguf_name)
            if m:
                return self.hf_block(int(m.group(1))) + suffix
        raise KeyError(gguf_name)

    # -- arrays --------------------------------------------------------------
    def _heads_for(self, gguf_name: str) -> int | None:
        """Heads of a Q/K tensor whose rows are permuted at conversion, else None."""
        if not self.permute_qk:
            return None
        tail = gguf_name.split(".", 2)[-1] if gguf_name.startswith("blk.") else ""
        if tail == "attn_q.weight":
            return self.n_heads
        if tail == "attn_k.weight":
            return self.n_kv_heads
        return None

    def _shifted(self, gguf_name: str) -> bool:
        return bool(self.norm_shift) and gguf_name.endswith("norm.weight")

    def transform(self, gguf_name: str, w: np.ndarray) -> np.ndarray:
        """The array as llama.cpp stores it for this family (Q/K permutation, norm shift)."""
        n = self._heads_for(gguf_name)
        if n is not None:
            return permute_rows(w, n)
        return w + np.float32(self.norm_shift) if self._shifted(gguf_name) else w

    def untransform(self, gguf_name: str, w: np.ndarray) -> np.ndarray:
        """Inverse of `transform`: the HF array of a stored tensor."""
        n = self._heads_for(gguf_name)
        if n is not None:
            return unpermute_rows(w, n)
        return w - np.float32(self.norm_shift) if self._shifted(gguf_name) else w

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        """Tensors computed from the config (none here)."""
        return []

    # -- calibration (transformers modules) -------------------------------------
    def hf_embed_scale(self) -> float:
        """What the HF embedding module multiplies its rows by."""
        return float(np.float32(self.hidden) ** np.float32(0.5)) if self.embed_scale else 1.0

    def hf_rotary_kwargs(self, hf_config, bid: int) -> dict:
        """Extra arguments of `{prefix}RotaryEmbedding.forward` for block `bid`."""
        return {}


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
