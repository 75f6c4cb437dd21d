"""A GGUF file's logical tensors: an affine weight's scales and biases and a sparse weight's index
are stored as companion tensors; here each logical tensor is one `Row` with its shape, type name
(`AFFINE4_G64`, `Q4_K@2:4`) and total bytes. Read by `inspect` and `inspect --analyze`."""
from __future__ import annotations

from dataclasses import dataclass

from .gguf_file import GGUFFile
from .tables import AFFINE_BIASES_SUFFIX, AFFINE_SCALES_SUFFIX, SPARSE_INDEX_SUFFIX, Keys, affine_name, \
    stored_sparse_name


@dataclass
class Row:
    """One logical tensor."""

    name: str
    shape: tuple[int, ...]
    type: str
    bytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def bpw(self) -> float:
        return 8.0 * self.bytes / self.n_elements


def tensor_rows(f: GGUFFile) -> list[Row]:
    """Logical tensors in file order (affine triples merged)."""
    rows = []
    for t in f.tensors.values():
        if t.name.endswith((AFFINE_SCALES_SUFFIX, AFFINE_BIASES_SUFFIX)) and _affine(f, _base(t.name)):
            continue
        if t.name.endswith(SPARSE_INDEX_SUFFIX) and _sparse(f, t.name[: -len(SPARSE_INDEX_SUFFIX)]):
            continue
        aff = _affine(f, t.name)
        sp = _sparse(f, t.name)
        if sp:
            index = f.tensors.get(t.name + SPARSE_INDEX_SUFFIX)
            rows.append(Row(t.name, (t.shape[0], int(f.kv[Keys.SPARSE.format(name=t.name)][1])), sp,
                            t.nbytes + (index.nbytes if index is not None else 0)))
        elif aff:
            bits, group = aff
            r, packed = t.shape[0], t.shape[-1]
            extra = sum(f.tensors[t.name + s].nbytes for s in (AFFINE_SCALES_SUFFIX, AFFINE_BIASES_SUFFIX)
                        if t.name + s in f.tensors)
            rows.append(Row(t.name, (r, packed * 32 // bits), affine_name(bits, group), t.nbytes + extra))
        else:
            rows.append(Row(t.name, tuple(t.shape), t.type_name, t.nbytes))
    return rows


def _base(name: str) -> str:
    for s in (AFFINE_SCALES_SUFFIX, AFFINE_BIASES_SUFFIX):
        if name.endswith(s):
            return name[: -len(s)]
    return name


def _affine(f: GGUFFile, name: str) -> tuple[int, int] | None:
    v = f.kv.get(Keys.AFFINE.format(name=name))
    return (int(v[0]), int(v[1])) if v is not None and len(v) == 2 else None


def _sparse(f: GGUFFile, name: str) -> str | None:
    """The sparse type name of a stored tensor ("Q4_K@2:4"), None when it is not sparse."""
    record = f.kv.get(Keys.SPARSE.format(name=name))
    t = f.tensors.get(name)
    if record is None or t is None:
        return None
    return stored_sparse_name(t.type_name, record, int(t.shape[-1]))
