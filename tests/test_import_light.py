"""The runtime must import without torch or transformers."""
import subprocess
import sys

CODE = """
import sys
import edgeslim, edgeslim.runtime, edgeslim.cli, edgeslim.gguf_file, edgeslim.tables
for mod in ("edgeslim.runtime.api", "edgeslim.runtime.kernels", "edgeslim.tokenizer", "edgeslim.quants"):
    __import__(mod)
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print(",".join(heavy) or "clean")
"""


def test_runtime_imports_without_torch_or_transformers():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_no_bare_convert_or_runtime_module():
    code = "import importlib.util as u; print(u.find_spec('convert') is None and u.find_spec('runtime') is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=60)
    assert out.stdout.strip() == "True", out.stdout + out.stderr
