"""Kernel specs: the compile-time description of one weight layout, and the family registry.

A `Spec` is passed into the njit drivers as an argument whose numba *type*
(`SpecType`) carries the spec's key, so each layout gets its own compiled
specialization (and disk-cache entry) while one driver serves all of them.

A *family* is one kernel module (`kquant`, `legacy`, `affine`, `floats`, ...):
it registers its specs and provides

    repack(spec, data, rows, cols, scales, biases) -> (planes, colsp, perm)
    x_widths(spec, colsp, planes) -> (nq, nd, ns)    activation buffer widths
    row_body(spec, e, P, X, T, ncols) -> finish(t)   emits one row's dot products
    deq_body(spec, e, P, out, ncols)                 emits one row's dequantization

A family with its own packed class and kernels registers with `register_own` instead.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, replace
from pathlib import Path

from numba import types
from numba.extending import NativeValue, models, register_model, typeof_impl, unbox

from .emit import USE_AVX2, USE_AVX512, USE_VNNI


@dataclass(frozen=True)
class Spec:
    """Geometry of one kernel layout.

    family: the kernel module's key ("kq", "aff", "q32", "flt", ...)
    unit:   elements one kernel step covers (256 for super-blocks; 32*stride for affine)
    group:  elements per scale
    xblk:   activation int8 block (one float scale each); 0 for float weights
    sgroup: activation float-sum group (min / bias / offset terms)
    stride: interleave stride of the grouped families (chunk c, lane j = element j*stride + c of a unit)
    """

    name: str
    family: str
    bits: int
    unit: int
    group: int
    xblk: int
    sgroup: int
    stride: int = 1
    signed: bool = False  # codes are signed int8 (Q8_0)
    portable: bool = False  # emit the portable dot steps instead of x86 intrinsics
    batched: bool = False  # loop over up to TMAX activations
    vnni: bool = True  # use vpdpbusd where the host has it (False: the plain AVX2 steps)
    avx512: bool = True  # batched kernels: 512-bit vectors where the host has AVX-512BW

    @property
    def key(self) -> str:
        return (f"{self.name}{'/p' if self.portable else ''}{'/b' if self.batched else ''}"
                f"{'' if self.vnni else '/a2'}{'' if self.avx512 else '/y'}")


FAMILIES: dict[str, object] = {}  # family key -> kernel module
BASE: dict[str, Spec] = {}  # type name -> spec (portable=False, batched=False)
_SPECS: dict[str, Spec] = {}  # Spec.key -> every variant


def register(family: str, module, specs) -> None:
    """Add a kernel family and its specs (each in its portable/batched/vnni/avx512 variants)."""
    FAMILIES[family] = module
    for s in specs:
        BASE[s.name] = s
        for p, b, n, z in itertools.product((False, True), repeat=4):
            v = replace(s, portable=p, batched=b, vnni=n, avx512=z)
            _SPECS[v.key] = v


OWN: dict[type, object] = {}  # packed class -> module of a family that runs its own kernels


def register_own(module, packed_cls: type) -> None:
    """Add a family that packs and runs its weights itself instead of through Specs and the shared
    driver (sparse.py: kept values + a position index, its own njit kernels). The driver's API hands
    it the weights it claims and the objects of `packed_cls`; the module provides claims(qtype, index),
    prepare(qtype, data, shape, index), linear, embed_rows, dequantize and concat_rows."""
    OWN[packed_cls] = module


def variant(spec: Spec, **kw) -> Spec:
    """The registered spec equal to `spec` with fields `kw` changed (portable=..., batched=...)."""
    return _SPECS[replace(spec, **kw).key]


def family(spec: Spec):
    return FAMILIES[spec.family]


def _source_tag() -> str:
    """Hash of this package's sources.  numba's disk cache checks only the file of the
    cached function (driver.py), not the family modules whose intrinsics it inlines, so
    the tag goes into every SpecType name: edit any kernel module and the types change."""
    h = hashlib.sha1()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


_TAG = _source_tag()


class SpecType(types.Dummy):
    """numba type of a Spec value: one type (and compiled specialization) per layout."""

    def __init__(self, spec_key: str):
        self.spec_key = spec_key
        # the name is the cache/specialization key: it also records which dot steps get emitted
        isa = ("/vnni" if USE_VNNI else "" if USE_AVX2 else "/generic") + ("/avx512" if USE_AVX512 else "")
        super().__init__(name=f"KernelSpec({spec_key}{isa}@{_TAG})")

    @property
    def spec(self) -> Spec:
        return _SPECS[self.spec_key]


_SPEC_TYPES: dict[str, SpecType] = {}


@typeof_impl.register(Spec)
def _typeof_spec(val, c):
    t = _SPEC_TYPES.get(val.key)
    if t is None:
        t = _SPEC_TYPES[val.key] = SpecType(val.key)
    return t


register_model(SpecType)(models.OpaqueModel)


@unbox(SpecType)
def _unbox_spec(typ, obj, c):
    return NativeValue(c.context.get_dummy_value())
