"""Backend registry: name -> loader of the backend class (imported only when chosen).

    "numpy"  reference: float32 weights, numpy matmuls (numpy_backend.py)
    "numba"  packed quantized weights, numba kernels (numba_backend.py)
    "mlx"    Apple GPUs through MLX (mlx_backend.py defines `MLXBackend`; needs `pip install 'edgeslim[mlx]'`)
    "auto"   mlx on macOS arm64 when mlx imports, else numba

Every backend implements the contract in `base.Backend`. To add one, write a
module with a `Backend` subclass and add a loader here.
"""
from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
from typing import Callable

from ...errors import InputError, UnsupportedError
from .base import Backend, CPUBackend


def _numpy() -> type[Backend]:
    from .numpy_backend import NumpyBackend

    return NumpyBackend


def _numba() -> type[Backend]:
    from .numba_backend import NumbaBackend

    return NumbaBackend


def _mlx() -> type[Backend]:
    if importlib.util.find_spec("mlx") is None:
        raise UnsupportedError("the mlx backend needs MLX: install mlx: pip install 'edgeslim[mlx]' "
                               "(or use --backend numba)")
    try:
        module = importlib.import_module(".mlx_backend", __name__)
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "mlx":
            raise UnsupportedError("the mlx backend needs MLX: install mlx: pip install 'edgeslim[mlx]'") from None
        if err.name == f"{__name__}.mlx_backend":
            raise UnsupportedError("this edgeslim build has no mlx backend; use --backend numba") from None
        raise
    return module.MLXBackend


BACKENDS: dict[str, Callable[[], type[Backend]]] = {
    "numpy": _numpy,
    "numba": _numba,
    "mlx": _mlx,
}


def resolve_backend_name(name: str) -> str:
    """'auto' -> the best available backend here; other names are checked and returned."""
    name = (name or "auto").lower()
    if name == "auto":
        apple = sys.platform == "darwin" and platform.machine() == "arm64"
        if apple and importlib.util.find_spec("mlx") is not None:
            return "mlx"
        return "numba"
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; use one of auto, {', '.join(BACKENDS)}")
    return name


def get_backend(name: str) -> type[Backend]:
    """The backend class for `name` (auto resolved), importing its module now."""
    return BACKENDS[resolve_backend_name(name)]()


__all__ = ["BACKENDS", "Backend", "CPUBackend", "get_backend", "resolve_backend_name"]
