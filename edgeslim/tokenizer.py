"""The tokenizer stored in a GGUF file's metadata, with llama.cpp's semantics.

    tok = load_tokenizer("model.gguf")            # a vocab-only GGUF is enough
    ids = tok.encode("Hello world")                # BOS first when tok.add_bos
    text = tok.decode(ids)
    dec = tok.stream_decoder(prev_id=ids[-1])      # then dec.push(new_id) -> new text

Families (`tokenizer.ggml.model`): "llama" (SentencePiece BPE by score with `<0xNN>`
byte fallback, `edgeslim.tokenizer_spm`) and "gpt2" (byte-level BPE with merges and a
pre-tokenizer named by `tokenizer.ggml.pre`, `edgeslim.tokenizer_bpe`). The BPE work
itself runs in the `tokenizers` library; this module adds what llama.cpp does around it:

* special-token partitioning (llama.cpp's tokenizer_st_partition): CONTROL and UNKNOWN
  tokens are matched as whole tokens only with `parse_special=True`, USER_DEFINED
  tokens always; longer special texts are split out first. Hand-written because
  `tokenizers`' added-token matching uses leftmost-longest order, which differs.
* SPM's dummy prefix: with `tokenizer.ggml.add_space_prefix` (default true for
  "llama") a space is put before the text and after every special token.
* decoding to bytes per token (CONTROL/UNKNOWN/UNUSED tokens render as nothing,
  USER_DEFINED tokens as their text), joined, then UTF-8 decoded; the SPM leading
  space is dropped at the start of the sequence and right after a special token (the
  inverse of the dummy prefix; llama2.c strips the space after BOS the same way).
  Hand-written because streaming needs raw bytes: a byte-fallback or byte-level token
  can carry half of a UTF-8 character, which a `tokenizers` decoder cannot return.
* end-of-generation ids: EOS, EOT, EOM and the token texts llama.cpp treats as EOG.

Not carried over from llama.cpp: the per-model LSTRIP/RSTRIP token attributes (set by
model name for Phi-3/Jina), BPE "clean_spaces" detokenization (it breaks round trips),
`add_eos_token` (prompts are never closed with EOS here).
"""
from __future__ import annotations

import codecs
import os
import re

import numpy as np

from .errors import FormatError, UnsupportedError
from .gguf_file import GGUFFile
from .tables import Keys, TokenType
from .tokenizer_bpe import PRE_TOKENIZERS, BpeBackend
from .tokenizer_spm import SpmBackend

FAMILIES = ("llama", "gpt2")

# Texts llama.cpp treats as end-of-generation whatever their type (and forces to CONTROL).
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
})
# First match (in this order) is the EOT token when tokenizer.ggml.eot_token_id is absent.
EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
             "<EOT>", "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>")

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_RENDERED_EMPTY = (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.UNUSED)


def load_tokenizer(source: str | os.PathLike | GGUFFile) -> Tokenizer:
    """The tokenizer of a GGUF file (path or open `GGUFFile`); raises EdgeslimError subclasses."""
    f = source if isinstance(source, GGUFFile) else GGUFFile(source)
    return Tokenizer(f.kv, origin=f.path)


class Tokenizer:
    """Encode/decode with one GGUF vocabulary (see the module docstring for the rules).

    Attributes: `vocab_size`, `family` ("llama"|"gpt2"), `pre`, `bos_id`, `eos_id`,
    `eot_id` (None when the vocabulary has none), `add_bos`, `chat_template` (or None).
    """

    def __init__(self, kv: dict, origin: str = "<metadata>"):
        self.origin = origin
        family = kv.get(Keys.TOK_MODEL)
        if family is None:
            raise FormatError(f"{origin}: no tokenizer ({Keys.TOK_MODEL} is missing); convert the model with its tokenizer")
        if family not in FAMILIES:
            raise UnsupportedError(f"{origin}: tokenizer model {family!r} is not supported; "
                                   f"edgeslim reads {', '.join(FAMILIES)}")
        self.family = str(family)
        self.pre = str(kv.get(Keys.TOK_PRE, "") or "")
        self._texts = self._read_tokens(kv)
        self.vocab_size = len(self._texts)
        self._types = self._read_array(kv, Keys.TOK_TYPES, TokenType.NORMAL, np.int32)
        self._vocab = {t: i for i, t in enumerate(self._texts)}
        if len(self._vocab) != self.vocab_size:
            raise FormatError(f"{origin}: {Keys.TOK_TOKENS} holds duplicate tokens; re-convert the model")
        self._backend = self._build_backend(kv)
        self._read_specials(kv)
        self._pieces: list[bytes | None] = [None] * self.vocab_size  # filled on first use
        self._specials = self._special_texts()
        self._special_ids = frozenset(tid for _, tid, _ in self._specials)
        self.chat_template = kv.get(Keys.CHAT_TEMPLATE)

    # -- metadata ------------------------------------------------------------
    def _read_tokens(self, kv: dict) -> list[str]:
        tokens = kv.get(Keys.TOK_TOKENS)
        if not isinstance(tokens, list) or not tokens or not isinstance(tokens[0], str):
            raise FormatError(f"{self.origin}: {Keys.TOK_TOKENS} is missing or not a string array; re-convert the model")
        if "" in tokens:  # llama.cpp renames empty tokens the same way
            tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        return tokens

    def _read_array(self, kv: dict, key: str, default, dtype) -> np.ndarray:
        arr = kv.get(key)
        if arr is None:
            return np.full(self.vocab_size, default, dtype)
        arr = np.asarray(arr)
        if arr.ndim != 1 or arr.shape[0] < self.vocab_size or not np.issubdtype(arr.dtype, np.number):
            raise FormatError(f"{self.origin}: {key} must be a numeric array of {self.vocab_size} entries; re-convert the model")
        return arr[:self.vocab_size].astype(dtype)

    def _build_backend(self, kv: dict):
        if self.family == "llama":
            scores = self._read_array(kv, Keys.TOK_SCORES, 0.0, np.float32)
            unk = self._token_id(kv, Keys.TOK_UNK, 0)
            add_prefix = bool(kv.get(Keys.TOK_ADD_SPACE_PREFIX, True))
            unk_text = self._texts[unk] if unk is not None else None
            return SpmBackend(self._texts, scores, self._vocab, unk_text, add_prefix)
        if self.pre not in PRE_TOKENIZERS:
            names = ", ".join(sorted(k for k in PRE_TOKENIZERS if k))
            raise UnsupportedError(f"{self.origin}: pre-tokenizer {Keys.TOK_PRE}={self.pre!r} is not supported; "
                                   f"edgeslim reads {names}")
        merges = kv.get(Keys.TOK_MERGES)
        if not isinstance(merges, list):
            raise FormatError(f"{self.origin}: gpt2 tokenizer without {Keys.TOK_MERGES}; re-convert the model")
        return BpeBackend(self._vocab, merges, PRE_TOKENIZERS[self.pre])

    def _token_id(self, kv: dict, key: str, default: int | None) -> int | None:
        v = kv.get(key, default)
        return int(v) if isinstance(v, (int, np.integer)) and 0 <= int(v) < self.vocab_size else None

    def _read_specials(self, kv: dict) -> None:
        spm = self.family == "llama"
        self.bos_id = self._token_id(kv, Keys.TOK_BOS, 1 if spm else None)
        self.eos_id = self._token_id(kv, Keys.TOK_EOS, 2 if spm else None)
        self.unk_id = self._token_id(kv, Keys.TOK_UNK, 0 if spm else None)
        self.eot_id = self._token_id(kv, Keys.TOK_EOT, None)
        if self.eot_id is None:
            self.eot_id = next((self._vocab[t] for t in EOT_TEXTS if t in self._vocab), None)
        eom_id = self._token_id(kv, Keys.TOK_EOM, None)
        if eom_id is None:
            eom_id = self._vocab.get("<|eom_id|>")
        self.add_bos = bool(kv.get(Keys.TOK_ADD_BOS, self._backend.default_add_bos))
        if self.add_bos and self.bos_id is None:
            raise FormatError(f"{self.origin}: {Keys.TOK_ADD_BOS} is true but {Keys.TOK_BOS} is not set; re-convert the model")
        eog = {self._vocab[t] for t in EOG_TEXTS if t in self._vocab}
        for t in eog:  # llama.cpp makes control-looking EOG tokens CONTROL
            self._types[t] = TokenType.CONTROL
        eog.update(i for i in (self.eos_id, self.eot_id, eom_id) if i is not None)
        self._eog = frozenset(eog)

    def _render(self, tid: int) -> bytes:
        """Bytes token `tid` renders as in text (llama.cpp's token_to_piece, special=False)."""
        t, ty = self._texts[tid], self._types[tid]
        if ty == TokenType.BYTE:
            m = _BYTE_TOKEN.match(t)
            return bytes([int(m.group(1), 16)]) if m else t.encode("utf-8")
        if ty == TokenType.USER_DEFINED:
            return t.encode("utf-8")
        if ty == TokenType.NORMAL:
            return self._backend.normal_piece(t)
        return b""  # CONTROL, UNKNOWN, UNUSED and undefined types render as nothing (llama.cpp)

    def _special_texts(self) -> list[tuple[str, int, bool]]:
        """(text, id, always) for tokens partitioned out before BPE, longest text first."""
        types = self._types
        idx = np.flatnonzero((types == TokenType.CONTROL) | (types == TokenType.UNKNOWN)
                             | (types == TokenType.USER_DEFINED))
        out = [(self._texts[i], int(i), bool(types[i] == TokenType.USER_DEFINED)) for i in idx]
        out.sort(key=lambda s: -len(s[0].encode("utf-8")))  # by byte length, as llama.cpp (ties: by id)
        return out

    # -- encode --------------------------------------------------------------
    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split `text` into raw-text pieces (str) and special token ids (int)."""
        frags: list[str | int] = [text]
        for s, tid, always in self._specials:
            if not (always or parse_special) or s not in text:
                continue
            out: list[str | int] = []
            for f in frags:
                if isinstance(f, int) or s not in f:
                    out.append(f)
                    continue
                for k, part in enumerate(f.split(s)):
                    if k:
                        out.append(tid)
                    if part:
                        out.append(part)
            frags = out
        return frags

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = False) -> list[int]:
        """Token ids of `text`; BOS first when `add_bos` (default: the file's add_bos).

        `parse_special=True` turns texts like "<|im_start|>" into their control tokens;
        otherwise they are tokenized as plain text (user-defined tokens always match).
        """
        ids: list[int] = []
        if self.add_bos if add_bos is None else add_bos:
            if self.bos_id is None:
                raise UnsupportedError(f"{self.origin}: this vocabulary has no BOS token; encode with add_bos=False")
            ids.append(self.bos_id)
        if not text:
            return ids
        after_special = True
        for frag in self._partition(text, parse_special):
            if isinstance(frag, int):
                ids.append(frag)
                after_special = True
            else:
                ids.extend(self._backend.encode_fragment(frag, after_special))
                after_special = False
        return ids

    # -- decode --------------------------------------------------------------
    def _check(self, tid: int) -> int:
        tid = int(tid)
        if not 0 <= tid < self.vocab_size:
            raise IndexError(f"token id {tid} is outside the vocabulary of {self.vocab_size}")
        return tid

    def _is_special(self, tid: int) -> bool:
        return tid in self._special_ids

    def _strip_after(self, tid: int | None) -> bool:
        """Does the SPM leading space of the next piece go (start of text or after a special)?"""
        return self._backend.add_space_prefix and (tid is None or self._is_special(tid))

    def _piece(self, tid: int, strip: bool) -> bytes:
        p = self._pieces[tid]
        if p is None:
            p = self._pieces[tid] = self._render(tid)
        return p[1:] if strip and p[:1] == b" " and not self._is_special(tid) else p

    def decode_bytes(self, ids) -> bytes:
        """The raw bytes of `ids` (see `decode`)."""
        out = bytearray()
        strip = self._strip_after(None)
        for tid in ids:
            tid = self._check(tid)
            out += self._piece(tid, strip)
            strip = self._strip_after(tid)
        return bytes(out)

    def decode(self, ids) -> str:
        """Text of `ids`: control tokens (BOS/EOS...) vanish; invalid UTF-8 becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self, prev_id: int | None = None) -> StreamDecoder:
        """An incremental decoder: `push(id)` returns the newly completed text.

        Pass the last prompt token as `prev_id` when continuing after a prompt: the SPM
        leading space is then dropped only if that token is BOS/special. With None the
        stream is the start of a text, like `decode`.
        """
        return StreamDecoder(self, prev_id)

    def token_to_piece(self, tid: int) -> str:
        """One token as text; control tokens show their own text (e.g. "<s>")."""
        tid = self._check(tid)
        if self._types[tid] in _RENDERED_EMPTY:
            return self._texts[tid]
        return self._piece(tid, False).decode("utf-8", errors="replace")

    def is_eog(self, tid: int) -> bool:
        """Does `tid` end generation (EOS, EOT, EOM or a known end-of-turn token)?"""
        return int(tid) in self._eog

    @property
    def eog_ids(self) -> frozenset[int]:
        return self._eog

    def __repr__(self) -> str:
        return (f"Tokenizer({self.family}/{self.pre or 'default'}, vocab={self.vocab_size}, "
                f"bos={self.bos_id}, eos={self.eos_id}, eot={self.eot_id}, add_bos={self.add_bos})")


class StreamDecoder:
    """Turns a token stream into text pieces, holding back incomplete UTF-8 characters.

    `"".join(push(i) for i in ids) + flush() == tok.decode(ids)` for a fresh decoder.
    """

    def __init__(self, tok: Tokenizer, prev_id: int | None = None):
        self._tok = tok
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = tok._strip_after(None if prev_id is None else tok._check(prev_id))

    def push(self, token_id: int) -> str:
        """Feed one token; returns the text it completes (possibly "")."""
        tid = self._tok._check(token_id)
        piece = self._tok._piece(tid, self._strip)
        self._strip = self._tok._strip_after(tid)
        return self._utf8.decode(piece)

    def flush(self) -> str:
        """End of stream: any dangling partial character comes out as U+FFFD."""
        return self._utf8.decode(b"", final=True)
