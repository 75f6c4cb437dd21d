"""The bundled demo model: shipped files, shape rules, and proof that it is trained."""
import json
import math
import os
import re

import pytest

from edgeslim.demo import DEMO_DIR

SHIPPED = ("config.json", "model.safetensors", "tokenizer.model", "tokenizer.json",
           "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
           "README.md")
HELD_IN = ("Once upon a time, there was a little girl named Lily. She loved to play "
           "outside in the park with her friends. One day, she saw a big red ball.")


@pytest.fixture(scope="module")
def hf():
    """(tokenizer, model) loaded offline with transformers from DEMO_DIR."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok = transformers.AutoTokenizer.from_pretrained(DEMO_DIR)
    model = transformers.AutoModelForCausalLM.from_pretrained(DEMO_DIR).float().eval()
    return tok, model


def _loss(model, ids) -> float:
    import torch

    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def test_files_present_and_under_8_mb():
    sizes = {name: (DEMO_DIR / name).stat().st_size for name in SHIPPED}
    assert sizes["model.safetensors"] > 1_000_000
    assert sum(sizes.values()) < 8_000_000, sizes


def test_shape_fits_k_quant_blocks():
    cfg = json.loads((DEMO_DIR / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert cfg["hidden_size"] % 256 == 0
    assert cfg["intermediate_size"] % 256 == 0
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    assert cfg["hidden_size"] == cfg["num_attention_heads"] * cfg["head_dim"]


def test_weights_are_fp16():
    safetensors = pytest.importorskip("safetensors")
    with safetensors.safe_open(DEMO_DIR / "model.safetensors", "np") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}
    assert dtypes == {"float16"}


def test_hf_tokenizer_matches_sentencepiece(hf):
    spm = pytest.importorskip("sentencepiece")
    tok, _ = hf
    sp = spm.SentencePieceProcessor(model_file=str(DEMO_DIR / "tokenizer.model"))
    text = HELD_IN + "\n\nThe end. 123 caf\u00e9"
    assert tok(text)["input_ids"] == [sp.bos_id(), *sp.encode(text)]
    assert (sp.bos_id(), sp.eos_id()) == (tok.bos_token_id, tok.eos_token_id)


def test_chat_template_ends_on_assistant(hf):
    tok, _ = hf
    text = tok.apply_chat_template([{"role": "user", "content": "Tell me a story."}],
                                   add_generation_prompt=True, tokenize=False)
    assert text == "<s>User: Tell me a story.\nAssistant:"


def test_loss_shows_training(hf):
    import torch

    tok, model = hf
    ids = tok(HELD_IN, return_tensors="pt").input_ids        # (1, T)
    loss = _loss(model, ids)
    vocab = model.config.vocab_size
    # An untrained model scores about log(vocab) = 7.6; the shipped one about 1.0, and
    # a 68-step (3-minute) run of the training script still 2.9.
    assert loss < 0.25 * math.log(vocab), loss
    shuffled = ids[:, torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(0))]
    assert _loss(model, shuffled) > loss + 2.0


def test_greedy_story_is_english(hf):
    tok, model = hf
    ids = tok("Once upon a time", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=40, do_sample=False)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    words = re.findall(r"[A-Za-z']+", text)
    assert len(words) >= 15, text
    assert {"a", "the", "was", "she", "he", "to", "and"} & {w.lower() for w in words}, text


def test_chat_follows_the_request(tmp_path):
    """Asked for a story about X (the `edgeslim chat` path: Model.chat, greedy), the demo model
    names X in its opening two sentences for most of 30 nouns, far above the rate at which
    its replies name another noun of the list (what a model blind to the request scores),
    and does not answer every request with the same story."""
    pytest.importorskip("torch")
    from conftest import load_script

    ev = load_script("eval_demo_chat")
    model = __import__("edgeslim").load(ev.demo_gguf(tmp_path), backend="numba")
    replies, _ = ev.ask(model, ev.NOUNS, max_tokens=60)
    s = ev.score(replies)
    assert s["hit_early"] >= 0.6 and s["hit_early"] >= s["chance_early"] + 0.4, s
    assert s["distinct"] >= 0.5, s
