"""llama.cpp itself loads and runs files with every legacy / IQ / ternary type edgeslim writes.

A tiny random Llama (hidden 256, so the 256-wide types apply) is converted to
each type; llama.cpp (llama-cpp-python) evaluates it and its logits must equal
those of the model rebuilt in torch from the file's weights (dequantized by
gguf-py), up to llama.cpp's int8 activation quantization.  Skips when
llama-cpp-python or torch is absent.
"""
from __future__ import annotations

import numpy as np
import pytest

from edgeslim.convert.pipeline import convert
from test_convert import read_weights, rebuilt_logits, reference, rel

ZOO = ["Q5_1", "Q5_0", "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_XXS", "IQ2_S", "IQ2_XS", "IQ2_XXS",
       "IQ1_M", "IQ1_S", "TQ2_0", "TQ1_0"]


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ZOO)
def test_llama_cpp_runs_every_written_type(tiny_hf_model, tmp_path, qtype):
    llama_cpp = pytest.importorskip("llama_cpp")
    folder = tiny_hf_model("llama", "spm")
    _, ids, _ = reference(folder)
    out = tmp_path / f"{qtype}.gguf"
    convert(str(folder), out, quant=qtype, progress=False)
    _, weights, types = read_weights(out)  # also checks our decoder against gguf-py on every tensor
    assert types["blk.0.attn_q.weight"] == qtype
    llm = llama_cpp.Llama(str(out), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    toks = ids[0].tolist()
    llm.eval(toks)
    got = np.asarray(llm.scores[: len(toks)])
    expect = rebuilt_logits(folder, weights, ids)[0]
    assert rel(got, expect) < 0.03, rel(got, expect)  # measured 0.011-0.016
