"""scripts/sample_stories.py: its torch port of stories260K reproduces the known greedy output."""
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO.parent / "shared" / "data" / "models" / "stories260K"

pytestmark = pytest.mark.skipif(not (MODEL_DIR / "stories260K.gguf").is_file(), reason="../shared absent")


def _script():
    pytest.importorskip("torch")
    from conftest import load_script

    return load_script("sample_stories")


def test_port_reproduces_greedy_and_samples_stories(tmp_path):
    mod = _script()
    # main() first checks greedy decoding against greedy_256_text.txt (exits on a mismatch)
    out = tmp_path / "s.jsonl"
    assert mod.main(["--tokens", "300", "--batch", "4", "--max-len", "512", "--threads", "1", "--out", str(out)]) == 0
    stories = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert stories and all(len(s.split()) >= 10 for s in stories), stories
    assert sum(s.startswith("Once") for s in stories) >= len(stories) // 2  # the TinyStories register
