"""Peers' files on the sweep's axes: llama.cpp (`llama-quantize`) and mlx-lm (`mlx_lm convert`), when installed.

Every peer file is measured exactly as edgeslim's own (edgeslim's runtime reads llama.cpp
GGUFs; mlx-lm's quantized tensors are copied unchanged into edgeslim's affine GGUF layout,
the same `mx.quantize` layout, by `edgeslim.convert.mlx_import.mlx_to_gguf`), so the
points differ only in how the weights were compressed.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edgeslim.convert.mlx_import import mlx_to_gguf

LLAMA_BY_BITS = {8: "Q8_0", 6: "Q6_K", 5: "Q5_K_M", 4: "Q4_K_M", 3: "Q3_K_M", 2: "Q2_K"}
MLX_BITS = (2, 3, 4, 5, 6, 8)


class Unavailable(Exception):
    """This peer cannot make this file here (tool missing, source kind)."""


@dataclass(frozen=True)
class PeerPoint:
    """One peer file: method ("llama.cpp" or "mlx-lm"), its configuration name and nominal bits."""

    method: str
    config: str
    bits: int

    def label(self) -> str:
        return f"{self.method} {self.config}"

    def series(self) -> str:
        return self.method

    def key_fields(self) -> dict:
        return {"peer": self.method, "config": self.config}


def llama_bin(arg: str | None) -> Path | None:
    """Folder holding llama-quantize: --llama-bin, $EDGESLIM_LLAMA_BIN, or the PATH."""
    for cand in (arg, os.environ.get("EDGESLIM_LLAMA_BIN")):
        if cand and (Path(cand) / "llama-quantize").is_file():
            return Path(cand)
    found = shutil.which("llama-quantize")
    return Path(found).parent if found else None


def peer_points(names: list[str], bits: list[float]) -> list[PeerPoint]:
    """The peer files for the integer bits of the grid."""
    out = []
    for b in sorted({int(b) for b in bits if float(b).is_integer()}, reverse=True):
        if "llama.cpp" in names and b in LLAMA_BY_BITS:
            out.append(PeerPoint("llama.cpp", LLAMA_BY_BITS[b], b))
        if "mlx-lm" in names and b in MLX_BITS:
            out.append(PeerPoint("mlx-lm", f"{b}-bit g64", b))
    return out


def build(peer: PeerPoint, src: str, f16: Path, out: Path, work: Path, bin_dir: Path | None, log: Path) -> dict:
    """Write the peer's file at `out`; Unavailable when it cannot be made here."""
    if peer.method == "llama.cpp":
        if bin_dir is None:
            raise Unavailable("llama-quantize not found (pass --llama-bin DIR)")
        _run([bin_dir / "llama-quantize", f16, out, peer.config, str(os.cpu_count() or 1)], log)
        return {}
    return build_mlx(peer, src, out, work, log)


def build_mlx(peer: PeerPoint, src: str, out: Path, work: Path, log: Path) -> dict:
    """`mlx_lm convert` at the peer's bits (group 64), then its tensors into an edgeslim GGUF."""
    if importlib.util.find_spec("mlx_lm") is None:
        raise Unavailable("mlx_lm is not installed (pip install mlx-lm)")
    if not Path(src).is_dir():
        raise Unavailable("mlx_lm converts Hugging Face folders; this source is a GGUF file")
    mlx_dir = work / f"{out.stem}-mlx"
    shutil.rmtree(mlx_dir, ignore_errors=True)
    text = _run([sys.executable, "-m", "mlx_lm", "convert", "--hf-path", src, "--mlx-path", mlx_dir, "-q",
                 "--q-bits", str(peer.bits), "--q-group-size", "64"], log)
    mlx_to_gguf(Path(src), mlx_dir, out)
    m = re.search(r"Quantized model with ([\d.]+) bits per weight", text)
    shutil.rmtree(mlx_dir, ignore_errors=True)
    return {"mlx_reported_bpw": float(m.group(1)) if m else None}


def _run(cmd: list, log: Path) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env)
    log.write_text(" ".join(map(str, cmd)) + "\n\n" + proc.stdout)
    if proc.returncode:
        raise RuntimeError(f"{Path(str(cmd[0])).name} failed (exit {proc.returncode}, see {log})")
    return proc.stdout
