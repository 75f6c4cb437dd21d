"""scripts/train_demo_model.py's data assembly (no training): extra stories, repeats, chat wrapping."""
import json
import random

from conftest import load_script


def _script():
    return load_script("train_demo_model")


def test_extra_stories_join_training_only(tmp_path):
    mod = _script()
    extra_file = tmp_path / "extra.jsonl"
    extra_file.write_text("\n".join(json.dumps(f"Once upon a time, a dog named Rex {i}.") for i in range(5)) + "\n\n")
    extra = mod.load_extra([extra_file])
    assert len(extra) == 5
    real = [f"Once upon a time, a cat named Tom {i}." for i in range(20)]
    train, val = mod.make_documents(real, 0.1, 0.0, seed=0, extra=extra, real_repeat=2)
    assert val == real[-2:]  # validation: held-out real stories only, never extra ones
    assert len(train) == 2 * 18 + 5 and set(extra) <= set(train)


def test_chat_wrapping_names_a_noun_of_the_story():
    mod = _script()
    text = mod.as_chat("Once upon a time, a dog ran to the park. The dog was happy.", random.Random(0))
    assert text.startswith("User: ") and "\nAssistant: Once upon a time" in text
    assert "a dog" in text.split("\n")[0] or text.startswith("User: Tell me a story.")
