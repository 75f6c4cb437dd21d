"""bench_quality's scorers: KL(F16 || quantized), perplexity and top-token agreement of a GGUF file.

* `LlamaScorer`: llama.cpp's own measurement, `llama-perplexity --kl-divergence` against the
  F16 file's saved logits (`--kl-divergence-base`), float32 KV cache on both sides. Every
  ggml-family file (llama.cpp's and edgeslim's) is scored this way.
* `EdgeslimScorer`: edgeslim's runtime (`edgeslim.load(...).logits`, numpy backend, float32
  KV cache) over llama-perplexity's windows (`runtime.perplexity`: --ctx tokens, BOS first,
  second half scored): for files llama.cpp cannot load (mlx-lm's affine layout). The report
  shows that both scorers agree on the F16 file (PPL) and on one quantized file (KL).
"""
from __future__ import annotations

import re
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np

# one row per chunk, running means: chunk, PPL ± err, ln(PPL ratio) ± err, KL ± err, Δp RMS ± err %, same top ± err %
CHUNK_ROW = re.compile(r"^\s*(\d+)\s+([\d.]+)\s*±\s*([\d.]+)\s+-?[\d.]+\s*±\s*[\d.]+\s+(-?[\d.]+)\s*±\s*[\d.]+"
                       r"\s+[\d.]+\s*±\s*[\d.]+\s*%\s+([\d.]+)\s*±", re.M)
# llama.cpp's tools log from a thread that is never joined at exit (common_log_main() holds a leaked
# pointer), so the last lines (the final chunk row, the summary) can be lost, often on a loaded machine:
# the scorer runs one window more than it scores and reads the running means of chunk row `chunks`.
EXTRA_CHUNKS = 1


class ScoreError(RuntimeError):
    """A scorer could not measure a file (the message names its log)."""


def run_logged(cmd: list, log: Path, env=None, cwd=None) -> str:
    """Run a command with its output in `log` (a file, not a pipe: llama.cpp's tools log from a
    thread whose last lines a pipe can lose at exit); ScoreError naming the log when it fails."""
    with open(log, "w") as fh:
        fh.write(" ".join(map(str, cmd)) + "\n\n")
        fh.flush()
        proc = subprocess.run([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    text = log.read_text(errors="replace")
    if proc.returncode:
        tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or [""]
        raise ScoreError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}, see {log}): {tail[0][:200]}")
    return text


def parse_chunks(text: str, chunks: int) -> dict:
    """The running means of chunk row `chunks`: the first `chunks` windows (no KL p99 there)."""
    rows = {int(r[0]): r for r in CHUNK_ROW.findall(text)}
    if chunks not in rows:
        raise ScoreError(f"llama-perplexity printed no chunk row {chunks} ({len(rows)} rows)")
    _, ppl, err, kl, same = rows[chunks]
    return {"ppl": float(ppl), "ppl_error": float(err), "kl_mean": float(kl), "kl_p99": None,
            "top1_same": float(same) / 100.0}


class LlamaScorer:
    """llama-perplexity over the first `chunks` windows of `ctx` tokens of `text`."""

    name = "llama-perplexity"

    def __init__(self, exe: Path, f16: Path, text: Path, ctx: int, chunks: int, threads: int, work: Path, key: str):
        self.exe, self.text, self.ctx, self.chunks, self.threads, self.work = exe, text, ctx, chunks, threads, work
        self.base = work / f"f16-{key}-n{chunks + EXTRA_CHUNKS}.kld"
        self.f16 = f16

    def _cmd(self, model: Path) -> list:
        return [self.exe, "-m", model, "-f", self.text, "-c", self.ctx, "--chunks", self.chunks + EXTRA_CHUNKS, "-b", 2048,
                "-t", self.threads, "-ctk", "f32", "-ctv", "f32", "--kl-divergence-base", self.base]

    def reference(self) -> dict:
        """Save the F16 file's logits (once) and return its PPL."""
        log = self.work / "logs" / "llama-perplexity-f16.log"
        if not self.base.exists() or not log.exists():
            tmp = self.base.with_suffix(".part")
            cmd = self._cmd(self.f16)
            cmd[-1] = tmp
            run_logged(cmd, log)
            tmp.rename(self.base)
        m = re.search(rf"\[{self.chunks}\]([\d.]+)", log.read_text())  # running PPL after `chunks` windows
        if m is None:
            raise ScoreError(f"no PPL after {self.chunks} windows in {log}")
        return {"ppl": float(m.group(1)), "ppl_error": None}

    def score(self, path: Path, log: Path) -> dict:
        if not self.base.exists():
            self.reference()
        t0 = time.perf_counter()
        out = parse_chunks(run_logged(self._cmd(path) + ["--kl-divergence"], log), self.chunks)
        out.update(eval_s=round(time.perf_counter() - t0, 1), scorer=self.name)
        return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(N, V) -> float64 log-probabilities."""
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


class _Session:
    """The session `runtime.perplexity.perplexity` drives, on the public `Model.logits`: each window's
    scored log-probabilities are kept (the F16 reference) or compared with the reference."""

    def __init__(self, model, n_ctx: int, ref: np.ndarray | None = None):
        self.model, self.n_ctx, self.ref, self.window = model, n_ctx, ref, 0
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


class EdgeslimScorer:
    """edgeslim's runtime over llama-perplexity's windows of `tokens` (see module doc)."""

    name = "edgeslim"

    def __init__(self, f16: Path, tokens: list[int], bos: int | None, ctx: int, chunks: int, work: Path, key: str):
        self.f16, self.tokens, self.bos, self.ctx, self.chunks = f16, tokens, bos, ctx, chunks
        self.npy = work / f"f16-logprobs-{key}.npy"
        self.ref: np.ndarray | None = None

    def _run(self, path: Path, ref: np.ndarray | None) -> tuple[dict, _Session]:
        import edgeslim
        from edgeslim.runtime.perplexity import perplexity

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = edgeslim.load(path, backend="numpy", n_ctx=self.ctx, kv_dtype="float32")
        t0 = time.perf_counter()
        session = _Session(model, self.ctx, ref)
        res = perplexity(session, self.tokens, self.bos, self.chunks)
        model.close()
        return {"ppl": res.ppl, "ppl_error": res.ppl_error, "eval_s": round(time.perf_counter() - t0, 1),
                "scorer": self.name}, session

    def reference(self) -> dict:
        out, session = self._run(self.f16, None)
        self.ref = np.stack(session.logprobs)  # (windows, scored positions, V)
        np.save(self.npy, self.ref)
        return out

    def score(self, path: Path, log: Path | None = None) -> dict:
        if self.ref is None:
            self.ref = np.load(self.npy) if self.npy.exists() else None
            if self.ref is None:
                self.reference()
        out, session = self._run(path, self.ref)
        kl = np.concatenate(session.kl)
        out.update(kl_mean=float(kl.mean()), kl_p99=float(np.percentile(kl, 99)),
                   top1_same=float(np.concatenate(session.same_top).mean()))
        return out
