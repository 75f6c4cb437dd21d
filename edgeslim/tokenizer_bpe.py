"""Byte-level BPE (`tokenizer.ggml.model = "gpt2"`) as a `tokenizers` pipeline.

Pipeline, as llama.cpp runs it: the raw-text fragment is split by the pre-tokenizer
regexes that `tokenizer.ggml.pre` names (each regex splits every piece the previous one
left, keeping unmatched text as pieces of its own: `Split(..., "isolated")`), every
piece's UTF-8 bytes are mapped to GPT-2's printable byte alphabet (`ByteLevel` with its
own regex off), then BPE applies the ranked `tokenizer.ggml.merges`. The regexes are
llama.cpp's (src/llama-vocab.cpp), which rewrite the case-insensitive `(?i:'s|...)` of
the original tokenizer.json files as explicit character classes.

The only hand-written part is `byte_decoder`, GPT-2's fixed byte <-> character table,
needed to turn tokens back into raw bytes for streaming decode (a `tokenizers` decoder
returns text, which cannot carry half of a UTF-8 character).
"""
from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Regex
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import pre_tokenizers
from tokenizers.models import BPE

_CONTRACTIONS = "'s|'t|'re|'ve|'m|'ll|'d"
_CONTRACTIONS_ANYCASE = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = _CONTRACTIONS + r"| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"


def _llama3_like(digits: str) -> str:
    return (_CONTRACTIONS_ANYCASE + r"|[^\r\n\p{L}\p{N}]?\p{L}+|" + digits
            + r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class PreTokenizer:
    """One llama.cpp pre-tokenizer type: its regexes and the flags it implies."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a piece that is a whole token is taken as is
    add_bos: bool = False  # llama.cpp's default when tokenizer.ggml.add_bos_token is absent


_DEFAULT = PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"))
_GPT2_PRE = PreTokenizer((_GPT2,))
_LLAMA3 = PreTokenizer((_llama3_like(r"\p{N}{1,3}"),), ignore_merges=True, add_bos=True)
_QWEN2 = PreTokenizer((_llama3_like(r"\p{N}"),))
_STARCODER = PreTokenizer((r"\p{N}", _GPT2))

# tokenizer.ggml.pre values -> pre-tokenizer (names and groups as in llama.cpp)
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "": _DEFAULT, "default": _DEFAULT,
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo", "jais", "trillion", "exaone4"), _GPT2_PRE),
    **dict.fromkeys(("llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral", "dbrx", "smaug-bpe"), _LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan"), _QWEN2),
    **dict.fromkeys(("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"),
                    _STARCODER),
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (fixed by the format, not learned)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# character -> the byte it stands for, as a str.translate table to latin-1 code points
_BYTE_DECODE = {ord(ch): b for b, ch in _bytes_to_unicode().items()}


def merge_pairs(merges: list[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """'Ġ t' -> ('Ġ', 't'), split at the first space after the first character as llama.cpp does.

    A merge whose parts or result are not tokens can never yield a token and would
    make `tokenizers` panic, so it is left out.
    """
    pairs = [(m[:p], m[p + 1:]) for m in merges if (p := m.find(" ", 1)) > 0]
    return [(a, b) for a, b in pairs if a in vocab and b in vocab and a + b in vocab]


class BpeBackend:
    """Encodes already partitioned raw-text fragments for a byte-level BPE vocabulary."""

    family = "gpt2"
    add_space_prefix = False

    def __init__(self, vocab: dict[str, int], merges: list[str], pre: PreTokenizer):
        self.default_add_bos = pre.add_bos
        model = BPE(vocab=vocab, merges=merge_pairs(merges, vocab), ignore_merges=pre.ignore_merges, fuse_unk=False)
        hf = _HFTokenizer(model)
        splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self._hf = hf

    def encode_fragment(self, text: str, after_special: bool) -> list[int]:
        """Ids of one raw-text fragment (byte-level BPE has no dummy prefix)."""
        return self._hf.encode(text, add_special_tokens=False).ids

    @staticmethod
    def normal_piece(text: str) -> bytes:
        """The raw bytes of a NORMAL token: each GPT-2 alphabet character is one byte."""
        mapped = text.translate(_BYTE_DECODE)
        try:
            return mapped.encode("latin-1")
        except UnicodeEncodeError:  # a character outside the byte alphabet: keep it as UTF-8
            return b"".join(bytes([ord(c)]) if ord(c) < 256 else c.encode("utf-8") for c in mapped)
