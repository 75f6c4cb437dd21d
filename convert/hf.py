"""Hugging Face checkpoints: a local folder (config.json + *.safetensors, sharded or not)
or a hub id downloaded with `huggingface_hub.snapshot_download`.

Weights are read one tensor at a time and widened to float32
(`safetensors_read`: positioned reads, no mmap, no torch).
edgeslim never unpickles: folders with only `pytorch_model.bin` / `.pt` files
are refused with the command to convert them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from edgeslim.errors import InputError, UnsupportedError
from edgeslim.tables import Keys, TensorNames

from . import safetensors_read
from .arch import Arch, arch_for_config
from .model import SourceModel, TensorSpec, put_kv, tensor_order
from .vocab import load_vocab

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# What a conversion needs from a hub repository (no pickles, no other formats).
HUB_PATTERNS = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                "added_tokens.json", "merges.txt", "vocab.json", "chat_template.json", "chat_template.jinja"]


def looks_like_hub_id(src: str) -> bool:
    return bool(HUB_ID.match(src)) and not src.startswith(".")


def download(repo_id: str) -> Path:
    """Fetch only config/tokenizer/safetensors files of a hub model; one-line error when offline."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except ImportError:
        raise InputError(f"{repo_id!r} is not a local folder and huggingface_hub is not installed; "
                         "download the model yourself and pass its folder") from None
    except Exception as err:  # offline, unknown repo, gated, network down
        reason = type(err).__name__
        raise InputError(f"{repo_id!r} is not a local folder and could not be downloaded from the Hugging Face "
                         f"Hub ({reason}); download it yourself (e.g. `hf download {repo_id}`) and pass the folder"
                         ) from None


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise InputError(f"{folder} has no config.json; pass the folder of a Hugging Face model "
                         "(config.json, tokenizer and *.safetensors)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is not valid JSON ({err}); re-download it") from None


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files: from the index when sharded, else every *.safetensors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise InputError(f"{folder} is missing shard(s) {', '.join(missing)}; finish the download")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UnsupportedError(
            f"{folder} has only pickle weights ({', '.join(pickles[:3])}); edgeslim never unpickles (it can run "
            "code); convert to safetensors first, e.g. load with transformers and "
            "save_pretrained(safe_serialization=True)")
    raise InputError(f"{folder} has no *.safetensors weights; download the model's safetensors files")


def _check_quantized(config: dict, folder: Path) -> None:
    qc = config.get("quantization_config")
    if isinstance(qc, dict) and qc.get("quant_method"):
        raise UnsupportedError(f"{folder} is already quantized ({qc['quant_method']}); convert the original "
                               "F16/BF16/F32 checkpoint")


class Shards:
    """Tensor entries of every shard; `load` reads one tensor as float32 (see safetensors_read)."""

    def __init__(self, files: list[Path]):
        self.entries: dict[str, safetensors_read.Entry] = {}
        for f in files:
            for name, entry in safetensors_read.read_header(f).items():
                if name in self.entries:
                    raise InputError(f"tensor {name} is in both {self.entries[name].path.name} and {f.name}; "
                                     "remove the stray file or re-download the model")
                self.entries[name] = entry

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def load(self, name: str) -> np.ndarray:
        return safetensors_read.load(self.entries[name])


def _spec(shards: Shards, arch: Arch, hf_name: str, gguf_name: str) -> TensorSpec:
    def load() -> np.ndarray:
        w = shards.load(hf_name)
        return np.ascontiguousarray(arch.transform(gguf_name, w), dtype=np.float32)

    return TensorSpec(gguf_name, shards.shape(hf_name), load)


def open_hf(src: str) -> SourceModel:
    """An HF folder (or hub id) as a SourceModel; every user mistake is a one-line error."""
    folder = Path(src)
    if not folder.exists():
        if not looks_like_hub_id(src):
            raise InputError(f"{src}: no such folder or file; pass a Hugging Face model folder, hub id or GGUF file")
        folder = download(src)
    if not folder.is_dir():
        raise InputError(f"{src} is neither a model folder nor a GGUF file; pass a Hugging Face model folder")
    config = read_config(folder)
    arch = arch_for_config(config)
    _check_quantized(config, folder)
    shards = Shards(safetensors_files(folder))
    specs = []
    for hf_name in shards.entries:
        gguf_name = arch.gguf_name(hf_name)
        if gguf_name is not None:
            specs.append(_spec(shards, arch, hf_name, gguf_name))
    specs += [TensorSpec(n, a.shape, lambda a=a: a) for n, a in arch.extra_tensors()]
    specs.sort(key=lambda s: tensor_order(s.name))
    _check_complete(specs, arch, folder)
    vocab = load_vocab(folder, arch.vocab_size, arch.spm_space_prefix)

    name = str(config.get("_name_or_path") or "").rstrip("/").split("/")[-1] or folder.name

    def write_metadata(writer) -> None:
        writer.add_string(Keys.NAME, name)
        for key, value in arch.metadata():
            put_kv(writer, key, value)
        vocab.add_to(writer)

    return SourceModel(arch.gguf_arch, name, src if not Path(src).exists() else Path(src).resolve().name,
                       arch.n_layers, arch.n_kv_heads, arch.head_dim, specs, write_metadata)


def _check_complete(specs: list[TensorSpec], arch: Arch, folder: Path) -> None:
    names = {s.name for s in specs}
    needed = [TensorNames.TOKEN_EMBD, TensorNames.OUTPUT_NORM] + [
        name for b in range(arch.n_layers) for name in arch.block_tensors(b).values()]
    missing = [n for n in needed if n not in names]
    if missing:
        raise InputError(f"{folder}: weights are missing {arch.hf_name(missing[0])} ({len(missing)} tensors in all); "
                         "finish the download")
