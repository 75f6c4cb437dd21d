"""Gemma 3 text models (`Gemma3ForCausalLM`, model_type gemma3_text) <-> GGUF arch "gemma3".

What differs from Llama, as llama.cpp converts and runs it:

* RMSNorm multiplies by (1 + w) in HF; the converter stores w + 1 (`norm_shift`), so the
  runtime multiplies by the stored weight like every other family (the real
  llama.cpp-made file has norm weights around 1-10, not around 0: checked in the tests).
* per-head RMSNorm of q and k (`attn_q_norm`, `attn_k_norm`, (head_dim,)) before RoPE;
  RMSNorm after attention (`post_attention_norm`) and after the FFN (`post_ffw_norm`) as
  well as before each (`attn_norm`, `ffn_norm`).
* embedding rows times sqrt(n_embd); GeGLU FFN with tanh-approximated GELU; NEOX RoPE.
* attention scale: `gemma3.attention.scale` when the file has it (edgeslim writes it when
  query_pre_attn_scalar is not the head size), else llama.cpp's rule: 1/sqrt(head size),
  1/sqrt(n_embd / n_head) for the 62-layer (27B) model.
* sliding-window layers: all but every 6th layer (llama.cpp's default period, or the
  file's `attention.sliding_window_pattern`, a period or one bool per layer) see only the
  last `attention.sliding_window` positions and use RoPE base `rope.freq_base_swa`
  (default 10000) without frequency scaling; the global layers use `rope.freq_base` and
  the file's linear RoPE scaling.
* final logit soft-capping when `final_logit_softcapping` is set.
"""
from __future__ import annotations

import math

from ..errors import FormatError
from ..tables import Keys, TensorNames
from .base import Family, Reader

DEFAULT_SWA_PERIOD = 6  # llama.cpp's and transformers' default: every 6th layer is global
DEFAULT_ROPE_BASE_SWA = 10000.0


def swa_layers(n_layer: int, pattern) -> tuple[bool, ...]:
    """Which layers use the sliding window: a period n (layer il is local unless il % n == n - 1;
    0 means all local) or one flag per layer, as llama.cpp reads `sliding_window_pattern`."""
    if isinstance(pattern, (list, tuple)) or hasattr(pattern, "__len__"):
        flags = tuple(bool(v) for v in pattern)
        if len(flags) < n_layer:
            raise FormatError(f"sliding_window_pattern has {len(flags)} entries for {n_layer} layers; re-convert")
        return flags[:n_layer]
    n = int(pattern)
    return tuple(n == 0 or il % n < n - 1 for il in range(n_layer))


class Gemma3(Family):
    """Gemma 3 (text): (1 + w) norms, q/k norms, pre+post norms, GeGLU, scaled embedding, local/global attention."""

    name = "gemma3"
    hf_model_types = ("gemma3_text",)
    hf_architectures = ("Gemma3ForCausalLM",)
    hf_module, hf_prefix = "gemma3", "Gemma3"
    BLOCK_MAP = {
        "input_layernorm.weight": TensorNames.ATTN_NORM,
        "self_attn.q_proj.weight": TensorNames.ATTN_Q,
        "self_attn.k_proj.weight": TensorNames.ATTN_K,
        "self_attn.v_proj.weight": TensorNames.ATTN_V,
        "self_attn.q_norm.weight": TensorNames.ATTN_Q_NORM,
        "self_attn.k_norm.weight": TensorNames.ATTN_K_NORM,
        "self_attn.o_proj.weight": TensorNames.ATTN_OUT,
        "post_attention_layernorm.weight": TensorNames.ATTN_POST_NORM,
        "pre_feedforward_layernorm.weight": TensorNames.FFN_NORM,
        "mlp.gate_proj.weight": TensorNames.FFN_GATE,
        "mlp.up_proj.weight": TensorNames.FFN_UP,
        "mlp.down_proj.weight": TensorNames.FFN_DOWN,
        "post_feedforward_layernorm.weight": TensorNames.FFN_POST_NORM,
    }
    rope_neox = True
    norm_shift = 1.0
    activation = "gelu_tanh"
    embed_scale = True
    free_head_dim = True
    spm_space_prefix = False  # llama.cpp's converter writes add_space_prefix = false for Gemma

    # -- runtime ---------------------------------------------------------------
    def runtime_hparams(self, read: Reader) -> dict:
        n_layer, n_embd, n_head = read(Keys.BLOCKS), read(Keys.EMBED), read(Keys.HEADS)
        head_dim = read(Keys.KEY_LENGTH, n_embd // n_head)
        n_swa = read(Keys.SLIDING_WINDOW, 0)
        default_scale = 1.0 / math.sqrt(n_embd / n_head if n_layer == 62 else head_dim)
        out = {
            "embd_scale": math.sqrt(n_embd),
            "attn_scale": read(Keys.ATTN_SCALE, default_scale, float),
            "logit_softcap": read(Keys.FINAL_SOFTCAP, 0.0, float),
        }
        if n_swa > 0:
            pattern = read(Keys.SLIDING_WINDOW_PATTERN, DEFAULT_SWA_PERIOD, lambda v: v)
            out.update(n_swa=n_swa, swa_layers=swa_layers(n_layer, pattern),
                       rope_base_swa=read(Keys.ROPE_BASE_SWA, DEFAULT_ROPE_BASE_SWA, float))
        return out

    # -- converter -------------------------------------------------------------
    def metadata(self) -> list[tuple[str, object]]:
        c, k = self.config, self.key
        out = super().metadata()
        types = c.get("layer_types")
        window = c.get("sliding_window")
        if window and types and "sliding_attention" in types:
            out.append((k(Keys.SLIDING_WINDOW), int(window)))
            flags = [t == "sliding_attention" for t in types]
            if tuple(flags) != swa_layers(self.n_layers, DEFAULT_SWA_PERIOD):
                out.append((k(Keys.SLIDING_WINDOW_PATTERN), flags))
        local = (c.get("rope_parameters") or {}).get("sliding_attention", {}).get("rope_theta",
                                                                               c.get("rope_local_base_freq"))
        if local is not None:
            out.append((k(Keys.ROPE_BASE_SWA), float(local)))
        if c.get("final_logit_softcapping"):
            out.append((k(Keys.FINAL_SOFTCAP), float(c["final_logit_softcapping"])))
        scalar = c.get("query_pre_attn_scalar")
        if scalar is not None and float(scalar) != float(self.head_dim):
            out.append((k(Keys.ATTN_SCALE), 1.0 / math.sqrt(float(scalar))))
        return out

    # -- calibration -------------------------------------------------------------
    def hf_rotary_kwargs(self, hf_config, bid: int) -> dict:
        return {"layer_type": hf_config.layer_types[bid]}
