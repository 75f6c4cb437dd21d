"""Architecture registry: `general.architecture` value -> family class (one file each)."""
from __future__ import annotations

from ...errors import UnsupportedError
from .base import Architecture
from .llama import Llama
from .qwen2 import Qwen2

ARCHITECTURES: dict[str, type[Architecture]] = {
    Llama.name: Llama,
    Qwen2.name: Qwen2,
}


def get_architecture(name: str, path: str = "") -> Architecture:
    """The family for `name`, or UnsupportedError naming the supported ones."""
    cls = ARCHITECTURES.get(name)
    if cls is None:
        where = f"{path}: " if path else ""
        raise UnsupportedError(
            f"{where}architecture {name!r} is not supported; edgeslim runs {', '.join(sorted(ARCHITECTURES))} "
            "(convert a model of one of these families)")
    return cls()
