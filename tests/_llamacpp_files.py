"""GGUF files in the types only llama.cpp writes, for runtime tests (imported by test modules).

    write_llamacpp_copy(src, dst, qtype)   every 2-D weight of src re-stored as qtype
    random_blocks(qtype, rows, cols, rng)  random valid blocks with the F32 model's weight scale
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_llamacpp_copy(src: Path, dst: Path, qtype: str) -> Path:
    """src with every 2-D weight in a type edgeslim never writes: quantized by gguf-py where it can
    (Q4_0, Q4_1, Q5_0, Q5_1), else random valid blocks (random codes, small f16 scales)."""
    import gguf

    qt = gguf.GGMLQuantizationType[qtype]
    rng = np.random.default_rng(0)
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, arch=str(reader.fields["general.architecture"].contents()))
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        writer.add_key_value(name, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None)
    for t in reader.tensors:
        w = np.asarray(t.data, dtype=np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
        if w.ndim == 2 and t.name.endswith(".weight"):
            try:
                raw = gguf.quants.quantize(w, qt)
            except NotImplementedError:
                raw = random_blocks(qtype, *w.shape, rng)
            writer.add_tensor(t.name, raw, raw_dtype=qt)
        else:
            writer.add_tensor(t.name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def random_blocks(qtype: str, rows: int, cols: int, rng) -> np.ndarray:
    """Random codes and sub-block scales; each block's d then set so its weights have an RMS of
    about 1/sqrt(cols) (w is proportional to d), like the F32 model's."""
    import gguf

    from edgeslim.tables import block_fields, quant_info

    info = quant_info(qtype)
    nb = cols // info.block
    raw = rng.integers(0, 256, (rows, nb, info.block_bytes), dtype=np.uint8)
    f = block_fields(qtype)
    one = np.full((rows, nb), 1.0, np.float16).view(np.uint8).reshape(rows, nb, 2)
    for field in ("d", "dmin", "m"):
        if field in f:
            raw[..., f[field]] = one if field == "d" else 0
    w = gguf.quants.dequantize(raw.reshape(rows, -1), gguf.GGMLQuantizationType[qtype]).reshape(rows, nb, -1)
    rms = np.sqrt(np.mean(w.astype(np.float64) ** 2, axis=-1)) + 1e-12
    d = (rng.uniform(0.5, 1.5, (rows, nb)) / np.sqrt(cols) / rms).astype(np.float16)
    raw[..., f["d"]] = d.view(np.uint8).reshape(rows, nb, 2)
    return raw.reshape(rows, -1)
