#!/usr/bin/env python3
"""Does a chat model answer what it is asked? Topic hit rate of story requests.

    python scripts/eval_demo_chat.py                         # the bundled demo, converted to Q8_0
    python scripts/eval_demo_chat.py --model out/demo.gguf   # any GGUF edgeslim runs

For each noun of a fixed list, the model gets one chat turn, "Tell me a story about
a {noun}.", rendered with the file's own chat template, and answers greedily (the
`edgeslim chat` path: `Model.chat`). A reply *hits* when the noun (or its plural)
occurs in it, and *hits early* when it occurs in the first two sentences, where a
story introduces what it is about. A model that ignores the request still hits now
and then by chance (a story about Lily may mention a dog); the script also scores
the same replies against a *shuffled* noun (each reply against another noun's name),
the chance rate a prompt-blind model would get, so the two can be compared.

It also prints whether replies end on EOS (finish before --max-tokens) and how many
replies are distinct, a cheap check that the model does not answer every request
with one memorised story.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_demo_model import article, opening  # noqa: E402  (a sibling script, not a package)

# Nouns a TinyStories-trained model has seen often; a mix of animals, things and places.
NOUNS = ("dog cat bird fish bear rabbit frog duck dragon robot ball kite boat train "
         "car cake tree flower garden park castle princess monkey lion owl "
         "butterfly horse pig puppy turtle").split()


# Nouns that are in neither list the demo's chat data was made from (scripts/train_demo_model.py
# NOUNS): does the model copy a request it never saw, or only recall ones it did?
HELD_OUT = "penguin giraffe spider pizza bicycle cloud tiger zebra shoe sock hill chair".split()


def mentions(text: str, noun: str) -> bool:
    """True when `noun` or its plural is a word of `text`."""
    return re.search(rf"\b{re.escape(noun)}(s|es)?\b", text.lower()) is not None


def score(replies: dict[str, str]) -> dict[str, float]:
    """Hit rates of replies against their own noun and against a shifted (wrong) noun."""
    nouns = list(replies)
    wrong = nouns[1:] + nouns[:1]
    n = len(nouns)
    return {
        "hit": sum(mentions(replies[w], w) for w in nouns) / n,
        "hit_early": sum(mentions(opening(replies[w]), w) for w in nouns) / n,
        "chance": sum(mentions(replies[w], o) for w, o in zip(nouns, wrong)) / n,
        "chance_early": sum(mentions(opening(replies[w]), o) for w, o in zip(nouns, wrong)) / n,
        "distinct": len({opening(r) for r in replies.values()}) / n,
    }


def demo_gguf(workdir: Path) -> Path:
    """Convert the bundled demo model to Q8_0 (near-lossless) in `workdir`."""
    from edgeslim.convert.pipeline import convert
    from edgeslim.demo import DEMO_DIR

    out = workdir / "demo-q8_0.gguf"
    convert(str(DEMO_DIR), str(out), quant="Q8_0")
    return out


def ask(model, nouns, max_tokens: int) -> tuple[dict[str, str], float]:
    """Greedy replies to "Tell me a story about a {noun}." and the share that ended on EOS."""
    replies, ended = {}, 0
    for noun in nouns:
        msgs = [{"role": "user", "content": f"Tell me a story about {article(noun)}."}]
        replies[noun] = model.chat(msgs, max_tokens=max_tokens, temperature=0.0)
        ended += model.last_stats.finish_reason == "eog"
    return replies, ended / len(nouns)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="GGUF to ask (default: the demo model, converted to Q8_0)")
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--backend", default="auto")
    p.add_argument("--show", type=int, default=2, help="print this many replies of each list")
    args = p.parse_args(argv)

    import edgeslim

    with tempfile.TemporaryDirectory() as tmp:
        model = edgeslim.load(args.model or demo_gguf(Path(tmp)), backend=args.backend)
        for title, nouns in (("listed nouns", NOUNS), ("held-out nouns", HELD_OUT)):
            replies, ended = ask(model, nouns, args.max_tokens)
            s = score(replies)
            for noun in nouns[: args.show]:
                print(f"--- {noun}: {replies[noun][:300]!r}")
            print(f"{title}, {len(nouns)} requests, greedy: topic named in reply {s['hit']:.0%} "
                  f"(chance {s['chance']:.0%}), in its first two sentences {s['hit_early']:.0%} "
                  f"(chance {s['chance_early']:.0%}); distinct openings {s['distinct']:.0%}; "
                  f"ended on EOS {ended:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
