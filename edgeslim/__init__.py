"""edgeslim: compress a language model to fit the machine you own, and run it there.

    import edgeslim
    print(edgeslim.fit("model.gguf").text())       # will it fit this machine? (headers only)
    model = edgeslim.load("model.gguf")            # numba on CPU, MLX on Apple GPUs
    print(model.generate("Once upon a time", max_tokens=64))
    edgeslim.convert("hf-folder", "out.gguf", target="m2-8gb", progress=lambda done, total, stage, t: ...)

`edgeslim.convert` is the converter package and is also callable (see its `__call__`).
Importing edgeslim never imports torch or transformers; the converter does, only
when it calibrates. Every error meant for the user is an `edgeslim.EdgeslimError`
(its message is one line naming the problem and the fix).
"""
import os as _os

# OpenBLAS's idle worker threads spin for 2^28 cycles (~0.1 s) after every BLAS call, taking the
# cores numba's kernels run on next: a 512-token prefill (attention in BLAS, matmuls in numba) ran
# at 120 tok/s with the default and 173 tok/s with 2^4 (TinyLlama-shaped Q4_K_M, 2 threads, Zen 5).
# OpenBLAS reads this once, when numpy loads it: it works when edgeslim is imported before numpy
# (the CLI, `import edgeslim` first); an app that imports numpy earlier can set it itself.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .errors import EdgeslimError  # noqa: E402,F401  (part of the API: apps catch it)

__version__ = "0.1.0"


def load(path, backend: str = "auto", **kwargs):
    """Open a GGUF model for inference: returns `edgeslim.runtime.api.Model` (see `edgeslim.runtime.api.load`)."""
    from .runtime.api import load as _load

    return _load(path, backend=backend, **kwargs)


def load_tokenizer(path):
    """The tokenizer of a GGUF file (a vocab-only GGUF is enough)."""
    from .tokenizer import load_tokenizer as _load_tokenizer

    return _load_tokenizer(path)


def fit(path, target=None, ctx=None, quant=None, **kwargs):
    """Will the model at `path` (GGUF file or Hugging Face folder) fit `target` (a profile name such as
    "m2-8gb", or None for this machine), and with what type? Returns `edgeslim.fit_check.FitAnswer`;
    reads headers only."""
    from .fit_check import fit as _fit

    return _fit(path, target=target, ctx=ctx, quant=quant, **kwargs)


def __getattr__(name):
    if name == "convert":  # the converter package; callable: edgeslim.convert(src, out, ...)
        import importlib

        return importlib.import_module(".convert", __name__)
    if name == "BusyError":
        from .runtime.api import BusyError

        return BusyError
    raise AttributeError(f"module 'edgeslim' has no attribute {name!r}")
