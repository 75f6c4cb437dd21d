"""`edgeslim.fit(path_or_hf_dir, target=...)`: will this model fit, and with what, before loading it.

    ans = edgeslim.fit("model.gguf")                       # this machine, the file's own types
    ans = edgeslim.fit("path/to/hf-model", target="m2-8gb")  # the best uniform type that fits
    ans.fits, ans.quant, ans.fit.total_bytes, print(ans.text())

Only headers are read (GGUF metadata and tensor records; an HF folder's config and
safetensors headers), never the weights. The arithmetic is `edgeslim.targets`' fit
report: weights + KV cache + runtime overhead against the target's usable memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .targets import DEFAULT_CTX, LADDERS, Fit, Target, get_target, gib, kv_cache_bytes, this_machine

FLOAT_RUNTIME_BYTES = 4  # the numpy reference backend holds every weight as float32


@dataclass
class FitAnswer:
    """fits: the answer; quant: the type(s) it fits with (None when nothing does); fit: the numbers;
    advice: one line saying what to do."""

    fits: bool
    quant: str | None
    fit: Fit
    source: str  # "gguf" | "hf"
    advice: str

    def text(self) -> str:
        return self.fit.text() + "\n" + self.advice


def resolve_target(target: str | Target | None) -> Target:
    if target is None:
        return this_machine()
    return target if isinstance(target, Target) else get_target(target)


def fit(path, target: str | Target | None = None, ctx: int | None = None, quant: str | None = None,
        backend: str = "auto", cache_slots: int = 1) -> FitAnswer:
    """Will the model at `path` (a GGUF file or a Hugging Face folder) fit `target` (a profile name such
    as "m2-8gb", a Target, or None for this machine) with a `ctx`-token KV cache?

    GGUF: the file's own types (`quant` must be None); backend "numpy" counts weights as float32.
    HF folder: `quant` checks that one type; without it the best type of the ggml ladder
    (Q8_0 ... Q2_K) that fits is chosen, as `edgeslim convert --target` does.
    cache_slots: KV caches held at once (`edgeslim serve --cache-slots`).
    """
    tgt = resolve_target(target)
    p = Path(path)
    if p.is_file():
        if quant is not None:
            raise InputError("quant= applies to a Hugging Face folder; a GGUF file's types are fixed")
        return _gguf_fit(p, tgt, ctx, backend, cache_slots)
    if p.is_dir():
        return _hf_fit(p, tgt, ctx or DEFAULT_CTX, quant, cache_slots)
    raise InputError(f"{path}: no such file or folder; give a GGUF file or a Hugging Face model folder")


def _gguf_fit(path: Path, tgt: Target, ctx: int | None, backend: str, slots: int) -> FitAnswer:
    from .gguf_file import GGUFFile
    from .runtime.loader import read_hparams

    f = GGUFFile(path)
    hp = read_hparams(f)
    ctx = min(hp.context_length, DEFAULT_CTX) if ctx is None else int(ctx)
    if backend == "numpy":
        weights = sum(t.n_elements for t in f.tensors.values()) * FLOAT_RUNTIME_BYTES
    else:
        weights = sum(t.nbytes for t in f.tensors.values())
    kinds: dict[str, int] = {}
    for t in f.tensors.values():
        kinds[t.type_name] = kinds.get(t.type_name, 0) + t.n_elements
    qtype = max(kinds, key=kinds.get) if kinds else "?"
    kv = kv_cache_bytes(hp.n_layer, ctx, hp.n_head_kv, hp.head_dim) * max(1, int(slots))
    fit = Fit(qtype, ctx, weights, kv, tgt)
    if fit.fits:
        advice = f"fits {tgt.name} with {gib(fit.headroom_bytes)} to spare"
    else:
        advice = (f"does NOT fit {tgt.name}: needs {gib(fit.total_bytes)}, {gib(tgt.usable_bytes)} usable; use a "
                  f"smaller ctx (now {ctx}) or convert a smaller file: edgeslim convert SRC --target {tgt.name}")
    return FitAnswer(bool(fit.fits), qtype if fit.fits else None, fit, "gguf", advice)


def _hf_fit(folder: Path, tgt: Target, ctx: int, quant: str | None, slots: int) -> FitAnswer:
    from .convert.hf import open_hf
    from .convert.plan import plan_bytes, resolve_quant

    model = open_hf(str(folder))
    try:
        kv = kv_cache_bytes(model.n_layers, ctx, model.n_kv_heads, model.head_dim) * max(1, int(slots))
        qtype, family = resolve_quant(quant, None)
        ladder = (qtype,) if qtype else LADDERS[family]
        fit = None
        for q in ladder:
            fit = Fit(q, ctx, plan_bytes(model.tensors, q), kv, tgt)
            if fit.fits:
                return FitAnswer(True, q, fit, "hf", f"fits {tgt.name} as {q}: edgeslim convert {folder} "
                                 f"-o model.gguf --target {tgt.name}" if tgt.name != "this-machine" else
                                 f"fits this machine as {q}: edgeslim convert {folder} -o model.gguf --quant {q}")
        return FitAnswer(False, None, fit, "hf", f"does NOT fit {tgt.name} even as {fit.qtype} "
                         f"({gib(fit.total_bytes)} needed, {gib(tgt.usable_bytes)} usable); use a smaller model "
                         f"or a smaller ctx (now {ctx})")
    finally:
        model.close()
