"""Architecture families: the one description per family that converter, calibration and runtime read.

    family_for_gguf(name)       the class that runs `general.architecture = name` (runtime)
    arch_for_config(config)     a family object bound to an HF config dict (converter)
    FAMILIES                    every family, in registry order

Adding a family is one file here with one class (see `base.Family`) and one line below.
"""
from __future__ import annotations

from ..errors import InputError, UnsupportedError
from .base import Family
from .gemma3 import Gemma3
from .llama import Llama, Mistral
from .phi3 import Phi3
from .qwen2 import Qwen2

FAMILIES: tuple[type[Family], ...] = (Llama, Mistral, Qwen2, Gemma3, Phi3)

# HF model_type -> family (what `edgeslim convert` accepts)
ARCHS: dict[str, type[Family]] = {t: cls for cls in FAMILIES for t in cls.hf_model_types}
# general.architecture -> the family that runs it (the first one registered under that name)
RUNTIME: dict[str, type[Family]] = {}
for _cls in FAMILIES:
    RUNTIME.setdefault(_cls.name, _cls)


def family_for_gguf(name: str, path: str = "") -> Family:
    """The family that runs `name`, or UnsupportedError naming the supported ones."""
    cls = RUNTIME.get(name)
    if cls is None:
        where = f"{path}: " if path else ""
        raise UnsupportedError(
            f"{where}architecture {name!r} is not supported; edgeslim runs {', '.join(sorted(RUNTIME))} "
            "(convert a model of one of these families)")
    return cls()


def supported() -> str:
    """'llama (LlamaForCausalLM), ...' for error messages."""
    return ", ".join(f"{t} ({', '.join(c.hf_architectures[:1])})" for t, c in ARCHS.items())


def arch_for_config(config: dict) -> Family:
    """The family object for an HF config dict, by `model_type` then `architectures`."""
    if isinstance(config.get("text_config"), dict):  # multimodal wrappers keep the LM here
        config = {**config, **config["text_config"]}
    cls = ARCHS.get(str(config.get("model_type", "")))
    if cls is None:
        names = config.get("architectures") or []
        cls = next((c for c in FAMILIES for n in names if n in c.hf_architectures), None)
    if cls is None:
        what = config.get("model_type") or (config.get("architectures") or ["(none)"])[0]
        raise UnsupportedError(f"model type {what!r} is not supported; edgeslim converts {supported()}")
    try:
        return cls(config)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"config.json lacks or garbles {err}; re-download the model's config.json") from None


__all__ = ["ARCHS", "FAMILIES", "Family", "arch_for_config", "family_for_gguf", "supported"]
