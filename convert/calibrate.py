"""Calibration statistics of an HF model (any family in `edgeslim.arch`), computed one decoder layer at a time.

    collect(model_dir, calib=None, n_tokens=4096, seq_len=512, want_hessian=False, on_layer=None) -> CalibStats
    for stats in layers(model_dir, calib, n_tokens, seq_len, want_hessian): ...   # the same walk, driven
    calib_token_ids(model_dir, calib, n_tokens, seq_len) -> list[np.ndarray]   # the sequences collect() runs
    read_calib_text(path=None) -> str        # --calib FILE, or the built-in calib_default.txt
    add_calib_args(parser)                   # --calib FILE, --calib-tokens N

For every linear layer (keys are GGUF tensor names, e.g. "blk.3.attn_q.weight",
plus the output head) the inputs x seen on the calibration tokens give

    importance[name] = mean over tokens of x_j^2        (cols,) float32, llama.cpp's imatrix
    hessian[name]    = 2 X^T X / n                      (cols, cols) float32, for GPTQ

Linears that read the same tensor (q/k/v, gate/up) share one statistics object
(and one Hessian array).  The head's key is `output.weight`, or
`token_embd.weight` when the head is tied to the embedding.

How: the calibration tokens' embedding rows are read from the checkpoint, then
for each decoder layer the transformers module (`LlamaDecoderLayer(config, i)`
etc.) is built on the meta device, gets only that layer's weights (positioned
safetensors reads, float32, `load_state_dict(assign=True)`), runs all hidden
states through (RoPE from the model's rotary-embedding class, the model's own
causal / sliding-window mask), with forward hooks on its linears accumulating
sum x^2 and X^T X; then it is freed.  Peak memory is about one layer in
float32 plus the calibration activations (and, with Hessians, the Hessians of
one layer when `on_layer` consumes them, else all of them).

`layers(...)` yields each layer's `LayerStats` (and then the head's): while it
is out, the caller may quantize the layer and load the dequantized weights (as
the GGUF stores them) with `stats.replace`, so that the next layer is
calibrated on the quantized layer's outputs (GPTQ's sequential mode).
`collect(..., on_layer=f)` is that walk with a function `f(LayerStats) ->
{gguf name: array} | None` called at each step.
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from edgeslim.errors import InputError, UnsupportedError
from edgeslim.tables import TensorNames

from . import safetensors_read
from .arch import Arch, arch_for_config
from .hf import read_config, safetensors_files
from .notes import note

DEFAULT_CALIB_TOKENS = 4096
DEFAULT_SEQ_LEN = 512
MIN_SEQ_LEN = 8  # a shorter trailing piece of the token stream is dropped
BATCH_TOKENS = 2048  # tokens per forward pass (bounds the activation memory)
CHARS_PER_TOKEN_MAX = 16  # text read per wanted token: generous for any tokenizer
DEFAULT_CALIB_FILE = "calib_default.txt"



@dataclass
class LayerStats:
    """Statistics of one decoder layer (index < n_layers) or of the head (index == n_layers)."""

    index: int
    importance: dict[str, np.ndarray]
    hessian: dict[str, np.ndarray] | None
    # replace(gguf_name, array): load new weights (GGUF layout) into the layer at once, so a
    # caller that quantizes tensor by tensor never holds a second copy of the layer;
    # release(gguf_names): free those weights now (each must then be replaced)
    replace: Callable[[str, np.ndarray], None] | None = None
    release: Callable[[list[str]], None] | None = None
    changed: bool = False  # set by replace / release: the layer is run again on its new weights


@dataclass
class CalibStats:
    """importance: {GGUF name: (cols,) float32 mean x^2}; hessian: {GGUF name: (cols, cols) float32
    2 X^T X / n} when asked for and not handed to `on_layer`; n_tokens over n_sequences."""

    importance: dict[str, np.ndarray] = field(default_factory=dict)
    hessian: dict[str, np.ndarray] | None = None
    n_tokens: int = 0
    n_sequences: int = 0


# ---------------------------------------------------------------------------
# calibration text and tokens
# ---------------------------------------------------------------------------
def add_calib_args(parser: argparse.ArgumentParser) -> None:
    """--calib FILE and --calib-tokens N, for `edgeslim convert`."""
    parser.add_argument("--calib", metavar="FILE",
                        help="UTF-8 text to calibrate on (default: a short built-in English sample)")
    parser.add_argument("--calib-tokens", type=int, default=DEFAULT_CALIB_TOKENS, metavar="N",
                        help=f"calibration tokens to use (default {DEFAULT_CALIB_TOKENS})")


def read_calib_text(path: str | Path | None = None) -> str:
    """The calibration text: the file at `path`, or the built-in sample; InputError when empty or unreadable."""
    if path is None:
        return resources.files("edgeslim.convert").joinpath(DEFAULT_CALIB_FILE).read_text(encoding="utf-8")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"--calib {p}: no such file; pass a UTF-8 text file") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as err:
        raise InputError(f"--calib {p} is not a readable UTF-8 text file ({type(err).__name__}); "
                         "pass a plain-text file") from None
    if not text.strip():
        raise InputError(f"--calib {p} is empty; pass a text file with some prose (a few KB or more)")
    return text


def _tokenizer(folder: Path) -> tuple[Callable[[str], list[int]], list[int]]:
    """(encode without special tokens, ids the tokenizer puts before every text, e.g. [BOS])."""
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))

        def encode(text: str, special: bool = False) -> list[int]:
            return tok.encode(text, add_special_tokens=special).ids
    elif (folder / "tokenizer.model").is_file():
        from transformers import AutoTokenizer

        hf_tok = AutoTokenizer.from_pretrained(str(folder), config=_hf_config(folder, read_config(folder)))

        def encode(text: str, special: bool = False) -> list[int]:
            return list(hf_tok(text, add_special_tokens=special)["input_ids"])
    else:
        raise InputError(f"{folder} has no tokenizer.json or tokenizer.model to tokenize the calibration text; "
                         "add the model's tokenizer files")
    probe = "Calibration probe."
    plain, full = encode(probe), encode(probe, True)
    prefix = next((full[:k] for k in range(len(full) - len(plain) + 1) if full[k:k + len(plain)] == plain), [])
    return encode, prefix


def _sequences(stream: np.ndarray, prefix: list[int], n_tokens: int, seq_len: int) -> list[np.ndarray]:
    """Cut a token stream into sequences of seq_len tokens (prefix included) until n_tokens are used."""
    if seq_len <= len(prefix):
        raise InputError(f"calibration sequence length {seq_len} is too short; use at least {len(prefix) + MIN_SEQ_LEN}")
    body = seq_len - len(prefix)
    out, used, pos = [], 0, 0
    while pos < len(stream) and used < n_tokens:
        take = min(body, n_tokens - used - len(prefix), len(stream) - pos)
        if take + len(prefix) < MIN_SEQ_LEN and out:
            break
        if take <= 0:
            break
        seq = np.concatenate([np.asarray(prefix, np.int64), stream[pos:pos + take].astype(np.int64)])
        out.append(seq)
        used += len(seq)
        pos += take
    return out


def calib_token_ids(model_dir: str | Path, calib=None, n_tokens: int = DEFAULT_CALIB_TOKENS,
                    seq_len: int = DEFAULT_SEQ_LEN) -> list[np.ndarray]:
    """The calibration sequences (int64 token ids, each <= seq_len) collect() runs.

    calib: None (built-in text), a str (text), a list of str (texts joined by blank
    lines), or token ids (1-D: one stream, cut into sequences; 2-D / list of lists:
    sequences as given, cut to seq_len).
    """
    if n_tokens <= 0:
        raise InputError(f"--calib-tokens must be positive, got {n_tokens}")
    if calib is None or isinstance(calib, str) or (isinstance(calib, (list, tuple)) and calib
                                                     and all(isinstance(t, str) for t in calib)):
        text = read_calib_text() if calib is None else calib if isinstance(calib, str) else "\n\n".join(calib)
        if not text.strip():
            raise InputError("the calibration text is empty; pass a text file with some prose")
        encode, prefix = _tokenizer(Path(model_dir))
        stream = np.asarray(encode(text[: n_tokens * CHARS_PER_TOKEN_MAX]), np.int64)
        seqs = _sequences(stream, prefix, n_tokens, seq_len)
    else:
        seqs = _id_sequences(calib, n_tokens, seq_len)
    if not seqs:
        raise InputError("the calibration data gave no tokens; pass a longer text with --calib")
    got = sum(len(s) for s in seqs)
    if got < n_tokens:
        note(f"calibration uses {got} tokens (asked for {n_tokens}): the text is short; pass a longer --calib file")
    return seqs


def _id_sequences(calib, n_tokens: int, seq_len: int) -> list[np.ndarray]:
    try:
        arr = [np.asarray(calib, np.int64)] if np.ndim(calib) == 1 else [np.asarray(s, np.int64) for s in calib]
    except (TypeError, ValueError):
        raise InputError("calibration data must be text or integer token ids") from None
    if len(arr) == 1 and np.ndim(calib) == 1:
        return _sequences(arr[0], [], n_tokens, seq_len)
    out, used = [], 0
    for s in arr:
        s = s.reshape(-1)[: min(seq_len, n_tokens - used)]
        if len(s):
            out.append(s)
            used += len(s)
        if used >= n_tokens:
            break
    return out


# ---------------------------------------------------------------------------
# the model, one layer at a time
# ---------------------------------------------------------------------------
def _hf_config(folder: Path, raw: dict):
    """transformers' config of the folder. A widened model (convert/widen.py) has a hidden size that is
    not a multiple of the head count; transformers' config validator refuses that although its modules
    take head_dim as given, so such a config is built with the stand-in n_head * head_dim and then set."""
    import transformers

    hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
    if hidden % heads == 0 or not raw.get("head_dim"):
        return transformers.AutoConfig.from_pretrained(str(folder))
    config = transformers.CONFIG_MAPPING[raw["model_type"]].from_dict(dict(raw, hidden_size=heads * int(raw["head_dim"])))
    config.hidden_size = hidden
    return config


class _Checkpoint:
    """Config, arch (name map), transformers classes and streaming tensor reads of an HF folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        raw = read_config(folder)
        self.arch: Arch = arch_for_config(raw)
        module, prefix = self.arch.hf_module, self.arch.hf_prefix  # the family names its transformers classes
        if not module:
            raise UnsupportedError(f"calibration has no transformers modules for {self.arch.name} models; "
                                   "convert without calibration")
        mod = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
        self.layer_cls = getattr(mod, f"{prefix}DecoderLayer")
        self.rotary_cls = getattr(mod, f"{prefix}RotaryEmbedding")
        self.norm_cls = getattr(mod, f"{prefix}RMSNorm")
        self.config = _hf_config(folder, raw)
        self.config._attn_implementation = "sdpa"
        self.entries: dict[str, safetensors_read.Entry] = {}
        for f in safetensors_files(folder):
            self.entries.update(safetensors_read.read_header(f))

    def tensor(self, hf_name: str):
        import torch

        if hf_name not in self.entries:
            raise InputError(f"{self.folder}: the weights lack {hf_name}; finish the download")
        return torch.from_numpy(safetensors_read.load(self.entries[hf_name]))

    def embed_rows(self, ids: np.ndarray):
        """(len(ids), hidden) float32 rows of the embedding, read row by row (never the whole matrix)."""
        import torch

        name = self.arch.HF_EMBED
        if name not in self.entries:
            raise InputError(f"{self.folder}: the weights lack {name}; finish the download")
        e = self.entries[name]
        vocab = e.shape[0]
        bad = ids[(ids < 0) | (ids >= vocab)]
        if bad.size:
            raise InputError(f"calibration token id {int(bad[0])} is outside the model's vocabulary of {vocab}; "
                             "pass ids of this model's tokenizer")
        uniq, inv = np.unique(ids, return_inverse=True)
        row = (e.end - e.begin) // vocab
        rows = np.stack([safetensors_read.load(safetensors_read.Entry(
            e.path, e.dtype, (e.shape[1],), e.begin + int(t) * row, e.begin + (int(t) + 1) * row)) for t in uniq])
        scale = self.arch.hf_embed_scale()  # e.g. Gemma's sqrt(hidden), applied inside its embedding module
        out = rows[inv.reshape(-1)]
        return torch.from_numpy(out * np.float32(scale) if scale != 1.0 else out)

    def layer(self, i: int):
        """Decoder layer i with its checkpoint weights (float32), built without random init."""
        import torch

        with torch.device("meta"):
            layer = self.layer_cls(self.config, i)
        names = list(layer.state_dict())
        layer.load_state_dict({n: self.tensor(self.arch.hf_block(i) + n) for n in names}, assign=True)
        return layer.eval()

    def final_norm(self):
        norm = self.norm_cls(self.config.hidden_size, eps=self.config.rms_norm_eps)
        norm.load_state_dict({"weight": self.tensor(self.arch.HF_NORM)})
        return norm.eval()

    def mask_fn(self, i: int):
        from transformers import masking_utils

        types = getattr(self.config, "layer_types", None)
        kind = types[i] if types else ("sliding_attention" if getattr(self.config, "sliding_window", None)
                                        else "full_attention")
        return (masking_utils.create_sliding_window_causal_mask if kind == "sliding_attention"
                else masking_utils.create_causal_mask)

    def head_name(self) -> str:
        return TensorNames.TOKEN_EMBD if self.arch.tied else TensorNames.OUTPUT


class _Accumulator:
    """Sum of x^2 per column and (optionally) X^T X over every token a linear sees."""

    def __init__(self, cols: int, hessian: bool):
        import torch

        self.n = 0
        self.sq = torch.zeros(cols, dtype=torch.float64)
        self.xtx = torch.zeros(cols, cols, dtype=torch.float32) if hessian else None

    def add(self, x) -> None:
        import torch

        x = x.reshape(-1, x.shape[-1]).to(torch.float32)  # (N, cols)
        self.n += x.shape[0]
        self.sq += torch.sum(x * x, 0, dtype=torch.float64)
        if self.xtx is not None:
            self.xtx.addmm_(x.T, x)

    def importance(self) -> np.ndarray:
        return (self.sq / max(self.n, 1)).float().numpy()

    def hessian(self) -> np.ndarray:
        """2 X^T X / n, scaled in place (no second (cols, cols) copy: 485 MB for a 7B ffn_down)."""
        import torch

        with torch.inference_mode():  # the hooks made it there: an inference tensor
            self.xtx.mul_(2.0 / max(self.n, 1))
        return self.xtx.numpy()


class _Hooks:
    """Forward hooks on every nn.Linear of a module; linears fed the very same tensor share an accumulator."""

    def __init__(self, module, gguf_of: Callable[[str], str | None], hessian: bool):
        import torch

        self.acc: dict[str, _Accumulator] = {}
        self.seen: list[tuple[object, _Accumulator]] = []  # this batch's inputs (kept alive: identity is safe)
        self.handles = []
        for name, sub in module.named_modules():
            if isinstance(sub, torch.nn.Linear):
                key = gguf_of(name)
                if key is not None:
                    self.handles.append(sub.register_forward_hook(self._hook(key, sub.in_features, hessian)))

    def _hook(self, key: str, cols: int, hessian: bool):
        def hook(_module, args, _out):
            x = args[0]
            shared = next((acc for t, acc in self.seen if t is x), None)
            if shared is None:
                shared = self.acc.get(key) or _Accumulator(cols, hessian)
                shared.add(x)
                self.seen.append((x, shared))
            self.acc[key] = shared

        return hook

    def next_batch(self) -> None:
        self.seen.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.seen.clear()

    def stats(self, index: int, hessian: bool) -> LayerStats:
        """The layer's statistics; the accumulators are handed over (the returned arrays are then
        the only references, so a consumer frees each Hessian by dropping it)."""
        imp, hes, done = {}, ({} if hessian else None), {}
        for key, acc in self.acc.items():  # shared accumulators -> shared arrays
            if id(acc) not in done:
                done[id(acc)] = (acc.importance(), acc.hessian() if hessian else None)
            imp[key] = done[id(acc)][0]
            if hessian:
                hes[key] = done[id(acc)][1]
        self.acc.clear()
        return LayerStats(index, imp, hes)


def _batches(seqs: list[np.ndarray]) -> list[list[int]]:
    """Indices of sequences grouped by length, at most BATCH_TOKENS tokens per group."""
    by_len: dict[int, list[int]] = {}
    for k, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(k)
    out = []
    for length, idx in by_len.items():
        per = max(1, BATCH_TOKENS // length)
        out += [idx[i:i + per] for i in range(0, len(idx), per)]
    return out


class _Runner:
    """Runs hidden states (one tensor per sequence) through decoder layers with the model's RoPE and masks."""

    def __init__(self, ck: _Checkpoint, seqs: list[np.ndarray]):
        self.ck = ck
        self.batches = _batches(seqs)
        self.rotary = ck.rotary_cls(config=ck.config)

    def run(self, layer, i: int, hidden: list, hooks: _Hooks | None = None) -> list:
        import torch

        out = [None] * len(hidden)
        mask_fn = self.ck.mask_fn(i)
        with torch.inference_mode():
            for idx in self.batches:
                h = torch.stack([hidden[k] for k in idx])  # (B, T, D)
                pos = torch.arange(h.shape[1]).unsqueeze(0)  # (1, T)
                mask = mask_fn(config=self.ck.config, inputs_embeds=h, attention_mask=None, cache=None,
                               position_ids=pos)
                rope = self.rotary(h, pos, **self.ck.arch.hf_rotary_kwargs(self.ck.config, i))
                y = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=rope)
                y = y[0] if isinstance(y, tuple) else y
                for j, k in enumerate(idx):
                    out[k] = y[j]
                if hooks is not None:
                    hooks.next_batch()
        return out


def _layer_param(layer, i: int, ck: _Checkpoint, gguf_name: str):
    params = dict(layer.named_parameters())
    prefix = ck.arch.hf_block(i)
    hf = ck.arch.hf_name(gguf_name)
    if not hf.startswith(prefix) or hf[len(prefix):] not in params:
        raise ValueError(f"on_layer named {gguf_name}, which is not a tensor of layer {i}")
    return params[hf[len(prefix):]]


def _replace(layer, i: int, ck: _Checkpoint, new: dict[str, np.ndarray]) -> None:
    """Load GGUF-named arrays (as the GGUF stores them) into decoder layer i, in HF layout
    (into a released weight too: see `_release`)."""
    import torch

    for gguf_name, arr in new.items():
        p = _layer_param(layer, i, ck, gguf_name)
        w = np.ascontiguousarray(ck.arch.untransform(gguf_name, np.asarray(arr, np.float32)))
        shape = tuple(getattr(p, "full_shape", p.shape))
        if tuple(w.shape) != shape:
            raise ValueError(f"on_layer returned {gguf_name} of shape {w.shape}, expected {shape}")
        with torch.no_grad():
            if hasattr(p, "full_shape"):  # released: take the new array as its storage
                p.data = torch.from_numpy(w)
                del p.full_shape
            else:
                p.copy_(torch.from_numpy(w))


def _release(layer, i: int, ck: _Checkpoint, names: list[str]) -> None:
    """Free the weights of these GGUF-named tensors of layer i until `_replace` fills them:
    a quantizer working tensor by tensor then never holds the original layer beside the
    quantized one (808 MB for a 7B layer in float32)."""
    import torch

    for gguf_name in names:
        p = _layer_param(layer, i, ck, gguf_name)
        if not hasattr(p, "full_shape"):
            p.full_shape = tuple(p.shape)
            p.data = torch.empty(0, dtype=p.dtype)


def _check_filled(layer, i: int) -> None:
    for name, p in layer.named_parameters():
        if hasattr(p, "full_shape"):
            raise ValueError(f"on_layer released layer {i}'s {name} but never replaced it")


def collect(model_dir: str | Path, calib=None, n_tokens: int = DEFAULT_CALIB_TOKENS, seq_len: int = DEFAULT_SEQ_LEN,
            want_hessian: bool = False, on_layer: Callable[[LayerStats], dict | None] | None = None,
            threads: int | None = None) -> CalibStats:
    """Per-linear calibration statistics of the HF model in `model_dir`, one decoder layer in memory at a time.

    calib: see `calib_token_ids` (None: built-in text).  With `on_layer`, each layer's
    statistics go to it as soon as they exist (Hessians are then not kept in the
    result) and weights it returns ({GGUF name: array}) replace the layer's before its
    outputs feed the next layer; it may instead load them one by one with
    `stats.replace(name, array)`.  `threads` sets torch's intra-op threads for the duration.
    (`layers` is the same walk as a generator, for callers that drive it.)
    """
    result = CalibStats(hessian={} if want_hessian and on_layer is None else None)
    for stats in layers(model_dir, calib, n_tokens, seq_len, want_hessian, threads, result):
        new = on_layer(stats) if on_layer is not None else None
        if isinstance(new, dict):
            for name, arr in new.items():
                stats.replace(name, arr)
    return result


def layers(model_dir: str | Path, calib=None, n_tokens: int = DEFAULT_CALIB_TOKENS, seq_len: int = DEFAULT_SEQ_LEN,
           want_hessian: bool = False, threads: int | None = None, result: CalibStats | None = None):
    """Yield each decoder layer's LayerStats (then the head's, index == n_layers) as `collect` computes them.

    While a layer's stats are out, the caller may `stats.release` / `stats.replace` its
    weights; when it replaced any, the layer is run again on its new weights before its
    outputs feed the next layer (GPTQ's sequential mode). `result`, when given, gathers
    the importance (and the Hessians when its `hessian` is a dict) and the token counts.
    """
    import torch

    folder = Path(model_dir)
    ck = _Checkpoint(folder)
    seqs = calib_token_ids(folder, calib, n_tokens, seq_len)
    if result is not None:
        result.n_tokens, result.n_sequences = int(sum(len(s) for s in seqs)), len(seqs)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for stats in _walk(ck, seqs, want_hessian):
            if result is not None:
                _gather(stats, result)
            yield stats
    finally:
        torch.set_num_threads(old_threads)


def hidden_states(model_dir: str | Path, calib=None, n_tokens: int = DEFAULT_CALIB_TOKENS,
                  seq_len: int = DEFAULT_SEQ_LEN) -> list[list[np.ndarray]]:
    """The layer-by-layer hidden states collect() computes, for checks against the full model:
    [embeddings, after layer 0, ..., after the last layer, after the final norm], each a list of
    (T, hidden) float32 arrays, one per calibration sequence."""
    ck = _Checkpoint(Path(model_dir))
    trace: list = []
    for _ in _walk(ck, calib_token_ids(model_dir, calib, n_tokens, seq_len), False, trace):
        pass
    return [[h.numpy() for h in stage] for stage in trace]


def _walk(ck: _Checkpoint, seqs: list[np.ndarray], want_hessian: bool, trace=None):
    """The layer-by-layer pass of `layers` (without threads and result)."""
    import torch

    flat = ck.embed_rows(np.concatenate(seqs))
    hidden = list(torch.split(flat, [len(s) for s in seqs]))
    runner = _Runner(ck, seqs)
    if trace is not None:
        trace.append(hidden)
    for i in range(ck.arch.n_layers):
        layer = ck.layer(i)
        hooks = _Hooks(layer, lambda n, i=i: ck.arch.gguf_name(f"{ck.arch.hf_block(i)}{n}.weight"), want_hessian)
        out = runner.run(layer, i, hidden, hooks)
        hooks.remove()
        stats = hooks.stats(i, want_hessian)
        _attach(stats, layer, i, ck)
        yield stats  # the caller may release / replace the layer's weights now
        stats.replace = stats.release = None  # their closures hold the layer and stats: break the cycle
        if stats.changed:
            _check_filled(layer, i)
            out = runner.run(layer, i, hidden)
        hidden = out
        if trace is not None:
            trace.append(hidden)
        del layer, hooks, stats
    norm = ck.final_norm()
    acc = _Accumulator(ck.config.hidden_size, want_hessian)
    with torch.inference_mode():
        normed = [norm(h) for h in hidden]
        for h in normed:
            acc.add(h)
    if trace is not None:
        trace.append(normed)
    head = ck.head_name()
    yield LayerStats(ck.arch.n_layers, {head: acc.importance()}, {head: acc.hessian()} if want_hessian else None)


def _attach(stats: LayerStats, layer, i: int, ck: _Checkpoint) -> None:
    """Give `stats` its release / replace functions on decoder layer i; either marks it changed.
    They reference `stats` (a cycle that would keep the layer's weights until the garbage collector
    runs): `_walk` drops them once the caller is done with the layer."""

    def replace(name: str, arr: np.ndarray) -> None:
        _replace(layer, i, ck, {name: arr})
        stats.changed = True

    def release(names: list[str]) -> None:
        _release(layer, i, ck, names)
        stats.changed = stats.changed or bool(names)

    stats.replace, stats.release = replace, release


def _gather(stats: LayerStats, result: CalibStats) -> None:
    result.importance.update(stats.importance)
    if result.hessian is not None:
        result.hessian.update(stats.hessian)
