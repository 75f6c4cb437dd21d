"""Open a GGUF model for inference: hyperparameters, tensor checks, weight sources.

`open_model(path)` maps the file (`edgeslim.gguf_file.GGUFFile`, validated at
open), picks the architecture family from the registry, reads the
hyperparameters, and checks that every tensor the forward pass needs is
present with the shape the hyperparameters imply. Nothing is dequantized
here; backends turn `WeightSource`s into whatever they compute with.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FormatError, UnsupportedError
from ..gguf_file import GGUFFile
from ..tables import (AFFINE_BIASES_SUFFIX, AFFINE_SCALES_SUFFIX, GGMLType, Keys, TensorNames,
                      affine_name)
from ..arch import Family, family_for_gguf


@dataclass(frozen=True)
class HParams:
    """Model hyperparameters as read from GGUF metadata."""

    arch: str
    n_vocab: int
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rms_eps: float
    n_rot: int  # rope.dimension_count: how many leading dims of a head are rotated
    rope_base: float
    rope_freq_scale: float  # 1 / linear scaling factor (1.0 = no scaling)
    context_length: int  # what the model was trained for (file metadata)
    # family-specific (edgeslim.arch `runtime_hparams`); the defaults are Llama's
    attn_scale: float = 0.0  # query scale; 0 -> 1/sqrt(head_dim)
    embd_scale: float = 1.0  # embedding rows are multiplied by this (Gemma: sqrt(n_embd))
    logit_softcap: float = 0.0  # > 0: logits = cap * tanh(logits / cap)
    n_swa: int = 0  # sliding-window size of the local layers (0: none)
    swa_layers: tuple[bool, ...] = ()  # per layer: uses the sliding window
    rope_base_swa: float = 10000.0  # RoPE base of the sliding-window layers (no frequency scaling)

    @property
    def n_group(self) -> int:
        """Query heads per KV head (GQA factor)."""
        return self.n_head // self.n_head_kv

    @property
    def scale(self) -> float:
        """The factor queries are multiplied by before q . k."""
        return self.attn_scale or 1.0 / float(np.sqrt(self.head_dim))

    def window(self, layer: int) -> int:
        """Sliding-window size of `layer` (0: it sees every earlier position)."""
        return self.n_swa if self.n_swa and self.swa_layers and self.swa_layers[layer] else 0


@dataclass(frozen=True)
class WeightSource:
    """One weight matrix as stored: type name, logical shape and raw bytes (views into the mmap).

    `qtype` is a ggml type name ("F32", "Q4_K", ...) or an affine name
    ("AFFINE4_G64"); for affine weights `data` holds the packed codes and
    `scales`/`biases` the F16 per-group tensors.
    """

    name: str
    qtype: str
    shape: tuple[int, int]  # (rows, cols) of the logical float matrix
    data: np.ndarray  # uint8 view
    scales: np.ndarray | None = None  # (rows, cols // group) float16, affine only
    biases: np.ndarray | None = None


class ModelFile:
    """A mapped GGUF model: `gguf`, `hp`, `arch`, and accessors for its tensors."""

    def __init__(self, gguf: GGUFFile, hp: HParams, arch: Family):
        self.gguf, self.hp, self.arch = gguf, hp, arch
        self.path = gguf.path

    # -- names -----------------------------------------------------------------
    @property
    def output_name(self) -> str:
        """The classifier: output.weight, or token_embd.weight when the embeddings are tied."""
        return TensorNames.OUTPUT if self.has(TensorNames.OUTPUT) else TensorNames.TOKEN_EMBD

    def block(self, bid: int) -> dict[str, str]:
        """Role -> tensor name for block `bid`."""
        return self.arch.block_tensors(bid)

    def has(self, name: str) -> bool:
        return name in self.gguf.tensors

    # -- access ------------------------------------------------------------------
    def affine_spec(self, name: str) -> tuple[int, int] | None:
        """(bits, group) when `name` is stored in the affine layout, else None."""
        spec = self.gguf.kv.get(Keys.AFFINE.format(name=name))
        if spec is None:
            return None
        bits, group = (int(v) for v in spec)
        return bits, group

    def logical_shape(self, name: str) -> tuple[int, ...]:
        """The float shape of a tensor (affine codes are unpacked: cols * 32 / bits)."""
        shape = self.gguf.tensors[name].shape
        aff = self.affine_spec(name)
        if aff:
            return shape[0], shape[1] * 32 // aff[0]
        return shape

    def weight(self, name: str) -> WeightSource:
        """A 2-D weight as stored (no dequantization)."""
        t = self.gguf.tensors[name]
        aff = self.affine_spec(name)
        if aff:
            bits, group = aff
            scales = self.gguf.array(name + AFFINE_SCALES_SUFFIX)
            biases = self.gguf.array(name + AFFINE_BIASES_SUFFIX)
            return WeightSource(name, affine_name(bits, group), self.logical_shape(name), self.gguf.data(name),
                                scales, biases)
        return WeightSource(name, t.type_name, tuple(t.shape), self.gguf.data(name))

    def release(self, src: WeightSource) -> None:
        """Drop the mapped pages of a weight's tensors from this process once a backend holds its own
        copy (the pages stay in the OS page cache; reading them again faults them back in)."""
        for name in (src.name, src.name + AFFINE_SCALES_SUFFIX, src.name + AFFINE_BIASES_SUFFIX):
            if name in self.gguf.tensors:
                self.gguf.drop_tensor(name)

    def vector(self, name: str) -> np.ndarray:
        """A 1-D float tensor (norm weight, bias, rope factors) as a float32 copy."""
        t = self.gguf.tensors[name]
        if t.ggml_type not in (GGMLType.F32, GGMLType.F16, GGMLType.BF16):
            raise FormatError(f"{self.path}: {name} is {t.type_name}; norms and biases must be F32/F16, re-convert the model")
        return np.array(self.gguf.array(name), dtype=np.float32).reshape(-1)

    def rope_freqs(self) -> np.ndarray | None:
        """Llama-3 per-pair frequency divisors (n_rot/2,), or None."""
        return self.vector(TensorNames.ROPE_FREQS) if self.has(TensorNames.ROPE_FREQS) else None


# ---------------------------------------------------------------------------
def open_model(path) -> ModelFile:
    """Map `path`, read hyperparameters and check every needed tensor. Raises EdgeslimError subclasses."""
    gguf = GGUFFile(path)
    if not gguf.arch:
        raise FormatError(f"{gguf.path}: no {Keys.ARCH} in the metadata; this is not a model file (vocab-only?)")
    arch = family_for_gguf(gguf.arch, gguf.path)
    if TensorNames.TOKEN_EMBD not in gguf.tensors:
        _missing(gguf, TensorNames.TOKEN_EMBD)
    hp = read_hparams(gguf, arch)
    model = ModelFile(gguf, hp, arch)
    check_tensors(model)
    return model


def _key(gguf: GGUFFile, key: str, default=None, kind=int):
    value = gguf.get(key, default)
    full = key.format(arch=gguf.arch)
    if value is None:
        raise FormatError(f"{gguf.path}: metadata key {full} is missing; re-convert the model")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise FormatError(f"{gguf.path}: metadata key {full} = {value!r} is not a {kind.__name__}") from None


def read_hparams(gguf: GGUFFile, arch: Family | None = None) -> HParams:
    """Hyperparameters from the `{arch}.*` keys (defaults as llama.cpp's where it has one);
    the family adds its own (attention scale, sliding window, ...)."""
    n_embd = _key(gguf, Keys.EMBED)
    n_head = _key(gguf, Keys.HEADS)
    n_head_kv = _key(gguf, Keys.HEADS_KV, n_head)
    if n_head <= 0 or n_head_kv <= 0 or n_head % n_head_kv:
        raise FormatError(f"{gguf.path}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
    head_dim = _key(gguf, Keys.KEY_LENGTH, n_embd // n_head)
    if _key(gguf, Keys.VALUE_LENGTH, head_dim) != head_dim:
        raise UnsupportedError(f"{gguf.path}: key and value head sizes differ; edgeslim needs them equal")
    n_rot = _key(gguf, Keys.ROPE_DIM, head_dim)
    if n_rot % 2 or not 0 < n_rot <= head_dim:
        raise FormatError(f"{gguf.path}: rope.dimension_count {n_rot} must be even and at most the head size {head_dim}")
    extra = arch.runtime_hparams(lambda key, default=None, kind=int: _key(gguf, key, default, kind)) if arch else {}
    return HParams(
        **extra,
        arch=gguf.arch,
        n_vocab=int(gguf.tensors[TensorNames.TOKEN_EMBD].shape[0]),
        n_embd=n_embd,
        n_ff=_key(gguf, Keys.FFN),
        n_layer=_key(gguf, Keys.BLOCKS),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        rms_eps=_key(gguf, Keys.RMS_EPS, kind=float),
        n_rot=n_rot,
        rope_base=_key(gguf, Keys.ROPE_BASE, 10000.0, kind=float),
        rope_freq_scale=_rope_freq_scale(gguf),
        context_length=_key(gguf, Keys.CONTEXT),
    )


def _rope_freq_scale(gguf: GGUFFile) -> float:
    kind = str(gguf.get(Keys.ROPE_SCALING_TYPE, "none") or "none").lower()
    factor = float(gguf.get(Keys.ROPE_SCALING_FACTOR, 0.0) or 0.0)
    if kind not in ("none", "linear"):
        raise UnsupportedError(f"{gguf.path}: RoPE scaling {kind!r} is not supported (only linear); "
                               "use a model without it")
    if kind == "none" and gguf.get(Keys.ROPE_SCALING_TYPE) is not None:
        return 1.0
    return 1.0 / factor if factor > 0 else 1.0


def _missing(gguf: GGUFFile, name: str):
    raise FormatError(f"{gguf.path}: tensor {name} is missing; the file is incomplete or not a "
                      f"{gguf.arch} model, re-convert it")


def check_tensors(model: ModelFile) -> None:
    """Every tensor the forward needs exists with the shape the hyperparameters imply."""
    hp = model.hp
    q_out, kv_out = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    expect = {
        TensorNames.TOKEN_EMBD: (hp.n_vocab, hp.n_embd),
        TensorNames.OUTPUT_NORM: (hp.n_embd,),
        model.output_name: (hp.n_vocab, hp.n_embd),
    }
    per_role = {
        "attn_norm": (hp.n_embd,), "ffn_norm": (hp.n_embd,),
        "attn_q": (q_out, hp.n_embd), "attn_k": (kv_out, hp.n_embd), "attn_v": (kv_out, hp.n_embd),
        "attn_output": (hp.n_embd, q_out),
        "ffn_gate": (hp.n_ff, hp.n_embd), "ffn_up": (hp.n_ff, hp.n_embd), "ffn_down": (hp.n_embd, hp.n_ff),
        "attn_qkv": (q_out + 2 * kv_out, hp.n_embd),
        "attn_q_bias": (q_out,), "attn_k_bias": (kv_out,), "attn_v_bias": (kv_out,),
        "attn_q_norm": (hp.head_dim,), "attn_k_norm": (hp.head_dim,),
        "post_attention_norm": (hp.n_embd,), "post_ffw_norm": (hp.n_embd,),
    }
    for bid in range(hp.n_layer):
        roles = model.block(bid)
        for role, name in roles.items():
            expect[name] = per_role[role]
        if "ffn_gate" not in roles:  # ffn_up holds gate | up (Phi-3)
            expect[roles["ffn_up"]] = (2 * hp.n_ff, hp.n_embd)
    if model.has(TensorNames.ROPE_FREQS):
        expect[TensorNames.ROPE_FREQS] = (hp.n_rot // 2,)
    for name, shape in expect.items():
        if not model.has(name):
            _missing(model.gguf, name)
        got = model.logical_shape(name)
        if tuple(got) != shape:
            raise FormatError(f"{model.path}: tensor {name} has shape {tuple(got)}, the hyperparameters need {shape}; "
                              "the file is inconsistent, re-convert it")
        aff = model.affine_spec(name)
        if aff:
            for suffix in (AFFINE_SCALES_SUFFIX, AFFINE_BIASES_SUFFIX):
                if not model.has(name + suffix):
                    _missing(model.gguf, name + suffix)
