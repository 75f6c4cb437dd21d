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


def test_topic_samples_become_requests_for_their_topic(tmp_path):
    """sample_stories.py --topics lines ({topic, story}) are always chat, asking for that topic."""
    mod = _script()
    f = tmp_path / "topics.jsonl"
    f.write_text(json.dumps({"topic": "a kite", "story": "One day, a kite flew high."}) + "\n")
    (extra,) = mod.load_extra([f])
    train, _ = mod.make_documents(["Once upon a time, a cat sat."] * 3, 0.34, 0.0, seed=0, extra=[extra])
    (chat,) = [d for d in train if d.startswith("User: ")]
    assert "a kite" in chat.split("\n")[0] and chat.endswith("\nAssistant: One day, a kite flew high.")


def test_story_topic_is_named_early_and_specific():
    mod = _script()
    # the first specific noun of the first two sentences; generic girl/boy only as a last resort
    assert mod.story_noun("Once upon a time, there was a girl. She had a red kite. Then a dog came.") == "a kite"
    assert mod.story_noun("Once upon a time, there was a girl. She was happy. Then an owl came.") == "a girl"
    assert mod.story_noun("Once upon a time, Tim sat. He was happy. Then an owl came.") is None
