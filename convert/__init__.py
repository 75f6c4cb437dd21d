"""edgeslim.convert: Hugging Face / GGUF models in, edgeslim GGUF out.

Everything that knows Hugging Face names lives here. Converting needs numpy,
gguf, sentencepiece and tokenizers (torch and transformers only for the tests
and hub downloads need huggingface_hub).
"""
import sys as _sys
import types as _types


class _ConvertModule(_types.ModuleType):
    """Makes `edgeslim.convert(...)` callable while `edgeslim.convert` stays this package."""

    def __call__(self, src, out, *, progress=None, **options) -> dict:
        """Convert `src` (HF folder or F16/F32 GGUF) to the GGUF file `out`; returns the report.

        Takes the keywords of `edgeslim.convert.pipeline.convert` (quant, target, bpw, size,
        family, group, allocate, calib, gptq, ctx, force). progress: None (a bar on a TTY),
        False, or a function fn(done, total, stage, tensor) called as weights are processed
        (see convert/progress.py); raising from it aborts, leaving no file behind.
        """
        from .pipeline import convert

        return convert(str(src), out, progress=progress, **options)


_sys.modules[__name__].__class__ = _ConvertModule
