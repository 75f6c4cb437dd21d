"""bench_quality's file makers: edgeslim, llama.cpp (every type, with and without an imatrix), mlx-lm.

Each maker writes one GGUF at the path it is given and returns extra facts for the result;
`Unavailable` says why a configuration cannot be made here (missing tool or keyword, a
type llama.cpp refuses without an imatrix, a source kind the tool does not take).
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import math
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np

from _quality_score import ScoreError, run_logged

from edgeslim.convert.mlx_import import mlx_to_gguf

# Every llama-quantize file type of weights (its presets with their K / IQ mixtures included).
LCP_TYPES = ("IQ1_S,IQ1_M,IQ2_XXS,IQ2_XS,IQ2_S,IQ2_M,IQ3_XXS,IQ3_XS,IQ3_S,IQ3_M,IQ4_XS,IQ4_NL,Q2_K_S,Q2_K,"
             "Q3_K_S,Q3_K_M,Q3_K_L,Q4_0,Q4_1,Q4_K_S,Q4_K_M,Q5_0,Q5_1,Q5_K_S,Q5_K_M,Q6_K,Q8_0")
MLX_RECIPES = "2,3,4,5,6,mixed_2_6,mixed_3_4,mixed_3_6,mixed_4_6"
# dynamic_LOW_HIGH recipes (mlx_lm dynamic_quant) are opt-in (--mlx-recipes ...,dynamic_3_4): its
# sensitivity pass (gradients on MLX's CPU backend) took 12 min on the 3.7M-parameter demo model here
# mlx_lm dynamic_quant reads its calibration text from a file it downloads; offline, this runs
# it on ours instead (the same text edgeslim and llama-imatrix calibrate on): argv = calib file, its flags
DYNAMIC_OFFLINE = """
import sys
import mlx.core as mx
from mlx_lm.quant import dynamic_quant as dq
text = open(sys.argv[1], encoding="utf-8").read()
def load_data(tokenizer, num_samples, sequence_length):
    tokens = tokenizer.encode(text, return_tensors="mlx")[0]
    tokens = tokens[: (tokens.size // sequence_length) * sequence_length].reshape(-1, sequence_length)
    return tokens[mx.random.permutation(tokens.shape[0])]
dq.load_data = load_data
sys.argv = ["dynamic_quant"] + sys.argv[2:]
dq.main()
"""
CALIB_SEQ = 512  # tokens per calibration sequence (edgeslim's default; llama-imatrix -c)


class Unavailable(Exception):
    """This configuration cannot be made here."""


@contextlib.contextmanager
def logged(path: Path):
    """Send stdout/stderr prints (the converter's fit report and notes) to a log file."""
    with open(path, "w") as fh, contextlib.redirect_stderr(fh), contextlib.redirect_stdout(fh):
        yield


def edgeslim_convert():
    from edgeslim.convert.pipeline import convert

    return convert


def build_edgeslim(setup, path: Path, *, signal: str, gptq: bool, bpw: float | None = None,
                   size: int | None = None, family: str = "ggml", calib: bool = True) -> dict:
    """edgeslim's converter at a bits-per-weight or file-size budget."""
    from edgeslim.errors import FitError, InputError, UnsupportedError

    convert = edgeslim_convert()
    params = inspect.signature(convert).parameters
    calib_arg = str(setup.calib) if setup.is_hf and calib else False
    if gptq and not setup.is_hf:
        raise Unavailable("GPTQ needs a Hugging Face folder source (it runs the model's layers)")
    kwargs = dict(allocate=signal, calib=calib_arg, calib_tokens=setup.calib_tokens, gptq=gptq, family=family,
                  force=True, progress=False)
    kwargs.update({"bpw": bpw} if bpw is not None else {"size": int(size)})
    missing = [k for k in kwargs if k not in params]
    if missing:
        raise Unavailable(f"convert() has no {', '.join(missing)} keyword yet")
    try:
        report = convert(str(setup.src), path, **kwargs)
    except (InputError, UnsupportedError, FitError) as err:
        raise Unavailable(str(err)) from None
    alloc = (report or {}).get("allocation") or {}
    types: dict[str, int] = {}
    for t in (alloc.get("tensors") or {}).values():
        types[t["type"]] = types.get(t["type"], 0) + 1
    return {"calibrated": calib_arg is not False, "allocation_bpw": alloc.get("bpw"), "allocated_types": types}


def llama_tool(bin_dir, name: str) -> Path:
    exe = Path(bin_dir) / name
    if not exe.is_file():
        raise Unavailable(f"{exe} not found; build llama.cpp's tools (../shared/PEERS.md) and pass --llama-bin DIR")
    return exe


def imatrix_file(setup, bin_dir, threads: int) -> tuple[Path, float]:
    """llama-imatrix over the calibration text (the token budget edgeslim calibrates on): (file, seconds)."""
    import time

    out = setup.work / "files" / f"imatrix-{setup.key}.gguf"
    stamp = out.with_suffix(".seconds")
    if not out.exists():
        chunks = max(1, math.ceil(setup.calib_tokens / CALIB_SEQ))
        t0 = time.perf_counter()
        run_logged([llama_tool(bin_dir, "llama-imatrix"), "-m", setup.f16, "-f", setup.calib, "-o", out,
                    "-c", CALIB_SEQ, "--chunks", chunks, "-t", threads], setup.work / "logs" / "imatrix.log")
        stamp.write_text(f"{time.perf_counter() - t0:.1f}")
    return out, float(stamp.read_text()) if stamp.exists() else 0.0


def build_llamacpp(setup, path: Path, *, qtype: str, imatrix: bool, bin_dir, threads: int) -> dict:
    """llama-quantize from the F16 file (with --imatrix: the imatrix's time is counted in)."""
    cmd, extra = [llama_tool(bin_dir, "llama-quantize")], {}
    if imatrix:
        im, seconds = imatrix_file(setup, bin_dir, threads)
        cmd += ["--imatrix", im]
        extra["imatrix_s"] = seconds
    try:
        run_logged(cmd + [setup.f16, path, qtype, threads], setup.work / "logs" / f"{path.stem}.log")
    except ScoreError as err:
        if not imatrix and "imatrix" in (setup.work / "logs" / f"{path.stem}.log").read_text().lower():
            raise Unavailable(f"llama-quantize refuses {qtype} without an importance matrix") from None
        raise Unavailable(str(err)) from None
    return extra


def build_mlx(setup, path: Path, *, recipe: str, group: int) -> dict:
    """`mlx_lm convert` (uniform bits, a mixed recipe) or `mlx_lm dynamic_quant`, then its tensors
    into edgeslim's affine GGUF layout unchanged (`mlx_to_gguf`)."""
    if importlib.util.find_spec("mlx_lm") is None:
        raise Unavailable("mlx_lm is not installed (pip install mlx-lm)")
    if not setup.is_hf:
        raise Unavailable("mlx_lm converts Hugging Face folders; this source is a GGUF file")
    mlx_dir = setup.work / "files" / f"{path.stem}-mlx"
    shutil.rmtree(mlx_dir, ignore_errors=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    log_path = setup.work / "logs" / f"{path.stem}.log"
    if recipe.startswith("dynamic_"):  # dynamic_LOW_HIGH: bits per layer chosen by measured sensitivity
        low, high = (int(b) for b in recipe.split("_")[1:])
        cmd = [sys.executable, "-c", DYNAMIC_OFFLINE, setup.calib, "--model", setup.src, "--mlx-path", mlx_dir,
               "--low-bits", low, "--high-bits", high, "--target-bpw", (low + high) / 2 + 32 / group,
               "--low-group-size", group, "--high-group-size", group]
    else:
        q = ["--q-bits", recipe] if recipe.isdigit() else ["--quant-predicate", recipe]
        cmd = [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", setup.src, "--mlx-path", mlx_dir,
               "-q", "--q-group-size", group, *q]
    try:
        log = run_logged(cmd, log_path, env, cwd=setup.work / "files")
    except ScoreError as err:
        raise Unavailable(f"mlx_lm {'convert' if recipe[0].isdigit() or 'mixed' in recipe else 'dynamic_quant'}: "
                          f"{err}") from None
    m = re.search(r"Quantized model with ([\d.]+) bits per weight", log)
    mlx_bytes = sum(f.stat().st_size for f in mlx_dir.glob("*.safetensors"))
    mlx_to_gguf(setup.src, mlx_dir, path)
    return {"mlx_reported_bpw": float(m.group(1)) if m else None, "mlx_safetensors_bytes": mlx_bytes}
