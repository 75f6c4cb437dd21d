"""The small contract every architecture family fulfils.

An architecture says which tensors a block has (GGUF names from
`edgeslim.tables.TensorNames`, end to end), how RoPE pairs dimensions, and
whether q/k/v carry biases. The forward math itself is shared
(`edgeslim.runtime.forward`), so a family is a handful of class attributes.
"""
from __future__ import annotations

from ...tables import TensorNames


class Architecture:
    """Base class: a llama-style decoder (RMSNorm, RoPE, GQA attention, SwiGLU FFN).

    Subclasses set:
      name       `general.architecture` value this class runs
      rope_neox  False: ggml "normal" RoPE rotating interleaved pairs (x[2i], x[2i+1]);
                 True: NEOX RoPE rotating (x[i], x[i + n_rot/2])
      qkv_bias   True when blk.N.attn_{q,k,v}.bias are present and required
    """

    name = "base"
    rope_neox = False
    qkv_bias = False

    # role -> name template of the per-block tensors every file must have
    BLOCK_TENSORS = {
        "attn_norm": TensorNames.ATTN_NORM,
        "attn_q": TensorNames.ATTN_Q,
        "attn_k": TensorNames.ATTN_K,
        "attn_v": TensorNames.ATTN_V,
        "attn_output": TensorNames.ATTN_OUT,
        "ffn_norm": TensorNames.FFN_NORM,
        "ffn_gate": TensorNames.FFN_GATE,
        "ffn_up": TensorNames.FFN_UP,
        "ffn_down": TensorNames.FFN_DOWN,
    }
    BIAS_TENSORS = {
        "attn_q_bias": TensorNames.ATTN_Q_BIAS,
        "attn_k_bias": TensorNames.ATTN_K_BIAS,
        "attn_v_bias": TensorNames.ATTN_V_BIAS,
    }

    def block_tensors(self, bid: int) -> dict[str, str]:
        """Required tensors of block `bid`: role -> GGUF tensor name."""
        names = {role: tpl.format(bid=bid) for role, tpl in self.BLOCK_TENSORS.items()}
        if self.qkv_bias:
            names.update({role: tpl.format(bid=bid) for role, tpl in self.BIAS_TENSORS.items()})
        return names
