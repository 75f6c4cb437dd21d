#!/usr/bin/env python3
"""Quality per byte: edgeslim against llama.cpp (every type, with and without an imatrix) and mlx-lm.

For one model (a preset below, or any HF folder / F16-F32 GGUF) it makes an F16 GGUF with
edgeslim's converter, then quantized files with
  * edgeslim: `convert(src, out, bpw=X | size=BYTES, allocate=SIGNAL, calib=FILE, gptq=BOOL)` at
    each --bpw, and (--match) at the byte size of every llama.cpp file on llama.cpp's lower
    envelope between 2.5 and 5.5 bpw: equal file bytes, the issue-10 table;
  * llama.cpp: `llama-quantize` of every type in --lcp-types (IQ, K and legacy, with their
    presets' mixtures) from the same F16 file, plain and with `llama-imatrix` on the same
    calibration text and token count edgeslim calibrates on (IQ1/IQ2 types need it);
  * mlx-lm (when importable): uniform bits, its mixed_* recipes and `dynamic_quant` (offline),
    its tensors copied unchanged into edgeslim's affine GGUF layout (`edgeslim.convert.mlx_import.mlx_to_gguf`),
and scores every file by KL(F16 || quantized): llama.cpp's `llama-perplexity --kl-divergence`
for every file llama.cpp loads (ggml types, edgeslim's included), edgeslim's own runtime for
mlx-lm's layout (the report shows both scorers agree on F16 and on one llama.cpp file).
Same text, same windows (--ctx tokens, llama-perplexity's: BOS first, second half scored).

Every result is cached as JSON under the work folder with a key of the evaluation setup, so
pieces run separately (`--only llamacpp`, `--only edgeslim --bpw 3.0`); the report is rebuilt
from every cached result with that key. `--fresh` recomputes (after changing the converter).
Output: markdown (--md) with the table, GOAL lines and per-size ratios (`_quality_report`), a
KL-vs-bytes chart (--png) and JSON (--json). Timings are wall-clock on whatever machine runs it.

Usage:
    python scripts/bench_quality.py --model ref --md docs/quality-ref.md --png docs/ref-quality.png
    python scripts/bench_quality.py --model ref576 --only llamacpp
    python scripts/bench_quality.py --model demo --bpw 3.0,4.0 --signals erank --gptq on --max-chunks 4
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality_make as make  # noqa: E402
import _quality_report as report  # noqa: E402
from _quality_score import EdgeslimScorer, LlamaScorer, ScoreError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CACHE = Path.home() / ".cache" / "edgeslim"
WIKI_TEST = DATA / "corpora" / "wikitext-2" / "test.txt"
WIKI_VALID = DATA / "corpora" / "wikitext-2" / "valid.txt"
STORIES_VAL = DATA / "corpora" / "tinystories" / "tinystories_val.txt"
PRESETS = {  # name -> (model, evaluation text, calibration text; None = the converter's built-in one)
    "ref": (CACHE / "reference-model", WIKI_TEST, WIKI_VALID),
    "ref576": (CACHE / "reference-model-576", WIKI_TEST, WIKI_VALID),
    "demo": (REPO / "edgeslim" / "demo", STORIES_VAL, None),
    "stories260k": (DATA / "models" / "stories260K" / "stories260K.gguf", STORIES_VAL, None),
}
SIGNALS = ("erank", "sensitivity", "uniform", "hybrid")
PIECES = ("llamacpp", "mlx", "edgeslim")
MATCH_RANGE = (2.5, 5.5)  # bpw of the llama.cpp files edgeslim is made to match in size


@dataclass
class Setup:
    """What every variant shares: source, F16 file, text, windows, calibration."""

    name: str
    src: Path
    is_hf: bool
    text: Path
    calib: Path  # the calibration text file both edgeslim and llama-imatrix read
    calib_tokens: int
    work: Path
    f16: Path
    ctx: int
    chunks: int
    n_params: int
    key: str


@dataclass
class Variant:
    """One quantized file to make and score."""

    id: str
    method: str
    config: str
    series: str
    build: Callable[[Path], dict]
    facts: dict


def resolve_model(arg: str) -> tuple[str, Path, Path | None, Path | None]:
    if arg in PRESETS:
        src, text, calib = PRESETS[arg]
        if not src.exists():
            hint = {"ref": "python scripts/train_reference_model.py",
                    "ref576": "python scripts/train_reference_model.py --geometry w576"}.get(arg, "../shared/data")
            sys.exit(f"bench_quality: model {src} not found; make it: {hint}")
        return arg, src, text, calib
    src = Path(arg).expanduser().resolve()
    if not src.exists():
        sys.exit(f"bench_quality: --model {arg}: no such file or folder")
    return src.stem if src.is_file() else src.name, src, WIKI_TEST, WIKI_VALID


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_calib(out: Path, source: Path | None, n_tokens: int) -> None:
    """The calibration text (the converter's built-in sample when source is None), cut to what
    n_tokens can use, so that edgeslim and llama-imatrix read exactly the same text."""
    from edgeslim.convert.calibrate import CHARS_PER_TOKEN_MAX, read_calib_text

    text = read_calib_text(source)[: n_tokens * CHARS_PER_TOKEN_MAX]
    if not out.exists() or out.read_text(encoding="utf-8") != text:
        out.write_text(text, encoding="utf-8")


def make_setup(args) -> Setup:
    """Resolve paths, make the F16 GGUF and the calibration file, count the windows."""
    import gguf

    name, src, text_default, calib_default = resolve_model(args.model)
    text = Path(args.text) if args.text else text_default
    if text is None or not text.is_file():
        sys.exit(f"bench_quality: evaluation text {text} not found; pass --text FILE")
    work = Path(args.work) if args.work else CACHE / "bench-quality" / name
    for sub in ("files", "results", "logs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    f16 = work / "files" / "f16.gguf"
    if not f16.exists() or args.fresh:
        with make.logged(work / "logs" / "f16.log"):
            make.edgeslim_convert()(str(src), f16, quant="F16", force=True)
    calib = work / "calib.txt"
    write_calib(calib, Path(args.calib) if args.calib else calib_default, args.calib_tokens)
    reader = gguf.GGUFReader(str(f16))
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    ctx_field = next((f for k, f in reader.fields.items() if k.endswith(".context_length")), None)
    ctx = min(args.ctx, int(ctx_field.contents())) if ctx_field is not None else args.ctx
    ident = json.dumps([sha256_file(f16), sha256_file(text), ctx, args.max_chunks, sha256_file(calib),
                        args.calib_tokens])
    key = hashlib.sha256(ident.encode()).hexdigest()[:12]
    return Setup(name, src, src.is_dir(), text, calib, args.calib_tokens, work, f16, ctx, args.max_chunks,
                 n_params, key)


def edgeslim_tokens(setup: Setup):
    """(tokens, bos) of the evaluation text by edgeslim's tokenizer (the edgeslim scorer's input)."""
    import edgeslim

    model = edgeslim.load(setup.f16, backend="numpy", n_ctx=setup.ctx, kv_dtype="float32")
    tokens = list(model.tokenizer.encode(setup.text.read_text(encoding="utf-8"), add_bos=None, parse_special=False))
    bos = model.tokenizer.bos_id if model.tokenizer.add_bos else None
    model.close()
    return tokens, bos


# --------------------------------------------------------------------------- variants
def series_name(signal: str, gptq: bool, family: str) -> str:
    return f"edgeslim {signal}{'+gptq' if gptq else ''}" + ("" if family == "ggml" else f" {family}")


def edgeslim_variants(setup: Setup, args, lcp_results: list[dict]) -> list[Variant]:
    """Every (signal, gptq, family) at each --bpw, and (--match) at each llama.cpp envelope file's bytes."""
    sizes = []
    if args.match:
        lo, hi = MATCH_RANGE
        sizes = sorted({r["file_bytes"] for r in report.ok(lcp_results) if lo <= r["bpw"] <= hi
                        and (r["file_bytes"], r["kl_mean"]) in report.lcp_envelope(lcp_results)})
    out = []
    for family in args.family.split(","):
        for signal in args.signals.split(","):
            for gptq in {"both": [False, True], "on": [True], "off": [False]}[args.gptq]:
                s = series_name(signal, gptq, family) + (f" ({args.tag})" if args.tag else "")
                stem = f"es-{family}-{signal}{'-gptq' if gptq else ''}" + (f"-{args.tag}" if args.tag else "")
                kw = dict(signal=signal, gptq=gptq, family=family, calib=not args.no_calib)
                for bpw in [float(x) for x in args.bpw.split(",") if x.strip()]:
                    out.append(Variant(f"{stem}-b{bpw:g}", "edgeslim", f"{s[9:]} --bpw {bpw:g}", s,
                                       lambda p, b=bpw, kw=kw: make.build_edgeslim(setup, p, bpw=b, **kw),
                                       {"target_bpw": bpw}))
                for size in sizes:
                    out.append(Variant(f"{stem}-s{size}", "edgeslim", f"{s[9:]} --size {size}", s,
                                       lambda p, n=size, kw=kw: make.build_edgeslim(setup, p, size=n, **kw),
                                       {"target_bytes": size}))
    return out


def llamacpp_variants(setup: Setup, args) -> list[Variant]:
    out = []
    for imatrix in (False, True):
        method = "llama.cpp+imatrix" if imatrix else "llama.cpp"
        for qtype in args.lcp_types.split(","):
            out.append(Variant(f"lcp{'-im' if imatrix else ''}-{qtype}", method, qtype, method,
                               lambda p, q=qtype, im=imatrix: make.build_llamacpp(
                                   setup, p, qtype=q, imatrix=im, bin_dir=args.llama_bin, threads=args.threads), {}))
    return out


def mlx_variants(setup: Setup, args) -> list[Variant]:
    out = []
    for recipe in args.mlx_recipes.split(","):
        config = f"{recipe}-bit" if recipe.isdigit() else recipe
        out.append(Variant(f"mlx-{config}", "mlx-lm", config, "mlx-lm",
                           lambda p, r=recipe: make.build_mlx(setup, p, recipe=r, group=args.mlx_group), {}))
    return out


# -------------------------------------------------------------------------------- run
def file_stats(setup: Setup, path: Path) -> dict:
    """File bytes, tensor-data bytes, bits per weight (tensor bits / parameters) and type counts."""
    import gguf

    tensors = gguf.GGUFReader(str(path)).tensors
    types: dict[str, int] = {}
    for t in tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    tensor_bytes = sum(int(t.n_bytes) for t in tensors)
    return {"file_bytes": path.stat().st_size, "tensor_bytes": tensor_bytes,
            "bpw": 8.0 * tensor_bytes / setup.n_params, "tensor_types": types}


def run_variant(setup: Setup, v: Variant, scorers: dict, f16: dict, keep: bool) -> dict:
    """Make, measure and score one variant; the result (failures too) is cached."""
    path = setup.work / "files" / f"{v.id}.gguf"
    res = {"id": v.id, "method": v.method, "config": v.config, "series": v.series, "key": setup.key, **v.facts}
    t0 = time.perf_counter()
    try:
        with make.logged(setup.work / "logs" / f"{v.id}.build.log"):
            extra = v.build(path)
        convert_s = time.perf_counter() - t0 + extra.get("imatrix_s", 0.0)
        scorer = scorers["edgeslim" if v.method == "mlx-lm" else "llama"]
        out = scorer.score(path, setup.work / "logs" / f"{v.id}.score.log")
        res.update(status="ok", **extra, **file_stats(setup, path), **out, convert_s=round(convert_s, 1),
                   dppl=out["ppl"] - f16["ppl"])
    except make.Unavailable as err:
        res.update(status="unavailable", note=str(err)[:600])
    except (ScoreError, RuntimeError, OSError, ValueError) as err:  # one failure must not stop the benchmark
        res.update(status="error", note=f"{type(err).__name__}: {err}"[:600])
    if not keep:
        path.unlink(missing_ok=True)
    (setup.work / "results" / f"{v.id}.json").write_text(json.dumps(res, indent=1))
    return res


def cached_results(setup: Setup) -> list[dict]:
    out = []
    for f in sorted((setup.work / "results").glob("*.json")):
        r = json.loads(f.read_text())
        if r.get("key") == setup.key and "status" in r and f.name != "f16.json":
            out.append(r)
    return out


def line(res: dict) -> str:
    if res["status"] != "ok":
        return f"{res['id']}: {res['status']}: {res.get('note', '')[:200]}"
    return (f"{res['id']}: {res['file_bytes'] / 1e6:.3f} MB {res['bpw']:.3f} bpw KL {res['kl_mean']:.5f} "
            f"top1 {100 * res['top1_same']:.1f}% PPL {res['ppl']:.3f} (make {res['convert_s']:.0f}s, "
            f"score {res['eval_s']:.0f}s)")


def reference(setup: Setup, scorers: dict) -> dict:
    """The F16 file's result (llama-perplexity's PPL), cached."""
    path = setup.work / "results" / "f16.json"
    if path.exists():
        res = json.loads(path.read_text())
        if res.get("key") == setup.key:
            return res
    out = scorers["llama"].reference()
    res = {"id": "f16", "method": "F16", "config": "F16", "series": "F16", "status": "ok", "key": setup.key,
           **file_stats(setup, setup.f16), **out, "dppl": 0.0, "kl_mean": 0.0, "kl_p99": 0.0, "top1_same": 1.0,
           "scorer": scorers["llama"].name}
    path.write_text(json.dumps(res, indent=1))
    return res


class LazyEdgeslimScorer:
    """EdgeslimScorer built on first use (tokenizing the text costs a model load)."""

    name = "edgeslim"

    def __init__(self, setup: Setup):
        self.setup, self.inner = setup, None

    def _get(self) -> EdgeslimScorer:
        if self.inner is None:
            s = self.setup
            tokens, bos = edgeslim_tokens(s)
            self.inner = EdgeslimScorer(s.f16, tokens, bos, s.ctx, s.chunks, s.work, s.key)
        return self.inner

    def reference(self) -> dict:
        return self._get().reference()

    def score(self, path: Path, log: Path | None = None) -> dict:
        return self._get().score(path, log)


def check_scorers(setup: Setup, scorers: dict, f16: dict, args) -> dict:
    """Both scorers on the F16 file (PPL) and on llama.cpp's Q4_K_M (KL), cached: do they agree?"""
    path = setup.work / "results" / "scorer-check.json"
    if path.exists():
        res = json.loads(path.read_text())
        if res.get("key") == setup.key:
            return res
    es_f16 = scorers["edgeslim"].reference()
    q = setup.work / "files" / "scorer-check-Q4_K_M.gguf"
    make.build_llamacpp(setup, q, qtype="Q4_K_M", imatrix=False, bin_dir=args.llama_bin, threads=args.threads)
    lc = scorers["llama"].score(q, setup.work / "logs" / "scorer-check.score.log")
    es = scorers["edgeslim"].score(q)
    q.unlink()
    res = {"key": setup.key, "f16_ppl": {"llama-perplexity": f16["ppl"], "edgeslim": es_f16["ppl"]},
           "q4_k_m": {k: {"llama-perplexity": lc[k], "edgeslim": es[k]} for k in ("ppl", "kl_mean", "top1_same")}}
    path.write_text(json.dumps(res, indent=1))
    return res


def markdown(setup: Setup, f16: dict, results: list[dict], goals: list[str], rows: dict, check: dict | None,
             png: str | None, meta: dict) -> str:
    lines = [f"# Quality benchmark: {setup.name}", "",
             f"Made by `{meta['command']}` on {meta['date']} ({meta['machine']}); timings (make s) are wall-clock "
             "on that machine, shared with other jobs unless said otherwise.", "",
             f"- model: `{setup.src}` ({setup.n_params:,} parameters); F16 GGUF by edgeslim's converter",
             f"- evaluation text: `{setup.text}`; {setup.chunks} windows of {setup.ctx} tokens (llama-perplexity's: "
             "BOS first, second half scored); F16 perplexity "
             f"{f16['ppl']:.4f}" + (f" ± {f16['ppl_error']:.4f}" if f16.get("ppl_error") else ""),
             f"- calibration (edgeslim `calib=` and `llama-imatrix -f`): `{meta['calib_source']}`, "
             f"{setup.calib_tokens} tokens; llama.cpp+imatrix's make time includes the imatrix",
             "- KL = mean KL(F16 ‖ quantized) per scored position, by `llama-perplexity --kl-divergence` "
             "(float32 KV cache) for every file llama.cpp loads; mlx-lm's files by edgeslim's runtime",
             "- bpw = 8 × tensor bytes / parameters (norms included); edgeslim's `--bpw` counts matrices only"]
    if check:
        c = check["q4_k_m"]
        lines.append(f"- scorers agree: F16 PPL {check['f16_ppl']['llama-perplexity']:.4f} (llama-perplexity) vs "
                     f"{check['f16_ppl']['edgeslim']:.4f} (edgeslim); llama.cpp Q4_K_M KL "
                     f"{c['kl_mean']['llama-perplexity']:.5f} vs {c['kl_mean']['edgeslim']:.5f}, top-1 "
                     f"{100 * c['top1_same']['llama-perplexity']:.2f}% vs {100 * c['top1_same']['edgeslim']:.2f}%")
    lines += ["", "## Goals (as measured)", "", "```", *goals, "```", ""]
    for s, r in rows.items():
        if r:
            lines += [f"### {s} against llama.cpp, size by size", "", *report.goal1_table(r), ""]
    if png:
        lines += [f"![KL vs file size]({png})", ""]
    lines += ["## Every file", "", *report.results_table(f16, results), ""]
    other = [r for r in results if r["status"] != "ok"]
    if other:
        lines += ["Not measured:", ""] + [f"- `{r['id']}`: {r['status']}: {r.get('note', '')}" for r in other] + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ref", help=f"a preset ({', '.join(PRESETS)}) or an HF folder / GGUF path")
    p.add_argument("--text", help="evaluation text (default: the preset's)")
    p.add_argument("--calib", help="calibration text (default: the preset's)")
    p.add_argument("--calib-tokens", type=int, default=4096)
    p.add_argument("--no-calib", action="store_true", help="edgeslim without calibration (calib=False)")
    p.add_argument("--work", help="cache folder (default ~/.cache/edgeslim/bench-quality/NAME)")
    p.add_argument("--only", default=",".join(PIECES), help="comma list of llamacpp, mlx, edgeslim")
    p.add_argument("--report-only", action="store_true", help="make nothing; rebuild the report from the cache")
    p.add_argument("--bpw", default="2.5,3.0,3.5,4.0,4.5,5.0", help="edgeslim budgets (bits per matrix weight)")
    p.add_argument("--no-match", dest="match", action="store_false",
                   help="skip edgeslim at the sizes of llama.cpp's envelope files")
    p.add_argument("--signals", default="erank")
    p.add_argument("--tag", default="", help="a name for this converter version: kept apart from earlier results "
                                             "(variant ids and series get it), so before/after share one report")
    p.add_argument("--gptq", choices=("both", "on", "off"), default="on")
    p.add_argument("--family", default="ggml", help="edgeslim families: ggml, affine or ggml,affine")
    p.add_argument("--lcp-types", default=make.LCP_TYPES)
    p.add_argument("--mlx-recipes", default=make.MLX_RECIPES)
    p.add_argument("--mlx-group", type=int, default=64)
    p.add_argument("--llama-bin", default="/work/lcp/lcp-build/bin", help="folder with llama.cpp's tools")
    p.add_argument("--ctx", type=int, default=512, help="window length (capped at the model's context)")
    p.add_argument("--max-chunks", type=int, default=20, help="windows to score")
    p.add_argument("--threads", type=int, default=2, help="threads for the llama.cpp tools")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the scorer agreement check")
    p.add_argument("--fresh", action="store_true", help="recompute cached results and the F16 file")
    p.add_argument("--keep-files", action="store_true", help="keep every quantized GGUF in the work folder")
    p.add_argument("--md", type=Path, help="markdown report (default WORK/report.md)")
    p.add_argument("--json", type=Path, help="JSON results (default WORK/report.json)")
    p.add_argument("--png", type=Path, help="chart (default beside the markdown, NAME-quality.png)")
    args = p.parse_args(argv)
    bad = set(args.only.split(",")) - set(PIECES)
    if bad:
        p.error(f"--only takes {', '.join(PIECES)}; got {', '.join(sorted(bad))}")
    if args.signals and set(args.signals.split(",")) - set(SIGNALS):
        p.error(f"--signals takes {', '.join(SIGNALS)}")
    return args


def run_pieces(setup: Setup, args, scorers: dict, f16: dict) -> None:
    pieces = [] if args.report_only else [p for p in PIECES if p in args.only.split(",")]
    for piece in pieces:
        if piece == "edgeslim":
            todo = edgeslim_variants(setup, args, cached_results(setup))
        else:
            todo = {"llamacpp": llamacpp_variants, "mlx": mlx_variants}[piece](setup, args)
        for i, v in enumerate(todo, 1):
            path = setup.work / "results" / f"{v.id}.json"
            res = json.loads(path.read_text()) if path.exists() and not args.fresh else None
            if res is None or res.get("key") != setup.key or res["status"] == "error":
                res = run_variant(setup, v, scorers, f16, args.keep_files)
            print(f"[{piece} {i}/{len(todo)}] {line(res)}", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.perf_counter()
    setup = make_setup(args)
    exe = make.llama_tool(args.llama_bin, "llama-perplexity")
    scorers = {"llama": LlamaScorer(exe, setup.f16, setup.text, setup.ctx, setup.chunks, args.threads, setup.work,
                                    setup.key),
               "edgeslim": LazyEdgeslimScorer(setup)}
    f16 = reference(setup, scorers)
    print(f"{setup.name}: {setup.chunks} windows of {setup.ctx}; F16 PPL {f16['ppl']:.4f}; work {setup.work} "
          f"(key {setup.key})", flush=True)
    run_pieces(setup, args, scorers, f16)
    check = check_scorers(setup, scorers, f16, args) if args.check else None
    results = cached_results(setup)
    goals, rows = report.goal_lines(results)
    meta = {"command": "python scripts/bench_quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "calib_source": str(args.calib or PRESETS.get(args.model, (None, None, WIKI_VALID))[2] or "built-in text")}
    md_path = args.md or setup.work / "report.md"
    png = args.png or md_path.with_name(f"{setup.name}-quality.png")
    for folder in {md_path.parent, png.parent}:
        folder.mkdir(parents=True, exist_ok=True)
    have_png = report.chart(setup.name, [f16, *results], png)
    link = os.path.relpath(png, md_path.parent) if have_png else None
    md_path.write_text(markdown(setup, f16, results, goals, rows, check, link, meta))
    (args.json or setup.work / "report.json").write_text(json.dumps(
        {"meta": meta, "f16": f16, "results": results, "goals": goals, "scorer_check": check}, indent=1))
    print("\n".join(goals))
    print(f"report: {md_path}" + (f", chart: {png}" if have_png else "") + f"; {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
