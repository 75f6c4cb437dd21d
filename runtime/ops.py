"""The transformer's non-matmul math in numpy float32, shared by every CPU backend.

RMSNorm, RoPE (ggml's normal and NEOX pairings, base frequency, linear scaling,
Llama-3 per-pair factors), grouped-query causal attention (optionally over a sliding
window), SwiGLU / GeGLU and logit soft-capping. These
are a few lines each over numpy, so they are written here rather than pulled
from a framework (the runtime must not import torch).
"""
from __future__ import annotations

import numpy as np

# Above this many score elements per kv head the attention loops over kv heads to bound memory.
_ATTN_BATCH_ELEMS = 1 << 22


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x * weight / sqrt(mean(x^2) + eps) over the last axis.  x: (T, D), weight: (D,)."""
    ms = np.mean(np.square(x), axis=-1, keepdims=True, dtype=np.float32)  # (T, 1)
    return (x * (1.0 / np.sqrt(ms + np.float32(eps)))).astype(np.float32) * weight


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), computed stably for large |x|."""
    return x / (np.float32(1.0) + np.exp(-x))


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up.  (T, F) each."""
    with np.errstate(over="ignore"):  # exp overflow -> inf -> silu 0, the right limit
        return silu(gate) * up


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU with the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    c = np.float32(np.sqrt(2.0 / np.pi))
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))


def geglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gelu_tanh(gate) * up (Gemma's FFN).  (T, F) each."""
    with np.errstate(over="ignore"):  # x^3 overflow -> tanh(+-inf) = +-1, the right limit
        return gelu_tanh(gate) * up


ACTIVATIONS = {"silu": swiglu, "gelu_tanh": geglu}  # edgeslim.arch `activation` -> gated FFN


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """cap * tanh(x / cap) (Gemma's final-logit soft-capping); cap <= 0 leaves x as is."""
    return x if cap <= 0 else (np.float32(cap) * np.tanh(x / np.float32(cap))).astype(np.float32)


class Rope:
    """Precomputed rotary tables for positions 0..n_ctx-1.

    theta(p, i) = p * freq_scale * base^(-2i / n_rot) / factor[i], i < n_rot/2.
    "normal" (ggml's default, Llama GGUFs): rotates pairs (x[2i], x[2i+1]).
    "neox" (Qwen2): rotates pairs (x[i], x[i + n_rot/2]).
    Dimensions at or past n_rot pass through unchanged.
    """

    def __init__(self, n_rot: int, base: float, n_ctx: int, neox: bool,
                 freq_scale: float = 1.0, factors: np.ndarray | None = None):
        self.n_rot, self.neox = n_rot, neox
        inv = base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)  # (n_rot/2,)
        if factors is not None:
            inv = inv / factors.astype(np.float64)
        ang = np.arange(n_ctx, dtype=np.float64)[:, None] * freq_scale * inv[None, :]  # (n_ctx, n_rot/2)
        self.cos = np.cos(ang).astype(np.float32)
        self.sin = np.sin(ang).astype(np.float32)

    def __call__(self, x: np.ndarray, start: int) -> np.ndarray:
        """Rotate x: (T, H, Hd) holding positions start..start+T-1. Returns a new array."""
        T = x.shape[0]
        cos = self.cos[start:start + T, None, :]  # (T, 1, n_rot/2)
        sin = self.sin[start:start + T, None, :]
        out = x.copy()
        r = self.n_rot
        if self.neox:
            a, b = x[..., : r // 2], x[..., r // 2: r]  # (T, H, n_rot/2)
            out[..., : r // 2] = a * cos - b * sin
            out[..., r // 2: r] = a * sin + b * cos
        else:
            a, b = x[..., 0:r:2], x[..., 1:r:2]  # (T, H, n_rot/2)
            out[..., 0:r:2] = a * cos - b * sin
            out[..., 1:r:2] = a * sin + b * cos
        return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float32 (-inf entries get probability 0)."""
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def attention(q: np.ndarray, kt: np.ndarray, v: np.ndarray, start: int, scale: float | None = None,
              window: int = 0, kpos0: int = 0) -> np.ndarray:
    """Causal grouped-query attention, optionally over a sliding window.

    q: (T, H, Hd) queries at positions start..start+T-1
    kt: (Hkv, Hd, S) float32 keys (transposed), v: (Hkv, S, Hd) values at positions kpos0..kpos0+S-1
    scale: multiplies q (default 1/sqrt(Hd)); window > 0: a query at p sees keys p-window+1..p only
    returns (T, H * Hd)
    Query head h uses kv head h // (H / Hkv), as in ggml and transformers.
    """
    T, H, Hd = q.shape
    Hkv, S, _ = v.shape
    G = H // Hkv
    qg = q.reshape(T, Hkv, G, Hd).transpose(1, 2, 0, 3).reshape(Hkv, G * T, Hd)  # (Hkv, G*T, Hd)
    qg = qg * np.float32(1.0 / np.sqrt(Hd) if scale is None else scale)
    mask = attention_mask(T, S, start, window, kpos0)
    if mask is not None:
        mask = np.tile(mask, (G, 1))  # (G*T, S): rows ordered (g, t)
    out = np.empty((Hkv, G * T, Hd), np.float32)
    heads = [slice(None)] if G * T * S * Hkv <= _ATTN_BATCH_ELEMS else [slice(h, h + 1) for h in range(Hkv)]
    for hs in heads:
        scores = np.matmul(qg[hs], kt[hs])  # (h, G*T, S)
        if mask is not None:
            scores += mask
        out[hs] = np.matmul(softmax(scores), v[hs])  # (h, G*T, Hd)
    return out.reshape(Hkv, G, T, Hd).transpose(2, 0, 1, 3).reshape(T, H * Hd)  # (T, H*Hd)


def attention_mask(T: int, S: int, start: int, window: int, kpos0: int) -> np.ndarray | None:
    """(T, S) additive mask: 0 where key position kpos0+s is visible to query start+t, -inf elsewhere;
    None when every key is visible to every query."""
    qpos = start + np.arange(T)[:, None]  # (T, 1)
    kpos = kpos0 + np.arange(S)[None, :]  # (1, S)
    hidden = kpos > qpos
    if window:
        hidden |= qpos - kpos >= window
    if not hidden.any():
        return None
    return np.where(hidden, np.float32(-np.inf), np.float32(0))
