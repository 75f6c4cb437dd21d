"""SentencePiece-BPE (`tokenizer.ggml.model = "llama"`) as a `tokenizers` BPE model.

llama.cpp's SPM tokenizer splits the text into characters and repeatedly merges the
adjacent pair whose concatenation is a vocabulary token with the highest score (ties:
leftmost pair); characters that end up in no token fall back to `<0xNN>` byte tokens.
That is byte-for-byte the same procedure as a rank-ordered BPE whose merge list holds,
for every token `t` and every split `t = a + b` with `a` and `b` in the vocabulary, the
merge `(a, b)`, ranked by the score of `t` (highest first). So no hand-written merge
loop is needed: the merges are derived here and `tokenizers.models.BPE` (Rust, with
`byte_fallback`) does the work.

Known, documented limits of that equivalence (none occur in Llama/Mistral/TinyLlama
vocabularies; all of them are checked against llama.cpp's own test vectors):
  * a character that is not itself a token but occurs inside a token: llama.cpp can
    still merge through it, `tokenizers` byte-falls-back first;
  * two *different* tokens with exactly equal scores competing for overlapping spans:
    llama.cpp takes the leftmost, here the lower token id wins.

Spaces: the caller prepends the dummy-prefix space (llama.cpp's rule, see
`edgeslim.tokenizer`), then `escape` turns every " " into "▁" (U+2581).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers.models import BPE

SPACE = "\u2581"  # SentencePiece's visible space "▁"


def escape(text: str) -> str:
    """llama.cpp's llama_escape_whitespace: every " " becomes "▁"."""
    return text.replace(" ", SPACE)


def derive_merges(tokens: list[str], scores: np.ndarray, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """All (a, b) with a, b and a+b in the vocabulary, ordered by the score of a+b (desc).

    Equal scores keep token-id order (a stable sort), so the result is deterministic.
    """
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    merges: list[tuple[str, str]] = []
    add = merges.append
    for t in [tokens[i] for i in order.tolist()]:
        for k in range(1, len(t)):
            a = t[:k]
            if a in vocab:
                b = t[k:]
                if b in vocab:
                    add((a, b))
    return merges


# Vocabularies at least this large keep their derived merges in a cache file (Gemma's 262k
# tokens: deriving takes ~3.5 s of a ~6.5 s load, reading the cache ~0.3 s).
CACHE_MIN_TOKENS = 50_000
CACHE_DIR = Path(os.environ.get("EDGESLIM_CACHE", Path.home() / ".cache" / "edgeslim")) / "spm-merges"


def cached_merges(tokens: list[str], scores: np.ndarray, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """`derive_merges`, kept on disk for large vocabularies as (n, 2) int32 token-id pairs under a
    sha256 of the tokens and scores (a cache that cannot be read or written is simply not used)."""
    if len(tokens) < CACHE_MIN_TOKENS:
        return derive_merges(tokens, scores, vocab)
    h = hashlib.sha256("\x00".join(tokens).encode("utf-8", "surrogatepass"))
    h.update(np.ascontiguousarray(scores, np.float32).tobytes())
    path = CACHE_DIR / f"{h.hexdigest()}.npy"
    try:
        pairs = np.load(path, allow_pickle=False)
        if pairs.ndim == 2 and pairs.shape[1] == 2 and (pairs.size == 0 or (0 <= pairs.min() and pairs.max() < len(tokens))):
            return [(tokens[a], tokens[b]) for a, b in pairs.tolist()]
    except (OSError, ValueError):
        pass
    merges = derive_merges(tokens, scores, vocab)
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.array([(vocab[a], vocab[b]) for a, b in merges], np.int32).reshape(-1, 2))
        os.replace(tmp, path)
    except OSError:
        pass
    return merges


class SpmBackend:
    """Encodes already partitioned raw-text fragments for an SPM vocabulary."""

    family = "llama"
    default_add_bos = True

    def __init__(self, tokens: list[str], scores: np.ndarray, vocab: dict[str, int], unk_text: str | None,
                 add_space_prefix: bool):
        self.add_space_prefix = add_space_prefix
        merges = cached_merges(tokens, scores, vocab)
        model = BPE(vocab=vocab, merges=merges, unk_token=unk_text, byte_fallback=True, fuse_unk=False)
        self._hf = _HFTokenizer(model)

    def encode_fragment(self, text: str, after_special: bool) -> list[int]:
        """Ids of one raw-text fragment; `after_special`: it starts the text or follows a special token."""
        if self.add_space_prefix and after_special:
            text = " " + text
        return self._hf.encode(escape(text), add_special_tokens=False).ids

    @staticmethod
    def normal_piece(text: str) -> bytes:
        """The bytes a NORMAL token stands for: "▁" back to " "."""
        return text.replace(SPACE, " ").encode("utf-8")
