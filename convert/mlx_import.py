"""Read mlx-lm's quantized output into an edgeslim GGUF, weights unchanged.

Used by `edgeslim sweep --peers mlx-lm` and `scripts/bench_quality.py` to score mlx-lm's
files with the same tools as every other file on the curve.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def mlx_to_gguf(hf_src: Path, mlx_dir: Path, out: Path) -> None:
    """Write mlx-lm's quantized model as an edgeslim GGUF, weights unchanged.

    Metadata, names and the unquantized tensors come from edgeslim's reader of the HF
    source; every matrix MLX quantized keeps its uint32 codes and f16 scales / biases
    (the affine layout is `mx.quantize`'s, see edgeslim/quants/affine.py), with the rows of
    Q and K permuted as the converter permutes them (rows are quantized independently,
    so permuting codes, scales and biases together is exact).
    """
    from safetensors.numpy import load_file

    from edgeslim.convert.arch import arch_for_config
    from edgeslim.convert.hf import read_config
    from edgeslim.convert.pipeline import open_source
    from edgeslim.gguf_write import GGUFOut
    from edgeslim.quants import QTensor
    from edgeslim.tables import affine_name

    mlx: dict[str, np.ndarray] = {}
    for f in sorted(mlx_dir.glob("*.safetensors")):
        mlx.update(load_file(str(f)))
    arch = arch_for_config(read_config(hf_src))
    model = open_source(str(hf_src))
    try:
        items = []
        for spec in model.tensors:
            hf = arch.hf_name(spec.name)
            stem = hf[: -len(".weight")] if hf.endswith(".weight") else hf
            if stem + ".scales" in mlx and len(spec.shape) == 2:
                rows, cols = spec.shape
                codes, scales, biases = mlx[hf], mlx[stem + ".scales"], mlx[stem + ".biases"]
                bits, group = codes.shape[1] * 32 // cols, cols // scales.shape[1]
                fix = lambda a: np.ascontiguousarray(arch.transform(spec.name, a))  # noqa: E731
                items.append((spec, QTensor(affine_name(bits, group), (rows, cols), fix(codes.view(np.uint32)),
                                            fix(scales.astype(np.float16)), fix(biases.astype(np.float16)))))
            else:
                w = spec.load()
                items.append((spec, w.astype(np.float16) if w.ndim == 2 else w.astype(np.float32)))
        with GGUFOut(out, arch=model.gguf_arch, force=True) as g:
            model.write_metadata(g.writer)
            for spec, q in items:
                g.plan(spec.name, spec.shape, q.qtype if isinstance(q, QTensor) else
                       ("F16" if q.dtype == np.float16 else "F32"))
            g.begin()
            for spec, q in items:
                g.write(spec.name, q)
    finally:
        model.close()
