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
every norm's denominator is sqrt(H/H') times the original, which the weights undo.

Heads: where H' / head_dim is a whole number of heads that the kv heads divide, each kv
group gets dummy query heads (576 = 9 x 64 with 3 kv heads -> 768 = 12 x 64: group g's heads
move to 4g .. 4g+2, head 4g+3 is a dummy). A dummy head's q rows are zero, so it attends
uniformly and returns the mean of its group's values, and its attention-output columns are
zero, so that never reaches the residual; the attention output becomes H' wide too. Else,
for a family whose llama.cpp graph takes n_embd != n_head * head_dim (`free_head_dim`:
Llama), heads stay as they are and only the attention output keeps rows of n_head * head_dim
(32-wide types); other families are not widened (llama.cpp's Qwen2 and Phi-3 graphs need
n_embd = n_head * head_dim).

The residual's extra dims are zero in the unquantized model; after quantization the only
thing that can put a value there is the embedding's padded columns (the norms' zero weights
clear them before any matrix reads them), a second-order effect on the RMS; a dummy head's
output columns, once quantized, may pass a little of its mean value on, like any other
rounding error (GPTQ sees it in the calibration activations).

Cost: the matrices hold H'/H more weights (1.33x for 576), so the file is larger at a given
type; it pays only below the 32-wide types' floor, which is when the converter widens
(pipeline.convert, `widen`): on the 576-wide reference model `--widen --bpw 4.5` measured KL
0.00466 against 0.00189 unwidened, while below 4.04 bpw only widening makes a file at all
(docs/quality-ref.md). Families whose norms store (1 + w) or that scale the embedding by
sqrt(H) (Gemma 3) are not widened.

    w = widening_for(config, arch)                # Widening, or None (widen_refusal says why)
    write_widened(folder, dest, arch, w, name)    # a Hugging Face folder holding the widened model
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
    "attn_k": (None, "h"), "attn_v": (None, "h"),
    "attn_q": ("q", "h"), "attn_q_bias": ("q",), "attn_k_bias": (None,), "attn_v_bias": (None,),
    "attn_output": ("h", "q"), "attn_qkv": ("qkv", "h"),
    "ffn_gate": ("f", "h"), "ffn_up": ("f", "h"), "ffn_down": ("h", "f"),
    "attn_norm": "norm", "ffn_norm": "norm", "output_norm": "norm",
}


@dataclass(frozen=True)
class Widening:
    """Old and new hidden and FFN sizes; query heads per kv group before and after (dummy heads)."""

    hidden: int
    new_hidden: int
    ffn: int
    new_ffn: int
    n_kv: int = 1
    group: int = 1
    new_group: int = 1
    head_dim: int = 1

    @property
    def norm_scale(self) -> float:
        """What the RMSNorm weights are multiplied by (and eps, squared)."""
        return math.sqrt(self.hidden / self.new_hidden)

    def describe(self) -> str:
        parts = [f"hidden {self.hidden} -> {self.new_hidden}"]
        if self.new_ffn != self.ffn:
            parts.append(f"ffn {self.ffn} -> {self.new_ffn}")
        if self.new_group != self.group:
            parts.append(f"heads {self.n_kv * self.group} -> {self.n_kv * self.new_group}")
        return ", ".join(parts)

    def record(self) -> dict:
        return {"hidden": [self.hidden, self.new_hidden], "ffn": [self.ffn, self.new_ffn],
                "heads": [self.n_kv * self.group, self.n_kv * self.new_group]}

    def widen_heads(self, a: np.ndarray, axis: int) -> np.ndarray:
        """Query-head rows (axis 0) or columns (axis 1): each kv group's heads, then zero dummies.

            (n_kv * group * head_dim, ...) -> (n_kv * new_group * head_dim, ...)
        """
        a = np.moveaxis(a, axis, 0)
        rest = a.shape[1:]
        g = a.reshape(self.n_kv, self.group, self.head_dim, *rest)  # (Hkv, G, Hd, ...)
        g = np.pad(g, [(0, 0), (0, self.new_group - self.group)] + [(0, 0)] * (1 + len(rest)))
        return np.moveaxis(g.reshape(-1, *rest), 0, axis)


def _up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def role(gguf_name: str) -> str:
    """'blk.3.attn_q.bias' -> 'attn_q_bias'; 'token_embd.weight' -> 'token_embd'."""
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        parts = parts[2:]
    return parts[0] + ("_bias" if parts[-1] == "bias" else "")


def _new_group(hidden: int, arch: Arch) -> int | None:
    """Query heads per kv group after widening: H' / head_dim heads when that is a whole number the
    kv heads divide (dummy heads), else the old count where llama.cpp takes n_embd != n_head *
    head_dim, else None."""
    heads, rem = divmod(_up(hidden), arch.head_dim)
    if rem == 0 and heads % arch.n_kv_heads == 0 and heads >= arch.n_heads:
        return heads // arch.n_kv_heads
    return arch.n_heads // arch.n_kv_heads if arch.free_head_dim else None


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
    if _new_group(int(config["hidden_size"]), arch) is None:
        return (f"llama.cpp's {arch.name} graph needs n_embd = n_head * head_dim and {_up(arch.hidden)} is not a "
                f"whole number of {arch.head_dim}-wide heads that {arch.n_kv_heads} kv heads divide")
    return None


def widening_for(config: dict, arch: Arch) -> Widening | None:
    """The widening of this model, or None (widen_refusal says why)."""
    if widen_refusal(config, arch) is not None:
        return None
    hidden, ffn = int(config["hidden_size"]), int(config["intermediate_size"])
    fused_ffn = "ffn_gate" not in {role(t) for t in arch.BLOCK_MAP.values()}  # gate | up rows in one tensor
    return Widening(hidden, _up(hidden), ffn, ffn if fused_ffn else _up(ffn), arch.n_kv_heads,
                    arch.n_heads // arch.n_kv_heads, _new_group(hidden, arch), arch.head_dim)


def widen_config(config: dict, arch: Arch, w: Widening, name: str) -> dict:
    """The widened model's config.json: sizes, explicit head_dim, eps scaled, the original name."""
    out = dict(config)
    out.update(hidden_size=w.new_hidden, intermediate_size=w.new_ffn, head_dim=arch.head_dim,
               num_attention_heads=w.n_kv * w.new_group, num_key_value_heads=w.n_kv,
               rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)) * w.hidden / w.new_hidden,
               _name_or_path=name)
    return out


def widen_tensor(gguf_name: str, a: np.ndarray, w: Widening) -> np.ndarray:
    """One HF array (float32, numpy order) widened for its role."""
    axes = _AXES[role(gguf_name)]
    if axes == "norm":  # (H,)
        return np.pad(a * np.float32(w.norm_scale), (0, w.new_hidden - w.hidden))
    size = {"h": (w.hidden, w.new_hidden), "f": (w.ffn, w.new_ffn)}
    q = w.n_kv * w.group * w.head_dim
    for axis, ax in enumerate(axes):
        if ax == "q":
            a = w.widen_heads(a, axis)
        elif ax == "qkv":  # q | k | v rows (Phi-3)
            a = np.concatenate([w.widen_heads(a[:q], 0), a[q:]])
        elif ax in size and size[ax][0] != size[ax][1]:
            if a.shape[axis] != size[ax][0]:
                raise ValueError(f"{gguf_name}: axis of {a.shape[axis]}, expected {size[ax][0]}")
            a = np.pad(a, [(0, size[ax][1] - size[ax][0]) if i == axis else (0, 0) for i in range(a.ndim)])
    return a


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
