"""Tokenizer + chat template into GGUF metadata, the way llama.cpp's converter writes them.

Two families, chosen like llama.cpp's `set_vocab` for Llama/Qwen2:

* SentencePiece ("llama") from `tokenizer.model`: every piece with its score and
  type (NORMAL/UNKNOWN/CONTROL/UNUSED/BYTE from the model), then added tokens from
  `added_tokens.json` and `tokenizer_config.json` (CONTROL when special,
  USER_DEFINED otherwise, score -1000), ids past the model padded `[PAD{i}]`.
* byte-level BPE ("gpt2") from `tokenizer.json`: tokens by id (padded to the
  config's vocab_size), types (added tokens CONTROL/USER_DEFINED), merges, and
  `tokenizer.ggml.pre` naming llama.cpp's pre-tokenizer regex.

Special ids, add_bos/add_eos, merges and the chat template come from
`gguf.SpecialVocab` (gguf-py's reader of tokenizer_config.json/tokenizer.json,
the same code llama.cpp's converter uses).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

import gguf

from edgeslim.errors import InputError, UnsupportedError
from edgeslim.tables import Keys, TokenType

from .notes import note

_SPM_SPACE = "\u2581"

# llama.cpp identifies a BPE pre-tokenizer by hashing the ids of this text
# (convert_hf_to_gguf.py get_vocab_base_pre); the hashes below are the ones it
# lists for the models edgeslim converts.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
KNOWN_PRE_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3-8B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3 tokenizer
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
}
# The pre-tokenizer regexes of tokenizer.json, as the models ship them.
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_REGEX_PRE = {LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2"}


@dataclass
class VocabData:
    """Everything the tokenizer contributes to a GGUF file."""

    model: str  # "llama" (SentencePiece) | "gpt2" (byte-level BPE)
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    extra: list[tuple[str, object]] = field(default_factory=list)
    special: gguf.SpecialVocab | None = None

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        """Write the tokenizer keys (llama.cpp's names and value types)."""
        writer.add_string(Keys.TOK_MODEL, self.model)
        writer.add_string(Keys.TOK_PRE, self.pre)
        writer.add_array(Keys.TOK_TOKENS, self.tokens)
        if self.scores is not None:
            writer.add_array(Keys.TOK_SCORES, self.scores)
        writer.add_array(Keys.TOK_TYPES, self.types)
        for key, value in self.extra:
            if isinstance(value, bool):
                writer.add_bool(key, value)
        if self.special is not None:
            self.special.add_to_gguf(writer, quiet=True)


def load_vocab(folder: Path, vocab_size: int | None, space_prefix: bool | None = None) -> VocabData:
    """The tokenizer of an HF folder: SentencePiece first (as llama.cpp), else BPE.
    `space_prefix`: the family's SentencePiece dummy-prefix setting (Gemma: False), else
    tokenizer_config.json's `add_prefix_space` when it has one."""
    folder = Path(folder)
    extra = [(Keys.TOK_ADD_SPACE_PREFIX, space_prefix)] if space_prefix is not None else _space_prefix(folder)
    if (folder / "tokenizer.model").is_file():
        vocab = spm_vocab(folder, vocab_size)
    elif (folder / "tokenizer.json").is_file():
        vocab = bpe_vocab(folder, vocab_size)
    else:
        raise InputError(f"{folder} has no tokenizer.model or tokenizer.json; copy the model's tokenizer files into it")
    vocab.extra = extra + vocab.extra
    return vocab


def _tokenizer_config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _space_prefix(folder: Path) -> list[tuple[str, object]]:
    value = _tokenizer_config(folder).get("add_prefix_space")
    return [(Keys.TOK_ADD_SPACE_PREFIX, value)] if isinstance(value, bool) else []


def looks_special(token: str) -> bool:
    """Added tokens that are control tokens even when not flagged special (llama.cpp's list)."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


# -- SentencePiece ------------------------------------------------------------
def spm_vocab(folder: Path, vocab_size: int | None) -> VocabData:
    """`tokenizer.model` pieces, scores and types, plus HF added tokens."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(folder / "tokenizer.model"))
    n = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [int(TokenType.UNUSED)] * n
    for i in range(min(n, sp.vocab_size())):
        tokens[i], scores[i], types[i] = sp.IdToPiece(i), float(sp.GetScore(i)), int(_spm_type(sp, i))
    if sp.vocab_size() > n:
        note(f"tokenizer.model has {sp.vocab_size()} pieces but config.json's vocab_size is {n}; extra pieces dropped")
    _spm_added(folder, tokens, scores, types)
    special = _special_vocab(folder, n_vocab=len(tokens))
    _spm_special_ids(special, sp, folder, tokens)
    return VocabData("llama", "default", tokens, types, scores, special=special)


def _spm_special_ids(special: gguf.SpecialVocab, sp, folder: Path, tokens: list[str]) -> None:
    """bos/eos/unk/pad ids not given by config.json: the tokenizer_config token's
    piece, else the SentencePiece model's own id (HF LlamaTokenizer's behaviour)."""
    config = _tokenizer_config(folder)
    own = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(), "pad": sp.pad_id()}
    for typ, tid in own.items():
        if typ in special.special_token_ids:
            continue
        entry = config.get(f"{typ}_token")
        text = entry.get("content") if isinstance(entry, dict) else entry
        if isinstance(text, str) and text in tokens:
            tid = tokens.index(text)
        if 0 <= tid < len(tokens):
            special.special_token_ids[typ] = tid


def _spm_type(sp, i: int) -> TokenType:
    if sp.IsUnknown(i):
        return TokenType.UNKNOWN
    if sp.IsControl(i):
        return TokenType.CONTROL
    if sp.IsUnused(i):
        return TokenType.UNUSED
    if sp.IsByte(i):
        return TokenType.BYTE
    return TokenType.NORMAL


def _spm_added(folder: Path, tokens: list[str], scores: list[float], types: list[int]) -> None:
    """Overlay added_tokens.json and tokenizer_config.json's added_tokens_decoder."""
    n = len(tokens)
    path = folder / "added_tokens.json"
    if path.is_file():
        for text, tid in json.loads(path.read_text(encoding="utf-8")).items():
            if 0 <= int(tid) < n:
                tokens[tid], scores[tid], types[tid] = text, -1000.0, int(TokenType.USER_DEFINED)
    for tid, data in _tokenizer_config(folder).get("added_tokens_decoder", {}).items():
        tid, text = int(tid), data["content"]
        if not 0 <= tid < n:
            note(f"added token {tid} {text!r} is past the vocabulary size {n}; ignored")
            continue
        if data.get("special") or looks_special(text):
            types[tid] = int(TokenType.CONTROL)
        else:
            text = text.replace(_SPM_SPACE, " ")  # llama.cpp expects user-defined tokens pre-normalized
            types[tid] = int(TokenType.USER_DEFINED)
        tokens[tid], scores[tid] = text, -1000.0


def _special_vocab(folder: Path, **kwargs) -> gguf.SpecialVocab:
    """gguf-py's SpecialVocab, without its warning about pair templates (llama.cpp ignores pairs)."""
    log = logging.getLogger("gguf.vocab")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return gguf.SpecialVocab(folder, **kwargs)
    finally:
        log.setLevel(level)


# -- byte-level BPE -------------------------------------------------------------
def bpe_vocab(folder: Path, vocab_size: int | None) -> VocabData:
    """`tokenizer.json` (byte-level BPE) tokens by id, types, merges and pre-tokenizer name."""
    from tokenizers import Tokenizer

    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    if spec.get("model", {}).get("type") != "BPE" or not _is_byte_level(spec):
        raise UnsupportedError(f"{folder / 'tokenizer.json'} is not a byte-level BPE tokenizer and there is no "
                               "tokenizer.model; edgeslim converts SentencePiece (tokenizer.model) or byte-level BPE")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab = tok.get_vocab(with_added_tokens=True)  # {token: id}
    n = vocab_size or (max(vocab.values()) + 1)
    if max(vocab.values()) >= n:
        raise InputError(f"tokenizer.json has id {max(vocab.values())} but config.json says vocab_size {n}; "
                         "the tokenizer does not belong to this model")
    added = tok.get_added_tokens_decoder()  # {id: AddedToken}
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
            continue
        text = by_id[i]
        if i in added:
            if not added[i].normalized:  # llama.cpp stores added tokens in their normalized form
                text = tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False) or text
            if added[i].special or looks_special(text):
                types.append(int(TokenType.CONTROL))
            else:
                text = text.replace(_SPM_SPACE, " ")
                types.append(int(TokenType.USER_DEFINED))
        else:
            types.append(int(TokenType.NORMAL))
        tokens.append(text)
    special = _special_vocab(folder, load_merges=True, n_vocab=n)
    return VocabData("gpt2", bpe_pre_name(tok, spec), tokens, types, special=special)


def _is_byte_level(spec: dict) -> bool:
    def walk(node) -> bool:
        if not isinstance(node, dict):
            return False
        if node.get("type") == "ByteLevel":
            return True
        return any(walk(p) for p in node.get("pretokenizers", []))
    return walk(spec.get("pre_tokenizer")) or (spec.get("decoder") or {}).get("type") == "ByteLevel"


def bpe_pre_name(tok, spec: dict) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level BPE tokenizer.

    First llama.cpp's own test (hash of the ids of CHECK_TEXT against known models);
    then the pre-tokenizer regex itself (Llama-3 -> "llama-bpe", Qwen2 -> "qwen2",
    plain GPT-2 ByteLevel -> "gpt-2"); else "default" with a warning.
    """
    ids = tok.encode(CHECK_TEXT).ids
    name = KNOWN_PRE_HASHES.get(sha256(str(list(ids)).encode()).hexdigest())
    if name:
        return name
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre])
    splits = [p for p in parts if p.get("type") == "Split"]
    if splits:
        regex = splits[0].get("pattern", {}).get("Regex")
        if regex in _REGEX_PRE:
            return _REGEX_PRE[regex]
    elif any(p.get("type") == "ByteLevel" and p.get("use_regex", True) for p in parts):
        return "gpt-2"
    note("BPE pre-tokenizer not recognized (not Llama-3, Qwen2 or GPT-2); writing tokenizer.ggml.pre 'default', "
         "so llama.cpp's tokenization may differ from the original")
    return "default"
