"""Benchmark model files made the way users get them: a real model's shape, quantized by llama.cpp.

    from _bench_models import LlamaTools, base_model, model_file, SHAPES
    tools = LlamaTools.find()                      # llama-quantize / llama-imatrix / llama-simple, or None
    f16 = base_model(cache, "tinyllama", seed=0)   # random-weight F16 GGUF, Llama-2's 32000-token vocabulary
    path = model_file(cache, f16, "Q4_K_M", tools) # llama-quantize (IQ types with an imatrix), cached

The base file is written tensor by tensor with edgeslim's own GGUF writer:
seeded normal(0, 0.02) matrices, norms 1 + 0.1 normal, and the tokenizer
metadata of llama.cpp's ggml-vocab-llama-spm.gguf (Llama-2's SentencePiece
vocabulary, read from /work/shared/data/vocab or --vocab), so both runtimes
load it as an ordinary Llama.  Quantized files come from `llama-quantize`
(every llama.cpp type name it accepts: Q4_0, Q4_K_M, IQ4_XS, TQ2_0, ...);
the IQ types get an importance matrix from `llama-imatrix` over a few chunks
of real text (WikiText-2 from the shared corpora), as llama.cpp recommends
(IQ1/IQ2 refuse to quantize without one).  Without llama.cpp's tools, the
types edgeslim writes itself are made by `edgeslim.quants` instead (named
"es:<TYPE>" in the output so the two are never confused).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPES = {  # Llama-family shapes: hidden, layers, heads, kv heads, ffn, vocab (the vocabulary file's 32000)
    "tinyllama": dict(hidden=2048, layers=22, heads=32, kv_heads=4, ffn=5632, ctx=2048),
    "small": dict(hidden=256, layers=2, heads=4, kv_heads=2, ffn=768, ctx=2048),  # smoke tests
}
SHARED = Path(os.environ.get("EDGESLIM_SHARED_DATA", "/work/shared/data"))
VOCAB = SHARED / "vocab" / "ggml-vocab-llama-spm.gguf"
IMATRIX_TEXT = SHARED / "corpora" / "wikitext-2" / "valid.txt"
NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M",
                 "IQ4_XS", "IQ4_NL")


@dataclass(frozen=True)
class LlamaTools:
    """llama.cpp's command-line tools (one build folder)."""

    bin: Path

    @classmethod
    def find(cls, explicit: str | None = None) -> "LlamaTools | None":
        """--llama-bin, $LLAMA_CPP_BIN, llama-quantize on PATH, or this project's shared build; else None."""
        cands = [explicit, os.environ.get("LLAMA_CPP_BIN")]
        on_path = shutil.which("llama-quantize")
        cands += [str(Path(on_path).parent) if on_path else None, "/work/lcp/lcp-build/bin"]
        for c in cands:
            if c and (Path(c) / "llama-quantize").is_file():
                return cls(Path(c))
        return None

    def tool(self, name: str) -> Path:
        return self.bin / name

    def run(self, name: str, *args, log: Path | None = None) -> None:
        cmd = [str(self.tool(name)), *map(str, args)]
        with open(log or os.devnull, "w") as fh:
            p = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
        if p.returncode:
            tail = log.read_text()[-2000:] if log else ""
            raise RuntimeError(f"{' '.join(cmd)} failed with exit {p.returncode}\n{tail}")


def _tokenizer_kv(out, vocab: Path) -> int:
    """Copy the tokenizer.* metadata of a llama.cpp vocabulary GGUF; returns the vocabulary size."""
    import gguf

    from edgeslim.gguf_file import GGUFFile

    kv = GGUFFile(vocab).kv
    w = out.writer
    w.add_tokenizer_model(kv["tokenizer.ggml.model"])
    w.add_tokenizer_pre(kv.get("tokenizer.ggml.pre", "default"))
    w.add_token_list(kv["tokenizer.ggml.tokens"])
    w.add_token_scores(np.asarray(kv["tokenizer.ggml.scores"], np.float32).tolist())
    w.add_token_types(np.asarray(kv["tokenizer.ggml.token_type"], np.int32).tolist())
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                     ("unknown_token_id", w.add_unk_token_id)):
        if f"tokenizer.ggml.{key}" in kv:
            add(int(kv[f"tokenizer.ggml.{key}"]))
    w.add_add_bos_token(bool(kv.get("tokenizer.ggml.add_bos_token", True)))
    w.add_add_eos_token(bool(kv.get("tokenizer.ggml.add_eos_token", False)))
    assert gguf  # the writer's helpers come from the gguf package
    return len(kv["tokenizer.ggml.tokens"])


def _tensors(s: dict, vocab_n: int):
    """(name, numpy shape, kind) of every tensor of a Llama, in llama.cpp's order."""
    from edgeslim.tables import TensorNames as N

    d, hd = s["hidden"], s["hidden"] // s["heads"]
    yield N.TOKEN_EMBD, (vocab_n, d), "mat"
    for b in range(s["layers"]):
        yield N.ATTN_NORM.format(bid=b), (d,), "norm"
        yield N.ATTN_Q.format(bid=b), (s["heads"] * hd, d), "mat"
        yield N.ATTN_K.format(bid=b), (s["kv_heads"] * hd, d), "mat"
        yield N.ATTN_V.format(bid=b), (s["kv_heads"] * hd, d), "mat"
        yield N.ATTN_OUT.format(bid=b), (d, s["heads"] * hd), "mat"
        yield N.FFN_NORM.format(bid=b), (d,), "norm"
        yield N.FFN_GATE.format(bid=b), (s["ffn"], d), "mat"
        yield N.FFN_UP.format(bid=b), (s["ffn"], d), "mat"
        yield N.FFN_DOWN.format(bid=b), (d, s["ffn"]), "mat"
    yield N.OUTPUT_NORM, (d,), "norm"
    yield N.OUTPUT, (vocab_n, d), "mat"


def base_model(cache: Path, shape: str, seed: int = 0, vocab: Path = VOCAB) -> Path:
    """The random-weight F16 GGUF of `shape` (cached in `cache`)."""
    from edgeslim.gguf_write import GGUFOut
    from edgeslim.quants import quantize
    from edgeslim.tables import Keys

    s = SHAPES[shape]
    path = cache / f"{shape}-s{seed}-F16.gguf"
    if path.is_file():
        return path
    if not vocab.is_file():
        raise SystemExit(f"{vocab} not found: pass --vocab with llama.cpp's models/ggml-vocab-llama-spm.gguf")
    cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with GGUFOut(path, arch="llama", force=True) as out:
        w = out.writer
        n_vocab = _tokenizer_kv(out, vocab)
        for key, val in (("CONTEXT", s["ctx"]), ("EMBED", s["hidden"]), ("FFN", s["ffn"]), ("BLOCKS", s["layers"]),
                         ("HEADS", s["heads"]), ("HEADS_KV", s["kv_heads"]), ("ROPE_DIM", s["hidden"] // s["heads"])):
            w.add_uint32(getattr(Keys, key).format(arch="llama"), val)
        w.add_float32(Keys.RMS_EPS.format(arch="llama"), 1e-5)
        w.add_float32(Keys.ROPE_BASE.format(arch="llama"), 10000.0)
        w.add_uint32(Keys.FILE_TYPE, 1)
        plan = list(_tensors(s, n_vocab))
        for name, shp, kind in plan:
            out.plan(name, shp, "F16" if kind == "mat" else "F32")
        out.begin()
        for name, shp, kind in plan:
            if kind == "mat":
                a = (rng.standard_normal(shp, dtype=np.float32) * np.float32(0.02))
                out.write(name, quantize(a, "F16"))
            else:
                out.write(name, (1.0 + 0.1 * rng.standard_normal(shp[0])).astype(np.float32))
    return path


def imatrix(cache: Path, f16: Path, tools: LlamaTools, chunks: int = 4, threads: int = 2) -> Path:
    """llama-imatrix over `chunks` 512-token chunks of WikiText-2 (cached beside the base file)."""
    out = cache / f"{f16.stem}-imatrix-c{chunks}.gguf"
    if not out.is_file():
        tools.run("llama-imatrix", "-m", f16, "-f", IMATRIX_TEXT, "-o", out, "-c", 512, "--chunks", chunks,
                  "-t", threads, "--no-ppl", log=cache / f"{out.stem}.log")
    return out


def model_file(cache: Path, f16: Path, ftype: str, tools: LlamaTools | None, threads: int = 2) -> Path:
    """`f16` quantized to llama.cpp's `ftype` by llama-quantize (cached); 'es:TYPE' or no tools:
    edgeslim's own writer for the types it writes (F16 is the base file itself)."""
    if ftype == "F16":
        return f16
    if ftype.startswith("es:") or tools is None:
        return _edgeslim_file(cache, f16, ftype.removeprefix("es:"))
    out = cache / f"{f16.stem.removesuffix('-F16')}-{ftype}.gguf"
    if not out.is_file():
        args = []
        if ftype in NEEDS_IMATRIX:
            args = ["--imatrix", imatrix(cache, f16, tools, threads=threads)]
        tmp = out.with_suffix(".part")
        tools.run("llama-quantize", *args, f16, tmp, ftype, threads, log=cache / f"{out.stem}.log")
        tmp.rename(out)
    return out


def _edgeslim_file(cache: Path, f16: Path, qtype: str) -> Path:
    """Every 2-D weight of the F16 file quantized by edgeslim.quants (types edgeslim writes)."""
    from edgeslim.gguf_file import GGUFFile
    from edgeslim.gguf_write import GGUFOut
    from edgeslim.quants import fallback_type, quantize
    from edgeslim.tables import GGML_WRITABLE

    if qtype not in GGML_WRITABLE:
        raise SystemExit(f"edgeslim cannot write {qtype} and llama.cpp's tools were not found: pass --llama-bin")
    out = cache / f"{f16.stem.removesuffix('-F16')}-es-{qtype}.gguf"
    if out.is_file():
        return out
    src = GGUFFile(f16)
    with GGUFOut(out, arch=src.arch, force=True) as dst:
        for key, val in src.kv.items():
            if not key.startswith(("general.architecture", "edgeslim.")):
                _copy_kv(dst.writer, key, val)
        types = {}
        for name, t in src.tensors.items():
            types[name] = fallback_type(qtype, t.shape[-1]) if len(t.shape) == 2 else "F32"
            dst.plan(name, t.shape, types[name])
        dst.begin()
        for name, t in src.tensors.items():
            a = np.asarray(src.array(name), np.float32)
            dst.write(name, quantize(a, types[name]) if a.ndim == 2 else a)
    return out


def _copy_kv(w, key: str, val) -> None:
    import gguf

    if isinstance(val, bool):
        w.add_bool(key, val)
    elif isinstance(val, int):
        w.add_uint32(key, val)
    elif isinstance(val, float):
        w.add_float32(key, val)
    elif isinstance(val, str):
        w.add_string(key, val)
    elif isinstance(val, np.ndarray):
        w.add_array(key, val.tolist()) if val.dtype.kind != "f" else w.add_key_value(
            key, val.astype(np.float32).tolist(), gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32)
    else:
        w.add_array(key, list(val))
