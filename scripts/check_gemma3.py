"""edgeslim vs llama.cpp on the real Gemma-3-270M Q4_K_M file (fetch it with scripts/fetch_gemma3.py).

    python scripts/check_gemma3.py [--model PATH] [--tokens 600] [--backend numba] [--threads 2]

Prints, against llama-cpp-python on the same file (F32 KV cache, 2 threads):
  * logits over WikiText-2 test text (600 tokens by default: past the 512-token sliding
    window): mean KL(llama.cpp || edgeslim) and top-1 agreement;
  * greedy continuation of a few prompts: tokens equal before the first difference;
  * the tokenizer on varied text (WikiText lines, llama.cpp's SPM test inputs, specials):
    identical id sequences, with and without special-token parsing;
  * decode tok/s (64 tokens after a short prompt) for both, and the ratio.
Timings on a busy machine are indicative only; the lead runs them on a quiet one.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
PROMPTS = ("The capital of France is", "Once upon a time, there was a little", "def fibonacci(n):",
           "The three primary colors are")
EXTRA_TEXTS = ("Hello  world", "  leading spaces", "tabs\tand\nnewlines\n\n", "émigré naïve 日本語 🦙",
               "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n", "<b>bold</b> &amp; 3.14159", "x" * 50)


def default_model() -> Path:
    sys.path.insert(0, str(HERE))
    from fetch_gemma3 import default_path

    return default_path()


def corpus_text(n_chars: int = 40000) -> str:
    return (DATA / "corpora" / "wikitext-2" / "test.txt").read_text(encoding="utf-8")[:n_chars]


def llama(path, n_ctx: int = 1024, threads: int = 2, **kw):
    import llama_cpp

    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False, **kw)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_top1(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(mean KL(ref || got) over rows, share of rows with the same argmax)."""
    lr, lg = log_softmax(ref), log_softmax(got)
    kl = (np.exp(lr) * (lr - lg)).sum(-1)
    return float(kl.mean()), float((ref.argmax(-1) == got.argmax(-1)).mean())


def logits_check(path, backend: str, n_tokens: int, threads: int = 2, n_steps: int = 40) -> tuple[float, float]:
    """Logits of n_tokens of WikiText: prefill in two batches, then the last n_steps one at a time
    (both attention paths and, past 512 tokens, the sliding-window ring run)."""
    import edgeslim

    model = edgeslim.load(path, backend=backend, kv_dtype="float32")
    ids = model.tokenizer.encode(corpus_text())[:n_tokens]
    be = model._backend
    cache = be.new_cache(n_tokens)
    half, tail = n_tokens // 2, n_tokens - n_steps
    got = [be.forward(ids[:half], cache, n_logits=half), be.forward(ids[half:tail], cache, n_logits=tail - half)]
    got += [be.forward([t], cache) for t in ids[tail:]]
    llm = llama(path, n_ctx=max(n_tokens, 64), threads=threads, logits_all=True, type_k=0, type_v=0)
    llm.eval(ids)
    return kl_top1(np.asarray(llm.scores[:len(ids)]), np.concatenate(got))


def greedy_check(path, n_new: int = 24, backend: str = "numba", prompts=PROMPTS) -> list[tuple[int, str, str, float]]:
    """Per prompt: (tokens equal before the first difference, our text, llama.cpp's text, our logit
    margin there: our token's logit minus llama.cpp's token's, 0.0 when all are equal; a small margin
    is a near-tie that 8-bit activation rounding, done differently on the two sides, may flip)."""
    import edgeslim

    model = edgeslim.load(path, backend=backend)
    llm = llama(path, n_ctx=256)
    out = []
    for prompt in prompts:
        ids = model.tokenizer.encode(prompt)
        ours, rows = _greedy(model, ids, n_new)
        llm.reset()
        theirs = []
        for t in llm.generate(ids, temp=0.0, top_k=1):
            theirs.append(int(t))
            if len(theirs) == n_new:
                break
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        margin = float(rows[same][ours[same]] - rows[same][theirs[same]]) if same < min(len(ours), len(theirs)) else 0.0
        out.append((same, model.tokenizer.decode(ours), model.tokenizer.decode(theirs), margin))
    return out


def _greedy(model, ids: list[int], n_new: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy tokens and the logits row each was chosen from."""
    be = model._backend
    cache = be.new_cache(len(ids) + n_new)
    logits = be.forward(ids, cache)
    out, rows = [], []
    for _ in range(n_new):
        rows.append(np.asarray(logits[-1]))
        out.append(int(np.argmax(logits[-1])))
        logits = be.forward([out[-1]], cache)
    return out, rows


def tokenizer_texts() -> list[str]:
    texts = [t for t in corpus_text(30000).split("\n") if t.strip()][:150]
    spm_inp = DATA / "vocab" / "ggml-vocab-llama-spm.gguf.inp"
    if spm_inp.is_file():
        texts += spm_inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    return texts + list(EXTRA_TEXTS)


def tokenizer_check(path) -> tuple[int, int, list[str]]:
    """(identical encodings, cases, the first differing texts): every text with and without specials."""
    from edgeslim.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    llm = llama(path, vocab_only=True)
    same, n, bad = 0, 0, []
    for text in tokenizer_texts():
        for special in (False, True):
            n += 1
            if tok.encode(text, add_bos=True, parse_special=special) == llm.tokenize(text.encode(), add_bos=True,
                                                                                    special=special):
                same += 1
            elif len(bad) < 3:
                bad.append(text[:60])
    return same, n, bad


def decode_speed(path, backend: str, threads: int, n_new: int = 64) -> tuple[float, float]:
    """(edgeslim decode tok/s, llama.cpp decode tok/s), greedy after a short prompt."""
    import edgeslim

    model = edgeslim.load(path, backend=backend)  # numba's threads: NUMBA_NUM_THREADS, set in main()
    ids = model.tokenizer.encode(PROMPTS[1])
    _greedy(model, ids, 4)  # compile / warm up
    be = model._backend
    cache = be.new_cache(len(ids) + n_new + 1)
    logits = be.forward(ids, cache)
    t0 = time.perf_counter()
    for _ in range(n_new):
        logits = be.forward([int(np.argmax(logits[-1]))], cache)
    ours = n_new / (time.perf_counter() - t0)
    llm = llama(path, n_ctx=256, threads=threads)
    llm.eval(ids)
    t0 = time.perf_counter()
    for _ in range(n_new):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([tok])
    theirs = n_new / (time.perf_counter() - t0)
    return ours, theirs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=600)
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))  # before numba is imported
    path = args.model or default_model()
    if not Path(path).is_file():
        print(f"{path} is missing: run python scripts/fetch_gemma3.py first", file=sys.stderr)
        return 2
    kl, top1 = logits_check(path, args.backend, args.tokens, args.threads)
    print(f"logits ({args.backend}, {args.tokens} WikiText-2 tokens): mean KL {kl:.5f}, top-1 agreement {top1:.3f}")
    for same, ours, theirs, margin in greedy_check(path, backend=args.backend):
        print(f"greedy: {same}/24 tokens equal (our logit margin there {margin:.3f}) | ours {ours!r} | "
              f"llama.cpp {theirs!r}")
    same, n, bad = tokenizer_check(path)
    print(f"tokenizer: {same}/{n} encodings identical to llama.cpp's" + (f"; first differences: {bad}" if bad else ""))
    if not args.skip_speed:
        ours, theirs = decode_speed(path, args.backend, args.threads)
        print(f"decode ({args.threads} threads): edgeslim {ours:.1f} tok/s, llama.cpp {theirs:.1f} tok/s, "
              f"ratio {ours / theirs:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
