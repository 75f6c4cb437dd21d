"""Files are never lost, outputs get normal permissions, and wrong inputs say what they are (issue 12)."""
from __future__ import annotations

import os
import re
import stat

import gguf
import numpy as np
import pytest

from edgeslim.cli import build_parser, main
from edgeslim.demo import DEMO_DIR
from edgeslim.errors import FormatError, InputError, UnsupportedError
from edgeslim.gguf_write import GGUFOut
from test_cli_runtime import assert_one_line_error, cli


def _tiny_gguf(path, arch="llama"):
    """A valid GGUF with one small F32 tensor, written by GGUFOut."""
    with GGUFOut(path, arch=arch, force=True) as out:
        out.plan("x", (4,), "F32")
        out.begin()
        out.write("x", np.zeros(4, np.float32))
    return path


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- the output is never the source ---------------------------------------------------------
@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink", "dotted"])
def test_convert_refuses_to_overwrite_its_source(demo_gguf, tmp_path, alias):
    src = tmp_path / "src.gguf"
    src.write_bytes(demo_gguf.read_bytes())
    before = src.read_bytes()
    out = {"same": src, "dotted": tmp_path / "." / "src.gguf", "symlink": tmp_path / "link.gguf",
           "hardlink": tmp_path / "hard.gguf"}[alias]
    if alias == "symlink":
        out.symlink_to(src)
    if alias == "hardlink":
        os.link(src, out)
    res = cli("convert", src, "-o", out, "--force")
    assert_one_line_error(res, "source model", "even with --force")
    assert src.read_bytes() == before


def test_convert_refuses_to_overwrite_a_file_of_the_source_folder(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    for f in DEMO_DIR.iterdir():
        if f.is_file():
            os.symlink(f, folder / f.name)
    (folder / "tokenizer_config.json").unlink()
    (folder / "tokenizer_config.json").write_text((DEMO_DIR / "tokenizer_config.json").read_text())
    link = tmp_path / "elsewhere.json"
    os.link(folder / "tokenizer_config.json", link)  # another path to a file of the folder
    before = link.read_bytes()
    assert_one_line_error(cli("convert", folder, "-o", link, "--force"), "source folder", "tokenizer_config.json")
    assert link.read_bytes() == before


# -- permissions ---------------------------------------------------------------------------------
def test_new_output_respects_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert _mode(_tiny_gguf(tmp_path / "a.gguf")) == 0o640
        os.umask(0o022)
        assert _mode(_tiny_gguf(tmp_path / "b.gguf")) == 0o644
    finally:
        os.umask(old)


def test_replacing_a_file_keeps_its_mode(tmp_path):
    path = _tiny_gguf(tmp_path / "a.gguf")
    os.chmod(path, 0o604)
    _tiny_gguf(path)
    assert _mode(path) == 0o604
    assert not list(tmp_path.glob(".*.part"))  # no temp file left


# -- inputs that are not what was expected -------------------------------------------------------
def test_vocab_only_gguf_with_unknown_arch_is_refused(tmp_path):
    src = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(src, "gemma9")
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>", "a"])
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_ti_data_to_file, w.close):
        step()
    out = tmp_path / "out.gguf"
    assert_one_line_error(cli("convert", src, "-o", out), "gemma9", "not supported")
    assert not out.exists()
    from edgeslim.convert.gguf_source import open_gguf

    llama_vocab = tmp_path / "llama-vocab.gguf"
    w = gguf.GGUFWriter(llama_vocab, "llama")
    w.add_token_list(["<unk>", "<s>", "</s>", "a"])
    for step in (w.write_header_to_file, w.write_kv_data_to_file, w.write_ti_data_to_file, w.close):
        step()
    with pytest.raises(UnsupportedError, match="no weight matrices"):
        open_gguf(llama_vocab)


def test_folders_and_other_files_say_what_they_are(tmp_path):
    assert_one_line_error(cli("generate", DEMO_DIR, "-n", 2), "Hugging Face model folder",
                          f"edgeslim convert {DEMO_DIR}")
    assert_one_line_error(cli("inspect", tmp_path), "is a folder, not a GGUF file")
    assert_one_line_error(cli("inspect", DEMO_DIR / "model.safetensors"), "a safetensors file",
                          "convert its folder first")
    assert_one_line_error(cli("generate", tmp_path / "missing.gguf"), "no such file")
    from edgeslim.gguf_file import GGUFFile

    with pytest.raises(FormatError, match="JSON text"):
        GGUFFile(DEMO_DIR / "config.json")


def test_fallback_types_are_named_in_the_summary(tiny_hf_model, tmp_path, capsys):
    import edgeslim
    from edgeslim.quants import fallback_type

    folder = tiny_hf_model("llama", hidden_size=64, intermediate_size=128)
    report = edgeslim.convert(folder, tmp_path / "q4k.gguf", quant="Q4_K", progress=False)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    used = fallback_type("Q4_K", 64)  # a 32-wide type, as llama.cpp picks (Q5_0)
    assert "Q4_K" not in re.sub(r"fell back from Q4_K[^)]*", "", last), last  # Q4_K only as the reason
    assert re.search(rf"{used} x \d+ \(\d+ fell back from Q4_K: rows not a multiple of its 256-wide block\)", last), last
    assert "Q4_K" not in report["types"] and used in report["types"]


# -- help and accepted values come from one table ------------------------------------------------
def _expand(help_text: str) -> list[str]:
    names = re.findall(r"\b(?:F32|F16|BF16|Q\d_K|Q8_0)\b", help_text)
    for bits, groups in re.findall(r"AFFINE\{([\d,]+)\}_G\{([\d,]+)\}", help_text):
        names += [f"AFFINE{b}_G{g}" for b in bits.split(",") for g in groups.split(",")]
    return names


def test_every_type_in_help_is_accepted_and_no_other():
    from edgeslim.convert.plan import resolve_quant

    parser, _ = build_parser(["convert"])
    sub = parser._subparsers._group_actions[0].choices["convert"]
    quant_help = next(a.help for a in sub._actions if "--quant" in a.option_strings)
    names = _expand(quant_help)
    assert len(names) >= 9 + 12
    for name in names:
        assert resolve_quant(name, None)[0] == name
    assert "AFFINE7" not in " ".join(names)
    with pytest.raises(InputError, match="unknown --quant"):
        resolve_quant("AFFINE7_G64", None)
    with pytest.raises(InputError, match="add --family affine"):
        resolve_quant("4", None)
    assert resolve_quant("4", "affine", 32) == ("AFFINE4_G32", "affine")
    with pytest.raises(InputError, match="bits"):
        resolve_quant("7", "affine")


def test_no_subcommand_exits_non_zero(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err
    assert cli().returncode == 2
