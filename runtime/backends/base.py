"""The backend contract and the shared CPU forward pass.

A backend turns a `ModelFile` into something that runs tokens:

    backend = BackendClass(model_file, kv_dtype="float16")
    cache = backend.new_cache(n_ctx)          # has .pos, .n_ctx, .free, .truncate(n), .reset()
    logits = backend.forward(ids, cache, n_logits=1)   # (n_logits, n_vocab) float32, last rows
    backend.name                              # "numpy" | "numba" | "mlx"

`forward` appends `ids` (positions cache.pos ...) to the cache and returns the
logits of the last `n_logits` of them. Everything above this (generation,
sampling, perplexity, the API) only uses this contract, so a backend may run
its whole forward on a GPU (MLX) and keep its own cache type.

`CPUBackend` implements the forward once in numpy float32 (RMSNorm, RoPE, GQA
attention, SwiGLU/GeGLU from `edgeslim.runtime.ops`); what differs between families
is read from the family (`edgeslim.arch`) and the hyper-parameters: optional steps
run when the block has their tensors (q/k norms, post-norms, biases), the embedding
scale, sliding windows and logit soft-capping come from `HParams`; its subclasses only decide how
a weight is held (`prepare`) and multiplied (`matmul`, `embed`).
"""
from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...tables import TensorNames
from ..kv_cache import KVCache, kv_dtype_of
from ..loader import ModelFile, WeightSource
from ..ops import ACTIVATIONS, Rope, attention, rms_norm, softcap


class Backend:
    """Abstract backend (see the module docstring for the contract)."""

    name = "abstract"

    def __init__(self, model: ModelFile, kv_dtype="float16"):
        self.model, self.hp = model, model.hp
        self.kv_dtype = kv_dtype_of(kv_dtype)

    def new_cache(self, n_ctx: int):
        """An empty cache for up to n_ctx positions."""
        raise NotImplementedError

    def forward(self, ids, cache, n_logits: int = 1) -> np.ndarray:
        """Run ids (T,) at positions cache.pos.. ; return logits (n_logits, n_vocab) float32 of the last rows."""
        raise NotImplementedError

    def check_ids(self, ids, cache) -> np.ndarray:
        """Validated token ids as int64 (T,), with room in the cache."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise InputError("no tokens to run; give a non-empty prompt")
        if ids.min() < 0 or ids.max() >= self.hp.n_vocab:
            raise InputError(f"token id {int(ids.max() if ids.max() >= self.hp.n_vocab else ids.min())} is outside "
                             f"the vocabulary of {self.hp.n_vocab}; use this model's tokenizer")
        if cache.pos + ids.size > cache.n_ctx:
            raise InputError(f"{cache.pos + ids.size} tokens exceed the context of {cache.n_ctx}; "
                             f"pass a larger --ctx / n_ctx (the model supports {self.hp.context_length})")
        return ids


class CPUBackend(Backend):
    """The shared numpy forward; subclasses implement prepare / matmul / embed."""

    def __init__(self, model: ModelFile, kv_dtype="float16"):
        super().__init__(model, kv_dtype)
        self.rope: Rope | None = None  # built for the largest cache asked for (new_cache)
        self.rope_swa: Rope | None = None  # the sliding-window layers' tables (or self.rope)
        self.embd = self.prepare(model.weight(TensorNames.TOKEN_EMBD))
        out_name = model.output_name
        self.output = self.embd if out_name == TensorNames.TOKEN_EMBD else self.prepare(model.weight(out_name))
        self.out_norm = model.vector(TensorNames.OUTPUT_NORM)
        self.layers = [self._load_block(b) for b in range(self.hp.n_layer)]

    def _load_block(self, bid: int) -> dict:
        layer = {}
        for role, name in self.model.block(bid).items():
            if role.endswith("_norm") or role.endswith("_bias"):
                layer[role] = self.model.vector(name)
            else:
                layer[role] = self.prepare(self.model.weight(name))
        return layer

    # -- what subclasses provide -------------------------------------------------------
    def prepare(self, src: WeightSource):
        """Turn a stored weight into the backend's compute form."""
        raise NotImplementedError

    def matmul(self, w, x: np.ndarray) -> np.ndarray:
        """x (T, cols) float32 -> x @ W.T (T, rows) float32."""
        raise NotImplementedError

    def embed(self, w, ids: np.ndarray) -> np.ndarray:
        """Rows `ids` of the embedding matrix: (T, n_embd) float32."""
        raise NotImplementedError

    # -- the forward -------------------------------------------------------------------
    def new_cache(self, n_ctx: int) -> KVCache:
        hp = self.hp
        if self.rope is None or self.rope.cos.shape[0] < n_ctx:
            neox = self.model.arch.rope_neox
            self.rope = Rope(hp.n_rot, hp.rope_base, n_ctx, neox, hp.rope_freq_scale, self.model.rope_freqs())
            # sliding-window layers: their own base, no frequency scaling (llama.cpp's swa rope)
            self.rope_swa = Rope(hp.n_rot, hp.rope_base_swa, n_ctx, neox) if hp.n_swa else self.rope
        windows = tuple(hp.window(b) for b in range(hp.n_layer))
        return KVCache(hp.n_layer, hp.n_head_kv, hp.head_dim, n_ctx, self.kv_dtype, windows)

    def rope_for(self, bid: int) -> Rope:
        """The RoPE tables of block `bid` (sliding-window layers have their own)."""
        return self.rope_swa if self.hp.window(bid) else self.rope

    def forward(self, ids, cache: KVCache, n_logits: int = 1) -> np.ndarray:
        ids = self.check_ids(ids, cache)
        T, start = ids.size, cache.pos
        n_logits = max(1, min(int(n_logits), T))
        x = self.embed(self.embd, ids)  # (T, D)
        if self.hp.embd_scale != 1.0:
            x = x * np.float32(self.hp.embd_scale)
        for bid, layer in enumerate(self.layers):
            x = self._block(bid, layer, x, cache, start)
        cache.advance(T)
        h = self.norm(np.ascontiguousarray(x[T - n_logits:]), self.out_norm)  # (n_logits, D)
        return softcap(self.matmul(self.output, h), self.hp.logit_softcap)  # (n_logits, V)

    def _block(self, bid: int, w: dict, x: np.ndarray, cache: KVCache, start: int) -> np.ndarray:
        h = self.norm(x, w["attn_norm"])  # (T, D)
        qkv = self.project_qkv(w, h)  # the backend's form of q, k, v (here a tuple)
        a = self.matmul(w["attn_output"], self.attend(bid, qkv, cache, start))  # (T, D)
        if "post_attention_norm" in w:  # Gemma: norms after attention and FFN too
            a = self.norm(a, w["post_attention_norm"])
        x = x + a
        h = self.norm(x, w["ffn_norm"])
        f = self.matmul(w["ffn_down"], self.ffn_act(w, h))  # (T, D)
        if "post_ffw_norm" in w:
            f = self.norm(f, w["post_ffw_norm"])
        return x + f  # (T, D)

    # -- the steps of a block; the numba backend replaces some with fused kernels ---------
    def norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """RMSNorm of x (T, D) with the file's eps."""
        return rms_norm(x, weight, self.hp.rms_eps)

    def project_qkv(self, w: dict, h: np.ndarray):
        """q (T, H*Hd), k and v (T, Hkv*Hd): biases added, per-head q/k norms applied (before RoPE)."""
        hp = self.hp
        if "attn_qkv" in w:  # stored fused (Phi-3)
            q, k, v = np.split(self.matmul(w["attn_qkv"], h), self.qkv_cuts(), axis=1)
        else:
            q, k, v = self.matmul(w["attn_q"], h), self.matmul(w["attn_k"], h), self.matmul(w["attn_v"], h)
        if "attn_q_bias" in w:
            q, k, v = q + w["attn_q_bias"], k + w["attn_k_bias"], v + w["attn_v_bias"]
        if "attn_q_norm" in w:
            T = h.shape[0]
            q = self.norm(q.reshape(T * hp.n_head, hp.head_dim), w["attn_q_norm"]).reshape(T, -1)
            k = self.norm(k.reshape(T * hp.n_head_kv, hp.head_dim), w["attn_k_norm"]).reshape(T, -1)
        return q, k, v

    def qkv_cuts(self) -> tuple[int, int]:
        """Column offsets of k and v in a q | k | v row."""
        hp = self.hp
        return hp.n_head * hp.head_dim, (hp.n_head + hp.n_head_kv) * hp.head_dim

    def attend(self, bid: int, qkv, cache: KVCache, start: int) -> np.ndarray:
        """RoPE, store k/v at start.., causal (windowed) attention over the cache: (T, H*Hd)."""
        hp = self.hp
        q, k, v = qkv
        T = q.shape[0]
        rope = self.rope_for(bid)
        q = rope(q.reshape(T, hp.n_head, hp.head_dim), start)  # (T, H, Hd)
        k = rope(k.reshape(T, hp.n_head_kv, hp.head_dim), start)  # (T, Hkv, Hd)
        kc, vc, kpos0 = cache.window_view(bid, k, v.reshape(T, hp.n_head_kv, hp.head_dim))  # (Hkv, Hd, S), (Hkv, S, Hd)
        return self.attention(q, kc, vc, start, hp.scale, hp.window(bid), kpos0)  # (T, H*Hd)

    def attention(self, q, kt, v, start: int, scale, window: int, kpos0: int) -> np.ndarray:
        """Causal (windowed) grouped-query attention, `ops.attention`'s contract: (T, H*Hd)."""
        return attention(q, kt, v, start, scale, window, kpos0)

    def ffn_act(self, w: dict, h: np.ndarray) -> np.ndarray:
        """act(h W_gate^T) * (h W_up^T): (T, F); act is the family's (SiLU, GELU-tanh)."""
        act = ACTIVATIONS[self.model.arch.activation]
        if "ffn_gate" not in w:  # ffn_up holds gate | up (Phi-3)
            gu = self.matmul(w["ffn_up"], h)  # (T, 2F)
            return act(gu[:, :gu.shape[1] // 2], gu[:, gu.shape[1] // 2:])
        return act(self.matmul(w["ffn_gate"], h), self.matmul(w["ffn_up"], h))
