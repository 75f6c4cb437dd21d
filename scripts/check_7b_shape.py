#!/usr/bin/env python3
"""Convert a Llama-2-7B-shaped model for an 8 GB Mac and report file size, peak memory and time.

What it does:
  1. writes (once, then reuses) a random-weight model with Llama-2-7B's shapes in Hugging Face
     format under a cache folder (never the repository): hidden 4096, ffn 11008, 32 heads,
     vocab 32000, untied head, `--layers` decoder layers (32 = the real 6.74B parameters,
     13.5 GB of fp16 shards of <= 2 GB each with `model.safetensors.index.json`), weights
     N(0, 0.02) drawn from a seeded generator, norms 1;
     its `tokenizer.model` is Llama-2's SentencePiece vocabulary rebuilt from llama.cpp's
     `ggml-vocab-llama-spm.gguf` (../shared/data/vocab: pieces, scores and types) and checked
     against that file's tokenizer test vectors;
  2. runs `edgeslim convert DIR -o OUT --target m2-8gb [--allocate SIGNAL]` under
     `/usr/bin/time -v` and prints the output size (goal <= 4.0 GB), the peak RSS (goal
     <= 4 GB) and the wall time, each against its goal, as measured.

Free disk is checked first (the shards plus the output must fit with 5 GB to spare).

Usage:
    python scripts/check_7b_shape.py --layers 2                      # 2-layer, 7B-wide (1.3 GB)
    python scripts/check_7b_shape.py                                 # the full 7B shape (13.5 GB)
    python scripts/check_7b_shape.py --allocate uniform              # skip the per-tensor measuring
    python scripts/check_7b_shape.py --layers 2 -- --no-gptq         # more convert flags after --
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
VOCAB_GGUF = REPO.parent / "shared" / "data" / "vocab" / "ggml-vocab-llama-spm.gguf"
CACHE = Path.home() / ".cache" / "edgeslim"
GOAL_FILE, GOAL_RSS = 4.0e9, 4.0e9  # bytes (decimal GB: the stricter reading of "4 GB")
SHAPE = dict(hidden=4096, ffn=11008, heads=32, kv_heads=32, vocab=32000, ctx=4096)
SHARD_BYTES = 2 * 10**9
INIT_STD = 0.02


# ------------------------------------------------------------------------- tokenizer
def spm_from_gguf(gguf_path: Path, out: Path) -> None:
    """Rebuild a SentencePiece `tokenizer.model` (BPE, byte fallback) from a llama.cpp SPM vocab GGUF.

    The GGUF holds every piece with its score and type, and the token types use
    SentencePiece's own numbering (NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4,
    UNUSED 5, BYTE 6), so they copy across; the normalizer is Llama's (identity rule,
    dummy prefix, spaces kept).
    """
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as pb

    r = gguf.GGUFReader(str(gguf_path))
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    scores = r.fields["tokenizer.ggml.scores"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    ids = {k: int(r.fields[f"tokenizer.ggml.{k}_token_id"].contents()) for k in ("bos", "eos", "unknown")}
    m = pb.ModelProto()
    for text, score, kind in zip(tokens, scores, types):
        m.pieces.add(piece=text, score=float(score), type=int(kind))
    t = m.trainer_spec
    t.model_type = pb.TrainerSpec.BPE
    t.vocab_size = len(tokens)
    t.byte_fallback = True
    t.unk_id, t.bos_id, t.eos_id, t.pad_id = ids["unknown"], ids["bos"], ids["eos"], -1
    n = m.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = True
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    out.write_bytes(m.SerializeToString())


def check_spm(model_file: Path, gguf_path: Path, n: int = 40) -> int:
    """Compare with llama.cpp's test vectors (`.inp` / `.out` beside the GGUF); returns how many matched."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    inp = Path(str(gguf_path) + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outs = Path(str(gguf_path) + ".out").read_text(encoding="utf-8").split("\n")
    checked = 0
    for text, ids in list(zip(inp, outs))[:n]:
        want = [int(x) for x in ids.split()]
        if text and sp.encode(text) != want:
            sys.exit(f"check_7b_shape: rebuilt tokenizer.model gives {sp.encode(text)} for {text!r}, "
                     f"llama.cpp's vector says {want}")
        checked += bool(text)
    return checked


# ----------------------------------------------------------------------------- model
def tensor_shapes(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """HF Llama tensor names and shapes, in file order."""
    h, f, v = SHAPE["hidden"], SHAPE["ffn"], SHAPE["vocab"]
    kv = h * SHAPE["kv_heads"] // SHAPE["heads"]
    out = [("model.embed_tokens.weight", (v, h))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                (p + "mlp.down_proj.weight", (h, f))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]


def random_tensor(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """fp16 N(0, INIT_STD) for matrices (drawn in float32 row blocks), ones for norms."""
    if len(shape) == 1:
        return np.ones(shape, np.float16)
    out = np.empty(shape, np.float16)
    step = max(1, (1 << 24) // shape[1])
    for r in range(0, shape[0], step):
        block = rng.standard_normal((min(step, shape[0] - r), shape[1]), dtype=np.float32)
        block *= INIT_STD
        out[r:r + step] = block
    return out


def write_model(folder: Path, layers: int, seed: int) -> None:
    """config.json, fp16 shards + index, tokenizer files; a `.complete` marker at the end."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(layers)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 2 * math.prod(shape)
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    rng = np.random.default_rng(seed)
    weight_map, total = {}, 0
    for k, group in enumerate(groups, 1):
        fname = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        arrays = {name: random_tensor(shape, rng) for name, shape in group}
        save_file(arrays, str(folder / fname), metadata={"format": "pt"})
        total += sum(a.nbytes for a in arrays.values())
        weight_map.update({name: fname for name in arrays})
        print(f"  wrote {fname} ({sum(a.nbytes for a in arrays.values()) / 1e9:.2f} GB)", flush=True)
        del arrays
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": SHAPE["hidden"],
        "intermediate_size": SHAPE["ffn"], "num_hidden_layers": layers, "num_attention_heads": SHAPE["heads"],
        "num_key_value_heads": SHAPE["kv_heads"], "max_position_embeddings": SHAPE["ctx"], "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "vocab_size": SHAPE["vocab"], "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"}, indent=1))
    spm_from_gguf(VOCAB_GGUF, folder / "tokenizer.model")
    print(f"  tokenizer.model rebuilt from {VOCAB_GGUF.name}; {check_spm(folder / 'tokenizer.model', VOCAB_GGUF)} "
          "llama.cpp test vectors match", flush=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": False}, indent=1))
    (folder / ".complete").write_text(json.dumps({"layers": layers, "seed": seed, "bytes": total}))


# ------------------------------------------------------------------------------- run
def time_v(cmd: list[str]) -> tuple[int, dict, str]:
    """Run cmd under /usr/bin/time -v; (exit code, {peak_rss_bytes, wall_s, cpu_s}, combined output)."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    out = proc.stdout
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", out)
    secs = None
    if wall:
        secs = 0.0
        for part in wall.group(1).split(":"):
            secs = secs * 60 + float(part)
    cpu = [re.search(rf"{kind} time \(seconds\): ([\d.]+)", out) for kind in ("User", "System")]
    cpu_s = sum(float(m.group(1)) for m in cpu) if all(cpu) else None
    return proc.returncode, {"peak_rss_bytes": int(rss.group(1)) * 1024 if rss else None, "wall_s": secs,
                             "cpu_s": cpu_s}, out


def cli_has(flag: str) -> bool:
    """Whether `edgeslim convert` knows a flag (another part of the project may not have it yet)."""
    out = subprocess.run([sys.executable, "-m", "edgeslim.cli", "convert", "--help"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True).stdout
    return flag in out


def verdict(value: float | None, goal: float) -> str:
    if value is None:
        return "not measured"
    return f"{'MET' if value <= goal else 'NOT MET'} (goal <= {goal / 1e9:.1f} GB)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=32, help="decoder layers (32 = Llama-2-7B)")
    p.add_argument("--cache", type=Path, default=CACHE, help=f"where the model folder goes (default {CACHE})")
    p.add_argument("--out", type=Path, help="output GGUF (default CACHE/llama2-7b-shape-L{layers}.gguf)")
    p.add_argument("--target", default="m2-8gb")
    p.add_argument("--allocate", help="allocation signal passed to convert (uniform skips measuring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-output", action="store_true", help="keep the converted GGUF")
    p.add_argument("convert_args", nargs="*", metavar="-- FLAG",
                   help="more `edgeslim convert` flags after --, e.g. -- --no-gptq")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    folder = args.cache / f"llama2-7b-shape-L{args.layers}"
    out = args.out or args.cache / f"llama2-7b-shape-L{args.layers}.gguf"
    n_params = sum(math.prod(s) for _, s in tensor_shapes(args.layers))
    print(f"Llama-2-7B shape with {args.layers} layers: {n_params:,} parameters, {2 * n_params / 1e9:.2f} GB fp16")
    args.cache.mkdir(parents=True, exist_ok=True)
    if not (folder / ".complete").exists():
        need = 2 * n_params + n_params + 5 * 10**9  # shards + a generous output + 5 GB to spare
        free = shutil.disk_usage(args.cache).free
        if free < need:
            sys.exit(f"check_7b_shape: {free / 1e9:.1f} GB free under {args.cache}, need {need / 1e9:.1f} GB; "
                     "free some space or pass --cache DIR on a bigger disk")
        if not VOCAB_GGUF.is_file():
            sys.exit(f"check_7b_shape: {VOCAB_GGUF} not found (see ../shared/data/PROVENANCE.md)")
        print(f"writing {folder} ...", flush=True)
        t0 = time.perf_counter()
        write_model(folder, args.layers, args.seed)
        print(f"  done in {time.perf_counter() - t0:.0f}s", flush=True)
    else:
        print(f"reusing {folder}")
    cmd = ["edgeslim", "convert", str(folder), "-o", str(out), "--target", args.target, "--force"]
    if args.allocate:
        if not cli_has("--allocate"):
            sys.exit("check_7b_shape: this edgeslim convert has no --allocate yet; run without --allocate")
        cmd += ["--allocate", args.allocate]
    cmd += args.convert_args
    print("$ /usr/bin/time -v " + " ".join(cmd), flush=True)
    code, stats, log = time_v(cmd)
    tail = [ln for ln in log.splitlines() if not ln.startswith("\t")][-25:]
    print("\n".join(tail))
    if code:
        print(f"check_7b_shape: convert exited {code}")
        return code
    size = out.stat().st_size
    rss = stats["peak_rss_bytes"]
    print(f"\nRESULT layers={args.layers} params={n_params:,}")
    print(f"  output file  {size / 1e9:.3f} GB ({size / 2**30:.3f} GiB): {verdict(size, GOAL_FILE)}"
          + ("" if args.layers == 32 else "  [goal is for the 32-layer model]"))
    print(f"  peak RSS     {rss / 1e9:.3f} GB ({rss / 2**30:.3f} GiB): {verdict(rss, GOAL_RSS)}")
    print(f"  wall time    {stats['wall_s']:.0f} s, CPU time {stats['cpu_s'] or 0:.0f} s (user + system; the fair "
          "figure when the machine is shared)")
    print("JSON " + json.dumps({"layers": args.layers, "params": n_params, "file_bytes": size, "peak_rss_bytes": rss,
                                "wall_s": stats["wall_s"], "cpu_s": stats["cpu_s"], "command": " ".join(cmd)}))
    if not args.keep_output:
        out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
