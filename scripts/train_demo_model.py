#!/usr/bin/env python3
"""Train the tiny bundled demo model (`edgeslim/demo/`) from scratch on CPU.

What it makes: a Llama-architecture causal LM (hidden 256, GQA, tied embeddings)
with its own SentencePiece BPE tokenizer (byte fallback), trained on the TinyStories
excerpt in `../shared/data/corpora/tinystories/tinystories_val.txt`, and saved in
Hugging Face format (fp16 safetensors) so that `transformers.AutoTokenizer` /
`AutoModelForCausalLM.from_pretrained("edgeslim/demo")` load it offline.

Data handling:
  * The file is one stream of paragraphs separated by blank lines; a story starts at a
    paragraph that opens like a TinyStories story ("Once upon a time", "Once there",
    ...). Other paragraphs join the story before them.
  * The last `--val-frac` of stories are held out for validation loss.
  * A seeded fraction (`--chat-frac`) of training stories is wrapped as a chat turn,
    "User: Tell me a story about a cat.\\nAssistant: <story>", where the noun is the
    most frequent word of a fixed noun list found in that story. The shipped
    `chat_template` renders exactly that format, so chat prompts work.
  * Each document is `<s> text </s>`; documents are concatenated into one token
    stream and training windows of `--seq-len + 1` tokens are sampled at seeded
    random offsets.

Schedule: AdamW with linear warm-up and cosine decay over the `--minutes` wall-clock
budget (progress = elapsed time), or over a fixed `--steps` count, which makes the
run deterministic; the README records the step count a timed run reached.

Usage:
    python scripts/train_demo_model.py --bench 10        # time steps, save nothing
    python scripts/train_demo_model.py --minutes 20      # train and write edgeslim/demo
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "corpora" / "tinystories" / "tinystories_val.txt"
DEFAULT_OUT = REPO / "edgeslim" / "demo"
SIZE_LIMIT = 8 * 1000 * 1000  # bytes, all shipped files together

STORY_START = re.compile(r"^(Once upon a time|Once there|Once,|Once |There was once|There once)")

# Nouns a story request may name (animals, people, things, food, places): a chat example
# asks for the first of them its story opens with, and scripts/sample_stories.py --topics
# writes stories that open with one. Many different nouns, so that the model learns to
# copy the requested one rather than a few noun -> story mappings. scripts/eval_demo_chat.py
# also asks for nouns kept out of this list (HELD_OUT there), to measure that.
NOUNS = (
    "cat dog bird fish bear bunny rabbit frog duck dragon mouse owl butterfly bee horse cow pig "
    "puppy kitten lion elephant monkey squirrel fox turtle snake whale ant bug deer goat sheep "
    "lamb chicken hen goose swan parrot eagle crow wolf kangaroo koala panda camel donkey hippo "
    "crocodile dolphin shark octopus crab snail worm ladybug caterpillar bat hamster pony unicorn "
    "dinosaur seal otter beaver raccoon hedgehog lizard "
    "princess prince king queen pirate knight wizard witch fairy giant clown farmer doctor "
    "teacher baker chef astronaut sailor robot monster ghost alien elf "
    "ball kite boat train car truck plane bus rocket ship balloon doll toy teddy book box jar hat "
    "coat scarf glove boot umbrella cup bowl plate spoon key lock door window bed lamp clock "
    "mirror pillow blanket drum guitar piano flute bell crayon pencil brush shovel bucket basket "
    "bag wagon sled swing slide ladder rope ring necklace crown sword map coin treasure present "
    "gift letter candle lantern camera phone radio computer block puzzle "
    "cake apple cookie banana orange carrot sandwich cheese bread soup candy lollipop pie muffin "
    "cupcake egg milk juice grape strawberry cherry pear peach lemon watermelon pumpkin corn honey "
    "park garden forest river beach sea ocean lake pond mountain cave island jungle desert farm "
    "castle house tower bridge school library zoo circus playground store kitchen barn tent nest "
    "tree flower leaf rock stone sand shell star moon sun rainbow rain snow wind storm puddle "
    "grass seed plant mushroom volcano "
    "friend girl boy"
).split()
INSTRUCTIONS = (
    "Tell me a story about {n}.",
    "Write a story about {n}.",
    "Can you tell me a story about {n}?",
    "Please tell me a short story about {n}.",
    "Tell me a story.",
)

# The chat format the model is trained on; add_generation_prompt ends on "Assistant:".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}User: {{ message['content'] | trim }}\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] | trim }}"
    "{{ eos_token }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


# ----------------------------------------------------------------------------- data
def load_stories(path: Path) -> list[str]:
    """Split the TinyStories stream into stories (paragraph lists joined by blank lines)."""
    if not path.is_file():
        sys.exit(f"train_demo_model: corpus {path} not found; pass --data PATH to "
                 "tinystories_val.txt (see ../shared/data/PROVENANCE.md)")
    paras = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    stories: list[list[str]] = []
    for p in paras:
        if not stories or STORY_START.match(p):
            stories.append([p])
        else:
            stories[-1].append(p)
    return ["\n\n".join(s) for s in stories]


def article(noun: str) -> str:
    """'a dog', 'an owl'."""
    return ("an " if noun[0] in "aeiou" else "a ") + noun


GENERIC = {"girl", "boy", "friend"}  # in nearly every story: they name no topic


def opening(text: str, sentences: int = 2) -> str:
    """The first `sentences` sentences of `text`, where a story says what it is about."""
    return " ".join(re.split(r"(?<=[.!?])\s+", text.strip())[:sentences])


def story_noun(story: str) -> str | None:
    """The story's topic, with its article: the first NOUNS word of its first two sentences
    (a generic one -- girl, boy, friend -- only when no other is there), else None.

    The topic must be named early so that a request names what the answer opens with:
    a model can then learn to follow the request, which a noun buried late in the
    story does not teach.
    """
    head = opening(story).lower()
    words = [w for w in re.findall(r"[a-z]+", head) if w in NOUNS]
    specific = [w for w in words if w not in GENERIC]
    pick = (specific or words or [None])[0]
    return article(pick) if pick else None


def as_chat(story: str, rng: random.Random, topic: str | None = None) -> str:
    """Wrap a story as one User/Assistant turn, the format CHAT_TEMPLATE renders;
    the request names `topic` (default: the story's own, `story_noun`)."""
    noun = topic or story_noun(story)
    choices = INSTRUCTIONS if noun else INSTRUCTIONS[-1:]
    instruction = rng.choice(choices[:-1] if topic else choices).format(n=noun)
    return f"User: {instruction}\nAssistant: {story}"


def load_extra(paths: list[Path]) -> list:
    """Stories from JSON-lines files of scripts/sample_stories.py: a JSON string per line (a
    story), or an object {"topic": "a dragon", "story": ...} (`--topics`: always chat)."""
    out = []
    for path in paths:
        if not path.is_file():
            sys.exit(f"train_demo_model: extra data {path} not found; make it with scripts/sample_stories.py")
        out += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [s for s in out if (s["story"] if isinstance(s, dict) else s).strip()]


def make_documents(stories: list[str], val_frac: float, chat_frac: float, seed: int,
                   extra: list[str] = (), real_repeat: int = 1):
    """Return (train_docs, val_docs): val is the last real stories, plain; train = the other
    real stories (real_repeat times) + extra stories, partly wrapped as chat (those with a
    topic always, as a request for that topic)."""
    n_val = max(1, round(len(stories) * val_frac))
    train, val = stories[:-n_val] * real_repeat + list(extra), stories[-n_val:]
    rng = random.Random(seed)
    train = [as_chat(s["story"], rng, s["topic"]) if isinstance(s, dict)
             else as_chat(s, rng) if rng.random() < chat_frac else s for s in train]
    return train, val


# ------------------------------------------------------------------------ tokenizer
def train_tokenizer(docs: list[str], vocab: int, workdir: Path, seed: int) -> Path:
    """Train a Llama-style SentencePiece BPE (byte fallback, ids unk=0 bos=1 eos=2)."""
    import sentencepiece as spm

    lines = [ln for d in docs for ln in d.split("\n") if ln.strip()]
    prefix = workdir / "tokenizer"
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=vocab,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, add_dummy_prefix=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
    )
    return prefix.with_suffix(".model")


def encode_stream(sp, docs: list[str]):
    """Concatenate `<s> doc </s>` for all docs into one int64 tensor."""
    import torch

    ids: list[int] = []
    for piece_ids in sp.encode(docs):
        ids += [sp.bos_id(), *piece_ids, sp.eos_id()]
    return torch.tensor(ids, dtype=torch.long)


# ---------------------------------------------------------------------------- model
def build_model(args, vocab: int):
    """A LlamaForCausalLM whose matmul widths are multiples of 256 (k-quant blocks)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads,
        max_position_embeddings=args.ctx, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=None,
        hidden_act="silu", attention_bias=False, mlp_bias=False,
    )
    return LlamaForCausalLM(config)


def param_groups(model, weight_decay: float):
    """Decay matrices only (not norms), as is usual for transformer LMs."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": other, "weight_decay": 0.0}]


def lr_at(step: int, progress: float, peak: float, warmup: int, floor: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from `peak` to `floor * peak`
    as `progress` (fraction of the run done, 0..1) goes to 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, max(0.0, progress))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def sample_batch(stream, batch: int, seq: int, gen):
    """Random windows of the token stream: inputs and targets, each (B, T)."""
    import torch

    starts = torch.randint(0, len(stream) - seq - 1, (batch,), generator=gen)
    rows = torch.stack([stream[s:s + seq + 1] for s in starts.tolist()])  # (B, T+1)
    return rows[:, :-1], rows[:, 1:]


def mean_loss(model, stream, seq: int, max_windows: int) -> float:
    """Mean next-token cross-entropy over non-overlapping windows of `stream`."""
    import torch
    import torch.nn.functional as F

    n = min(max_windows, (len(stream) - 1) // seq)
    x = stream[: n * seq].view(n, seq)            # (N, T)
    y = stream[1: n * seq + 1].view(n, seq)       # (N, T)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, n, 8):
            logits = model(input_ids=x[i:i + 8]).logits          # (b, T, V)
            total += F.cross_entropy(logits.flatten(0, 1), y[i:i + 8].flatten(),
                                     reduction="sum").item()
    model.train()
    return total / (n * seq)


def train(args, model, train_ids, val_ids, log) -> dict:
    """Run AdamW + cosine; return step statistics.

    With `--steps N` (or `--bench N`) the schedule runs over N steps and the run is
    deterministic. Otherwise it runs over the `--minutes` wall-clock budget: progress is
    elapsed time / budget, so a machine whose load changes mid-run still ends the
    cosine on time (the step count then depends on the load; the README records it).
    """
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr,
                            betas=(0.9, 0.95), eps=1e-8)
    steps = args.steps or args.bench or None
    budget = args.minutes * 60.0
    t0 = time.perf_counter()
    progress = lambda step: (step / steps if steps  # noqa: E731
                             else (time.perf_counter() - t0) / budget)
    ema, step = None, 0
    while progress(step) < 1.0:
        lr = lr_at(step, progress(step), args.lr, args.warmup, 0.1)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = sample_batch(train_ids, args.batch, args.seq_len, gen)
        logits = model(input_ids=x).logits                        # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % args.log_every == 0 or progress(step) >= 1.0:
            val = mean_loss(model, val_ids, args.seq_len, args.val_windows)
            log(f"step {step} lr {lr:.2e} train(ema) {ema:.3f} val {val:.3f} "
                f"elapsed {time.perf_counter() - t0:.0f}s")
    elapsed = time.perf_counter() - t0
    return {"steps": step, "seconds": round(elapsed, 1),
            "tokens_per_s": round(step * args.batch * args.seq_len / elapsed, 1)}


# ----------------------------------------------------------------------------- save
def save_tokenizer(spm_file: Path, out: Path, ctx: int) -> None:
    """Write tokenizer.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json."""
    from transformers import AutoTokenizer

    shutil.copyfile(spm_file, out / "tokenizer.model")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {
        "tokenizer_class": "LlamaTokenizer", **special, "pad_token": None,
        "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "clean_up_tokenization_spaces": False, "model_max_length": ctx,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    # The fast tokenizer.json lets transformers load without protobuf; it is made by
    # transformers' own SentencePiece conversion and checked against sentencepiece.
    (out / "tokenizer.json").unlink(missing_ok=True)
    tok = AutoTokenizer.from_pretrained(out)
    tok.backend_tokenizer.save(str(out / "tokenizer.json"))


def check_tokenizer(out: Path, docs: list[str]) -> None:
    """Fail unless transformers' tokenizer gives sentencepiece's ids on these docs."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    for d in docs:
        if tok(d)["input_ids"] != [sp.bos_id(), *sp.encode(d)]:
            sys.exit(f"train_demo_model: HF tokenizer disagrees with sentencepiece on {d[:60]!r}")


def save_model(model, out: Path) -> None:
    """Write config.json, model.safetensors (fp16) and generation_config.json."""
    from transformers import GenerationConfig

    model = model.to(dtype=__import__("torch").float16)
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=2, do_sample=False, max_new_tokens=200)
    model.save_pretrained(out)
    (out / "model.safetensors").chmod(0o644)  # save_pretrained writes it 0600


def greedy(out: Path, prompt: str, chat: bool, n: int = 120) -> str:
    """Greedy continuation of `prompt` (a user message when chat) from the saved files."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).float().eval()
    if chat:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                       add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    else:
        ids = tok(prompt, return_tensors="pt").input_ids
    gen = model.generate(ids, max_new_tokens=n, do_sample=False)
    return tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)


def shipped_bytes(out: Path) -> int:
    """Total size of the files the package ships from `out`."""
    keep = ("*.json", "*.safetensors", "*.model", "*.md")
    return sum(f.stat().st_size for pat in keep for f in out.glob(pat))


def write_readme(out: Path, args, stats: dict, samples: dict, command: str) -> None:
    """Describe how the model was made, its losses, and where the data came from."""
    cfg = json.loads((out / "config.json").read_text())
    lines = _readme_made(cfg, args, stats, command) + ["## Greedy samples", ""]
    for title, text in samples.items():
        lines += [f"**{title}**", "", "```", text.strip(), "```", ""]
    lines += _readme_data(args, stats)
    (out / "README.md").write_text("\n".join(lines))


def _readme_made(cfg: dict, args, stats: dict, command: str) -> list[str]:
    """The README's shape, training and chat-format sections."""
    rope_theta = cfg.get("rope_parameters", {}).get("rope_theta", cfg.get("rope_theta"))
    return [
        "# edgeslim demo model",
        "",
        "A tiny Llama-architecture story model, trained from scratch by",
        "`scripts/train_demo_model.py`, shipped so edgeslim's examples and tests have a",
        "real trained model to compress and run without any download.",
        "",
        "## Shape",
        "",
        f"- hidden {cfg['hidden_size']}, intermediate {cfg['intermediate_size']}, "
        f"{cfg['num_hidden_layers']} layers, {cfg['num_attention_heads']} query heads / "
        f"{cfg['num_key_value_heads']} KV heads (head_dim {cfg['head_dim']}), "
        f"vocab {cfg['vocab_size']}, tied embeddings, RoPE theta {rope_theta:g}, "
        f"context {cfg['max_position_embeddings']}",
        f"- {stats['params']:,} parameters, stored fp16; all shipped files together "
        f"{stats['bytes']:,} bytes (before this README)",
        "- tokenizer: SentencePiece BPE (byte fallback, unk=0 `<s>`=1 `</s>`=2) trained on",
        "  the same text; `tokenizer.json` is transformers' conversion of",
        "  `tokenizer.model`, checked id-for-id against sentencepiece on the held-out text.",
        "",
        "## How it was made",
        "",
        "```",
        command,
        "```",
        "",
        f"- seed {args.seed}, {stats['steps']} steps of batch {args.batch} x {args.seq_len} "
        f"tokens, AdamW (lr {args.lr}, betas 0.9/0.95, weight decay {args.wd}), "
        f"{args.warmup} warm-up steps then cosine to 10% over the "
        + (f"{args.steps} steps" if args.steps else f"{args.minutes:g}-minute budget"),
        f"- {stats['seconds']:.0f} s on {args.threads} CPU threads "
        f"({stats['tokens_per_s']:.0f} tokens/s, on a CPU shared with other jobs); "
        f"`--steps {stats['steps']}` gives a deterministic run of the same length",
        f"- data: {stats['train_tokens']:,} training tokens ({stats['train_docs']} stories), "
        f"{stats['val_tokens']:,} validation tokens (last {stats['val_docs']} stories)",
        f"- final loss (nats/token): train {stats['train_loss']:.3f}, "
        f"validation {stats['val_loss']:.3f} (log(vocab) = {math.log(cfg['vocab_size']):.3f})",
        "",
        "## Chat format",
        "",
        f"{args.chat_frac:.0%} of the real training stories were wrapped as",
        "`User: Tell me a story about a cat.\\nAssistant: <story></s>`, asking for the first",
        "noun of the trainer's list that the story's first two sentences name (\"Tell me a",
        "story.\" when there is none); every `--topics` story of `scripts/sample_stories.py`",
        "(an opening forced to name one of 244 nouns) asks for its topic. The `chat_template`",
        "renders that format and ends the generation prompt on `Assistant:`.",
        "`python scripts/eval_demo_chat.py` measures how often a reply names what was asked.",
        "",
    ]


def _readme_data(args, stats: dict) -> list[str]:
    """The README's data and licence section."""
    lines = [
        "## Data and licence",
        "",
        "Training text: `corpora/tinystories/tinystories_val.txt` of the edgeslim test",
        "data (see `../shared/data/PROVENANCE.md`): the opening part of the TinyStories",
        "validation split, taken from repository `yuninxia/moe-routing-bench`, path",
        "`data/tinystories_val.txt`, commit `6877be50c1c389c73047d7f27104bee6a995efd6`",
        "(sha256 `5fc1fb0113df62b567fb271806cd645ce8d75f59c58ca0b764c03d3b6ff34ca6`).",
        "That repository is MIT; it does not state the dataset's licence. The upstream",
        "dataset card (roneneldan/TinyStories) lists CDLA-Sharing-1.0.",
        "",
    ]
    if stats.get("extra_docs"):
        lines[-1:-1] = [
            f"The real training stories were included {args.real_repeat} time(s), together with "
            f"{stats['extra_docs']:,} stories",
            "sampled from Karpathy's stories260K model (`../shared/data/models/stories260K`, trained on",
            "TinyStories; MIT) by `scripts/sample_stories.py` (temperature 0.9, top-p 0.95), to give the",
            "model more text in the same register than the ~200k-token excerpt. Validation uses only",
            "held-out real stories.",
            "",
        ]
    return lines


# ----------------------------------------------------------------------------- main
def add_training_args(p: argparse.ArgumentParser, *, minutes: float, vocab: int, hidden: int, intermediate: int,
                      layers: int, heads: int, kv_heads: int, ctx: int, seq_len: int, batch: int, lr: float,
                      log_every: int, val_windows: int) -> None:
    """The flags every trainer here shares (run, model shape, optimisation); defaults per script."""
    p.add_argument("--minutes", type=float, default=minutes, help="training wall-clock budget")
    p.add_argument("--steps", type=int, default=None, help="fixed step count (deterministic schedule)")
    p.add_argument("--bench", type=int, default=0, help="time N steps, print, save nothing")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=vocab)
    p.add_argument("--hidden", type=int, default=hidden)
    p.add_argument("--intermediate", type=int, default=intermediate)
    p.add_argument("--layers", type=int, default=layers)
    p.add_argument("--heads", type=int, default=heads)
    p.add_argument("--kv-heads", type=int, default=kv_heads)
    p.add_argument("--ctx", type=int, default=ctx, help="max_position_embeddings")
    p.add_argument("--seq-len", type=int, default=seq_len)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--log-every", type=int, default=log_every)
    p.add_argument("--val-frac", type=float, default=0.05)
    p.add_argument("--val-windows", type=int, default=val_windows, help="windows of the logged validation loss")


def parse_args(argv=None):
    """Command-line flags; defaults are the shipped configuration."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinystories_val.txt")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    add_training_args(p, minutes=20.0, vocab=2048, hidden=256, intermediate=768, layers=4, heads=4, kv_heads=2,
                      ctx=512, seq_len=256, batch=8, lr=3e-3, log_every=40, val_windows=32)
    p.add_argument("--chat-frac", type=float, default=0.3)
    p.add_argument("--extra-data", type=Path, action="append", default=[],
                   help="JSON-lines stories added to training (scripts/sample_stories.py); repeatable")
    p.add_argument("--real-repeat", type=int, default=1, help="times the real training stories are included")
    p.add_argument("--init", type=Path, default=None,
                   help="continue training this demo-model folder (its tokenizer and weights; same shape flags)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Train, save to --out, check loading and size, write README.md."""
    args = parse_args(argv)
    import sentencepiece as spm
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    log = lambda msg: print(msg, flush=True)  # noqa: E731

    extra = load_extra(args.extra_data)
    train_docs, val_docs = make_documents(load_stories(args.data), args.val_frac,
                                          args.chat_frac, args.seed, extra, args.real_repeat)
    with tempfile.TemporaryDirectory() as tmp:
        if args.init:  # continue from a trained model: its tokenizer, its weights
            spm_file = Path(tmp) / "tokenizer.model"
            shutil.copyfile(args.init / "tokenizer.model", spm_file)
        else:
            spm_file = train_tokenizer(train_docs, args.vocab, Path(tmp), args.seed)
        sp = spm.SentencePieceProcessor(model_file=str(spm_file))
        train_ids, val_ids = encode_stream(sp, train_docs), encode_stream(sp, val_docs)
        log(f"{len(train_docs)} train stories / {len(train_ids)} tokens, "
            f"{len(val_docs)} val stories / {len(val_ids)} tokens")
        model = build_model(args, sp.get_piece_size())
        if args.init:
            from transformers import LlamaForCausalLM

            model.load_state_dict(LlamaForCausalLM.from_pretrained(args.init).float().state_dict())
        n_params = sum(p.numel() for p in model.parameters())
        log(f"model: {n_params:,} parameters ({2 * n_params / 1e6:.2f} MB fp16)")
        stats = train(args, model, train_ids, val_ids, log)
        log(f"trained {stats}")
        if args.bench:
            return
        stats.update(
            params=n_params, train_docs=len(train_docs), val_docs=len(val_docs), extra_docs=len(extra),
            train_tokens=len(train_ids), val_tokens=len(val_ids),
            train_loss=mean_loss(model, train_ids, args.seq_len, args.val_windows),
            val_loss=mean_loss(model, val_ids, args.seq_len, 10**6),
        )
        args.out.mkdir(parents=True, exist_ok=True)
        save_tokenizer(spm_file, args.out, args.ctx)
    save_model(model, args.out)
    check_tokenizer(args.out, val_docs)
    finish(args, argv, stats, log)


def finish(args, argv, stats: dict, log) -> None:
    """Greedy samples, the README, and the shipped-size check."""
    samples = {
        "Once upon a time": "Once upon a time" + greedy(args.out, "Once upon a time", False),
        "chat: Tell me a story about a dog.": greedy(
            args.out, "Tell me a story about a dog.", True),
    }
    for title, text in samples.items():
        log(f"--- {title}\n{text}")
    stats["bytes"] = shipped_bytes(args.out)
    command = "python scripts/train_demo_model.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.init:  # the run it continued, as that model's README recorded it
        made = re.search(r"```\n(python scripts/train_demo_model\.py[^`]*?)```", (args.init / "README.md").read_text())
        command = (made.group(1).strip() + "   # then, continuing it:\n" if made else "") + command
    write_readme(args.out, args, stats, samples, command.strip())
    stats["bytes"] = shipped_bytes(args.out)
    log(f"final: train {stats['train_loss']:.3f} val {stats['val_loss']:.3f} "
        f"bytes {stats['bytes']:,}")
    if stats["bytes"] >= SIZE_LIMIT:
        sys.exit(f"train_demo_model: {stats['bytes']:,} bytes >= {SIZE_LIMIT:,}; shrink the model")


if __name__ == "__main__":
    main()
