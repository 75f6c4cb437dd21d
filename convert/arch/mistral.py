"""Mistral (`MistralForCausalLM`) -> GGUF arch "llama", as llama.cpp converts HF Mistral.

Same tensors and the same rotate-half Q/K permutation as Llama (inherited), plus
the sliding-window size as metadata when the config sets one.
"""
from __future__ import annotations

from edgeslim.tables import Keys

from .llama import LlamaArch


class MistralArch(LlamaArch):
    """Mistral 7B-style: Llama layout with sliding-window attention metadata."""

    hf_model_types = ("mistral",)
    hf_architectures = ("MistralForCausalLM",)
    gguf_arch = "llama"

    def metadata(self) -> list[tuple[str, object]]:
        out = super().metadata()
        window = self.config.get("sliding_window")
        if isinstance(window, int) and window > 0:
            out.append((self.key(Keys.SLIDING_WINDOW), window))
        return out
