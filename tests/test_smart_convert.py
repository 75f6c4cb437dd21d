"""edgeslim convert with a budget (--bpw, --size, --target): measured, allocated, mixed-type files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edgeslim import targets  # noqa: E402
from edgeslim.cli import main as cli_main  # noqa: E402
from edgeslim.convert import budget, calibrate, candidates, measure, transform  # noqa: E402
from edgeslim.convert.pipeline import convert, open_source  # noqa: E402
from edgeslim.errors import FitError, InputError  # noqa: E402
from edgeslim.tables import Keys, is_quantizable, quant_info  # noqa: E402

CALIB_TOKENS = 512


def field(reader: gguf.GGUFReader, key: str):
    f = reader.get_field(key)
    return None if f is None else f.contents()


def file_types(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """({tensor: type}, {tensor: bytes}) of the 2-D weight matrices in a ggml-family GGUF file."""
    reader = gguf.GGUFReader(path)
    mats = [t for t in reader.tensors if is_quantizable(t.name, len(t.shape))]
    return {t.name: t.tensor_type.name for t in mats}, {t.name: int(t.n_bytes) for t in mats}


def matrix_bpw(path: Path) -> float:
    reader = gguf.GGUFReader(path)
    mats = [t for t in reader.tensors if is_quantizable(t.name, len(t.shape))]
    return 8.0 * sum(int(t.n_bytes) for t in mats) / sum(int(t.n_elements) for t in mats)


def no_leftovers(folder: Path) -> None:
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]


@pytest.fixture(scope="module")
def llama(tiny_hf_model) -> Path:
    return tiny_hf_model("llama", "spm")


@pytest.fixture(scope="module")
def bpw42(llama, tmp_path_factory):
    """--bpw 4.2 (between Q3_K and Q4_K, so types must mix) with the default signal (erank),
    calibrated automatically on the built-in text; plain rounding (--no-gptq), so that each
    matrix's measured error is the one the allocation predicted."""
    out = tmp_path_factory.mktemp("bpw42") / "m.gguf"
    report = convert(str(llama), out, bpw=4.2, calib_tokens=CALIB_TOKENS, gptq=False, progress=False)
    return out, report


# -- budgets --------------------------------------------------------------------------------
def test_bpw_gives_mixed_types_within_budget(bpw42):
    out, report = bpw42
    types, nbytes = file_types(out)
    assert len(set(types.values())) >= 2 and report["quant"] == "mixed"
    bpw = matrix_bpw(out)
    assert 3.5 <= bpw <= 4.2
    assert report["bpw"] == pytest.approx(bpw, abs=1e-3)
    alloc = report["allocation"]
    assert alloc["signal"] == "erank" and alloc["calibrated"] is True
    assert alloc["total_bytes"] == sum(nbytes.values()) <= alloc["budget_bytes"] == report["budget"]["bytes"]
    n = sum(int(t.n_elements) for t in gguf.GGUFReader(out).tensors if is_quantizable(t.name, len(t.shape)))
    assert report["budget"] == {"kind": "bpw", "value": 4.2, "bytes": int(4.2 * n / 8)}


def test_report_metadata(bpw42):
    out, report = bpw42
    reader = gguf.GGUFReader(out)
    stored = json.loads(field(reader, Keys.ES_REPORT))
    assert stored == report
    choices = json.loads(field(reader, Keys.ES_CHOICES))
    assert choices == {t.name: t.tensor_type.name for t in reader.tensors}
    types, nbytes = file_types(out)
    alloc = report["allocation"]["tensors"]
    assert set(alloc) == set(types) == set(report["rel_rms"])
    for name, t in types.items():
        a = alloc[name]
        assert a["type"] == t and a["bytes"] == nbytes[name]
        # small matrices are measured whole and quantized the same way: prediction == measurement
        assert a["rel_rms"] == pytest.approx(report["rel_rms"][name], rel=0.02)
        assert a["error"] > 0 and 0 < a["erank_fraction"] <= 1
    cal = report["calibration"]
    assert cal["source"] == "built-in" and 0 < cal["tokens"] <= CALIB_TOKENS and report["gptq"] is False
    fit = report["fit"]
    assert fit["weights_bytes"] == sum(int(t.n_bytes) for t in reader.tensors) and fit["quant"] == "mixed"
    assert sum(h["tensors"] for h in report["types"].values()) == len(types)


def test_size_is_respected(llama, tmp_path, capsys):
    out = tmp_path / "s.gguf"
    limit = 1_500_000
    assert cli_main(["convert", str(llama), "-o", str(out), "--size", "1.5MB", "--allocate", "erank",
                     "--calib-tokens", str(CALIB_TOKENS)]) == 0
    assert 0.97 * limit <= out.stat().st_size <= limit
    report = json.loads(field(gguf.GGUFReader(out), Keys.ES_REPORT))
    # erank calibrates too (automatically, on the built-in text), and GPTQ rounds on those Hessians
    assert report["budget"]["kind"] == "size" and report["calibration"]["source"] == "built-in"
    assert report["gptq"] is True and report["rel_out"]
    capsys.readouterr()
    assert cli_main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "out%" in text and "GPTQ rounding" in text
    for name, e in report["rel_out"].items():  # GPTQ's output error, per tensor, in the table
        line = next(l for l in text.splitlines() if l.startswith(name + " "))
        assert line.split()[-1] == f"{100 * e:.3f}"
    assert len(set(file_types(out)[0].values())) >= 2


def test_target_fills_a_small_device(llama, tmp_path, monkeypatch):
    """A fake device with room for about 3.5 bits per weight after KV cache and overhead."""
    m = open_source(str(llama))
    mats, fixed = budget.matrices(m)
    n = sum(s.n_elements for s in mats)
    kv = targets.kv_cache_bytes(m.n_layers, 256, m.n_kv_heads, m.head_dim)
    ram = targets.OVERHEAD_BYTES + kv + fixed + int(3.5 * n / 8)
    monkeypatch.setitem(targets.TARGETS, "tiny-test", targets.Target("tiny-test", ram, 1.0, "numba", "test device"))
    report = convert(str(llama), tmp_path / "t.gguf", target="tiny-test", ctx=256, calib=False, progress=False)
    fit = report["fit"]
    assert fit["target"] == "tiny-test" and fit["fits"] is True and 0 <= fit["headroom_bytes"] < 0.02 * ram
    assert fit["kv_cache_bytes"] == kv and report["budget"]["kind"] == "target"
    types, nbytes = file_types(tmp_path / "t.gguf")
    assert len(set(types.values())) >= 2 and 3.0 <= matrix_bpw(tmp_path / "t.gguf") <= 3.5
    assert "F16" not in types.values()  # the target ladder stops at Q8_0
    with pytest.raises(FitError, match=r"does not fit tiny-test .*KV cache .*smallest types that fit each"):
        convert(str(llama), tmp_path / "u.gguf", target="tiny-test", ctx=4096, calib=False, progress=False)
    assert not (tmp_path / "u.gguf").exists()


def test_uniform_signal_gives_one_type(llama, tmp_path):
    report = convert(str(llama), tmp_path / "u.gguf", bpw=4.5, allocate="uniform", progress=False)
    assert set(file_types(tmp_path / "u.gguf")[0].values()) == {"Q4_K"} and report["quant"] == "Q4_K"
    assert report["allocation"]["uniform_type"] == "Q4_K" and report["calibration"] is None
    assert report["gptq"] is False  # nothing calibrated, nothing for GPTQ to use


def test_affine_group(llama, tmp_path):
    report = convert(str(llama), tmp_path / "a.gguf", bpw=4.3, family="affine", group=32, calib=False,
                     progress=False)
    used = {a["type"] for a in report["allocation"]["tensors"].values()}
    assert len(used) >= 2 and all(t.endswith("_G32") or t == "F16" for t in used)
    assert 4.0 <= report["bpw"] <= 4.3


# -- calibration and GPTQ ---------------------------------------------------------------------
def _scaled_copy(folder: Path, dest: Path, factor: float) -> Path:
    """The model with layer 1's FFN input norm scaled: gate/up (and down) see larger inputs."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(folder, dest)
    sd = load_file(dest / "model.safetensors")
    key = "model.layers.1.post_attention_layernorm.weight"
    sd[key] = sd[key] * np.float32(factor)
    save_file(sd, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def _bits(report: dict, name: str) -> float:
    a = report["allocation"]["tensors"][name]
    return 8.0 * a["bytes"] / (256 * 512)


def test_calibration_gives_bits_to_scaled_inputs(llama, tmp_path, monkeypatch):
    from edgeslim.convert import allocate

    monkeypatch.setattr(allocate, "HEAD_WEIGHT", 1.0)  # calibration's effect alone, not the head's weight
    folder = _scaled_copy(llama, tmp_path / "scaled", 8.0)
    # the sensitivity signal is the one calibration drives (erank needs none; with llama.cpp's whole
    # menu as candidates its choices between near-equal types on a random model carry no signal)
    kw = dict(bpw=4.0, allocate="sensitivity", progress=False)
    cal = convert(str(folder), tmp_path / "c.gguf", calib_tokens=CALIB_TOKENS, **kw)
    plain = convert(str(folder), tmp_path / "p.gguf", calib=False, **kw)
    assert cal["allocation"]["calibrated"] and not plain["allocation"]["calibrated"]
    for t in ("ffn_gate", "ffn_up"):
        assert _bits(cal, f"blk.1.{t}.weight") > _bits(plain, f"blk.1.{t}.weight")
        assert _bits(cal, f"blk.1.{t}.weight") > _bits(cal, f"blk.0.{t}.weight")


def test_gptq_lowers_output_error(llama, tmp_path, capsys):
    """Same 3-bit allocation (same calibration), GPTQ vs importance-weighted RTN: the layers'
    output error on the calibration set, tr((W - Q) H (W - Q)^T), drops."""
    from edgeslim.convert.calibrate import collect
    from edgeslim.convert.gptq import hessian_error

    text = tmp_path / "calib.txt"
    text.write_text(" ".join(["The small model reads a story about a cat and a dog."] * 60), encoding="utf-8")
    outs = {g: tmp_path / f"g{int(g)}.gguf" for g in (False, True)}
    assert cli_main(["convert", str(llama), "-o", str(outs[True]), "--bpw", "3", "--gptq", "--calib", str(text),
                     "--calib-tokens", str(CALIB_TOKENS)]) == 0
    reports = {True: json.loads(field(gguf.GGUFReader(outs[True]), Keys.ES_REPORT))}
    reports[False] = convert(str(llama), outs[False], bpw=3, calib=str(text), calib_tokens=CALIB_TOKENS,
                             gptq=False, progress=False)
    assert reports[True]["gptq"] is True and reports[True]["calibration"]["source"] == "calib.txt"
    assert file_types(outs[True])[0] == file_types(outs[False])[0]
    assert set(reports[True]["rel_out"]) == {n for n in file_types(outs[True])[0] if n.startswith("blk.")}

    hessians = collect(llama, text.read_text(), CALIB_TOKENS, want_hessian=True).hessian
    source = {s.name: s.load() for s in open_source(str(llama)).tensors}
    weights = {g: {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
                   .reshape(tuple(int(d) for d in reversed(t.shape))) for t in gguf.GGUFReader(p).tensors}
               for g, p in outs.items()}
    err = {g: {n: hessian_error(source[n], weights[g][n], H) for n, H in hessians.items() if n.startswith("blk.")}
           for g in outs}
    assert all(err[True][n] < err[False][n] for n in err[True])
    assert sum(err[True].values()) < 0.8 * sum(err[False].values())


# -- inspect ----------------------------------------------------------------------------------
def test_inspect_shows_types_and_predictions(bpw42, capsys):
    out, report = bpw42
    capsys.readouterr()
    assert cli_main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pred%" in text and "rel_rms%" in text and "allocation: erank signal" in text
    assert "bits per matrix weight" in text
    for name, a in report["allocation"]["tensors"].items():
        line = next(l for l in text.splitlines() if l.startswith(name + " "))
        assert a["type"] in line and f"{100 * a['rel_rms']:.3f}" in line
    assert cli_main(["inspect", str(out), "--json"]) == 0
    rows = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tensors"]}
    assert rows["blk.0.attn_q.weight"]["predicted_rel_rms"] == report["allocation"]["tensors"][
        "blk.0.attn_q.weight"]["rel_rms"]


# -- errors -----------------------------------------------------------------------------------
def test_fit_error_below_the_smallest_types_before_any_work(llama, tmp_path, monkeypatch, capsys):
    def never(*a, **k):
        raise AssertionError("measured although the budget cannot fit")

    monkeypatch.setattr(measure, "analysis_pass", never)
    monkeypatch.setattr(calibrate, "collect", never)
    smallest = min(candidates.family_types("ggml", lowest=True), key=lambda t: quant_info(t).bpw)  # rows: 256-wide
    bits = f"{quant_info(smallest).bpw:.3f}"
    with pytest.raises(FitError, match=rf"--bpw 1.0 .*need .*{bits} bits per weight\): {smallest} .*100% of the "):
        convert(str(llama), tmp_path / "o.gguf", bpw=1.0, progress=False)
    assert cli_main(["convert", str(llama), "-o", str(tmp_path / "o.gguf"), "--size", "500KB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("edgeslim: --size 500KB leaves") and "MiB" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_no_file(llama, tmp_path, monkeypatch):
    calls = []

    def boom(w, qtype, importance=None):
        calls.append(qtype)
        if len(calls) > 3:
            raise RuntimeError("boom")
        return pipeline_quantize(w, qtype, importance)

    pipeline_quantize = transform.quantize
    monkeypatch.setattr(transform, "quantize", boom)
    with pytest.raises(RuntimeError):
        convert(str(llama), tmp_path / "o.gguf", bpw=4.5, calib=False, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_argument_clashes(llama, tmp_path, capsys):
    base = ["convert", str(llama), "-o", str(tmp_path / "o.gguf")]
    for extra, needle in [(["--quant", "Q4_K", "--bpw", "4"], "--quant"), (["--bpw", "4", "--size", "1MB"], "--size"),
                          (["--target", "m2-8gb", "--bpw", "4"], "--target"), (["--allocate", "erank"], "--allocate"),
                          (["--no-calib", "--gptq", "--quant", "Q4_K"], "--gptq"), (["--gptq"], "--gptq")]:
        assert cli_main(base + extra) == 2, extra
        assert needle in capsys.readouterr().err.strip().splitlines()[-1]
    no_leftovers(tmp_path)


def test_gptq_default_rule():
    """GPTQ: as asked; by default on for a budget whenever calibration runs, off otherwise."""
    from edgeslim.convert.pipeline import use_gptq

    cal = object()
    assert use_gptq(None, "target", cal) and use_gptq(None, "bpw", cal) and use_gptq(None, "size", cal)
    assert not use_gptq(None, "bpw", None)          # GGUF source, no torch, or --no-calib
    assert not use_gptq(None, "quant", cal)         # --quant: one type, plain rounding unless asked
    assert not use_gptq(False, "bpw", cal)          # --no-gptq
    assert use_gptq(True, "quant", cal)


def test_gguf_source_is_measured_without_calibration(llama, tmp_path):
    f16 = tmp_path / "f16.gguf"
    convert(str(llama), f16, quant="F16", progress=False)
    report = convert(str(f16), tmp_path / "m.gguf", bpw=4.5, progress=False)
    assert report["calibration"] is None and report["allocation"]["calibrated"] is False
    assert report["gptq"] is False  # no calibration, so the default rounding is plain
    assert report["bpw"] <= 4.5
    with pytest.raises(InputError, match="--calib .*GGUF"):
        convert(str(f16), tmp_path / "n.gguf", bpw=4.5, calib=str(f16), progress=False)
    with pytest.raises(InputError, match="--gptq .*GGUF"):
        convert(str(f16), tmp_path / "n.gguf", bpw=4.5, gptq=True, progress=False)


def test_report_reservation_scales_to_7b_models():
    """The reserved `edgeslim.report` holds a 7B-shaped model's report (226 matrices, GPTQ errors too)."""
    from edgeslim.convert.allocate import allocate, nominal_rel_error
    from edgeslim.convert.analyze import TensorAnalysis, effective_types, family_types
    from edgeslim.convert.model import SourceModel, TensorSpec
    from edgeslim.convert.report import build_report, report_size
    from edgeslim.convert.plan import Planned

    shapes = [("attn_norm", (4096,)), ("attn_q", (4096, 4096)), ("attn_k", (1024, 4096)), ("attn_v", (1024, 4096)),
              ("attn_output", (4096, 4096)), ("ffn_norm", (4096,)), ("ffn_gate", (11008, 4096)),
              ("ffn_up", (11008, 4096)), ("ffn_down", (4096, 11008))]
    specs = [TensorSpec("token_embd.weight", (32000, 4096), None)]
    specs += [TensorSpec(f"blk.{b}.{n}.weight", s, None) for b in range(32) for n, s in shapes]
    specs += [TensorSpec("output_norm.weight", (4096,), None), TensorSpec("output.weight", (32000, 4096), None)]
    mats = [s for s in specs if len(s.shape) == 2]
    rng = np.random.default_rng(0)
    types = family_types("affine")
    analyses = []
    for s in mats:
        sse = {t: s.n_elements * nominal_rel_error(t) * rng.uniform(0.5, 2.0) * 1e-4
               for t in effective_types(types, s.shape[1])}
        stats = {"erank": 1234.5678, "erank_fraction": rng.uniform(), "kurtosis": 3.123456,
                 "outlier_share": 0.00271234, "energy": s.n_elements * 4e-4, "act_mean": 1.2345}
        analyses.append(TensorAnalysis(s.name, s.shape, stats, sse, {k: v * 1.2345 for k, v in sse.items()}, True))
    alloc = allocate(analyses, int(4.5 * sum(a.numel for a in analyses) / 8), "sensitivity", "affine")
    chosen = alloc.tensor_types()
    plan = [Planned(s, chosen.get(s.name, "F32")) for s in specs]
    model = SourceModel("llama", "m", "some-org/some-model-7b", 32, 8, 128, specs, lambda w: None)
    fit = targets.Fit("mixed", 4096, sum(p.nbytes for p in plan), 1 << 31, None)
    extra = {"mode": "bpw", "budget": {"kind": "bpw", "value": 4.5, "bytes": alloc.budget_bytes},
             "allocation": alloc.to_dict(), "calibration": {"source": "some-long-calibration-file-name.txt",
                                                            "tokens": 4096, "tokens_requested": 4096, "sequences": 8},
             "gptq": True}
    errors = {p.spec.name: 1.2345678e-05 for p in plan if p.quantized}
    full = build_report(model, plan, fit, "affine", errors, extra, {n: float("inf") for n in errors})
    need = len(json.dumps(full, separators=(",", ":")).encode())
    assert len(mats) == 226 and need > 40_000
    assert need <= report_size(build_report(model, plan, fit, "affine", {}, extra), plan, True)
    assert need <= budget.report_bound(mats)
