"""The Python API: `load(path) -> Model`, then generate / stream / chat / logits / perplexity.

    import edgeslim
    model = edgeslim.load("model.gguf", backend="auto", n_ctx=2048)
    print(model.generate("Once upon a time", max_tokens=64, temperature=0))
    for piece in model.stream_chat([{"role": "user", "content": "Hi!"}], max_tokens=64):
        print(piece, end="", flush=True)
    print(model.last_stats.summary())

Threads. A Model may be shared between threads. One generation runs at a time per
Model: a second call from another thread waits for the first (or, with
blocking=False, raises BusyError). For `stream*` the lock is taken when iteration
starts and released when the iterator ends or is closed.

Stopping from another thread (a desktop app's Stop button): `stream*` return a
`Generation` whose `cancel()` ends it before its next token; `Model.cancel()`
cancels whatever generation is running; or pass `cancel=threading.Event()` to any
generating call and set it. `time_limit=` seconds ends a generation the same way.
Streaming by callback: `generate(..., on_text=fn)` calls fn(piece) for every piece
(fn returning False stops the generation).
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Sequence

import numpy as np

from ..errors import EdgeslimError, InputError
from ..tables import Keys
from .backends import get_backend
from .generate import DEFAULT_BATCH, GenerationStats, Session, check_prompt, generate
from .handle import Generation, SessionPool
from .loader import ModelFile, open_model
from .perplexity import KLResult, PerplexityResult, kl_divergence, perplexity
from .sampling import SamplingParams

DEFAULT_CTX = 4096  # n_ctx when not given: min(the model's context_length, this)
PLAIN_STOP = "\nUser:"  # stop string of the plain chat format used when a model has no template


class BusyError(EdgeslimError):
    """The model is generating for another caller and blocking=False was asked."""


def load(path, backend: str = "auto", n_ctx: int | None = None, kv_dtype: str = "float16",
         n_batch: int = DEFAULT_BATCH, cache_slots: int = 1) -> "Model":
    """Open a GGUF model for inference.

    backend: "auto" (MLX on Apple silicon when installed, else numba), "numba", "mlx" or
        "numpy" (reference: dequantizes every weight to float32 at load; small models only).
    n_ctx: context length to allocate the KV cache for; default min(model's context, 4096).
    kv_dtype: "float16" (default, half the memory) or "float32" (exact).
    n_batch: prompt tokens per batched forward.
    cache_slots: KV caches kept for prompt-prefix reuse (each costs a full n_ctx cache); with
        2 or more, interleaved conversations each keep their history cached (a server's use).
    Raises FormatError / UnsupportedError / InputError with a one-line message.
    """
    from ..tokenizer import load_tokenizer

    mf = open_model(path)
    n_ctx = min(mf.hp.context_length, DEFAULT_CTX) if n_ctx is None else int(n_ctx)
    if n_ctx < 1:
        raise InputError(f"n_ctx {n_ctx} must be at least 1")
    tokenizer = load_tokenizer(mf.gguf)
    if int(cache_slots) < 1:
        raise InputError(f"cache_slots {cache_slots} must be at least 1")
    impl = get_backend(backend)(mf, kv_dtype=kv_dtype)
    return Model(mf, impl, tokenizer, n_ctx, n_batch, cache_slots)


class Model:
    """A loaded model. Use `load()` to make one.

    Attributes: tokenizer, hparams, backend (its name), n_ctx, path,
    chat_template (str or None), last_stats (GenerationStats of the last generation).
    """

    def __init__(self, model_file: ModelFile, backend, tokenizer, n_ctx: int, n_batch: int = DEFAULT_BATCH,
                 cache_slots: int = 1):
        self.file = model_file
        self.hparams = model_file.hp
        self._backend = backend
        self.backend = backend.name
        self.tokenizer = tokenizer
        self.n_ctx = n_ctx
        self.path = model_file.path
        self.n_batch = n_batch
        self.chat_template: str | None = model_file.gguf.kv.get(Keys.CHAT_TEMPLATE) or None
        self.last_stats: GenerationStats | None = None
        self._lock = threading.Lock()
        self._pool = SessionPool(lambda: Session(self._backend, self.n_ctx, self.n_batch), cache_slots)
        self._current: Generation | None = None

    def __repr__(self) -> str:
        return f"Model({self.path!r}, arch={self.hparams.arch}, backend={self.backend}, n_ctx={self.n_ctx})"

    # -- locking / state ------------------------------------------------------------
    @contextlib.contextmanager
    def _hold(self, blocking: bool):
        if not self._lock.acquire(blocking=blocking):
            raise BusyError("the model is busy generating for another caller; wait, or call with blocking=True")
        try:
            yield
        finally:
            self._lock.release()

    @property
    def busy(self) -> bool:
        """True while a generation or scoring call holds the model."""
        return self._lock.locked()

    def cancel(self) -> bool:
        """Cancel the running generation, if any (thread-safe); True if there was one."""
        cur = self._current
        if cur is None:
            return False
        cur.cancel()
        return True

    def reset(self) -> None:
        """Forget the cached conversations (the next chat call re-reads its whole prompt)."""
        with self._hold(True):
            self._pool.reset()

    # -- tokens -------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of text; add_bos None follows the model file. An empty result becomes [BOS] when possible."""
        ids = list(self.tokenizer.encode(text, add_bos=add_bos, parse_special=special))
        if not ids and self.tokenizer.bos_id is not None and self.tokenizer.bos_id >= 0 and add_bos is not False:
            ids = [self.tokenizer.bos_id]
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids."""
        return self.tokenizer.decode(list(ids))

    # -- generation ---------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], max_tokens: int = 128, *, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 repeat_last_n: int = 64, seed: int | None = None, stop: Sequence[str] | str | None = None,
                 blocking: bool = True, cancel=None, time_limit: float | None = None,
                 on_text: Callable[[str], object] | None = None) -> str:
        """The continuation of prompt (text, or token ids used as is) as one string.

        A text prompt gets BOS when the model file asks for it, and special-token texts in
        it stay plain text (use tokenize(text, special=True) and pass the ids to parse them).

        temperature 0 is greedy. Defaults follow llama.cpp (temp 0.8, top-k 40, top-p 0.95,
        min-p 0.05, no repetition penalty). seed fixes the random draws. Generation stops at
        an end-of-generation token, a stop string (not included), max_tokens, a full
        context, `cancel` (an object with is_set(), e.g. threading.Event) being set, or
        `time_limit` seconds (see last_stats.finish_reason). on_text(piece) is called for
        every piece as it is produced; returning False stops the generation.
        """
        gen = self.stream(prompt, max_tokens, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                          repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed, stop=stop,
                          blocking=blocking, cancel=cancel, time_limit=time_limit)
        return _collect(gen, on_text)

    def stream(self, prompt: str | Sequence[int], max_tokens: int = 128, *, temperature: float = 0.8,
               top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
               repeat_last_n: int = 64, seed: int | None = None, stop: Sequence[str] | str | None = None,
               blocking: bool = True, cancel=None, time_limit: float | None = None,
               reuse_prefix: bool = False) -> Generation:
        """Like generate(), as a `Generation`: an iterator of text pieces with cancel() and stats.

        reuse_prefix: keep the cached tokens this prompt shares with an earlier one
        (default: start from an empty cache, as llama.cpp's CLI does).
        """
        params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        return self._run(ids, max_tokens, params, _stops(stop), blocking, reuse_prefix, cancel, time_limit)

    def chat(self, messages: Sequence[dict], max_tokens: int = 512, *,
             on_text: Callable[[str], object] | None = None, **kwargs) -> str:
        """The assistant's reply to a list of {"role", "content"} messages, as one string.

        Uses the model's chat template (a plain "User:/Assistant:" format when it has none).
        Takes the keywords of generate(). The cached prompt prefix shared with the
        previous chat call is reused, so a growing conversation is not re-read each turn.
        """
        return _collect(self.stream_chat(messages, max_tokens, **kwargs), on_text)

    def stream_chat(self, messages: Sequence[dict], max_tokens: int = 512, *, temperature: float = 0.8,
                    top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                    repeat_last_n: int = 64, seed: int | None = None, stop: Sequence[str] | str | None = None,
                    blocking: bool = True, cancel=None, time_limit: float | None = None) -> Generation:
        """Like chat(), as a `Generation` (iterator of text pieces with cancel() and stats)."""
        params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed)
        ids = self.chat_tokens(messages)
        return self._run(ids, max_tokens, params, _stops(stop) + self.chat_stops(), blocking, True, cancel,
                         time_limit)

    def chat_stops(self) -> list[str]:
        """Stop strings a chat reply needs beyond the model's end tokens (the plain format's "\nUser:")."""
        return [] if self.chat_template else [PLAIN_STOP]

    def _run(self, ids: list[int], max_tokens: int, params: SamplingParams, stops: list[str], blocking: bool,
             reuse: bool, cancel=None, time_limit: float | None = None) -> Generation:
        params.checked()
        if not ids:
            raise InputError("the prompt is empty and the model has no BOS token; give a prompt")
        check_prompt(len(ids), self.n_ctx, self.hparams.context_length)
        if time_limit is not None and not time_limit > 0:
            raise InputError(f"time_limit {time_limit} must be a positive number of seconds")

        def start(should_stop, stats: GenerationStats):
            with self._hold(blocking):
                self.last_stats = stats
                self._current = handle
                try:
                    yield from generate(self._pool.pick(ids, reuse), self.tokenizer, ids, max_tokens, params, stops,
                                        stats, reuse_prefix=reuse, should_stop=should_stop)
                finally:
                    self._current = None

        handle = Generation(start, cancel, time_limit)
        return handle

    # -- chat formatting -------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text for messages: the model's template, or the plain fallback."""
        _check_messages(messages)
        if not self.chat_template:
            return plain_chat(messages, add_generation_prompt)
        from ..chat_template import render_chat

        return render_chat(self.chat_template, list(messages), add_generation_prompt=add_generation_prompt,
                           bos_token=self._token_text(self.tokenizer.bos_id),
                           eos_token=self._token_text(self.tokenizer.eos_id))

    def chat_tokens(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered chat (special tokens parsed; one BOS even if the template writes it too)."""
        ids = self.tokenize(self.apply_chat_template(messages, add_generation_prompt), special=True)
        bos = self.tokenizer.bos_id
        if len(ids) >= 2 and bos is not None and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]
        return ids

    def _token_text(self, tid) -> str:
        tokens = self.file.gguf.kv.get(Keys.TOK_TOKENS) or []
        return tokens[tid] if tid is not None and 0 <= tid < len(tokens) else ""

    # -- scoring ----------------------------------------------------------------------
    def logits(self, token_ids: Sequence[int], blocking: bool = True) -> np.ndarray:
        """Logits (T, n_vocab) float32 for every position of token_ids, from a fresh cache (no state kept)."""
        ids = [int(t) for t in token_ids]
        if not ids:
            raise InputError("logits() needs at least one token id")
        with self._hold(blocking):
            session = Session(self._backend, len(ids), self.n_batch)
            return session.feed(ids, n_logits=len(ids))

    def perplexity(self, text: str, n_ctx: int | None = None, n_chunks: int | None = None,
                   on_chunk=None, blocking: bool = True) -> PerplexityResult:
        """Perplexity of text with llama-perplexity's windows (see edgeslim.runtime.perplexity).

        n_ctx: window length (default: this model's n_ctx). n_chunks: use only the first windows.
        """
        if not text:
            raise InputError("the text is empty; give a text file with content")
        tokens = list(self.tokenizer.encode(text, add_bos=None, parse_special=False))
        n_ctx = self.n_ctx if n_ctx is None else int(n_ctx)
        bos = self.tokenizer.bos_id if self.tokenizer.add_bos else None
        with self._hold(blocking):
            return perplexity(Session(self._backend, n_ctx, self.n_batch), tokens, bos, n_chunks, on_chunk)

    def kl_divergence(self, base: "Model", text: str, n_ctx: int | None = None, n_chunks: int | None = None,
                      on_chunk=None, blocking: bool = True) -> KLResult:
        """KL(base || self) per token on text, with llama-perplexity --kl-divergence's windows and positions.

        base: the reference Model (e.g. the F16 file); both must share a tokenizer. The two models run
        window by window in turn, so only one window's logits of each are held at a time.
        """
        if not text:
            raise InputError("the text is empty; give a text file with content")
        if base.tokenizer.vocab_size != self.tokenizer.vocab_size:
            raise InputError(f"the base model's vocabulary ({base.tokenizer.vocab_size} tokens) differs from this "
                             f"model's ({self.tokenizer.vocab_size}); compare files of the same model")
        tokens = list(self.tokenizer.encode(text, add_bos=None, parse_special=False))
        n_ctx = self.n_ctx if n_ctx is None else int(n_ctx)
        bos = self.tokenizer.bos_id if self.tokenizer.add_bos else None
        other = contextlib.nullcontext() if base is self else base._hold(blocking)  # one lock, taken once
        with self._hold(blocking), other:
            return kl_divergence(Session(self._backend, n_ctx, self.n_batch),
                                 Session(base._backend, n_ctx, base.n_batch), tokens, bos, n_chunks, on_chunk)

    def close(self) -> None:
        """Drop the cache and weights (the Model is unusable afterwards)."""
        with self._hold(True):
            self._pool.clear()
            self._backend = None


def _collect(gen: Generation, on_text) -> str:
    """All of gen's text; on_text(piece) per piece, False from it cancels."""
    parts = []
    for piece in gen:
        parts.append(piece)
        if on_text is not None and on_text(piece) is False:
            gen.cancel()
    return "".join(parts)


def _stops(stop) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else [str(s) for s in stop]


def _check_messages(messages) -> None:
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(f"chat messages are dicts with 'role' and 'content', got {m!r}")


def plain_chat(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """Fallback chat format for models without a template: 'System:/User:/Assistant:' lines."""
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    parts = [f"{names.get(m['role'], str(m['role']).title())}: {m['content']}" for m in messages]
    text = "\n".join(parts)
    return text + ("\nAssistant:" if add_generation_prompt else "")
