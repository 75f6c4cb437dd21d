"""Every format fact in one place: GGUF keys, tensor names, quant type geometry.

Nothing else in the project spells a GGUF key, a ggml type id or a block size.
Quant types use ggml's names where they are ggml's (Q4_K, Q8_0); the affine
family (MLX's layout) is ours and is named AFFINE{bits}_G{group}.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

GGUF_MAGIC = 0x46554747  # b"GGUF" little-endian
GGUF_VERSION = 3
GGUF_DEFAULT_ALIGNMENT = 32
QK_K = 256  # super-block size of the k-quants


class GGMLType(IntEnum):
    """ggml tensor type ids as they appear in a GGUF tensor-info record."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35


@dataclass(frozen=True)
class QuantInfo:
    """Geometry of one storage type: `block` weights take `block_bytes` bytes."""

    name: str
    block: int
    block_bytes: int
    family: str  # "float" | "ggml" | "affine" | "int"
    bits: int  # nominal code bits (16 for F16, 32 for F32)

    @property
    def bpw(self) -> float:
        """Bits per weight including scales."""
        return 8.0 * self.block_bytes / self.block

    def nbytes(self, n_elements: int) -> int:
        if n_elements % self.block:
            raise ValueError(f"{n_elements} elements is not a multiple of {self.name}'s block of {self.block}")
        return n_elements // self.block * self.block_bytes


# ggml storage types: (block size, bytes per block), as in ggml's type traits.
GGML_INFO: dict[GGMLType, QuantInfo] = {
    GGMLType.F32: QuantInfo("F32", 1, 4, "float", 32),
    GGMLType.F16: QuantInfo("F16", 1, 2, "float", 16),
    GGMLType.BF16: QuantInfo("BF16", 1, 2, "float", 16),
    GGMLType.Q4_0: QuantInfo("Q4_0", 32, 18, "ggml", 4),
    GGMLType.Q4_1: QuantInfo("Q4_1", 32, 20, "ggml", 4),
    GGMLType.Q5_0: QuantInfo("Q5_0", 32, 22, "ggml", 5),
    GGMLType.Q5_1: QuantInfo("Q5_1", 32, 24, "ggml", 5),
    GGMLType.Q8_0: QuantInfo("Q8_0", 32, 34, "ggml", 8),
    GGMLType.Q2_K: QuantInfo("Q2_K", QK_K, 84, "ggml", 2),
    GGMLType.Q3_K: QuantInfo("Q3_K", QK_K, 110, "ggml", 3),
    GGMLType.Q4_K: QuantInfo("Q4_K", QK_K, 144, "ggml", 4),
    GGMLType.Q5_K: QuantInfo("Q5_K", QK_K, 176, "ggml", 5),
    GGMLType.Q6_K: QuantInfo("Q6_K", QK_K, 210, "ggml", 6),
    GGMLType.Q8_K: QuantInfo("Q8_K", QK_K, 292, "ggml", 8),
    # llama.cpp's lattice / non-linear ("IQ") types and the ternary types
    GGMLType.IQ4_NL: QuantInfo("IQ4_NL", 32, 18, "ggml", 4),
    GGMLType.IQ4_XS: QuantInfo("IQ4_XS", QK_K, 136, "ggml", 4),
    GGMLType.IQ3_S: QuantInfo("IQ3_S", QK_K, 110, "ggml", 3),
    GGMLType.IQ3_XXS: QuantInfo("IQ3_XXS", QK_K, 98, "ggml", 3),
    GGMLType.IQ2_S: QuantInfo("IQ2_S", QK_K, 82, "ggml", 2),
    GGMLType.IQ2_XS: QuantInfo("IQ2_XS", QK_K, 74, "ggml", 2),
    GGMLType.IQ2_XXS: QuantInfo("IQ2_XXS", QK_K, 66, "ggml", 2),
    GGMLType.IQ1_M: QuantInfo("IQ1_M", QK_K, 56, "ggml", 1),
    GGMLType.IQ1_S: QuantInfo("IQ1_S", QK_K, 50, "ggml", 1),
    GGMLType.TQ2_0: QuantInfo("TQ2_0", QK_K, 66, "ggml", 2),
    GGMLType.TQ1_0: QuantInfo("TQ1_0", QK_K, 54, "ggml", 2),
    GGMLType.I8: QuantInfo("I8", 1, 1, "int", 8),
    GGMLType.I16: QuantInfo("I16", 1, 2, "int", 16),
    GGMLType.I32: QuantInfo("I32", 1, 4, "int", 32),
    GGMLType.I64: QuantInfo("I64", 1, 8, "int", 64),
    GGMLType.F64: QuantInfo("F64", 1, 8, "float", 64),
}

# Byte fields of one ggml block, in storage order (ggml's block_* structs in ggml-common.h; bit
# drawings in each type's edgeslim/quants module).  f16 scalars: d, dmin, m.  Read with block_fields().
GGML_FIELDS: dict[str, tuple[tuple[str, int], ...]] = {
    "Q4_0": (("d", 2), ("qs", 16)),
    "Q4_1": (("d", 2), ("m", 2), ("qs", 16)),
    "Q5_0": (("d", 2), ("qh", 4), ("qs", 16)),
    "Q5_1": (("d", 2), ("m", 2), ("qh", 4), ("qs", 16)),
    "Q8_0": (("d", 2), ("qs", 32)),
    "Q2_K": (("scales", 16), ("qs", 64), ("d", 2), ("dmin", 2)),
    "Q3_K": (("hmask", 32), ("qs", 64), ("scales", 12), ("d", 2)),
    "Q4_K": (("d", 2), ("dmin", 2), ("scales", 12), ("qs", 128)),
    "Q5_K": (("d", 2), ("dmin", 2), ("scales", 12), ("qh", 32), ("qs", 128)),
    "Q6_K": (("ql", 128), ("qh", 64), ("scales", 16), ("d", 2)),
    "IQ4_NL": (("d", 2), ("qs", 16)),
    "IQ4_XS": (("d", 2), ("scales_h", 2), ("scales_l", 4), ("qs", 128)),
    "IQ3_XXS": (("d", 2), ("qs", 64), ("sas", 32)),  # sas: per 32 weights, 4 x 7-bit sign index | 4-bit scale
    "IQ3_S": (("d", 2), ("qs", 64), ("qh", 8), ("signs", 32), ("scales", 4)),
    "IQ2_XXS": (("d", 2), ("qs", 64)),
    "IQ2_XS": (("d", 2), ("qs", 64), ("scales", 8)),
    "IQ2_S": (("d", 2), ("qs", 32), ("signs", 32), ("qh", 8), ("scales", 8)),
    "IQ1_S": (("d", 2), ("qs", 32), ("qh", 16)),
    "IQ1_M": (("qs", 32), ("qh", 16), ("scales", 8)),  # the f16 d is spread over the scales' top nibbles
    "TQ1_0": (("qs", 48), ("qh", 4), ("d", 2)),
    "TQ2_0": (("qs", 64), ("d", 2)),
}


def block_fields(name: str) -> dict[str, slice]:
    """Byte slices of one block's fields: block_fields("Q4_0") -> {"d": slice(0, 2), "qs": slice(2, 18)}."""
    out, pos = {}, 0
    for field, n in GGML_FIELDS[name.upper()]:
        out[field] = slice(pos, pos + n)
        pos += n
    return out


# Types our converter writes in the ggml family (all have numpy references).
GGML_WRITABLE = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K",
                 "Q5_1", "Q5_0", "Q4_1", "Q4_0", "IQ4_XS", "IQ4_NL", "IQ3_S", "IQ3_XXS",
                 "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S", "TQ2_0", "TQ1_0")
# Types the numpy references read (edgeslim.quants.dequantize_raw), bit-exact with gguf-py.
GGML_READABLE = GGML_WRITABLE

# ---------------------------------------------------------------------------
# Affine family: MLX's `mx.quantize` layout, stored in GGUF as three legal
# tensors per weight (see edgeslim/quants/affine.py for the bit drawing):
#   NAME            I32  (rows, cols * bits / 32)  packed codes (uint32 bit pattern)
#   NAME.scales     F16  (rows, cols / group)
#   NAME.biases     F16  (rows, cols / group)
# plus the metadata key AFFINE_KEY.format(name=NAME) = [bits, group].
# ---------------------------------------------------------------------------
AFFINE_BITS = (2, 3, 4, 5, 6, 8)
AFFINE_GROUPS = (32, 64)
AFFINE_SCALES_SUFFIX = ".scales"
AFFINE_BIASES_SUFFIX = ".biases"


def affine_info(bits: int, group: int) -> QuantInfo:
    """Storage of the affine type: codes + one f16 scale and one f16 bias per group."""
    if bits not in AFFINE_BITS or group not in AFFINE_GROUPS:
        raise ValueError(f"affine type needs bits in {AFFINE_BITS} and group in {AFFINE_GROUPS}, got {bits}/{group}")
    return QuantInfo(f"AFFINE{bits}_G{group}", group, group * bits // 8 + 4, "affine", bits)


def affine_name(bits: int, group: int) -> str:
    return f"AFFINE{bits}_G{group}"


_AFFINE_RE = re.compile(r"^AFFINE(\d)_G(\d+)$")


def parse_affine(name: str) -> tuple[int, int] | None:
    """'AFFINE4_G64' -> (4, 64); anything else -> None."""
    m = _AFFINE_RE.match(name.upper())
    return (int(m.group(1)), int(m.group(2))) if m else None


def quant_info(name: str) -> QuantInfo:
    """Look a storage type up by its name (ggml or affine); a clear error otherwise."""
    key = name.upper()
    if key in GGMLType.__members__:
        return GGML_INFO[GGMLType[key]]
    aff = parse_affine(key)
    if aff:
        return affine_info(*aff)
    raise ValueError(f"unknown quant type {name!r}: use one of {writable_types_text()}")


def writable_types_text() -> str:
    """The type names the converter writes, for help texts and errors (from GGML_WRITABLE and the affine
    bits and groups, so that help and accepted values cannot disagree)."""
    bits, groups = ",".join(map(str, AFFINE_BITS)), ",".join(map(str, AFFINE_GROUPS))
    return ", ".join(GGML_WRITABLE) + f", AFFINE{{{bits}}}_G{{{groups}}}"


# ---------------------------------------------------------------------------
# GGUF metadata keys (llama.cpp's standard ones, then ours under edgeslim.*).
# ---------------------------------------------------------------------------
class Keys:
    ARCH = "general.architecture"
    NAME = "general.name"
    ALIGNMENT = "general.alignment"
    FILE_TYPE = "general.file_type"
    QUANT_VERSION = "general.quantization_version"

    # per-architecture keys: format with arch=..., e.g. Keys.CONTEXT.format(arch="llama")
    CONTEXT = "{arch}.context_length"
    EMBED = "{arch}.embedding_length"
    FFN = "{arch}.feed_forward_length"
    BLOCKS = "{arch}.block_count"
    HEADS = "{arch}.attention.head_count"
    HEADS_KV = "{arch}.attention.head_count_kv"
    RMS_EPS = "{arch}.attention.layer_norm_rms_epsilon"
    KEY_LENGTH = "{arch}.attention.key_length"
    VALUE_LENGTH = "{arch}.attention.value_length"
    ROPE_DIM = "{arch}.rope.dimension_count"
    ROPE_BASE = "{arch}.rope.freq_base"
    ROPE_SCALING_TYPE = "{arch}.rope.scaling.type"
    ROPE_SCALING_FACTOR = "{arch}.rope.scaling.factor"
    ROPE_SCALING_ORIG_CTX = "{arch}.rope.scaling.original_context_length"
    VOCAB_SIZE = "{arch}.vocab_size"
    SLIDING_WINDOW = "{arch}.attention.sliding_window"
    SLIDING_WINDOW_PATTERN = "{arch}.attention.sliding_window_pattern"  # uint32 period, or bool per layer
    ROPE_BASE_SWA = "{arch}.rope.freq_base_swa"  # RoPE base of the sliding-window layers
    ATTN_SCALE = "{arch}.attention.scale"  # query scale (llama.cpp's default: 1/sqrt(head size))
    FINAL_SOFTCAP = "{arch}.final_logit_softcapping"  # logits = cap * tanh(logits / cap)

    TOK_MODEL = "tokenizer.ggml.model"
    TOK_PRE = "tokenizer.ggml.pre"
    TOK_TOKENS = "tokenizer.ggml.tokens"
    TOK_SCORES = "tokenizer.ggml.scores"
    TOK_TYPES = "tokenizer.ggml.token_type"
    TOK_MERGES = "tokenizer.ggml.merges"
    TOK_BOS = "tokenizer.ggml.bos_token_id"
    TOK_EOS = "tokenizer.ggml.eos_token_id"
    TOK_UNK = "tokenizer.ggml.unknown_token_id"
    TOK_PAD = "tokenizer.ggml.padding_token_id"
    TOK_EOT = "tokenizer.ggml.eot_token_id"
    TOK_EOM = "tokenizer.ggml.eom_token_id"
    TOK_ADD_BOS = "tokenizer.ggml.add_bos_token"
    TOK_ADD_EOS = "tokenizer.ggml.add_eos_token"
    TOK_ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"
    CHAT_TEMPLATE = "tokenizer.chat_template"

    ES_VERSION = "edgeslim.version"
    ES_SOURCE = "edgeslim.source"
    ES_TARGET = "edgeslim.target"
    ES_FAMILY = "edgeslim.family"
    ES_CHOICES = "edgeslim.tensor_types"  # JSON: {tensor name: type name}
    ES_REPORT = "edgeslim.report"  # JSON: fit / quality report
    ES_CHECKSUM = "edgeslim.checksum"  # sha256 over tensor data, hex
    AFFINE = "edgeslim.affine.{name}"  # [bits, group] for an affine tensor


# llama.cpp token types (tokenizer.ggml.token_type)
class TokenType(IntEnum):
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# ---------------------------------------------------------------------------
# GGUF tensor names (the runtime uses these end to end; HF names live in convert/).
# ---------------------------------------------------------------------------
class TensorNames:
    TOKEN_EMBD = "token_embd.weight"
    OUTPUT_NORM = "output_norm.weight"
    OUTPUT = "output.weight"
    ATTN_NORM = "blk.{bid}.attn_norm.weight"
    ATTN_Q = "blk.{bid}.attn_q.weight"
    ATTN_K = "blk.{bid}.attn_k.weight"
    ATTN_V = "blk.{bid}.attn_v.weight"
    ATTN_Q_BIAS = "blk.{bid}.attn_q.bias"
    ATTN_K_BIAS = "blk.{bid}.attn_k.bias"
    ATTN_V_BIAS = "blk.{bid}.attn_v.bias"
    ATTN_OUT = "blk.{bid}.attn_output.weight"
    ATTN_QKV = "blk.{bid}.attn_qkv.weight"  # q | k | v rows in one tensor (Phi-3)
    FFN_NORM = "blk.{bid}.ffn_norm.weight"
    FFN_GATE = "blk.{bid}.ffn_gate.weight"
    FFN_UP = "blk.{bid}.ffn_up.weight"  # (Phi-3: gate | up rows, 2 * n_ff, and no ffn_gate)
    FFN_DOWN = "blk.{bid}.ffn_down.weight"
    ATTN_Q_NORM = "blk.{bid}.attn_q_norm.weight"  # per-head RMSNorm of q (Gemma 3), (head_dim,)
    ATTN_K_NORM = "blk.{bid}.attn_k_norm.weight"
    ATTN_POST_NORM = "blk.{bid}.post_attention_norm.weight"  # RMSNorm of the attention output (Gemma 3)
    FFN_POST_NORM = "blk.{bid}.post_ffw_norm.weight"  # RMSNorm of the FFN output (Gemma 3)
    ROPE_FREQS = "rope_freqs.weight"


# Tensors that are always kept in float (norms, biases, rope tables): 1-D tensors.
def is_quantizable(name: str, n_dims: int) -> bool:
    """Only 2-D weight matrices are quantized; norms, biases and tables stay float."""
    return n_dims == 2 and name.endswith(".weight") and not name.startswith("rope_freqs")


# llama.cpp's general.file_type values (LLAMA_FTYPE_*) for the uniform choices.
FILE_TYPE = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K": 12,
    "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "IQ2_XXS": 19, "IQ2_XS": 20, "IQ3_XXS": 23, "IQ1_S": 24,
    "IQ4_NL": 25, "IQ3_S": 26, "IQ2_S": 28, "IQ4_XS": 30, "IQ1_M": 31, "BF16": 32, "TQ1_0": 36, "TQ2_0": 37,
}

assert all(sum(n for _, n in f) == quant_info(t).block_bytes for t, f in GGML_FIELDS.items()), "GGML_FIELDS sizes"
