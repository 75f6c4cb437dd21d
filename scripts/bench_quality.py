#!/usr/bin/env python3
"""Quality benchmark: edgeslim against llama.cpp and mlx-lm at about equal bits per weight.

For one model (the reference model of scripts/train_reference_model.py, stories260K, or any
HF folder / F16-F32 GGUF) it makes an F16 GGUF with edgeslim's converter, then quantized
files with
  * edgeslim: `convert(src, out, bpw=X, allocate=SIGNAL, calib=FILE, gptq=BOOL, family=F)`
    for every signal (erank, sensitivity, uniform, hybrid), with and without GPTQ, at each
    --bpw (a keyword convert() lacks makes that configuration "unavailable");
  * llama.cpp: `llama-quantize` types from the F16 GGUF, plain and with an importance matrix
    (`llama-imatrix` on the same calibration text and token count edgeslim calibrates on);
  * mlx-lm (when importable): uniform 2/3/4-bit and its mixed_* recipes (`mlx_lm convert`),
    whose codes/scales/biases are copied unchanged into edgeslim's affine GGUF layout (the
    same `mx.quantize` layout), so every file runs through the same forward pass,
and scores every file the same way: edgeslim's runtime (`edgeslim.load(...).logits`, float32
KV cache; the numpy backend by default, float32 math on the dequantized weights, so that only
the weights differ) over the same token windows of a held-out text, with llama-perplexity's windowing
(`edgeslim.runtime.perplexity`: windows of --ctx tokens, BOS first, the second half scored):
perplexity, ΔPPL and mean KL divergence against the F16 file's distributions on the same
positions, and how often the top token agrees with F16's.

Pieces can run separately (`--only edgeslim`, `--only llamacpp`, `--only mlx`, `--bpw 3.0`):
every result is cached as JSON in the work folder under a key of the evaluation setup
(tokens, windows, F16 file, calibration), and the report is rebuilt from all cached results
with that key. `--fresh` recomputes; use it after changing the converter.

Output: a markdown report (--md), JSON (--json), a bytes-vs-ΔPPL chart (--png, matplotlib),
and GOAL lines, printed as measured, for every edgeslim configuration:
  GOAL1 at equal file size, ΔPPL <= 0.7 x the best peer (every edgeslim size the peers span);
  GOAL2 at 3.0 bpw, ΔPPL <= the best peer's at 4.0 bpw;
  GOAL3 at 4.0 bpw, ΔPPL <= llama.cpp+imatrix's at the same file size (parity).
The goals are printed twice: in ΔPPL, the issue's metric, and in mean KL(F16 ‖ quantized),
llama.cpp's own quantization-quality metric. ΔPPL measures only how the probability of the
actual next tokens moved; on a small model evaluated out of domain, quantization noise can
move it either way (a few llama.cpp files score below F16), while KL measures the
distance from the F16 model's distributions at every position and does not go below zero.
"The best peer at size S" is the lower envelope of all llama.cpp / llama.cpp+imatrix / mlx-lm
points, linearly interpolated in file bytes (or bits per weight for GOAL2), flat beyond the
largest peer file, undefined below the smallest.

Usage:
    python scripts/bench_quality.py --model ref --md docs/quality-ref.md      # the page docs/benchmarks.md links
    python scripts/bench_quality.py --model stories260k --max-chunks 4 --bpw 3.0,4.0
    python scripts/bench_quality.py --model /tmp/refsmoke --only llamacpp --max-chunks 2
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CACHE = Path.home() / ".cache" / "edgeslim"
WIKI_TEST = DATA / "corpora" / "wikitext-2" / "test.txt"
WIKI_VALID = DATA / "corpora" / "wikitext-2" / "valid.txt"
PRESETS = {  # name -> (model, evaluation text, calibration text or None for the converter's built-in one)
    "ref": (CACHE / "reference-model", WIKI_TEST, WIKI_VALID),
    "stories260k": (DATA / "models" / "stories260K" / "stories260K.gguf",
                    DATA / "corpora" / "tinystories" / "tinystories_val.txt", None),
}
SIGNALS = ("erank", "sensitivity", "uniform", "hybrid")
LCP_TYPES = "Q2_K,Q3_K_S,Q3_K_M,Q3_K_L,Q4_K_S,Q4_K_M,Q5_K_S,Q5_K_M"
MLX_RECIPES = "2,3,4,mixed_2_6,mixed_3_4,mixed_3_6,mixed_4_6"
PIECES = ("edgeslim", "llamacpp", "mlx")
PEERS = ("llama.cpp", "llama.cpp+imatrix", "mlx-lm")
CALIB_SEQ = 512  # tokens per calibration sequence (edgeslim's default; llama-imatrix -c)
GOAL1_RATIO, GOAL2_AT, GOAL2_VS, GOAL3_AT = 0.7, 3.0, 4.0, 4.0


class Unavailable(Exception):
    """This configuration cannot be made here (missing tool, keyword or source kind)."""


# ----------------------------------------------------------------------------- setup
@dataclass
class Setup:
    """What every variant shares: source, F16 file, tokens, windows, calibration."""

    name: str
    src: Path
    is_hf: bool
    text: Path
    calib: Path  # the calibration text file both edgeslim and llama-imatrix read
    calib_tokens: int
    work: Path
    f16: Path
    tokens: list[int]
    bos: int | None
    ctx: int
    chunks: int
    n_params: int
    key: str


def resolve_model(arg: str) -> tuple[str, Path, Path | None, Path | None]:
    """(name, source, default text, default calibration) for a preset name or a path."""
    if arg in PRESETS:
        src, text, calib = PRESETS[arg]
        if not src.exists():
            hint = ("train it: python scripts/train_reference_model.py" if arg == "ref"
                    else "see ../shared/data/PROVENANCE.md")
            sys.exit(f"bench_quality: model {src} not found; {hint}")
        return arg, src, text, calib
    src = Path(arg).expanduser().resolve()
    if not src.exists():
        sys.exit(f"bench_quality: --model {arg}: no such file or folder")
    return src.stem if src.is_file() else src.name, src, WIKI_TEST, WIKI_VALID


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_setup(args) -> Setup:
    """Resolve paths, make the F16 GGUF and the calibration file, tokenize the text."""
    import edgeslim

    name, src, text_default, calib_default = resolve_model(args.model)
    text = Path(args.text) if args.text else text_default
    if text is None or not text.is_file():
        sys.exit(f"bench_quality: evaluation text {text} not found; pass --text FILE")
    work = Path(args.work) if args.work else CACHE / "bench-quality" / name
    (work / "files").mkdir(parents=True, exist_ok=True)
    (work / "results").mkdir(exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    f16 = work / "files" / "f16.gguf"
    if not f16.exists() or args.fresh:
        with logged(work / "logs" / "f16.log"):
            edgeslim_convert()(str(src), f16, quant="F16", force=True)
    calib = work / "calib.txt"
    write_calib(calib, Path(args.calib) if args.calib else calib_default, args.calib_tokens)

    model = edgeslim.load(f16, backend=args.backend, n_ctx=args.ctx, kv_dtype="float32")
    ctx = min(args.ctx, model.hparams.context_length)
    tokens = list(model.tokenizer.encode(text.read_text(encoding="utf-8"), add_bos=None, parse_special=False))
    bos = model.tokenizer.bos_id if model.tokenizer.add_bos else None
    chunks = min(len(tokens) // ctx, args.max_chunks) if args.max_chunks else len(tokens) // ctx
    if chunks < 1 or len(tokens) < 2 * ctx:
        sys.exit(f"bench_quality: {text} gives {len(tokens)} tokens; perplexity at --ctx {ctx} needs {2 * ctx}")
    n_params = sum(int(t.n_elements) for t in gguf_reader(f16).tensors)
    ident = json.dumps([hashlib.sha256(np.asarray(tokens, np.int64).tobytes()).hexdigest(), ctx, chunks,
                        sha256_file(f16), sha256_file(calib), args.calib_tokens, args.backend])
    key = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return Setup(name, src, src.is_dir(), text, calib, args.calib_tokens, work, f16, tokens, bos, ctx, chunks,
                 n_params, key)


def write_calib(out: Path, source: Path | None, n_tokens: int) -> None:
    """The calibration text (the converter's built-in sample when source is None), cut to
    what n_tokens can use, so that edgeslim and llama-imatrix read exactly the same text."""
    from edgeslim.convert.calibrate import CHARS_PER_TOKEN_MAX, read_calib_text

    text = read_calib_text(source)[: n_tokens * CHARS_PER_TOKEN_MAX]
    if not out.exists() or out.read_text(encoding="utf-8") != text:
        out.write_text(text, encoding="utf-8")


def gguf_reader(path: Path):
    import gguf

    return gguf.GGUFReader(str(path))


@contextlib.contextmanager
def logged(path: Path):
    """Send stdout/stderr prints (the converter's fit report and notes) to a log file."""
    with open(path, "w") as fh, contextlib.redirect_stderr(fh), contextlib.redirect_stdout(fh):
        yield


def edgeslim_convert():
    from edgeslim.convert.pipeline import convert

    return convert


# ------------------------------------------------------------------------- evaluation
def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(N, V) -> float64 log-probabilities."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


class Scorer:
    """A session for `runtime.perplexity.perplexity` built on the public `Model.logits`.

    perplexity() does the windowing and the PPL; each window's scored positions are
    also kept (the F16 reference: log-probabilities) or compared with the reference
    (KL(F16 || this) per position, and whether the top tokens agree).
    """

    def __init__(self, model, n_ctx: int, ref: np.ndarray | None = None):
        self.model, self.n_ctx, self.ref = model, n_ctx, ref
        self.window = 0
        self.logprobs: list[np.ndarray] = []
        self.kl: list[np.ndarray] = []
        self.same_top: list[np.ndarray] = []

    def reset(self) -> None:
        """Nothing to clear: Model.logits runs every window from a fresh cache."""

    def feed(self, window, n_logits: int) -> np.ndarray:
        logits = self.model.logits(window)[-n_logits:]  # (n_logits, V)
        lp = log_softmax(logits[:-1])  # scored positions, (n_logits - 1, V)
        if self.ref is None:
            self.logprobs.append(lp.astype(np.float32))
        else:
            r = self.ref[self.window].astype(np.float64)  # (n_logits - 1, V)
            self.kl.append((np.exp(r) * (r - lp)).sum(axis=1))
            self.same_top.append(r.argmax(axis=1) == lp.argmax(axis=1))
        self.window += 1
        return logits


def evaluate(setup: Setup, path: Path, backend: str, ref: np.ndarray | None) -> tuple[dict, Scorer]:
    """PPL (+ KL / top-token agreement against ref) of one GGUF file on the setup's windows."""
    import edgeslim
    from edgeslim.runtime.perplexity import perplexity

    with warnings.catch_warnings(record=True) as caught:  # e.g. "no numba kernel for Q5_0"
        warnings.simplefilter("always")
        model = edgeslim.load(path, backend=backend, n_ctx=setup.ctx, kv_dtype="float32")
    scorer = Scorer(model, setup.ctx, ref)
    res = perplexity(scorer, setup.tokens, setup.bos, setup.chunks)
    out = {"ppl": res.ppl, "ppl_error": res.ppl_error, "n_scored": res.n_scored, "n_chunks": res.n_chunks,
           "eval_s": round(res.seconds, 1)}
    if caught:
        out["runtime_notes"] = sorted({str(w.message).split(": ", 1)[-1] for w in caught})
    if ref is not None:
        kl = np.concatenate(scorer.kl)
        out.update(kl_mean=float(kl.mean()), kl_p99=float(np.percentile(kl, 99)),
                   top1_same=float(np.concatenate(scorer.same_top).mean()))
    model.close()
    return out, scorer


def file_stats(setup: Setup, path: Path) -> dict:
    """File bytes, tensor-data bytes and bits per weight (tensor bits / F16 parameter count)."""
    tensor_bytes = sum(int(t.n_bytes) for t in gguf_reader(path).tensors)
    types: dict[str, int] = {}
    for t in gguf_reader(path).tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"file_bytes": path.stat().st_size, "tensor_bytes": tensor_bytes,
            "bpw": 8.0 * tensor_bytes / setup.n_params, "tensor_types": types}


def reference(setup: Setup, backend: str) -> tuple[dict, np.ndarray]:
    """The F16 file's result and its log-probabilities (N windows, scored positions, V), cached."""
    npy = setup.work / f"f16-logprobs-{setup.key}.npy"
    res_path = setup.work / "results" / "f16.json"
    if npy.exists() and res_path.exists():
        res = json.loads(res_path.read_text())
        if res.get("key") == setup.key:
            return res, np.load(npy)
    print(f"F16 reference: {setup.chunks} windows of {setup.ctx} tokens ...", flush=True)
    out, scorer = evaluate(setup, setup.f16, backend, None)
    ref = np.stack(scorer.logprobs)
    np.save(npy, ref)
    res = {"id": "f16", "method": "F16", "config": "F16", "status": "ok", "key": setup.key,
           **file_stats(setup, setup.f16), **out, "dppl": 0.0, "kl_mean": 0.0, "kl_p99": 0.0, "top1_same": 1.0}
    res_path.write_text(json.dumps(res, indent=1))
    for old in setup.work.glob("f16-logprobs-*.npy"):
        if old != npy:
            old.unlink()
    return res, ref


# --------------------------------------------------------------------------- variants
@dataclass
class Variant:
    """One quantized file to make and score."""

    id: str
    method: str  # "edgeslim", "llama.cpp", "llama.cpp+imatrix", "mlx-lm"
    config: str  # e.g. "sensitivity+gptq ggml", "Q4_K_M", "mixed_3_4"
    build: Callable[[Path], dict]  # writes the GGUF at the path; returns extra facts
    target_bpw: float | None = None
    series: str = ""  # the chart line / goal group it belongs to


def edgeslim_variants(setup: Setup, args) -> list[Variant]:
    """Every (family, signal, gptq, bpw) configuration asked for."""
    out = []
    for family in args.family.split(","):
        for signal in args.signals.split(","):
            for gptq in gptq_modes(args.gptq):
                series = f"{signal}{'+gptq' if gptq else ''} {family}"
                for bpw in parse_floats(args.bpw):
                    out.append(Variant(
                        f"edgeslim-{family}-{signal}{'-gptq' if gptq else ''}-{bpw:g}", "edgeslim", series,
                        lambda path, b=bpw, s=signal, g=gptq, f=family: build_edgeslim(setup, args, path, b, s, g, f),
                        bpw, series))
    return out


def gptq_modes(arg: str) -> list[bool]:
    return {"both": [False, True], "on": [True], "off": [False]}[arg]


def parse_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def build_edgeslim(setup: Setup, args, path: Path, bpw: float, signal: str, gptq: bool, family: str) -> dict:
    """edgeslim's converter at a bits-per-weight budget; Unavailable for a missing keyword / source kind."""
    from edgeslim.errors import FitError, InputError, UnsupportedError

    convert = edgeslim_convert()
    params = inspect.signature(convert).parameters
    missing = [k for k in ("bpw", "allocate", "calib", "calib_tokens", "gptq", "family") if k not in params]
    if missing:
        raise Unavailable(f"convert() has no {', '.join(missing)} keyword yet")
    calib = str(setup.calib) if setup.is_hf and not args.no_calib else False
    if gptq and not setup.is_hf:
        raise Unavailable("GPTQ needs a Hugging Face folder source (it runs the model's layers)")
    kwargs = dict(bpw=bpw, allocate=signal, calib=calib, calib_tokens=setup.calib_tokens, gptq=gptq,
                  family=family, force=True)
    if "progress" in params:
        kwargs["progress"] = False
    try:
        report = convert(str(setup.src), path, **kwargs)
    except (InputError, UnsupportedError, FitError) as err:
        raise Unavailable(str(err)) from None
    alloc = (report or {}).get("allocation") or {}
    return {"calibrated": calib is not False, "allocation_bpw": alloc.get("bpw")}


def llamacpp_variants(setup: Setup, args) -> list[Variant]:
    """llama-quantize types, plain and with the imatrix."""
    out = []
    for imatrix in (False, True):
        method = "llama.cpp+imatrix" if imatrix else "llama.cpp"
        for qtype in args.lcp_types.split(","):
            out.append(Variant(f"llamacpp{'-imatrix' if imatrix else ''}-{qtype}", method, qtype,
                               lambda path, q=qtype, im=imatrix: build_llamacpp(setup, args, path, q, im),
                               series=method))
    return out


def llama_tool(args, name: str) -> Path:
    exe = Path(args.llama_bin) / name
    if not exe.is_file():
        raise Unavailable(f"{exe} not found; build llama.cpp's tools (../shared/PEERS.md) and pass --llama-bin DIR")
    return exe


def run_logged(cmd: list, log: Path, env=None) -> str:
    """Run a command, output to `log`; CalledProcessError names the log on failure."""
    proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env)
    log.write_text(" ".join(map(str, cmd)) + "\n\n" + proc.stdout)
    if proc.returncode:
        tail = proc.stdout.strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}, see {log}): {tail[0][:200]}")
    return proc.stdout


def imatrix_file(setup: Setup, args) -> Path:
    """llama-imatrix over the calibration text: the same tokens budget edgeslim calibrates on."""
    out = setup.work / "files" / f"imatrix-{setup.key}.gguf"
    if not out.exists():
        chunks = max(1, math.ceil(setup.calib_tokens / CALIB_SEQ))
        run_logged([llama_tool(args, "llama-imatrix"), "-m", setup.f16, "-f", setup.calib, "-o", out,
                    "-c", CALIB_SEQ, "--chunks", chunks, "-t", args.threads], setup.work / "logs" / "imatrix.log")
    return out


def build_llamacpp(setup: Setup, args, path: Path, qtype: str, imatrix: bool) -> dict:
    cmd = [llama_tool(args, "llama-quantize")]
    if imatrix:
        cmd += ["--imatrix", imatrix_file(setup, args)]
    run_logged(cmd + [setup.f16, path, qtype, args.threads], setup.work / "logs" / f"{path.stem}.log")
    return {}


def mlx_variants(setup: Setup, args) -> list[Variant]:
    out = []
    for recipe in args.mlx_recipes.split(","):
        config = f"{recipe}-bit" if recipe.isdigit() else recipe
        out.append(Variant(f"mlx-{config}", "mlx-lm", config,
                           lambda path, r=recipe: build_mlx(setup, args, path, r),
                           series="mlx-lm" if recipe.isdigit() else "mlx-lm mixed"))
    return out


def build_mlx(setup: Setup, args, path: Path, recipe: str) -> dict:
    """`mlx_lm convert` (uniform bits or a mixed recipe), then its tensors into our affine GGUF."""
    import importlib.util

    if importlib.util.find_spec("mlx_lm") is None:
        raise Unavailable("mlx_lm is not installed (pip install mlx-lm)")
    if not setup.is_hf:
        raise Unavailable("mlx_lm converts Hugging Face folders; this source is a GGUF file")
    mlx_dir = setup.work / "files" / f"{path.stem}-mlx"
    shutil.rmtree(mlx_dir, ignore_errors=True)
    q = ["--q-bits", recipe] if recipe.isdigit() else ["--quant-predicate", recipe]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    log = run_logged([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", setup.src, "--mlx-path", mlx_dir,
                      "-q", "--q-group-size", args.mlx_group, *q], setup.work / "logs" / f"{path.stem}.log", env)
    m = re.search(r"Quantized model with ([\d.]+) bits per weight", log)
    mlx_bytes = sum(f.stat().st_size for f in mlx_dir.glob("*.safetensors"))
    mlx_to_gguf(setup.src, mlx_dir, path)
    return {"mlx_reported_bpw": float(m.group(1)) if m else None, "mlx_safetensors_bytes": mlx_bytes}


def mlx_to_gguf(hf_src: Path, mlx_dir: Path, out: Path) -> None:
    """Write mlx-lm's quantized model as an edgeslim GGUF, weights unchanged.

    Metadata, names and the unquantized tensors come from edgeslim's reader of the HF
    source; every matrix MLX quantized keeps its uint32 codes and f16 scales / biases
    (the affine layout is `mx.quantize`'s, see edgeslim/quants/affine.py), with the rows of
    Q and K permuted as the converter permutes them (rows are quantized independently,
    so permuting codes, scales and biases together is exact).
    """
    from safetensors.numpy import load_file

    from edgeslim.convert.arch import arch_for_config
    from edgeslim.convert.hf import read_config
    from edgeslim.convert.pipeline import open_source
    from edgeslim.gguf_write import GGUFOut
    from edgeslim.quants import QTensor
    from edgeslim.tables import affine_name

    mlx: dict[str, np.ndarray] = {}
    for f in sorted(mlx_dir.glob("*.safetensors")):
        mlx.update(load_file(str(f)))
    arch = arch_for_config(read_config(hf_src))
    model = open_source(str(hf_src))
    try:
        items = []
        for spec in model.tensors:
            hf = arch.hf_name(spec.name)
            stem = hf[: -len(".weight")] if hf.endswith(".weight") else hf
            if stem + ".scales" in mlx and len(spec.shape) == 2:
                rows, cols = spec.shape
                codes, scales, biases = mlx[hf], mlx[stem + ".scales"], mlx[stem + ".biases"]
                bits, group = codes.shape[1] * 32 // cols, cols // scales.shape[1]
                fix = lambda a: np.ascontiguousarray(arch.transform(spec.name, a))  # noqa: E731
                items.append((spec, QTensor(affine_name(bits, group), (rows, cols), fix(codes.view(np.uint32)),
                                            fix(scales.astype(np.float16)), fix(biases.astype(np.float16)))))
            else:
                w = spec.load()
                items.append((spec, w.astype(np.float16) if w.ndim == 2 else w.astype(np.float32)))
        with GGUFOut(out, arch=model.gguf_arch, force=True) as g:
            model.write_metadata(g.writer)
            for spec, q in items:
                g.plan(spec.name, spec.shape, q.qtype if isinstance(q, QTensor) else
                       ("F16" if q.dtype == np.float16 else "F32"))
            g.begin()
            for spec, q in items:
                g.write(spec.name, q)
    finally:
        model.close()


# ------------------------------------------------------------------------------- run
def run_variant(setup: Setup, args, v: Variant, ref: np.ndarray, f16: dict) -> dict:
    """Make, measure and score one variant; the result (also for failures) is cached."""
    res_path = setup.work / "results" / f"{v.id}.json"
    path = setup.work / "files" / f"{v.id}.gguf"
    base = {"id": v.id, "method": v.method, "config": v.config, "series": v.series, "target_bpw": v.target_bpw,
            "key": setup.key}
    t0 = time.perf_counter()
    try:
        with logged(setup.work / "logs" / f"{v.id}.build.log") if v.method == "edgeslim" else contextlib.nullcontext():
            extra = v.build(path)
        convert_s = time.perf_counter() - t0
        out, _ = evaluate(setup, path, args.backend, ref)
        res = {**base, "status": "ok", **extra, **file_stats(setup, path), **out, "convert_s": round(convert_s, 1),
               "dppl": out["ppl"] - f16["ppl"]}
        if not args.keep_files:
            path.unlink(missing_ok=True)
    except Unavailable as err:
        res = {**base, "status": "unavailable", "note": str(err)}
    except Exception as err:  # noqa: BLE001 - one failing configuration must not stop the benchmark
        res = {**base, "status": "error", "note": f"{type(err).__name__}: {err}"[:400]}
    res_path.write_text(json.dumps(res, indent=1))
    return res


def cached(setup: Setup, vid: str) -> dict | None:
    path = setup.work / "results" / f"{vid}.json"
    if path.exists():
        res = json.loads(path.read_text())
        if res.get("key") == setup.key:
            return res
    return None


def line(res: dict) -> str:
    """One progress line for a result."""
    if res["status"] != "ok":
        return f"{res['id']}: {res['status']}: {res.get('note', '')}"
    return (f"{res['id']}: {res['file_bytes'] / 1e6:.2f} MB {res['bpw']:.2f} bpw PPL {res['ppl']:.3f} "
            f"dPPL {res['dppl']:+.3f} KL {res['kl_mean']:.4f} top1 {100 * res['top1_same']:.1f}% "
            f"(make {res['convert_s']:.0f}s, eval {res['eval_s']:.0f}s)")


# ------------------------------------------------------------------------------ goals
def envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower envelope of (x, dppl): each kept point beats every point at smaller x."""
    out: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not out or y < out[-1][1]:
            out.append((x, y))
    return out


def at(env: list[tuple[float, float]], x: float) -> float | None:
    """The envelope at x: linear between points, flat past the last, None before the first."""
    if not env or x < env[0][0]:
        return None
    for (x0, y0), (x1, y1) in zip(env, env[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else min(y0, y1)
    return env[-1][1]


METRICS = {"dppl": "dPPL", "kl_mean": "KL"}  # the goals in the metric, then in KL (see docstring)


def goal_lines(results: list[dict], metric: str = "dppl") -> list[str]:
    """GOAL1..3 for every edgeslim configuration, as measured, in `metric` (dppl or kl_mean)."""
    ok = [r for r in results if r["status"] == "ok"]
    peers = [r for r in ok if r["method"] in PEERS]
    by_bytes = envelope([(r["file_bytes"], r[metric]) for r in peers])
    by_bpw = envelope([(r["bpw"], r[metric]) for r in peers])
    imat = envelope([(r["file_bytes"], r[metric]) for r in peers if r["method"] == "llama.cpp+imatrix"])
    lines = []
    if not peers:
        return ["GOAL: no peer results (llama.cpp / mlx-lm) to compare with"]
    series = sorted({r["series"] for r in ok if r["method"] == "edgeslim"})
    for s in series:
        pts = sorted((r for r in ok if r["series"] == s), key=lambda r: r["target_bpw"])
        lines += [goal1(s, pts, by_bytes, metric), goal2(s, pts, by_bpw, metric), goal3(s, pts, imat, metric)]
    return lines


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def goal1(s: str, pts: list[dict], env, metric: str = "dppl") -> str:
    m = METRICS[metric]
    parts, fails, tested = [], 0, 0
    for r in pts:
        peer = at(env, r["file_bytes"])
        if peer is None:
            parts.append(f"{r['target_bpw']:g}: no peer this small")
        elif peer <= 0:
            parts.append(f"{r['target_bpw']:g}: peer {m} {peer:+.4g} <= 0, untestable")
        else:
            tested += 1
            ratio = r[metric] / peer
            fails += ratio > GOAL1_RATIO
            parts.append(f"{r['target_bpw']:g}: {r[metric]:+.4g} vs {peer:+.4g} = {ratio:.2f}x")
    verdict = "UNTESTED" if not tested else _verdict(fails == 0)
    return f"GOAL1 [{s}] equal size {m} <= {GOAL1_RATIO}x best peer: {verdict} ({'; '.join(parts)})"


def goal2(s: str, pts: list[dict], env, metric: str = "dppl") -> str:
    m = METRICS[metric]
    mine = next((r for r in pts if r["target_bpw"] == GOAL2_AT), None)
    peer = at(env, GOAL2_VS)
    if mine is None or peer is None:
        return f"GOAL2 [{s}] {GOAL2_AT} bpw <= best peer at {GOAL2_VS} bpw ({m}): UNTESTED (no edgeslim " \
               f"{GOAL2_AT} result or no peer at {GOAL2_VS} bpw)"
    return (f"GOAL2 [{s}] {GOAL2_AT} bpw <= best peer at {GOAL2_VS} bpw ({m}): {_verdict(mine[metric] <= peer)} "
            f"(edgeslim {mine['bpw']:.2f} bpw {m} {mine[metric]:+.4g}; peers at {GOAL2_VS} bpw {peer:+.4g})")


def goal3(s: str, pts: list[dict], env, metric: str = "dppl") -> str:
    m = METRICS[metric]
    mine = next((r for r in pts if r["target_bpw"] == GOAL3_AT), None)
    peer = None if mine is None else at(env, mine["file_bytes"])
    if mine is None or peer is None:
        return f"GOAL3 [{s}] parity with llama.cpp+imatrix at {GOAL3_AT} bpw ({m}): UNTESTED (missing results)"
    ratio = f", {mine[metric] / peer:.2f}x" if peer > 0 else ""
    return (f"GOAL3 [{s}] parity with llama.cpp+imatrix at {GOAL3_AT} bpw ({m}): {_verdict(mine[metric] <= peer)} "
            f"(edgeslim {m} {mine[metric]:+.4g} at {mine['file_bytes'] / 1e6:.2f} MB; llama.cpp+imatrix at that "
            f"size {peer:+.4g}{ratio})")


# ----------------------------------------------------------------------------- report
ORDER = {"F16": 0, "edgeslim": 1, "llama.cpp": 2, "llama.cpp+imatrix": 3, "mlx-lm": 4}


def markdown(setup: Setup, f16: dict, results: list[dict], goals: list[str], png: str | None, meta: dict) -> str:
    ok = sorted((r for r in results if r["status"] == "ok"),
                key=lambda r: (ORDER.get(r["method"], 9), r.get("series", ""), r["file_bytes"]))
    rows = [
        "| method | configuration | target bpw | file bytes | bpw | PPL | ΔPPL | KL mean | KL p99 | top-1 same "
        "| make s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in [f16, *ok]:
        tb = f"{r['target_bpw']:g}" if r.get("target_bpw") else ""
        rows.append(f"| {r['method']} | {r['config']} | {tb} | {r['file_bytes']:,} | {r['bpw']:.3f} | "
                    f"{r['ppl']:.4f} | {r['dppl']:+.4f} | {r['kl_mean']:.5f} | {r['kl_p99']:.4f} | "
                    f"{100 * r['top1_same']:.2f}% | {r.get('convert_s', '')} |")
    other = [r for r in results if r["status"] != "ok"]
    lines = [
        f"# Quality benchmark: {setup.name}",
        "",
        f"Made by `{meta['command']}` on {meta['date']} ({meta['machine']}).",
        "",
        f"- model: `{setup.src}` ({setup.n_params:,} parameters); F16 GGUF by edgeslim's converter",
        f"- evaluation text: `{setup.text}`, {len(setup.tokens):,} tokens; {setup.chunks} windows of {setup.ctx} "
        f"tokens (llama-perplexity's windows: BOS first, second half scored), {f16['n_scored']:,} scored tokens",
        f"- F16 perplexity {f16['ppl']:.4f} ± {f16['ppl_error']:.4f}" + (
            f"; llama-perplexity on the same F16 file and windows: {meta['lcp_f16_ppl']:.4f}"
            if meta.get("lcp_f16_ppl") else ""),
        f"- calibration (edgeslim `calib=` and `llama-imatrix -f`): `{meta['calib_source']}`, "
        f"{setup.calib_tokens} tokens",
        f"- scored by edgeslim's runtime ({meta['backend']} backend, float32 KV cache) for every file; "
        "KL is KL(F16 ‖ quantized) per scored position; bpw = 8 × tensor bytes / parameters",
        "",
        *rows,
        "",
    ]
    if other:
        lines += ["Not measured:", ""] + [f"- `{r['id']}`: {r['status']}: {r.get('note', '')}" for r in other] + [""]
    lines += ["## Goals (as measured)", "", "```", *goals, "```", ""]
    if png is not None:
        lines += [f"![bytes vs ΔPPL]({png})", ""]
    return "\n".join(lines)


def chart(setup: Setup, results: list[dict], png: Path) -> bool:
    """File size against ΔPPL and KL, one line per series; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in results if r["status"] == "ok" and r["method"] != "F16"]
    f16_ppl = next((r["ppl"] for r in results if r["method"] == "F16"), 1.0)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.get_cmap("tab20").colors
    for i, s in enumerate(sorted({r["series"] for r in ok}, key=lambda s: (s.startswith(("llama", "mlx")), s))):
        pts = sorted((r for r in ok if r["series"] == s), key=lambda r: r["file_bytes"])
        style = "-o" if pts[0]["method"] == "edgeslim" else "--s"
        for ax, key in zip(axes, ("dppl", "kl_mean")):
            ax.plot([r["file_bytes"] / 1e6 for r in pts], [r[key] for r in pts], style, label=s, ms=4,
                    color=colors[(2 * i) % 20 + (2 * i) // 20 % 2])
    axes[0].set_yscale("symlog", linthresh=max(1e-3 * f16_ppl, 1e-3))  # ΔPPL can be <= 0 near F16
    axes[1].set_yscale("log")
    for ax, title in zip(axes, ("ΔPPL vs F16", "mean KL(F16 ‖ quantized)")):
        ax.set_xlabel("file size (MB)")
        ax.set_title(f"{setup.name}: {title}")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def llama_perplexity_f16(setup: Setup, args) -> float | None:
    """llama-perplexity's own PPL of the F16 file on the same text and windows (a cross-check)."""
    try:
        exe = llama_tool(args, "llama-perplexity")
    except Unavailable:
        return None
    log = run_logged([exe, "-m", setup.f16, "-f", setup.text, "-c", setup.ctx, "--chunks", setup.chunks,
                      "-b", max(setup.ctx, 512), "-t", args.threads], setup.work / "logs" / "llama-perplexity-f16.log")
    m = re.search(r"Final estimate: PPL = ([\d.]+)", log)
    return float(m.group(1)) if m else None


# ------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ref",
                   help="'ref' (~/.cache/edgeslim/reference-model), 'stories260k', or an HF folder / GGUF path")
    p.add_argument("--text", help="evaluation text (default: wikitext-2 test; TinyStories val for stories260k)")
    p.add_argument("--calib", help="calibration text (default: wikitext-2 valid; the built-in one for stories260k)")
    p.add_argument("--calib-tokens", type=int, default=4096)
    p.add_argument("--no-calib", action="store_true", help="edgeslim without calibration (calib=False)")
    p.add_argument("--work", help="cache folder (default ~/.cache/edgeslim/bench-quality/NAME)")
    p.add_argument("--only", default=",".join(PIECES), help="comma list of edgeslim, llamacpp, mlx")
    p.add_argument("--report-only", action="store_true", help="make nothing; rebuild the report from the cache")
    p.add_argument("--bpw", default="2.5,3.0,3.5,4.0,4.5", help="edgeslim budgets (bits per weight)")
    p.add_argument("--signals", default=",".join(SIGNALS))
    p.add_argument("--gptq", choices=("both", "on", "off"), default="both")
    p.add_argument("--family", default="ggml", help="edgeslim families: ggml, affine or ggml,affine")
    p.add_argument("--lcp-types", default=LCP_TYPES)
    p.add_argument("--mlx-recipes", default=MLX_RECIPES)
    p.add_argument("--mlx-group", type=int, default=64)
    p.add_argument("--llama-bin", default="/tmp/lcp-build/bin", help="folder with llama-quantize, llama-imatrix")
    p.add_argument("--ctx", type=int, default=512, help="window length (capped at the model's context)")
    p.add_argument("--max-chunks", type=int, default=20, help="windows to score (0: the whole text)")
    p.add_argument("--backend", default="numpy", choices=("numpy", "numba"),
                   help="runtime backend that scores every file (numpy: float32 math on dequantized weights, "
                        "so only the weights differ; numba: the fast kernels, int8 activations below 257 tokens)")
    p.add_argument("--threads", type=int, default=2, help="threads for the llama.cpp tools")
    p.add_argument("--fresh", action="store_true", help="recompute cached results and the F16 file")
    p.add_argument("--keep-files", action="store_true", help="keep every quantized GGUF in the work folder")
    p.add_argument("--md", type=Path, help="markdown report (default WORK/report.md)")
    p.add_argument("--json", type=Path, help="JSON results (default WORK/report.json)")
    p.add_argument("--png", type=Path, help="chart (default beside the markdown, NAME-quality.png)")
    args = p.parse_args(argv)
    bad = set(args.only.split(",")) - set(PIECES)
    if bad:
        p.error(f"--only takes {', '.join(PIECES)}; got {', '.join(sorted(bad))}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.perf_counter()
    setup = make_setup(args)
    print(f"{setup.name}: {len(setup.tokens):,} tokens, {setup.chunks} windows of {setup.ctx}; work {setup.work} "
          f"(key {setup.key})", flush=True)
    f16, ref = reference(setup, args.backend)
    print(f"F16: PPL {f16['ppl']:.4f} ± {f16['ppl_error']:.4f} ({f16['eval_s']:.0f}s)", flush=True)

    makers = {"edgeslim": edgeslim_variants, "llamacpp": llamacpp_variants, "mlx": mlx_variants}
    pieces = [] if args.report_only else args.only.split(",")
    todo = [v for piece in pieces for v in makers[piece](setup, args)]
    for i, v in enumerate(todo, 1):
        res = None if args.fresh else cached(setup, v.id)
        if res is None or res["status"] == "error":
            res = run_variant(setup, args, v, ref, f16)
        print(f"[{i}/{len(todo)}] {line(res)}", flush=True)

    results = [r for f in sorted((setup.work / "results").glob("*.json")) if f.name != "f16.json"
               for r in [json.loads(f.read_text())] if r.get("key") == setup.key]
    meta = {"command": "python scripts/bench_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": time.strftime("%Y-%m-%d"), "backend": args.backend,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
            "calib_source": str(args.calib or PRESETS.get(args.model, (None, None, WIKI_VALID))[2] or "built-in text"),
            "lcp_f16_ppl": None}
    if "llamacpp" in pieces and "llama_perplexity" not in f16:
        try:
            f16["llama_perplexity"] = llama_perplexity_f16(setup, args)
            (setup.work / "results" / "f16.json").write_text(json.dumps(f16, indent=1))
        except RuntimeError as err:
            print(f"llama-perplexity cross-check failed: {err}")
    meta["lcp_f16_ppl"] = f16.get("llama_perplexity")
    goals = goal_lines(results) + goal_lines(results, "kl_mean")
    md_path = args.md or setup.work / "report.md"
    png = args.png or md_path.with_name(f"{setup.name}-quality.png")
    for folder in {md_path.parent, png.parent}:
        folder.mkdir(parents=True, exist_ok=True)
    have_png = chart(setup, [f16, *results], png)
    link = os.path.relpath(png, md_path.parent) if have_png else None
    md_path.write_text(markdown(setup, f16, results, goals, link, meta))
    (args.json or setup.work / "report.json").write_text(json.dumps(
        {"meta": meta, "setup": {"model": str(setup.src), "text": str(setup.text), "tokens": len(setup.tokens),
                                 "ctx": setup.ctx, "chunks": setup.chunks, "n_params": setup.n_params,
                                 "calib_tokens": setup.calib_tokens, "key": setup.key},
         "f16": f16, "results": results, "goals": goals}, indent=1))
    print("\n".join(goals))
    print(f"report: {md_path}" + (f", chart: {png}" if have_png else " (no chart: pip install matplotlib)")
          + f"; {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
