"""Layer-by-layer calibration: hidden states and per-linear statistics equal the full HF model's."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edgeslim.convert import calibrate as C  # noqa: E402
from edgeslim.convert.arch import arch_for_config  # noqa: E402
from edgeslim.convert.hf import read_config  # noqa: E402
from edgeslim.errors import InputError  # noqa: E402
from edgeslim.tables import TensorNames  # noqa: E402

from conftest import GEMMA3, GEMMA3_DEFAULT  # noqa: E402

ATOL = 1e-5


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _ids(folder, n=200, seed=0):
    vocab = read_config(folder)["vocab_size"]
    return np.random.default_rng(seed).integers(0, vocab, n)


def _full_model(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _reference_stats(model, folder, seqs, edit=None):
    """Hooks on every linear of the full model: {GGUF name: (mean x^2, 2 X^T X / n)}."""
    arch = arch_for_config(read_config(folder))
    if edit is not None:
        edit(model)
    sums: dict[str, list] = {}

    def hook(name):
        def fn(_m, args, _o):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            s = sums.setdefault(name, [0, 0.0, 0.0])
            s[0] += x.shape[0]
            s[1] = s[1] + (x * x).sum(0)
            s[2] = s[2] + x.T @ x
        return fn

    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            key = arch.gguf_name(f"{name}.weight") or TensorNames.TOKEN_EMBD  # tied head
            handles.append(mod.register_forward_hook(hook(key)))
    with torch.no_grad():
        for s in seqs:
            model(torch.from_numpy(s)[None])
    for h in handles:
        h.remove()
    return {k: ((s1 / n).numpy(), (2 * s2 / n).numpy()) for k, (n, s1, s2) in sums.items()}


@pytest.mark.parametrize("kind,tok,over", [
    ("llama", "spm", {}), ("qwen2", "bpe-qwen2", {}), ("mistral", "spm", {}),
    ("mistral", "spm", {"sliding_window": 16}),  # window shorter than the sequences
    ("qwen2", "bpe-qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}),  # mixed layers
    ("gemma3", "spm", GEMMA3), ("gemma3", "spm", GEMMA3_DEFAULT),  # scaled embedding, per-layer-type RoPE
    ("phi3", "spm", {"hidden_size": 192, "num_attention_heads": 2, "num_key_value_heads": 2}),  # fused qkv, gate|up
], ids=["llama", "qwen2", "mistral", "mistral-window16", "qwen2-mixed-window16", "gemma3", "gemma3-default", "phi3"])
def test_layerwise_hidden_states_equal_full_model(tiny_hf_model, kind, tok, over):
    folder = tiny_hf_model(kind, tok, **over)
    ids = _ids(folder)
    got = C.hidden_states(folder, ids, n_tokens=200, seq_len=64)
    seqs = C.calib_token_ids(folder, ids, 200, 64)
    assert [len(s) for s in seqs] == [64, 64, 64, 8]
    model = _full_model(folder)
    n_layers = model.config.num_hidden_layers
    assert len(got) == n_layers + 2  # embeddings, every layer, final norm
    last = {}
    model.model.layers[-1].register_forward_hook(lambda m, a, o: last.update(out=o[0] if isinstance(o, tuple) else o))
    for k, s in enumerate(seqs):
        with torch.no_grad():
            ref = model(torch.from_numpy(s)[None], output_hidden_states=True).hidden_states
        # transformers returns [embeddings, layer 0 .. layer n-2 outputs, final-norm output]
        for j in range(n_layers):
            np.testing.assert_allclose(got[j][k], ref[j][0].numpy(), atol=ATOL, rtol=0)
        np.testing.assert_allclose(got[n_layers][k], last["out"][0].numpy(), atol=ATOL, rtol=0)
        np.testing.assert_allclose(got[n_layers + 1][k], ref[-1][0].numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind,tok,tied", [("llama", "spm", False), ("qwen2", "bpe-qwen2", True), ("gemma3", "spm", True)])
def test_stats_equal_hooks_on_full_model(tiny_hf_model, kind, tok, tied):
    folder = tiny_hf_model(kind, tok, **{**(GEMMA3_DEFAULT if kind == "gemma3" else {}), "tie_word_embeddings": tied})
    ids = _ids(folder, seed=1)
    st = C.collect(folder, ids, n_tokens=200, seq_len=64, want_hessian=True)
    ref = _reference_stats(_full_model(folder), folder, C.calib_token_ids(folder, ids, 200, 64))
    head = TensorNames.TOKEN_EMBD if tied else TensorNames.OUTPUT
    assert head in st.importance and set(st.importance) == set(ref) == set(st.hessian)
    assert st.n_tokens == 200 and st.n_sequences == 4
    for name, (imp, hes) in ref.items():
        assert st.importance[name].dtype == np.float32 and st.hessian[name].dtype == np.float32
        np.testing.assert_allclose(st.importance[name], imp, rtol=1e-4, atol=1e-6 * imp.max(), err_msg=name)
        np.testing.assert_allclose(st.hessian[name], hes, rtol=1e-4, atol=1e-5 * np.abs(hes).max(), err_msg=name)
        np.testing.assert_allclose(np.diag(st.hessian[name]), 2 * st.importance[name], rtol=1e-4)
    # linears fed the same tensor share one Hessian array
    assert st.hessian["blk.0.attn_q.weight"] is st.hessian["blk.0.attn_v.weight"]
    assert st.hessian["blk.1.ffn_gate.weight"] is st.hessian["blk.1.ffn_up.weight"]
    assert st.hessian["blk.1.ffn_up.weight"] is not st.hessian["blk.1.attn_q.weight"]
    assert st.hessian["blk.0.ffn_down.weight"].shape == (512, 512)


def test_importance_only_has_no_hessian(tiny_hf_model):
    folder = tiny_hf_model("llama", "spm")
    st = C.collect(folder, _ids(folder), n_tokens=100, seq_len=50)
    assert st.hessian is None and st.importance["blk.0.attn_q.weight"].shape == (256,)
    assert all((v >= 0).all() and v.any() for v in st.importance.values())


def test_released_weights_are_replaced_one_by_one(tiny_hf_model):
    """release + replace (the GPTQ writer's way, one tensor at a time) gives the same statistics
    as returning a dict; a released weight left unreplaced is an error, not a silent zero."""
    folder = tiny_hf_model("llama", "spm")
    arch = arch_for_config(read_config(folder))
    sd = {k: v.numpy().copy() for k, v in _full_model(folder).state_dict().items()}
    names = ("blk.0.attn_q.weight", "blk.0.ffn_down.weight")
    changed = {g: np.round(arch.transform(g, sd[arch.hf_name(g)]) * 50) / 50 for g in names}
    ids = _ids(folder, seed=2)

    def by_dict(stats):
        return changed if stats.index == 0 else None

    def one_by_one(stats):
        if stats.index != 0:
            return None
        stats.release(list(names))
        for g in names:
            stats.replace(g, changed[g].copy())
        return True

    a = C.collect(folder, ids, n_tokens=128, seq_len=64, want_hessian=True, on_layer=by_dict)
    b = C.collect(folder, ids, n_tokens=128, seq_len=64, want_hessian=True, on_layer=one_by_one)
    for name in a.importance:
        np.testing.assert_allclose(b.importance[name], a.importance[name], rtol=1e-6, err_msg=name)

    def forgets(stats):
        if stats.index == 0:
            stats.release(list(names))
            stats.replace(names[0], changed[names[0]].copy())
            return True
        return None

    with pytest.raises(ValueError, match="down_proj.*never replaced"):
        C.collect(folder, ids, n_tokens=128, seq_len=64, want_hessian=True, on_layer=forgets)


def test_on_layer_weights_feed_the_next_layer(tiny_hf_model):
    """Weights returned by on_layer (GGUF layout, Q/K rows permuted for llama) replace the layer's."""
    folder = tiny_hf_model("llama", "spm")
    arch = arch_for_config(read_config(folder))
    model = _full_model(folder)
    sd = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    changed = {}
    for gname in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_down.weight"):
        w = arch.transform(gname, sd[arch.hf_name(gname)])
        changed[gname] = np.round(w * 50) / 50  # a crude "quantization"
    seen = []

    def on_layer(stats):
        seen.append((stats.index, sorted(stats.hessian)))
        return changed if stats.index == 0 else None

    ids = _ids(folder, seed=2)
    st = C.collect(folder, ids, n_tokens=128, seq_len=64, want_hessian=True, on_layer=on_layer)
    assert st.hessian is None  # handed to on_layer, not kept
    assert [i for i, _ in seen] == [0, 1, 2] and seen[2][1] == [TensorNames.OUTPUT]

    def edit(m):
        with torch.no_grad():
            for gname, w in changed.items():
                m.get_parameter(arch.hf_name(gname)).copy_(torch.from_numpy(arch.untransform(gname, w)))

    ref = _reference_stats(model, folder, C.calib_token_ids(folder, ids, 128, 64), edit)
    plain = C.collect(folder, ids, n_tokens=128, seq_len=64)
    for name in ("blk.1.attn_q.weight", "blk.1.ffn_down.weight", TensorNames.OUTPUT):
        np.testing.assert_allclose(st.importance[name], ref[name][0], rtol=1e-4, atol=1e-6 * ref[name][0].max())
        assert not np.allclose(plain.importance[name], ref[name][0], rtol=1e-3)  # the edit mattered
    # layer 0's own inputs are unaffected by its replacement
    np.testing.assert_allclose(st.importance["blk.0.attn_q.weight"], plain.importance["blk.0.attn_q.weight"])


@pytest.mark.parametrize("kind,tok,prefix_token", [("llama", "spm", "<s>"), ("qwen2", "bpe-qwen2", "<|begin_of_text|>")])
def test_text_calibration(tiny_hf_model, kind, tok, prefix_token):
    folder = tiny_hf_model(kind, tok)
    seqs = C.calib_token_ids(folder, None, n_tokens=300, seq_len=128)  # the built-in text
    assert [len(s) for s in seqs] == [128, 128, 44]
    from transformers import AutoTokenizer

    bos = AutoTokenizer.from_pretrained(str(folder)).convert_tokens_to_ids(prefix_token)
    assert all(s[0] == bos for s in seqs) and all((s[1:] != bos).all() for s in seqs)
    st = C.collect(folder, ["One short text.", "And a second one, a little longer than the first."], n_tokens=64)
    assert st.n_sequences == 1 and 10 < st.n_tokens < 64


def test_default_text_and_bad_calibration_input(tmp_path, tiny_hf_model):
    text = C.read_calib_text()
    assert 20_000 < len(text.encode()) < 64_000 and text.count("\n\n") > 50  # ~7.5k tokens, many passages
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    for path in (empty, tmp_path / "missing.txt", tmp_path):
        with pytest.raises(InputError) as err:
            C.read_calib_text(path)
        assert "\n" not in str(err.value) and "--calib" in str(err.value)
    folder = tiny_hf_model("llama", "spm")
    with pytest.raises(InputError, match="outside the model's vocabulary"):
        C.collect(folder, [5, 6, 10 ** 6], n_tokens=16)
    with pytest.raises(InputError, match="empty"):
        C.calib_token_ids(folder, "   ", 64)
    with pytest.raises(InputError, match="positive"):
        C.calib_token_ids(folder, [1, 2, 3], 0)


def test_add_calib_args():
    import argparse

    p = argparse.ArgumentParser()
    C.add_calib_args(p)
    a = p.parse_args(["--calib", "x.txt", "--calib-tokens", "1000"])
    assert (a.calib, a.calib_tokens) == ("x.txt", 1000)
    assert p.parse_args([]).calib_tokens == C.DEFAULT_CALIB_TOKENS
