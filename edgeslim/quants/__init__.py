"""numpy reference quantizers: ggml's block formats and MLX's affine layout.

    quantize(w, qtype, importance=None) -> QTensor
    dequantize(q) -> float32 (rows, cols)
    dequantize_raw(raw, qtype, shape) -> float32 (rows, cols)   # ggml-family bytes from a file
    row_bytes(qtype, cols) -> int
    fallback_type(qtype, cols) -> str

ggml family (F32, F16, BF16, Q8_0, Q2_K..Q6_K, the legacy Q4_0..Q5_1, the IQ
lattice types and the ternary TQ1_0/TQ2_0; `tables.GGML_WRITABLE` lists what
quantize() writes, `tables.GGML_READABLE` what dequantize_raw() reads):
`QTensor.data` is uint8 (rows, row_bytes), exactly the bytes a GGUF file
stores for the tensor.
Affine family (AFFINE{bits}_G{group}): `data` is uint32 codes (rows, cols*bits/32)
as `mx.quantize` packs them, plus float16 `scales` and `biases` (rows, cols/group).

`importance` (length cols, non-negative, like llama.cpp's imatrix) weights each
input column's squared error in the scale searches; None weights all equally.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FormatError, InputError, UnsupportedError
from ..tables import GGML_READABLE, GGML_WRITABLE, parse_affine, quant_info
from . import affine, floats, iq1, iq2, iq3, iq4, legacy, q2_k, q3_k, q4_k, q6_k, q8_0, ternary

__all__ = ["QTensor", "quantize", "dequantize", "dequantize_raw", "row_bytes", "fallback_type"]

# name -> (encode(blocks, weights) -> bytes, or None where edgeslim reads but does not write the type,
#          decode(bytes) -> blocks); blocks are (B, block) float32
_GGML = {
    "F32": (floats.encode_f32, floats.decode_f32),
    "F16": (floats.encode_f16, floats.decode_f16),
    "BF16": (floats.encode_bf16, floats.decode_bf16),
    "Q8_0": (q8_0.encode, q8_0.decode),
    "Q2_K": (q2_k.encode, q2_k.decode),
    "Q3_K": (q3_k.encode, q3_k.decode),
    "Q4_K": (q4_k.encode_q4, q4_k.decode_q4),
    "Q5_K": (q4_k.encode_q5, q4_k.decode_q5),
    "Q6_K": (q6_k.encode, q6_k.decode),
    "Q4_0": (legacy.encoder("Q4_0"), legacy.decoder("Q4_0")),
    "Q4_1": (legacy.encoder("Q4_1"), legacy.decoder("Q4_1")),
    "Q5_0": (legacy.encoder("Q5_0"), legacy.decoder("Q5_0")),
    "Q5_1": (legacy.encoder("Q5_1"), legacy.decoder("Q5_1")),
    "IQ4_NL": (iq4.encode_nl, iq4.decode_nl),
    "IQ4_XS": (iq4.encode_xs, iq4.decode_xs),
    "IQ2_XXS": (iq2.encode_xxs, iq2.decode_xxs),
    "IQ2_XS": (iq2.encode_xs, iq2.decode_xs),
    "IQ2_S": (iq2.encode_s, iq2.decode_s),
    "IQ3_XXS": (iq3.encode_xxs, iq3.decode_xxs),
    "IQ3_S": (iq3.encode_s, iq3.decode_s),
    "TQ1_0": (ternary.encode_tq1, ternary.decode_tq1),
    "TQ2_0": (ternary.encode_tq2, ternary.decode_tq2),
    "IQ1_S": (iq1.encode_s, iq1.decode_s),
    "IQ1_M": (iq1.encode_m, iq1.decode_m),
}
assert {n for n, (enc, _) in _GGML.items() if enc} == set(GGML_WRITABLE)
assert set(_GGML) == set(GGML_READABLE)

IMPORTANCE_FLOOR = 1e-4  # relative to the mean importance
CHUNK_WEIGHTS = 1 << 18  # weights per vectorized chunk: amortizes numpy call overhead, stays cache-friendly


@dataclass
class QTensor:
    """A quantized matrix.  shape is (rows, cols) in numpy order (GGUF lists it reversed)."""

    qtype: str
    shape: tuple[int, int]
    data: np.ndarray
    scales: np.ndarray | None = None  # affine only: float16 (rows, cols/group)
    biases: np.ndarray | None = None  # affine only: float16 (rows, cols/group)

    @property
    def nbytes(self) -> int:
        extra = 0 if self.scales is None else self.scales.nbytes + self.biases.nbytes
        return int(self.data.nbytes) + extra

    def arrays(self) -> list[np.ndarray]:
        """The arrays a GGUF file stores, in plan order: ggml -> [data];
        affine -> [codes as int32 bit pattern, scales, biases] (see gguf_write.GGUFOut.plan)."""
        if self.scales is None:
            return [self.data]
        return [self.data.view(np.int32), self.scales, self.biases]


def _canonical(qtype: str) -> str:
    try:
        return quant_info(qtype).name
    except ValueError as e:
        raise UnsupportedError(str(e)) from None


def row_bytes(qtype: str, cols: int) -> int:
    """Bytes one row of `cols` weights takes (codes + scales), as stored in GGUF."""
    return quant_info(_canonical(qtype)).nbytes(cols)


# For rows a type's block does not divide, the 32-wide type llama.cpp falls back to (llama-quant.cpp's
# tensor_type_fallback; for Q2_K/Q3_K it now picks Q4_0, IQ4_NL stores the same 4.5 bits per weight with
# less error).  Any other type falls back to F16.
_FALLBACK = {
    "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL", "Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL",
    "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0",
}


def fallback_type(qtype: str, cols: int) -> str:
    """The type to use instead of `qtype` when its block does not divide `cols`.

    As llama.cpp: IQ1_*/IQ2_*/IQ3_*/IQ4_XS/Q2_K/Q3_K -> IQ4_NL, Q4_K -> Q5_0,
    Q5_K -> Q5_1, Q6_K -> Q8_0, TQ1_0/TQ2_0 -> Q4_0 (when cols % 32 == 0);
    a 32-wide type whose block does not divide -> F16;
    AFFINEb_G64 -> AFFINEb_G32 -> F16.  Float types always fit.
    """
    name = _canonical(qtype)
    info = quant_info(name)
    if cols % info.block == 0:
        return name
    if info.family == "affine":
        bits, group = parse_affine(name)
        return fallback_type(f"AFFINE{bits}_G32", cols) if group > 32 else "F16"
    if name in _FALLBACK:
        return fallback_type(_FALLBACK[name], cols)
    return "F16"


def _check_input(w: np.ndarray, name: str, importance) -> tuple[np.ndarray, np.ndarray | None]:
    w = np.asarray(w)
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2:
        raise InputError(f"quantize takes a 2-D (rows, cols) matrix, got shape {w.shape}: reshape it first")
    w = np.ascontiguousarray(w, dtype=np.float32)
    info = quant_info(name)
    if info.family != "float" and not np.isfinite(w).all():
        raise InputError(f"the matrix has NaN or infinite weights, which {name} cannot store: "
                         "fix the checkpoint or keep this tensor in F16/F32")
    block = info.block
    if w.shape[1] % block:
        raise InputError(f"{name} needs cols % {block} == 0 but the matrix has {w.shape[1]} columns: "
                         f"use fallback_type() -> {fallback_type(name, w.shape[1])}")
    if importance is None:
        return w, None
    imp = np.asarray(importance, dtype=np.float32).reshape(-1)
    if imp.shape[0] != w.shape[1] or not np.all(np.isfinite(imp)) or np.any(imp < 0):
        raise InputError(f"importance must be {w.shape[1]} finite non-negative values (one per column), "
                         f"got shape {imp.shape}: recompute the importance vector for this tensor")
    if not imp.any():
        return w, None
    # a small floor keeps columns (or whole blocks) of zero importance quantized sensibly
    return w, imp + np.float32(IMPORTANCE_FLOOR * imp.mean())


def quantize(w: np.ndarray, qtype: str, importance: np.ndarray | None = None) -> QTensor:
    """Quantize a (rows, cols) matrix to `qtype` (ggml name or AFFINE{bits}_G{group})."""
    name = _canonical(qtype)
    w, imp = _check_input(w, name, importance)
    rows, cols = w.shape
    aff = parse_affine(name)
    if aff:
        codes, scales, biases = affine.quantize(w, *aff, imp)
        return QTensor(name, (rows, cols), codes, scales, biases)
    if _GGML.get(name, (None,))[0] is None:
        raise UnsupportedError(f"edgeslim cannot write {name}: choose one of {', '.join(GGML_WRITABLE)}")
    encode = _GGML[name][0]
    info = quant_info(name)
    bpr = cols // info.block
    blocks = w.reshape(rows * bpr, info.block)  # (B, block)
    wts = None if imp is None else imp.reshape(bpr, info.block)
    out = np.empty((rows * bpr, info.block_bytes), np.uint8)
    step = max(1, CHUNK_WEIGHTS // info.block) if info.block > 1 else len(blocks) or 1
    for b0 in range(0, len(blocks), step):
        b1 = min(b0 + step, len(blocks))
        wb = None if wts is None else wts[np.arange(b0, b1) % bpr]
        out[b0:b1] = encode(blocks[b0:b1], wb)
    return QTensor(name, (rows, cols), out.reshape(rows, bpr * info.block_bytes))


def dequantize(q: QTensor) -> np.ndarray:
    """float32 (rows, cols) reconstruction of a QTensor, as ggml / MLX compute it."""
    aff = parse_affine(q.qtype)
    if aff:
        return affine.dequantize(q.data, q.scales, q.biases, *aff)
    return dequantize_raw(q.data, q.qtype, q.shape)


def dequantize_raw(raw: np.ndarray, qtype: str, shape: tuple[int, int]) -> np.ndarray:
    """float32 (rows, cols) from the bytes a GGUF file stores for a ggml-family tensor."""
    name = _canonical(qtype)
    if name not in _GGML:
        raise UnsupportedError(f"edgeslim cannot read {name} tensors: re-export the model as one of "
                               f"{', '.join(GGML_READABLE)}")
    rows, cols = shape
    info = quant_info(name)
    if cols % info.block:
        raise FormatError(f"{name} tensor of shape {shape}: {cols} columns is not a multiple of the block "
                          f"of {info.block}; the file is corrupt")
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = np.frombuffer(raw, np.uint8)
    raw = np.ascontiguousarray(np.asarray(raw).view(np.uint8)).reshape(-1)
    need = rows * info.nbytes(cols)
    if raw.size != need:
        raise FormatError(f"{name} tensor of shape {shape} needs {need} bytes, got {raw.size}: the file is corrupt")
    out = _GGML[name][1](raw.reshape(-1, info.block_bytes))
    return out.reshape(rows, cols)
