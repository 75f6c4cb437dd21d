"""The sweep's measurements, each in a child process: convert, quality (edgeslim eval), speed and memory.

Quality is `edgeslim eval FILE --kl-base F16 --text TEXT --tasks ... --json` (the public command);
the F16 file itself is evaluated without --kl-base (KL 0, top-1 agreement 1 by definition).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class MeasureError(Exception):
    """A child process failed; the message names its log."""


@dataclass(frozen=True)
class Setup:
    """How every file is measured (part of every cache key)."""

    text: str | None  # perplexity / KL text (None: the built-in task stories)
    ctx: int
    chunks: int
    tasks: str  # "" for none
    task_n: int
    task_seed: int
    task_text: str | None
    backend: str
    decode_tokens: int
    prompt_tokens: int = 32
    speed_backend: str = ""  # "" -> backend

    def key_fields(self, text_sha: str, task_text_sha: str) -> dict:
        """The fields that change results, with the texts by content hash rather than path."""
        from ..runtime.tasks.runner import VERSION

        d = dict(self.__dict__)
        d.update(text=text_sha, task_text=task_text_sha, tasks_version=VERSION)
        return d


def run_json(cmd: list, log: Path, timeout: float | None = None) -> dict:
    """Run a child; its stderr (and stdout) go to `log`; the last stdout line parsed as JSON."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")
    with open(log, "w") as err:
        err.write(" ".join(map(str, cmd)) + "\n\n")
        err.flush()
        proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                              timeout=timeout)
        err.write("\n--- stdout ---\n" + proc.stdout)
    if proc.returncode:
        tail = log.read_text(errors="replace").split("\n--- stdout ---")[0].strip().splitlines()[-1:] or [""]
        raise MeasureError(f"{Path(str(cmd[2] if len(cmd) > 2 else cmd[0])).name} failed (exit {proc.returncode}, "
                           f"see {log}): {tail[0][:300]}")
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise MeasureError(f"no JSON result from {cmd[:4]} (see {log})") from None


def convert_file(src: str, out: Path, kwargs: dict, log: Path) -> dict:
    """edgeslim's converter in a child process."""
    spec = json.dumps({"src": str(src), "out": str(out), "kwargs": kwargs})
    return run_json([sys.executable, "-m", "edgeslim.sweep.worker", "convert", spec], log)


def quality(path: Path, f16: Path | None, setup: Setup, log: Path) -> dict:
    """PPL, KL against f16 (when given) and task rows of one file, through `edgeslim eval --json`."""
    cmd = [sys.executable, "-m", "edgeslim.cli", "eval", path, "--backend", setup.backend, "--ctx", setup.ctx,
           "--kv-dtype", "float32", "--json"]
    text = setup.text or str(_builtin_text())
    cmd += ["--text", text, "--chunks", setup.chunks]
    if f16 is not None:
        cmd += ["--kl-base", f16]
    if setup.tasks:
        cmd += ["--tasks", setup.tasks, "--task-n", setup.task_n, "--task-seed", setup.task_seed]
        if setup.task_text:
            cmd += ["--task-text", setup.task_text]
    res = run_json(cmd, log)
    out = {"ppl": res["ppl"], "ppl_error": res["ppl_error"], "n_scored": res["n_scored"]}
    if "kl" in res:
        k = res["kl"]
        out.update(kl_mean=k["kl_mean"], kl_error=k["kl_error"], kl_p99=k["kl_p99"], top1_same=k["top1_same"],
                   dppl=k["ppl"] - k["ppl_base"], ppl_base=k["ppl_base"])
    else:
        out.update(kl_mean=0.0, kl_error=0.0, kl_p99=0.0, top1_same=1.0, dppl=0.0, ppl_base=res["ppl"])
    out["tasks"] = {r["name"]: {k: r[k] for k in ("accuracy", "lo", "hi", "n", "chance", "outcomes")}
                    for r in res.get("tasks", [])}
    return out


def speed(path: Path, setup: Setup, log: Path) -> dict:
    """Decode tok/s, prompt tok/s, load time and peak RSS of the runtime on one file (its own process)."""
    cmd = [sys.executable, "-m", "edgeslim.sweep.worker", "speed", path, "--backend",
           setup.speed_backend or setup.backend,
           "--tokens", setup.decode_tokens, "--prompt-tokens", setup.prompt_tokens]
    if setup.text:
        cmd += ["--text", setup.text]
    return run_json(cmd, log)


def _builtin_text() -> Path:
    from ..runtime.tasks import BUILTIN_TEXT

    return BUILTIN_TEXT


def file_facts(path: Path, n_params: int | None) -> dict:
    """File bytes, tensor bytes, bits per weight (tensor bits / parameters) and the type counts."""
    from ..gguf_file import GGUFFile

    g = GGUFFile(path)
    try:
        tensors = list(g.tensors.values())
        tbytes = sum(int(t.nbytes) for t in tensors)
        n = n_params or sum(t.n_elements for t in tensors)
        types: dict[str, int] = {}
        for t in tensors:
            types[t.type_name] = types.get(t.type_name, 0) + 1
    finally:
        g.close()
    return {"file_bytes": path.stat().st_size, "tensor_bytes": tbytes, "n_params": n, "bpw": 8.0 * tbytes / n,
            "tensor_types": types}
