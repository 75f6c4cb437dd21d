"""Architecture registry: the one place that lists what `edgeslim convert` accepts.

Each class follows the contract in `base.Arch`; HF names exist only in this package.
"""
from __future__ import annotations

from edgeslim.errors import InputError, UnsupportedError

from .base import Arch
from .llama import LlamaArch
from .mistral import MistralArch
from .qwen2 import Qwen2Arch

# HF `model_type` -> architecture class
ARCHS: dict[str, type[Arch]] = {
    "llama": LlamaArch,
    "mistral": MistralArch,
    "qwen2": Qwen2Arch,
}


def supported() -> str:
    """'llama (LlamaForCausalLM), ...' for error messages."""
    return ", ".join(f"{t} ({', '.join(c.hf_architectures[:1])})" for t, c in ARCHS.items())


def arch_for_config(config: dict) -> Arch:
    """The architecture object for an HF config dict, by `model_type` then `architectures`."""
    if isinstance(config.get("text_config"), dict):  # multimodal wrappers keep the LM here
        config = {**config, **config["text_config"]}
    cls = ARCHS.get(str(config.get("model_type", "")))
    if cls is None:
        names = config.get("architectures") or []
        cls = next((c for c in ARCHS.values() for n in names if n in c.hf_architectures), None)
    if cls is None:
        what = config.get("model_type") or (config.get("architectures") or ["(none)"])[0]
        raise UnsupportedError(f"model type {what!r} is not supported; edgeslim converts {supported()}")
    try:
        return cls(config)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"config.json lacks or garbles {err}; re-download the model's config.json") from None


__all__ = ["ARCHS", "Arch", "arch_for_config", "supported"]
