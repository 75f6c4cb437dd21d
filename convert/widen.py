"""Widening: zero-pad a model's residual (and FFN) width to a multiple of 256, exactly.

K and IQ types need rows of 256k weights. A model 576 wide (SmolLM2-135M) or 896 wide
(Qwen2.5-0.5B) can give most of its matrices only the 32-wide legacy types (4.5 bpw and
up), so a budget such as `--bpw 3` has no llama.cpp-loadable answer. Widening changes the
shape instead of the types: the hidden size H becomes H' (the next multiple of 256) and,
where needed, the FFN size F becomes F', with the function unchanged:

    embedding, head, q/k/v, gate/up   (out, H)  -> (out, H')    zero columns
    attention output, down            (H, in)   -> (H', in)     zero rows (the residual's
                                                                 extra dims stay exactly 0)
    gate/up rows, down columns        F         -> F'           zero (silu(0) * 0 = 0)
    RMSNorm weights                   (H,)      -> (H',)        w * sqrt(H/H'), then zeros
    rms_norm_eps                      eps       -> eps * H/H'

The mean square over H' is H/H' times the one over H, so with eps scaled the same way
every norm's denominator is sqrt(H/H') times the original, which the weights undo. The
attention's head count and head_dim are kept (head_dim is written explicitly: H' is no
longer n_head * head_dim, which llama.cpp's graph and the runtime take), so the attention
output's rows stay n_head * head_dim wide (576: 32-wide types) while every other matrix is
256-wide. The residual's extra dims are zero in the unquantized model; after quantization
the only thing that can put a value there is the embedding's padded columns (the norms'
zero weights clear them before any matrix reads them), a second-order effect on the RMS.

Cost: the matrices hold H'/H more weights (1.33x for 576), so the file is larger at a given
type; it pays only below the 32-wide types' floor, which is when the converter widens
(pipeline.convert, `widen`). Families whose norms store (1 + w) or that scale the embedding
by sqrt(H) (Gemma 3) are not widened.

    w = widening_for(config, arch)             # Widening, or None with the reason in widen_refusal
    write_widened(folder, dest, w)             # a Hugging Face folder holding the widened model
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeslim.tables import TensorNames

from .arch import Arch
from .hf import read_config, safetensors_files

ALIGN = 256
SHARD_BYTES = 1 << 30  # float32 bytes per written safetensors shard

# What each axis of an HF array (out, in) becomes, by GGUF role: "h" the hidden size,
# "f" the FFN size, None unchanged; "norm" a residual RMSNorm weight.
_AXES: dict[str, tuple | str] = {
    "token_embd": (None, "h"), "output": (None, "h"),
    "attn_q": (None, "h"), "attn_k": (None, "h"), "attn_v": (None, "h"), "attn_qkv": (None, "h"),
    "attn_q_bias": (None,), "attn_k_bias": (None,), "attn_v_bias": (None,),
    "attn_output": ("h", None),
    "ffn_gate": ("f", "h"), "ffn_up": ("f", "h"), "ffn_down": ("h", "f"),
    "attn_norm": "norm", "ffn_norm": "norm", "output_norm": "norm",
}


@dataclass(frozen=True)
class Widening:
    """Old and new hidden and FFN sizes."""

    hidden: int
    new_hidden: int
    ffn: int
    new_ffn: int

    @property
    def norm_scale(self) -> float:
        """What the RMSNorm weights are multiplied by (and eps, squared)."""
        return math.sqrt(self.hidden / self.new_hidden)

    def describe(self) -> str:
        parts = [f"hidden {self.hidden} -> {self.new_hidden}"]
        if self.new_ffn != self.ffn:
            parts.append(f"ffn {self.ffn} -> {self.new_ffn}")
        return ", ".join(parts)

    def record(self) -> dict:
        return {"hidden": [self.hidden, self.new_hidden], "ffn": [self.ffn, self.new_ffn]}


def _up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def role(gguf_name: str) -> str:
    """'blk.3.attn_q.bias' -> 'attn_q_bias'; 'token_embd.weight' -> 'token_embd'."""
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        parts = parts[2:]
    return parts[0] + ("_bias" if parts[-1] == "bias" else "")


def widen_refusal(config: dict, arch: Arch) -> str | None:
    """Why this model cannot be widened (None: it can, or needs no widening)."""
    if arch.norm_shift or arch.embed_scale:
        return f"the {arch.name} family's norms or embedding depend on the width"
    roles = {role(t) for t in arch.BLOCK_MAP.values()} | {"token_embd", "output", "output_norm"}
    unknown = sorted(roles - set(_AXES))
    if unknown:
        return f"the {arch.name} family has tensors widening does not cover ({', '.join(unknown)})"
    if int(config["hidden_size"]) % ALIGN == 0:
        return f"its hidden size {config['hidden_size']} is already a multiple of {ALIGN}"
    return None


def widening_for(config: dict, arch: Arch) -> Widening | None:
    """The widening of this model, or None (widen_refusal says why)."""
    if widen_refusal(config, arch) is not None:
        return None
    hidden, ffn = int(config["hidden_size"]), int(config["intermediate_size"])
    fused_ffn = "ffn_gate" not in {role(t) for t in arch.BLOCK_MAP.values()}  # gate | up rows in one tensor
    return Widening(hidden, _up(hidden), ffn, ffn if fused_ffn else _up(ffn))


def widen_config(config: dict, arch: Arch, w: Widening, name: str) -> dict:
    """The widened model's config.json: sizes, explicit head_dim, eps scaled, the original name."""
    out = dict(config)
    out.update(hidden_size=w.new_hidden, intermediate_size=w.new_ffn, head_dim=arch.head_dim,
               rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)) * w.hidden / w.new_hidden,
               _name_or_path=name)
    return out


def widen_tensor(gguf_name: str, a: np.ndarray, w: Widening) -> np.ndarray:
    """One HF array (float32, numpy order) widened for its role."""
    axes = _AXES[role(gguf_name)]
    if axes == "norm":  # (H,)
        return np.pad(a * np.float32(w.norm_scale), (0, w.new_hidden - w.hidden))
    size = {"h": (w.hidden, w.new_hidden), "f": (w.ffn, w.new_ffn), None: None}
    pads = []
    for dim, ax in zip(a.shape, axes):
        if size[ax] is not None and dim != size[ax][0]:
            raise ValueError(f"{gguf_name}: axis of {dim}, expected {size[ax][0]}")
        pads.append((0, size[ax][1] - size[ax][0]) if size[ax] else (0, 0))
    return np.pad(a, pads)


def write_widened(folder: Path, dest: Path, arch: Arch, w: Widening, name: str) -> None:
    """A Hugging Face folder at `dest` (existing, empty) holding the widened model: config,
    tokenizer and generation files copied, float32 safetensors shards with an index."""
    from safetensors.numpy import save_file

    from .hf import Shards

    config = read_config(folder)
    (dest / "config.json").write_text(json.dumps(widen_config(config, arch, w, name), indent=2), encoding="utf-8")
    for p in folder.iterdir():
        if p.is_file() and p.suffix != ".safetensors" and p.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy2(p, dest / p.name)
    shards = Shards(safetensors_files(folder))
    groups, size = [[]], 0
    for hf_name in shards.entries:
        n = int(np.prod(shards.shape(hf_name), dtype=np.int64)) * 4
        if groups[-1] and size + n > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(hf_name)
        size += n
    weight_map = {}
    for i, names in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for hf_name in names:
            gguf_name = arch.gguf_name(hf_name) or (TensorNames.OUTPUT if hf_name == arch.HF_HEAD else None)
            a = shards.load(hf_name).astype(np.float32)
            tensors[hf_name] = np.ascontiguousarray(a if gguf_name is None else widen_tensor(gguf_name, a, w))
            weight_map[hf_name] = fname
        save_file(tensors, str(dest / fname), metadata={"format": "pt"})
    (dest / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}),
                                                       encoding="utf-8")
