"""GGUF reader/writer: round trip, checksum, and hostile or truncated files."""
import hashlib
import struct

import gguf
import numpy as np
import pytest

from edgeslim.errors import FormatError, InputError
from edgeslim.gguf_file import GGUFFile
from edgeslim.gguf_write import GGUFOut
from edgeslim.tables import Keys


def _write_small(path, force=False):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 64)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float16)
    with GGUFOut(path, arch="llama", force=force) as out:
        out.writer.add_uint32("llama.block_count", 1)
        out.reserve_string(Keys.ES_REPORT, 100)
        out.plan("a.weight", a.shape, "F32")
        out.plan("b.weight", b.shape, "F16")
        out.begin()
        out.write("a.weight", a)
        out.write("b.weight", b)
        out.fill_string(Keys.ES_REPORT, '{"ok": 1}')
    return a, b


def test_round_trip_and_checksum(tmp_path):
    path = tmp_path / "m.gguf"
    a, b = _write_small(path)
    f = GGUFFile(path)
    assert f.arch == "llama" and f.get("{arch}.block_count") == 1
    assert f.tensors["a.weight"].shape == (3, 64)
    np.testing.assert_array_equal(f.array("a.weight"), a)
    np.testing.assert_array_equal(f.array("b.weight"), b)
    assert f.kv[Keys.ES_REPORT].strip() == '{"ok": 1}'
    want = hashlib.sha256(a.tobytes() + b.tobytes()).hexdigest()
    assert f.kv[Keys.ES_CHECKSUM] == want
    # the gguf package reads it too
    r = gguf.GGUFReader(path)
    assert {t.name for t in r.tensors} == {"a.weight", "b.weight"}
    assert list(tmp_path.iterdir()) == [path]  # no temp files left


def test_refuses_overwrite_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "m.gguf"
    _write_small(path)
    with pytest.raises(InputError, match="--force"):
        _write_small(path)
    with pytest.raises(ValueError):
        with GGUFOut(tmp_path / "x.gguf", arch="llama") as out:
            out.plan("a.weight", (2, 32), "F32")
            out.begin()
            raise ValueError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


@pytest.mark.parametrize("cut", [3, 20, 40, 100, -1])
def test_truncated_file_is_a_format_error(tmp_path, cut):
    path = tmp_path / "m.gguf"
    _write_small(path)
    data = path.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data[:cut] if cut > 0 else data[:-10])
    with pytest.raises(FormatError) as err:
        GGUFFile(bad)
    assert "\n" not in str(err.value) and "bad.gguf" in str(err.value)


def test_hostile_counts_do_not_allocate(tmp_path):
    bad = tmp_path / "hostile.gguf"
    # magic, version 3, 2**60 tensors, 1 kv
    bad.write_bytes(struct.pack("<IIQQ", 0x46554747, 3, 2**60, 1) + b"\0" * 64)
    with pytest.raises(FormatError, match="count"):
        GGUFFile(bad)
    # a string claiming 2**62 bytes
    bad.write_bytes(struct.pack("<IIQQQ", 0x46554747, 3, 0, 1, 2**62) + b"k" * 64)
    with pytest.raises(FormatError):
        GGUFFile(bad)


def test_bad_magic_and_version(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 60)
    with pytest.raises(FormatError, match="not a GGUF"):
        GGUFFile(bad)
    bad.write_bytes(struct.pack("<IIQQ", 0x46554747, 99, 0, 0) + b"\0" * 40)
    with pytest.raises(FormatError, match="version 99"):
        GGUFFile(bad)
    with pytest.raises(FormatError, match="no such file"):
        GGUFFile(tmp_path / "missing.gguf")


def test_a_newer_tensor_type_is_unsupported_not_corrupt(tmp_path):
    """A valid file with a ggml type id this edgeslim does not know (llama.cpp keeps adding types):
    one line naming the tensor, the id and the fix, never 'corrupted'."""
    from edgeslim.errors import UnsupportedError

    path = tmp_path / "m.gguf"
    _write_small(path)
    data = bytearray(path.read_bytes())
    name = b"a.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)  # n_dims, ne[2], then the type id
    type_at = at + 4 + 2 * 8
    assert struct.unpack_from("<I", data, type_at)[0] == 0  # F32
    struct.pack_into("<I", data, type_at, 40)  # a type newer than this edgeslim
    path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedError) as err:
        GGUFFile(path)
    msg = str(err.value)
    assert "a.weight" in msg and "40" in msg and "corrupt" not in msg and "\n" not in msg
