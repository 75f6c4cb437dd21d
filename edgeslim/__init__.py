"""edgeslim: compress a language model to fit the machine you own, and run it there.

    import edgeslim
    model = edgeslim.load("model.gguf")            # numba on CPU, MLX on Apple GPUs
    print(model.generate("Once upon a time", max_tokens=64))

Importing edgeslim never imports torch or transformers; the converter
(`edgeslim.convert`) does, only when it is used.
"""
__version__ = "0.1.0"


def load(path, backend: str = "auto", **kwargs):
    """Open a GGUF model for inference: returns `edgeslim.runtime.api.Model`."""
    from .runtime.api import load as _load

    return _load(path, backend=backend, **kwargs)


def load_tokenizer(path):
    """The tokenizer of a GGUF file (a vocab-only GGUF is enough)."""
    from .tokenizer import load_tokenizer as _load_tokenizer

    return _load_tokenizer(path)
