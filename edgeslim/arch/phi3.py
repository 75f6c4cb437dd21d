"""Phi-3 (`Phi3ForCausalLM`) <-> GGUF arch "phi3", as llama.cpp converts and runs it.

The Llama block with two tensors stored fused, as HF holds them:

    blk.N.attn_qkv.weight   (q_out + 2 * kv_out, n_embd): q | k | v rows
    blk.N.ffn_up.weight     (2 * n_ff, n_embd): gate | up rows (there is no ffn_gate)

NEOX RoPE (no Q/K permutation), over the first partial_rotary_factor of each head.
llama.cpp disables Phi-3's sliding window (its converter writes it, its graph ignores it),
and so does this runtime. The 128k models' longrope scaling (per-layer long/short frequency
factors) is not supported: the 4k-context models are.
"""
from __future__ import annotations

from ..errors import UnsupportedError
from ..tables import Keys, TensorNames
from .base import Family


class Phi3(Family):
    """Phi-3: fused qkv and gate|up tensors, NEOX RoPE."""

    name = "phi3"
    hf_model_types = ("phi3",)
    hf_architectures = ("Phi3ForCausalLM",)
    hf_module, hf_prefix = "phi3", "Phi3"
    BLOCK_MAP = {
        "input_layernorm.weight": TensorNames.ATTN_NORM,
        "self_attn.qkv_proj.weight": TensorNames.ATTN_QKV,
        "self_attn.o_proj.weight": TensorNames.ATTN_OUT,
        "post_attention_layernorm.weight": TensorNames.FFN_NORM,
        "mlp.gate_up_proj.weight": TensorNames.FFN_UP,
        "mlp.down_proj.weight": TensorNames.FFN_DOWN,
    }
    rope_neox = True
    FUSED: dict[str, tuple[str, ...]] = {}  # already fused in the file

    def metadata(self) -> list[tuple[str, object]]:
        k = self.key
        if self.rope.get("rope_type") not in (None, "default"):
            raise UnsupportedError(f"Phi-3 RoPE scaling {self.rope.get('rope_type')!r} (the 128k-context models) is "
                                   "not supported; convert a 4k-context Phi-3")
        partial = float(self.rope.get("partial_rotary_factor") or self.config.get("partial_rotary_factor") or 1.0)
        out = [(key, v) for key, v in super().metadata() if key != k(Keys.ROPE_DIM)]
        out.append((k(Keys.ROPE_DIM), int(partial * self.hidden) // self.n_heads))
        orig = self.config.get("original_max_position_embeddings")
        if orig:
            out.append((k(Keys.ROPE_SCALING_ORIG_CTX), int(orig)))
        out.append((k(Keys.SLIDING_WINDOW), int(self.config.get("sliding_window") or 0)))
        return out
