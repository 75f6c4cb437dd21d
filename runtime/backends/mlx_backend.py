"""The MLX backend: the whole forward pass in MLX (an Apple GPU, or MLX's CPU device elsewhere).

Weights, once at load (`load_weight`):
    AFFINE{b}_G{g}     codes, scales and biases go to mx.quantized_matmul as stored (no repacking)
    Q8_0, Q4_K, Q5_K, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, TQ1_0, TQ2_0
                       re-laid out exactly as MLX affine, group 32 (`mlx_transcode.py`)
    anything else      (Q6_K, Q3_K, Q2_K, IQ4_XS and the lattice IQ types, F16, BF16, F32)
                       dequantized once with the numpy references into dense `dtype` arrays;
                       the quantized ones among them are named once on stderr and in `backend.notes`
Scales and biases take the activation dtype when that holds them exactly, else float32
(MLX then computes that matmul in float32; `exact_scales=False` rounds them instead).

Activations: `dtype` = float32 on MLX's CPU device (its float16 kernels are very slow) and
float16 on a GPU; override with dtype=... or EDGESLIM_MLX_DTYPE=float32|float16|bfloat16.

Forward (same math as `base.CPUBackend`):
    mx.fast.rms_norm; mx.fast.rope with traditional=True for ggml's "normal" RoPE (pairs
    (x[2i], x[2i+1]), Llama GGUFs) and False for NEOX (Qwen2), per-pair periods
    base^(2i/n_rot) * rope_freqs factor (Llama 3), scale = the linear frequency scale;
    mx.fast.scaled_dot_product_attention (GQA: query head h reads kv head h // (H/Hkv);
    its "causal" mask is aligned to the last key, which is what a cache offset needs); SwiGLU.
Cache: `MLXCache`, per-layer (1, Hkv, S, Hd) arrays in the kv dtype, grown in steps of 256.
Threads: forward evaluates everything it builds before returning (logits and cache), so
the next call may come from another thread (MLX streams are per thread and only
unevaluated arrays are tied to one).
"""
from __future__ import annotations

import os
import sys

import mlx.core as mx
import numpy as np

from ...errors import InputError
from ...tables import TensorNames, parse_affine
from ..kv_cache import RING_SLACK, CachePosition
from ..loader import ModelFile, WeightSource
from ..ops import attention_mask
from .base import Backend
from .mlx_transcode import TRANSCODED, AffineParts, transcode
from .numpy_backend import dequantize_source

DTYPES = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
DTYPE_ENV = "EDGESLIM_MLX_DTYPE"
_NP_TO_MX = {np.dtype(np.float16): mx.float16, np.dtype(np.float32): mx.float32}


def default_dtype():
    """float32 on MLX's CPU device, float16 on a GPU (or EDGESLIM_MLX_DTYPE when set)."""
    name = os.environ.get(DTYPE_ENV)
    if name:
        return dtype_of(name)
    return mx.float32 if mx.default_device().type == mx.cpu else mx.float16


def dtype_of(name) -> mx.Dtype:
    """'float32' | 'float16' | 'bfloat16' (or an mx dtype) -> mx dtype."""
    if isinstance(name, mx.Dtype):
        return name
    if str(name).lower() not in DTYPES:
        raise InputError(f"MLX activation dtype {name!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[str(name).lower()]


# -- weights ---------------------------------------------------------------------------
class AffineWeight:
    """A matrix in MLX's affine layout, multiplied by mx.quantized_matmul."""

    kind = "affine"

    def __init__(self, parts: AffineParts, dtype, scale_dtype):
        self.w = mx.array(parts.codes)  # (rows, cols * bits / 32) uint32
        self.scales = mx.array(parts.scales).astype(scale_dtype)  # (rows, cols / group)
        self.biases = mx.array(parts.biases).astype(scale_dtype)
        self.bits, self.group, self.dtype = parts.bits, parts.group, dtype

    def __call__(self, x: mx.array) -> mx.array:
        """x (..., cols) -> x @ W.T (..., rows) in the activation dtype."""
        y = mx.quantized_matmul(x, self.w, self.scales, self.biases, transpose=True,
                                group_size=self.group, bits=self.bits)
        return y if y.dtype == self.dtype else y.astype(self.dtype)

    def rows(self, ids: mx.array) -> mx.array:
        """Rows `ids` dequantized: (T, cols) (embedding lookup; only those rows are touched)."""
        w = mx.dequantize(self.w[ids], self.scales[ids], self.biases[ids], group_size=self.group, bits=self.bits)
        return w.astype(self.dtype)

    def arrays(self) -> list[mx.array]:
        return [self.w, self.scales, self.biases]


class DenseWeight:
    """A matrix held as a dense (rows, cols) array in the activation dtype."""

    kind = "dense"

    def __init__(self, w: np.ndarray, dtype):
        self.w = mx.array(w).astype(dtype)  # (rows, cols)

    def __call__(self, x: mx.array) -> mx.array:
        return x @ self.w.T

    def rows(self, ids: mx.array) -> mx.array:
        return self.w[ids]

    def arrays(self) -> list[mx.array]:
        return [self.w]


def affine_parts(src: WeightSource) -> AffineParts | None:
    """The weight in MLX's affine layout when it is (AFFINE*) or maps exactly (TRANSCODED types), else None."""
    aff = parse_affine(src.qtype)
    if aff:
        rows = src.shape[0]
        codes = np.asarray(src.data).reshape(-1).view(np.uint32).reshape(rows, -1)
        return AffineParts(codes, np.asarray(src.scales), np.asarray(src.biases), *aff)
    if src.qtype in TRANSCODED:
        return transcode(src.qtype, src.data, src.shape)
    return None


def _exact_in(a: np.ndarray, dtype) -> bool:
    """True when every value of `a` is unchanged by a round trip through the mx dtype."""
    if dtype == mx.float32:
        return True
    back = np.array(mx.array(np.asarray(a, np.float32)).astype(dtype).astype(mx.float32))
    return bool(np.array_equal(back, np.asarray(a, np.float32)))


def load_weight(src: WeightSource, dtype, exact_scales: bool = True):
    """(holder, how) for one stored weight; how is 'affine', 'transcoded', 'rounded' or 'dense'."""
    parts = affine_parts(src)
    if parts is None:
        return DenseWeight(dequantize_source(src), dtype), "dense"
    how = "affine" if parse_affine(src.qtype) else "transcoded"
    scale_dtype = dtype
    if not (_exact_in(parts.scales, dtype) and _exact_in(parts.biases, dtype)):
        if exact_scales:
            scale_dtype = mx.float32
        else:
            how = "rounded"
    return AffineWeight(parts, dtype, scale_dtype), how


# -- cache -----------------------------------------------------------------------------
class MLXCache(CachePosition):
    """Keys and values as MLX arrays; `pos` is how many positions are filled.

    Per layer: keys and values (1, Hkv, allocated, Hd) in the kv dtype, allocated in
    steps of STEP positions (at most n_ctx) as the sequence grows, so a large n_ctx
    costs nothing until it is used. Positions at or past `pos` are garbage to overwrite.
    A sliding-window layer (windows[layer] > 0) keeps only its last window + RING_SLACK
    positions, starting at `win_start[layer]` (`update_window`).
    """

    STEP = 256

    def __init__(self, n_layer: int, n_head_kv: int, head_dim: int, n_ctx: int, dtype=mx.float16,
                 windows: tuple[int, ...] | None = None):
        self.n_ctx, self.dtype, self.pos = int(n_ctx), dtype, 0
        self.n_head_kv, self.head_dim = n_head_kv, head_dim
        self.windows = tuple(windows or (0,) * n_layer)
        self.win_start = [0] * n_layer  # window layers: the position of their first held key
        self.keys: list[mx.array | None] = [None] * n_layer
        self.values: list[mx.array | None] = [None] * n_layer

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays())

    def arrays(self) -> list[mx.array]:
        """Every allocated key/value array (to evaluate together with the logits)."""
        return [a for a in self.keys + self.values if a is not None]

    def update(self, layer: int, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        """Write k, v (1, Hkv, T, Hd) at positions pos..pos+T-1; return keys, values (1, Hkv, pos+T, Hd)."""
        end = self.pos + k.shape[2]
        if end > self.n_ctx:
            raise InputError(f"{end} tokens exceed the context of {self.n_ctx}; pass a larger --ctx / n_ctx")
        if self.keys[layer] is None or self.keys[layer].shape[2] < end:
            self._grow(layer, end)
        self.keys[layer][:, :, self.pos:end, :] = k.astype(self.dtype)
        self.values[layer][:, :, self.pos:end, :] = v.astype(self.dtype)
        return self.keys[layer][:, :, :end, :], self.values[layer][:, :, :end, :]

    def update_window(self, layer: int, k: mx.array, v: mx.array, window: int) -> tuple[mx.array, mx.array, int]:
        """A sliding-window layer: return keys, values (1, Hkv, S, Hd) of the positions held before
        plus k, v (1, Hkv, T, Hd), and the position of key 0; keep only the last window + RING_SLACK."""
        end = self.pos + k.shape[2]
        if end > self.n_ctx:
            raise InputError(f"{end} tokens exceed the context of {self.n_ctx}; pass a larger --ctx / n_ctx")
        start = self.win_start[layer]
        old_k, old_v = self.keys[layer], self.values[layer]
        if old_k is None or self.pos == start:
            keys, values = k.astype(self.dtype), v.astype(self.dtype)
        else:
            n_old = self.pos - start
            keys = mx.concatenate([old_k[:, :, :n_old], k.astype(self.dtype)], axis=2)
            values = mx.concatenate([old_v[:, :, :n_old], v.astype(self.dtype)], axis=2)
        keep = min(keys.shape[2], window + RING_SLACK)
        self.keys[layer], self.values[layer] = keys[:, :, -keep:], values[:, :, -keep:]
        self.win_start[layer] = end - keep
        return keys, values, start

    def truncate(self, n: int) -> None:
        """Forget positions n and later; a window layer that no longer holds its window before n
        forces a full reset."""
        n = max(0, min(int(n), self.pos))
        for layer, w in enumerate(self.windows):
            if w and self.win_start[layer] > max(0, n - w + 1):
                n = 0
        self.pos = n
        self.win_start = [min(s, n) for s in self.win_start]

    def reset(self) -> None:
        self.pos = 0
        self.win_start = [0] * len(self.windows)

    def _grow(self, layer: int, end: int) -> None:
        size = min(self.n_ctx, -(-end // self.STEP) * self.STEP)
        for store in (self.keys, self.values):
            new = mx.zeros((1, self.n_head_kv, size, self.head_dim), self.dtype)
            if store[layer] is not None and self.pos:
                new[:, :, :self.pos, :] = store[layer][:, :, :self.pos, :]
            store[layer] = new



# -- backend ---------------------------------------------------------------------------
class MLXBackend(Backend):
    """Whole forward in MLX; quantized weights multiplied by mx.quantized_matmul.

    MLXBackend(model, kv_dtype="float16", dtype=None, exact_scales=True, verbose=True)
    dtype: activation dtype (None: float32 on CPU, float16 on GPU, see the module docstring).
    exact_scales: keep float32 scales where the activation dtype would round them.
    verbose: print the one-line note on dequantized tensors to stderr (always in `notes`).
    """

    name = "mlx"

    def __init__(self, model: ModelFile, kv_dtype="float16", dtype=None, exact_scales: bool = True,
                 verbose: bool = True):
        super().__init__(model, kv_dtype)
        hp = self.hp
        self.dtype = default_dtype() if dtype is None else dtype_of(dtype)
        self.exact_scales = exact_scales
        self.loaded: dict[str, tuple[str, str]] = {}  # tensor name -> (stored type, how it is held)
        self.embd = self._weight(TensorNames.TOKEN_EMBD)
        out_name = model.output_name
        self.output = self.embd if out_name == TensorNames.TOKEN_EMBD else self._weight(out_name)
        self.out_norm = self._vector(TensorNames.OUTPUT_NORM)
        self.layers = [self._load_block(b) for b in range(hp.n_layer)]
        periods = hp.rope_base ** (np.arange(0, hp.n_rot, 2, dtype=np.float64) / hp.n_rot)  # (n_rot/2,)
        factors = model.rope_freqs()
        if factors is not None:
            periods = periods * factors.astype(np.float64)
        self.rope_periods = mx.array(periods.astype(np.float32))
        swa = hp.rope_base_swa ** (np.arange(0, hp.n_rot, 2, dtype=np.float64) / hp.n_rot)  # local layers' RoPE
        self.rope_periods_swa = mx.array(swa.astype(np.float32))
        self.act = ACTIVATIONS[model.arch.activation]
        mx.eval(self._arrays())  # every weight is now an MLX copy: the file's pages can go
        self.model.gguf.drop_pages()
        self.notes = self._notes()
        if verbose and any("dequantized" in n or "rounded" in n for n in self.notes):
            print("edgeslim: note: " + "; ".join(self.notes), file=sys.stderr)

    # -- load ----------------------------------------------------------------------
    def _weight(self, name: str):
        src = self.model.weight(name)
        holder, how = load_weight(src, self.dtype, self.exact_scales)
        self.loaded[name] = (src.qtype, how)
        return holder

    def _vector(self, name: str) -> mx.array:
        return mx.array(self.model.vector(name)).astype(self.dtype)

    def _load_block(self, bid: int) -> dict:
        layer = {}
        for role, name in self.model.block(bid).items():
            is_vec = role.endswith("_norm") or role.endswith("_bias")
            layer[role] = self._vector(name) if is_vec else self._weight(name)
        return layer


    def _arrays(self) -> list[mx.array]:
        out = [self.out_norm, *self.embd.arrays(), *self.output.arrays()]
        for layer in self.layers:
            for v in layer.values():
                out.extend([v] if isinstance(v, mx.array) else v.arrays())
        return out

    def _notes(self) -> list[str]:
        """One line per way of holding weights: how many of which stored type, and which tensors."""
        groups: dict[tuple[str, str], list[str]] = {}
        for name, (qtype, how) in self.loaded.items():
            groups.setdefault((how, qtype), []).append(name)
        dt = str(self.dtype).split(".")[-1]
        text = {"affine": "used as stored (MLX affine)",
                "transcoded": "transcoded exactly to MLX affine",
                "rounded": f"transcoded to MLX affine with scales rounded to {dt}",
                "dense": f"dequantized to {dt}"}
        notes = []
        for (how, qtype), names in sorted(groups.items()):
            what = text[how]
            if how == "dense" and qtype in ("F32", "F16", "BF16"):
                what = f"held as dense {dt}"
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            notes.append(f"mlx: {len(names)} {qtype} tensor{'s' * (len(names) > 1)} {what} ({shown})")
        return notes

    # -- forward -------------------------------------------------------------------
    def new_cache(self, n_ctx: int) -> MLXCache:
        hp = self.hp
        windows = tuple(hp.window(b) for b in range(hp.n_layer))
        return MLXCache(hp.n_layer, hp.n_head_kv, hp.head_dim, n_ctx, _NP_TO_MX[np.dtype(self.kv_dtype)], windows)

    def forward(self, ids, cache: MLXCache, n_logits: int = 1) -> np.ndarray:
        ids = self.check_ids(ids, cache)
        T, start = ids.size, cache.pos
        n_logits = max(1, min(int(n_logits), T))
        x = self.embd.rows(mx.array(ids.astype(np.int32)))[None]  # (1, T, D)
        if self.hp.embd_scale != 1.0:
            x = x * self.hp.embd_scale
        for bid, layer in enumerate(self.layers):
            x = self._block(bid, layer, x, cache, start)
        h = mx.fast.rms_norm(x[:, T - n_logits:], self.out_norm, self.hp.rms_eps)  # (1, n_logits, D)
        logits = self.output(h)[0].astype(mx.float32)  # (n_logits, V)
        if self.hp.logit_softcap > 0:
            logits = mx.tanh(logits / self.hp.logit_softcap) * self.hp.logit_softcap
        mx.eval(logits, *cache.arrays())
        cache.advance(T)
        return np.array(logits)

    def _rope(self, x: mx.array, start: int, local: bool = False) -> mx.array:
        """x (1, heads, T, Hd) at positions start.. rotated in its first n_rot dims (local: the
        sliding-window layers' base, no frequency scaling)."""
        hp = self.hp
        return mx.fast.rope(x, hp.n_rot, traditional=not self.model.arch.rope_neox, base=None,
                            scale=1.0 if local else hp.rope_freq_scale, offset=start,
                            freqs=self.rope_periods_swa if local else self.rope_periods)

    def _qkv(self, w: dict, h: mx.array, start: int, local: bool):
        """q (1, H, T, Hd), k and v (1, Hkv, T, Hd): biases, per-head q/k norms, RoPE."""
        hp = self.hp
        T = h.shape[1]
        if "attn_qkv" in w:  # stored fused (Phi-3)
            qkv = w["attn_qkv"](h)  # (1, T, (H + 2*Hkv)*Hd)
            n_q, n_kv = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
            q, k, v = qkv[..., :n_q], qkv[..., n_q:n_q + n_kv], qkv[..., n_q + n_kv:]
        else:
            q, k, v = w["attn_q"](h), w["attn_k"](h), w["attn_v"](h)  # (1, T, H*Hd), (1, T, Hkv*Hd) x2
        if "attn_q_bias" in w:
            q, k, v = q + w["attn_q_bias"], k + w["attn_k_bias"], v + w["attn_v_bias"]
        q = q.reshape(1, T, hp.n_head, hp.head_dim)
        k = k.reshape(1, T, hp.n_head_kv, hp.head_dim)
        if "attn_q_norm" in w:
            q = mx.fast.rms_norm(q, w["attn_q_norm"], hp.rms_eps)
            k = mx.fast.rms_norm(k, w["attn_k_norm"], hp.rms_eps)
        q = self._rope(q.transpose(0, 2, 1, 3), start, local)  # (1, H, T, Hd)
        k = self._rope(k.transpose(0, 2, 1, 3), start, local)  # (1, Hkv, T, Hd)
        return q, k, v.reshape(1, T, hp.n_head_kv, hp.head_dim).transpose(0, 2, 1, 3)

    def _attention(self, bid: int, q: mx.array, k: mx.array, v: mx.array, cache: MLXCache, start: int) -> mx.array:
        """(1, H, T, Hd) attention of q over the cache after storing k, v (sliding window when the layer has one)."""
        hp = self.hp
        T, window = q.shape[2], hp.window(bid)
        if window:
            keys, values, kpos0 = cache.update_window(bid, k, v, window)  # (1, Hkv, S, Hd) each
            m = attention_mask(T, keys.shape[2], start, window, kpos0)
            mask = None if m is None else mx.array(m).astype(self.dtype)  # (T, S) additive
        else:
            keys, values = cache.update(bid, k, v)  # (1, Hkv, S, Hd) each, S = start + T
            mask = "causal" if T > 1 else None
        if keys.dtype != self.dtype:
            keys, values = keys.astype(self.dtype), values.astype(self.dtype)
        return mx.fast.scaled_dot_product_attention(q, keys, values, scale=hp.scale, mask=mask)

    def _block(self, bid: int, w: dict, x: mx.array, cache: MLXCache, start: int) -> mx.array:
        hp = self.hp
        T = x.shape[1]
        h = mx.fast.rms_norm(x, w["attn_norm"], hp.rms_eps)  # (1, T, D)
        q, k, v = self._qkv(w, h, start, bool(hp.window(bid)))
        a = self._attention(bid, q, k, v, cache, start)  # (1, H, T, Hd)
        a = w["attn_output"](a.transpose(0, 2, 1, 3).reshape(1, T, hp.n_head * hp.head_dim))  # (1, T, D)
        if "post_attention_norm" in w:
            a = mx.fast.rms_norm(a, w["post_attention_norm"], hp.rms_eps)
        x = x + a
        h = mx.fast.rms_norm(x, w["ffn_norm"], hp.rms_eps)
        if "ffn_gate" in w:
            f = w["ffn_down"](self.act(w["ffn_gate"](h), w["ffn_up"](h)))  # (1, T, D)
        else:  # ffn_up holds gate | up (Phi-3)
            gu = w["ffn_up"](h)  # (1, T, 2F)
            f = w["ffn_down"](self.act(gu[..., :hp.n_ff], gu[..., hp.n_ff:]))
        if "post_ffw_norm" in w:
            f = mx.fast.rms_norm(f, w["post_ffw_norm"], hp.rms_eps)
        return x + f


def _swiglu(g: mx.array, u: mx.array) -> mx.array:
    return g * mx.sigmoid(g) * u


def _geglu(g: mx.array, u: mx.array) -> mx.array:
    c = float(np.sqrt(2.0 / np.pi))
    return 0.5 * g * (1.0 + mx.tanh(c * (g + 0.044715 * g * g * g))) * u


ACTIVATIONS = {"silu": _swiglu, "gelu_tanh": _geglu}  # edgeslim.arch `activation` -> gated FFN in MLX
