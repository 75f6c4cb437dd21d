#!/usr/bin/env python3
"""Train the reference model for quality benchmarks (`scripts/bench_quality.py`) on CPU.

What it makes: a Llama-architecture causal LM (hidden 512, ffn 1024, 4 layers, 8 query /
4 KV heads of 64; 9.4M parameters without the embedding and head) whose row lengths are
all multiples of 256, so every k-quant applies without fallback, with an untied output
head (as Llama-2) and its own 4096-piece SentencePiece BPE
tokenizer with byte fallback, saved in Hugging Face format (fp16 safetensors,
tokenizer.model / tokenizer.json, config.json) OUTSIDE the repository, by default in
`~/.cache/edgeslim/reference-model/`, with a README.md and `training.json` (loss curve,
steps, minutes, data hashes) saying how it was made.

Data (`../shared/data/corpora`, see PROVENANCE.md there):
  * tinystories/tinystories_val.txt, cut into stories as train_demo_model.py does;
  * tinyshakespeare/input.txt, cut at blank lines into documents of ~4000 characters;
  * wikitext-2/valid.txt, cut into articles at its " = Title = " headings.
  wikitext-2/test.txt is never read: it is the benchmark's held-out evaluation text.
  Of each corpus the last `--val-frac` (5%) of its characters (whole documents) are held
  out as validation; the training log shows the loss on a fixed mix of the three
  validation streams, and the final per-corpus validation losses go in the README.

Training reuses train_demo_model.py's tokenizer trainer, model builder, AdamW + cosine
loop (over the `--minutes` wall-clock budget, or a fixed `--steps` count, which makes the
run deterministic) and save/check helpers, imported from that script unchanged.

Usage:
    python scripts/train_reference_model.py --bench 5                # time 5 steps, save nothing
    python scripts/train_reference_model.py --minutes 1 --out /tmp/refsmoke   # smoke run
    python scripts/train_reference_model.py                          # the 60-minute run
    python scripts/train_reference_model.py --geometry w576          # 576-wide (SmolLM2-like) model
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_demo_model as demo  # noqa: E402  (same folder; importing it has no side effects)

CORPORA = demo.REPO.parent / "shared" / "data" / "corpora"
DEFAULT_OUT = Path.home() / ".cache" / "edgeslim" / "reference-model"
# --geometry presets: shape flags and output folder. "k256": every row length a multiple of
# 256 (every K/IQ type applies); "w576": SmolLM2-135M's widths (hidden 576 = 9 heads of 64,
# 3 KV heads, ffn 1536) at 4 layers, so most rows need the 32-wide legacy types.
GEOMETRIES = {
    "k256": {"hidden": 512, "intermediate": 1024, "heads": 8, "kv_heads": 4, "out": DEFAULT_OUT},
    "w576": {"hidden": 576, "intermediate": 1536, "heads": 9, "kv_heads": 3,
             "out": DEFAULT_OUT.with_name("reference-model-576")},
}
HELD_OUT = "wikitext-2/test.txt"  # the benchmark's evaluation text: never trained on
SOURCES = {  # name -> path under CORPORA
    "tinystories": "tinystories/tinystories_val.txt",
    "tinyshakespeare": "tinyshakespeare/input.txt",
    "wikitext2_valid": "wikitext-2/valid.txt",
}
SHAKESPEARE_DOC_CHARS = 4000
WIKI_HEADING = re.compile(r"^ = [^=].* = $")  # a top-level article title line


# ----------------------------------------------------------------------------- data
def split_wikitext(text: str) -> list[str]:
    """Articles of (tokenized) WikiText: a new one starts at each ' = Title = ' line."""
    docs: list[list[str]] = []
    for line in text.split("\n"):
        if WIKI_HEADING.match(line) or not docs:
            docs.append([])
        docs[-1].append(line)
    return [d for d in ("\n".join(lines).strip("\n") for lines in docs) if d.strip()]


def split_paragraph_chunks(text: str, chars: int) -> list[str]:
    """Consecutive blank-line-separated paragraphs joined into documents of ~`chars`."""
    docs, cur = [], []
    for para in (p for p in text.split("\n\n") if p.strip()):
        cur.append(para)
        if sum(len(p) for p in cur) >= chars:
            docs.append("\n\n".join(cur))
            cur = []
    if cur:
        docs.append("\n\n".join(cur))
    return docs


def corpus_documents(name: str, path: Path) -> list[str]:
    """One corpus as a list of documents, in file order."""
    if name == "tinystories":
        return demo.load_stories(path)
    if not path.is_file():
        sys.exit(f"train_reference_model: corpus {path} not found; pass --corpora DIR "
                 "(see ../shared/data/PROVENANCE.md)")
    text = path.read_text(encoding="utf-8")
    if name.startswith("wikitext"):
        return split_wikitext(text)
    return split_paragraph_chunks(text, SHAKESPEARE_DOC_CHARS)


def hold_out_tail(docs: list[str], frac: float) -> tuple[list[str], list[str]]:
    """(train, val): val is the shortest tail of whole documents with >= frac of the characters."""
    total, tail, n = sum(map(len, docs)), 0, 0
    while n < len(docs) - 1 and tail < frac * total:
        n += 1
        tail += len(docs[-n])
    return docs[:-n], docs[-n:]


def load_corpora(corpora: Path, val_frac: float) -> dict[str, dict]:
    """{name: {train, val, path, sha256}} for every corpus in SOURCES."""
    out = {}
    for name, rel in SOURCES.items():
        path = corpora / rel
        if rel == HELD_OUT:
            raise AssertionError("the benchmark's held-out text must not be trained on")
        docs = corpus_documents(name, path)
        train, val = hold_out_tail(docs, val_frac)
        out[name] = {"train": train, "val": val, "path": str(path),
                     "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return out


def val_mix(val_streams: dict, seq: int, windows: int):
    """The first windows//n_corpora windows of each validation stream, concatenated."""
    import torch

    per = max(1, windows // len(val_streams))
    return torch.cat([s[: per * seq + 1] for s in val_streams.values()])


# ------------------------------------------------------------------------- training
class CurveLog:
    """The `log` callback for demo.train: prints, and records each 'step ...' line as a point."""

    STEP = re.compile(r"^step (\d+) lr (\S+) train\(ema\) (\S+) val (\S+) elapsed (\d+)s")

    def __init__(self):
        self.points: list[dict] = []

    def __call__(self, msg: str) -> None:
        print(msg, flush=True)
        m = self.STEP.match(msg)
        if m:
            step, lr, ema, val, sec = m.groups()
            self.points.append({"step": int(step), "lr": float(lr), "train_ema": float(ema),
                                "val_mix": float(val), "seconds": int(sec)})


def build_model(args, vocab: int):
    """demo.build_model's Llama (k-quant widths), with the head tied only when --tie."""
    from transformers import LlamaForCausalLM

    config = demo.build_model(args, vocab).config
    config.tie_word_embeddings = bool(args.tie)
    return LlamaForCausalLM(config)


def drop_chat_template(out: Path) -> None:
    """demo.save_tokenizer writes the demo's chat template; this model has no chat format."""
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("chat_template", None)
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def width_note(cfg: dict) -> str:
    """One sentence on which ggml block widths the model's rows allow."""
    widths = {cfg["hidden_size"], cfg["intermediate_size"]}
    if all(w % 256 == 0 for w in widths):
        return "Every matrix row length is a multiple of 256, so every k-quant applies without fallback."
    odd = ", ".join(str(w) for w in sorted(widths) if w % 256)
    return (f"Rows of length {odd} are not multiples of 256: K and IQ types cannot hold them, "
            "so those tensors need the 32-wide legacy types (Q4_0 ... Q8_0, IQ4_NL).")


def _curve_table(curve: list[dict]) -> list[str]:
    """The README's loss-curve section."""
    return ["## Loss curve", "", "| step | minutes | lr | train (EMA) | validation (mix) |", "|---:|---:|---:|---:|---:|",
            *[f"| {p['step']} | {p['seconds'] / 60:.1f} | {p['lr']:.2e} | {p['train_ema']:.3f} | {p['val_mix']:.3f} |"
              for p in curve], ""]


def write_card(out: Path, args, stats: dict, curve: list[dict], sample: str, command: str) -> None:
    """README.md (how it was made, losses, data) and training.json (the same as numbers)."""
    cfg = json.loads((out / "config.json").read_text())
    record = {"command": command, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "stats": stats, "loss_curve": curve, "config": cfg}
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    val = "; ".join(f"{k} {v:.3f}" for k, v in stats["val_loss"].items())
    lines = [
        "# edgeslim reference model",
        "",
        "A small Llama-architecture LM trained from scratch by `scripts/train_reference_model.py`",
        "for edgeslim's quality benchmark (`scripts/bench_quality.py`). " + width_note(cfg),
        "",
        "## Shape",
        "",
        f"- hidden {cfg['hidden_size']}, intermediate {cfg['intermediate_size']}, "
        f"{cfg['num_hidden_layers']} layers, {cfg['num_attention_heads']} query heads / "
        f"{cfg['num_key_value_heads']} KV heads (head_dim {cfg['head_dim']}), vocab {cfg['vocab_size']}, "
        f"{'tied' if cfg.get('tie_word_embeddings') else 'untied'} output head, context "
        f"{cfg['max_position_embeddings']}",
        f"- {stats['params']:,} parameters ({stats['params_no_embed']:,} without the embedding and head), fp16",
        "- tokenizer: SentencePiece BPE, byte fallback, unk=0 `<s>`=1 `</s>`=2, trained on the training text",
        "",
        "## How it was made",
        "",
        "```",
        command,
        "```",
        "",
        f"- seed {args.seed}, {stats['steps']} steps of batch {args.batch} x {args.seq_len} tokens, AdamW "
        f"(lr {args.lr}, betas 0.9/0.95, weight decay {args.wd}), {args.warmup} warm-up steps, cosine to 10% "
        "over the " + (f"{args.steps} steps" if args.steps else f"{args.minutes:g}-minute budget"),
        f"- {stats['seconds']:.0f} s ({stats['seconds'] / 60:.1f} min) on {args.threads} CPU threads, "
        f"{stats['tokens_per_s']:.0f} tokens/s; `--steps {stats['steps']}` repeats a run of the same length "
        "deterministically",
        f"- training tokens: {stats['train_tokens']:,} ({stats['epochs']:.2f} epochs seen); validation tokens "
        + ", ".join(f"{k} {v:,}" for k, v in stats["val_tokens"].items()),
        f"- final loss (nats/token): train {stats['train_loss']:.3f}; validation {val} "
        f"(log(vocab) = {math.log(cfg['vocab_size']):.3f})",
        "",
        *_curve_table(curve),
        "## Greedy sample",
        "",
        "```",
        sample.strip(),
        "```",
        "",
        "## Data",
        "",
        "From the edgeslim test data (`../shared/data`, see its PROVENANCE.md for sources and licences);",
        "the last 5% of each corpus (whole documents) is validation. `wikitext-2/test.txt` is held out",
        "entirely: it is the benchmark's evaluation text.",
        "",
        *[f"- `{d['path']}` sha256 `{d['sha256']}`: {d['train_docs']} training / {d['val_docs']} validation "
          f"documents" for d in stats["data"].values()],
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    """Command-line flags; defaults are the benchmark's reference configuration."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpora", type=Path, default=CORPORA, help="../shared/data/corpora")
    p.add_argument("--geometry", choices=sorted(GEOMETRIES), default="k256",
                   help="shape preset: k256 (rows multiples of 256, the default) or w576 (SmolLM2-135M's "
                        "widths); --hidden/--intermediate/--heads/--kv-heads/--out override it")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT}, or the "
                   "geometry's)")
    demo.add_training_args(p, minutes=60.0, vocab=4096, hidden=None, intermediate=None, layers=4, heads=None,
                           kv_heads=None, ctx=1024, seq_len=512, batch=4, lr=2e-3, log_every=20, val_windows=12)
    p.add_argument("--tie", action="store_true", help="tie the output head to the embedding")
    args = p.parse_args(argv)
    for name, value in GEOMETRIES[args.geometry].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("hidden", "intermediate"):
        if getattr(args, name) % 32:
            p.error(f"--{name} must be a multiple of 32 (the smallest ggml block)")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        p.error("--hidden must divide into --heads, and --heads into --kv-heads")
    return args


def main(argv=None) -> None:
    """Train, save to --out, check the tokenizer, write README.md and training.json."""
    args = parse_args(argv)
    import sentencepiece as spm
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    log = CurveLog()
    t_start = time.perf_counter()

    data = load_corpora(args.corpora, args.val_frac)
    train_docs = [d for c in data.values() for d in c["train"]]
    with tempfile.TemporaryDirectory() as tmp:
        spm_file = demo.train_tokenizer(train_docs, args.vocab, Path(tmp), args.seed)
        sp = spm.SentencePieceProcessor(model_file=str(spm_file))
        train_ids = demo.encode_stream(sp, train_docs)
        val_streams = {k: demo.encode_stream(sp, c["val"]) for k, c in data.items()}
        log(f"{len(train_docs)} train documents / {len(train_ids)} tokens; validation tokens "
            + ", ".join(f"{k} {len(v)}" for k, v in val_streams.items())
            + f" (data + tokenizer {time.perf_counter() - t_start:.0f}s)")
        model = build_model(args, sp.get_piece_size())
        n_params = sum(p.numel() for p in model.parameters())
        n_embed = model.model.embed_tokens.weight.numel() + (0 if args.tie else model.lm_head.weight.numel())
        log(f"model: {n_params:,} parameters ({n_params - n_embed:,} without embedding/head)")
        stats = demo.train(args, model, train_ids, val_mix(val_streams, args.seq_len, args.val_windows), log)
        log(f"trained {stats}")
        if args.bench:
            return
        stats.update(
            params=n_params, params_no_embed=n_params - n_embed, train_tokens=len(train_ids),
            epochs=stats["steps"] * args.batch * args.seq_len / len(train_ids),
            val_tokens={k: len(v) for k, v in val_streams.items()},
            train_loss=demo.mean_loss(model, train_ids, args.seq_len, 24),
            val_loss={k: demo.mean_loss(model, v, args.seq_len, 10**6) for k, v in val_streams.items()},
            data={k: {"path": c["path"], "sha256": c["sha256"], "train_docs": len(c["train"]),
                      "val_docs": len(c["val"])} for k, c in data.items()},
        )
        args.out.mkdir(parents=True, exist_ok=True)
        demo.save_tokenizer(spm_file, args.out, args.ctx)
    drop_chat_template(args.out)
    demo.save_model(model, args.out)
    # transformers parses the text "<unk>" (WikiText's rare-word mark) as the special token
    # and drops the dummy-prefix space of a text that starts with a space; sentencepiece,
    # llama.cpp and edgeslim do neither, so the check texts avoid both
    demo.check_tokenizer(args.out, [d.replace("<unk>", "unk").lstrip()
                                    for c in data.values() for d in c["val"][:20]])
    sample = "Once upon a time" + demo.greedy(args.out, "Once upon a time", False, n=80)
    log(f"--- sample\n{sample}")
    command = "python scripts/train_reference_model.py " + " ".join(sys.argv[1:] if argv is None else argv)
    stats["total_seconds"] = round(time.perf_counter() - t_start, 1)
    write_card(args.out, args, stats, log.points, sample, command.strip())
    log(f"final: train {stats['train_loss']:.3f} val {stats['val_loss']} -> {args.out}")


if __name__ == "__main__":
    main()
