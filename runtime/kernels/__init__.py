"""Numba CPU kernels for quantized linear layers: decode mat-vec, prefill, dequantize.

    prepare(qtype, data, shape, scales=None, biases=None, index=None) -> Packed   # repack once, at load
    linear(p, x)       x (T, cols) float32 -> (T, rows) float32
    dequantize(p)      -> (rows, cols) float32   (bit-exact with gguf / MLX formulas)
    embed_rows(p, ids) -> (len(ids), cols) float32
    concat_rows(packs) -> Packed | None

How the decode path is fast: weights are repacked once into contiguous code
planes (planes.py) so a 32-byte load yields the codes of 32 weights after a
shift/mask; activations are quantized to int8 per block with float block sums
kept for the min/bias terms; a weight group then costs integer work only
(vpmaddubsw, vpmaddwd; vpdpbusd in the 32-wide and affine families where the
CPU has AVX-VNNI) and one float fma per group or super-block.  The row
kernels are numba intrinsics emitting LLVM vector IR (emit.py), with portable
variants for non-AVX2 targets.  Prompts run through the same kernels, 16
activations per weight pass (on x86; see driver.INT_PREFILL_T).

Package map (adding a type = its reference in edgeslim/quants, one table row in
edgeslim/tables.py, its kernel in one family module):

    emit.py     LLVM vector IR emitter (x86 intrinsics + portable fallbacks)
    spec.py     Spec (one layout), numba type per spec, family registry
    rows.py     the row / row-dequant intrinsics, dispatching to the family
    driver.py   activation quantization, prange mat-vec, tiled BLAS prefill, API
    planes.py   plane formats and numpy repack helpers
    grouped.py  shared body of the per-group-scale families
    kquant.py   Q2_K..Q6_K          legacy.py  Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL (32-wide)
    affine.py   AFFINE{b}_G{g}      floats.py  F16, BF16, F32
    iq4xs.py    IQ4_XS (in place)   ternary.py TQ1_0, TQ2_0 (in place)
    lattice.py  IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ1_S IQ1_M (in place, grids in module constants)
    superblock.py  shared body of the 256-weight super-block families
    (IQ grids, sign table and IQ4 values: the type's edgeslim.quants module, read at compile time;
     ../blocks.py: element-order block unpacking)
    sparse.py   edgeslim's sparse types (VALUE@2:4, VALUE@4:8, VALUE@50%): their own
                SparsePacked and njit kernels (spec.register_own; the driver's API hands them over)

Accuracy: int8 activations give a relative error of about 0.5% of the row's
dot-product scale (|error| <~ sum_i |w_i x_i| / 254 per block, averaging down);
llama.cpp quantizes activations the same way (Q8_K / Q8_0).
"""
from __future__ import annotations

from . import affine, floats, iq4xs, kquant, lattice, legacy, sparse, ternary  # noqa: F401  (register the families)
from .driver import (SMALL_T_8BIT, SMALL_T_FLOAT, SMALL_T_QUANT, TILE_ELEMS, Packed, concat_rows,
                     dequantize, embed_rows, linear, prepare)
from .emit import USE_AVX2

__all__ = ["Packed", "prepare", "concat_rows", "linear", "dequantize", "embed_rows", "USE_AVX2",
           "SMALL_T_QUANT", "SMALL_T_8BIT", "SMALL_T_FLOAT", "TILE_ELEMS"]
