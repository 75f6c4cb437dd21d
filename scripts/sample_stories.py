#!/usr/bin/env python3
"""Sample TinyStories-style stories from the real stories260K model, to enlarge the demo model's data.

    python scripts/sample_stories.py --tokens 3000000          # -> ~/.cache/edgeslim/stories260k-samples.jsonl

Why: the TinyStories text in ../shared is only ~200k tokens, which a 3.7M-parameter
model memorises within minutes. stories260K (../shared/data/models/stories260K, a
Llama trained by Karpathy on the full TinyStories set) writes simple, grammatical
stories; a few million sampled tokens teach the demo model the same register
(knowledge distillation by sampling). The demo model's own README says which data it saw.

How: the GGUF's F32 weights are read with `gguf` and run as a batched Llama forward
in torch with a KV cache (ggml's "normal" RoPE, as llama.cpp runs this file). Before
sampling, greedy decoding from BOS is checked against the file's known output
`greedy_256_text.txt`, so a wrong port cannot produce the data silently. Each row of
the batch starts at BOS and ends at the model's next BOS/EOS; stories that reach the
length limit unfinished are dropped. Output: one JSON string per line (a story).

With `--topics`, each row is teacher-forced through an opening that names a topic
("Once upon a time, there was a little dragon", "One day, a kite", ...), drawn from
the demo trainer's noun list; after it the model samples freely. Each line is then
an object {"topic": "a dragon", "story": "..."}, which the demo trainer wraps as
"Tell me a story about a dragon." -- chat data in which the answer really is about
what was asked, so that the demo model learns to follow the request.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO.parent / "shared" / "data" / "models" / "stories260K"
DEFAULT_OUT = Path.home() / ".cache" / "edgeslim" / "stories260k-samples.jsonl"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


class TinyLlama:
    """A batched Llama forward over a GGUF's F32 tensors (torch, KV cache)."""

    def __init__(self, path: Path, max_len: int, batch: int):
        import gguf

        r = gguf.GGUFReader(str(path))
        f = {k: v.contents() for k, v in r.fields.items() if k.startswith("llama.")}
        self.n_layer, self.d = f["llama.block_count"], f["llama.embedding_length"]
        self.h, self.hkv = f["llama.attention.head_count"], f["llama.attention.head_count_kv"]
        self.hd = self.d // self.h
        self.eps = f["llama.attention.layer_norm_rms_epsilon"]
        base = f.get("llama.rope.freq_base", 10000.0)
        self.w = {t.name: torch.from_numpy(np.array(t.data, np.float32)) for t in r.tensors}
        inv = base ** (-torch.arange(0, self.hd, 2, dtype=torch.float64) / self.hd)  # (hd/2,)
        ang = torch.arange(max_len, dtype=torch.float64)[:, None] * inv[None]  # (L, hd/2)
        self.cos, self.sin = ang.cos().float(), ang.sin().float()
        shape = (self.n_layer, batch, self.hkv, max_len, self.hd)
        self.k, self.v = torch.zeros(shape), torch.zeros(shape)

    def _norm(self, x, w):
        return x * (x.pow(2).mean(-1, keepdim=True) + self.eps).rsqrt() * w

    def _rope(self, x, pos: int):
        """ggml 'normal' RoPE: rotate pairs (x[2i], x[2i+1]); x (B, nH, hd)."""
        a, b = x[..., 0::2], x[..., 1::2]
        c, s = self.cos[pos], self.sin[pos]
        out = torch.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
        return out

    def step(self, ids, pos: int):
        """ids (B,) at position pos -> logits (B, vocab)."""
        w, B = self.w, ids.shape[0]
        x = w["token_embd.weight"][ids]  # (B, D)
        g = self.h // self.hkv
        for i in range(self.n_layer):
            p = f"blk.{i}."
            hN = self._norm(x, w[p + "attn_norm.weight"])
            q = self._rope((hN @ w[p + "attn_q.weight"].T).view(B, self.h, self.hd), pos)  # (B, H, hd)
            k = self._rope((hN @ w[p + "attn_k.weight"].T).view(B, self.hkv, self.hd), pos)
            self.k[i, :B, :, pos] = k
            self.v[i, :B, :, pos] = (hN @ w[p + "attn_v.weight"].T).view(B, self.hkv, self.hd)
            kc, vc = self.k[i, :B, :, : pos + 1], self.v[i, :B, :, : pos + 1]  # (B, Hkv, S, hd)
            qg = q.view(B, self.hkv, g, self.hd)
            att = torch.softmax(qg @ kc.transpose(-1, -2) / math.sqrt(self.hd), dim=-1)  # (B, Hkv, g, S)
            x = x + (att @ vc).reshape(B, self.d) @ w[p + "attn_output.weight"].T
            hN = self._norm(x, w[p + "ffn_norm.weight"])
            ff = torch.nn.functional.silu(hN @ w[p + "ffn_gate.weight"].T) * (hN @ w[p + "ffn_up.weight"].T)
            x = x + ff @ w[p + "ffn_down.weight"].T
        out = w.get("output.weight", w["token_embd.weight"])
        return self._norm(x, w["output_norm.weight"]) @ out.T


# Openings for --topics: {a} is the article + noun ("a dragon"), {n} the bare noun.
OPENERS = (
    "Once upon a time, there was {a}",
    "Once upon a time, there was a little {n}",
    "Once upon a time, there was a big {n}",
    "One day, {a}",
    "Once upon a time, in a small town, there was {a}",
    "Once upon a time, there was a little girl who had {a}",
    "Once upon a time, there was a little boy who loved his {n}",
)


def topic_prompts(tok, batch: int, rng) -> tuple[list[str], list[list[int]]]:
    """`batch` (topic, opening ids) pairs: a noun of the demo trainer's list in a random opening."""
    from train_demo_model import NOUNS, article

    topics, prompts = [], []
    for _ in range(batch):
        noun = NOUNS[int(rng.integers(len(NOUNS)))]
        text = OPENERS[int(rng.integers(len(OPENERS)))].format(a=article(noun), n=noun)
        topics.append(article(noun))
        prompts.append(tok.encode(text, add_bos=False))
    return topics, prompts


def run_batch(model: TinyLlama, batch: int, max_len: int, temp: float, top_p: float, gen, stop_ids,
              prompts: list[list[int]] | None = None) -> list[list]:
    """Sample `batch` sequences from BOS, each first forced through its `prompts` row (if given);
    return the finished ones (ids without BOS/stop, prompt included) and, for the others, None."""
    ids = torch.full((batch,), 1, dtype=torch.long)
    seqs = torch.zeros((batch, max_len), dtype=torch.long)
    plen = torch.tensor([len(p) for p in prompts] if prompts else [0] * batch)
    forced = torch.zeros((batch, max(1, int(plen.max()))), dtype=torch.long)  # (B, P)
    for b, p in enumerate(prompts or []):
        forced[b, : len(p)] = torch.tensor(p)
    done = torch.zeros(batch, dtype=torch.bool)
    end = torch.full((batch,), -1, dtype=torch.long)
    for pos in range(max_len - 1):
        logits = model.step(ids, pos)
        if temp <= 0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temp, -1)
            sp, si = probs.sort(-1, descending=True)
            keep = sp.cumsum(-1) - sp < top_p  # nucleus: the smallest set reaching top_p
            sp = sp * keep
            nxt = si.gather(-1, torch.multinomial(sp, 1, generator=gen)).squeeze(-1)
        if pos < forced.shape[1]:
            nxt = torch.where(pos < plen, forced[:, pos], nxt)
        seqs[:, pos] = nxt
        stop = torch.isin(nxt, stop_ids) & ~done
        end[stop] = pos
        done |= stop
        if bool(done.all()):
            break
        ids = nxt
    return [seqs[b, : end[b]].tolist() if end[b] > plen[b] else None for b in range(batch)]


def check_greedy(model: TinyLlama, tok) -> None:
    """Greedy 256 tokens from BOS must equal the file's known output (a port check)."""
    want = (MODEL_DIR / "greedy_256_text.txt").read_text(encoding="utf-8")
    ids, out = torch.tensor([1]), []
    for pos in range(256):
        nxt = model.step(ids, pos).argmax(-1)
        out.append(int(nxt[0]))
        ids = nxt
    got = tok.decode(out)
    if got.strip() != want.strip():
        sys.exit("sample_stories: greedy output differs from greedy_256_text.txt; the torch port is wrong")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=3_000_000, help="stop after this many stories260K tokens")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--minutes", type=float, default=None, help="also stop after this wall-clock time")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--max-len", type=int, default=512, help="stories260K's training length")
    p.add_argument("--temp", type=float, default=0.9)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    p.add_argument("--topics", action="store_true",
                   help="force an opening naming a topic noun; write {topic, story} objects")
    args = p.parse_args(argv)
    gguf_path = MODEL_DIR / "stories260K.gguf"
    if not gguf_path.is_file():
        sys.exit(f"sample_stories: {gguf_path} not found (see ../shared/data/PROVENANCE.md)")
    from edgeslim.tokenizer import load_tokenizer

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    tok = load_tokenizer(str(gguf_path))
    stop_ids = torch.tensor([1, 2])
    check_greedy(TinyLlama(gguf_path, 256, 1), tok)
    model = TinyLlama(gguf_path, args.max_len, args.batch)
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    n_tok = n_story = 0
    t0 = time.perf_counter()
    with tmp.open("w", encoding="utf-8") as fh:
        deadline = t0 + 60 * args.minutes if args.minutes else math.inf
        while n_tok < args.tokens and time.perf_counter() < deadline:
            topics, prompts = topic_prompts(tok, args.batch, rng) if args.topics else ([None] * args.batch, None)
            rows = run_batch(model, args.batch, args.max_len, args.temp, args.top_p, gen, stop_ids, prompts)
            for topic, ids in zip(topics, rows):
                if ids is None:
                    continue
                story = tok.decode(ids).strip()
                fh.write(json.dumps({"topic": topic, "story": story} if topic else story) + "\n")
                n_tok += len(ids)
                n_story += 1
            print(f"  {n_story} stories, {n_tok} tokens, {time.perf_counter() - t0:.0f}s", flush=True)
    tmp.replace(args.out)
    print(f"wrote {args.out}: {n_story} stories, {n_tok} stories260K tokens (seed {args.seed}, temp {args.temp}, "
          f"top-p {args.top_p})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
