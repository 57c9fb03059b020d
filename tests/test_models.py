"""The torch decoder matches transformers and its KV cache behaves like a fresh prefill."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from tlt.models import ConfigError, ModelConfig, load_model, random_model, save_model

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2)


def _hf_folder(tmp_path, family):
    torch.manual_seed(0)
    if family == "llama":
        hf = LlamaForCausalLM(LlamaConfig(**TINY, rope_theta=5000.0))
    elif family == "llama_tied":
        hf = LlamaForCausalLM(LlamaConfig(**TINY, tie_word_embeddings=True))
    else:
        hf = Qwen2ForCausalLM(Qwen2Config(**TINY, rope_theta=20000.0, tie_word_embeddings=True))
    hf.eval().save_pretrained(tmp_path)
    return hf


@pytest.mark.parametrize("family", ["llama", "llama_tied", "qwen2"])
def test_logits_match_transformers_on_the_same_weights(tmp_path, family):
    hf = _hf_folder(tmp_path, family)
    ours = load_model(tmp_path)
    ids = torch.randint(0, TINY["vocab_size"], (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert (expected - got).abs().max().item() <= 1e-4


def test_qwen2_projections_carry_bias_and_llama_ones_do_not(tmp_path):
    _hf_folder(tmp_path / "q", "qwen2")
    _hf_folder(tmp_path / "l", "llama")
    assert load_model(tmp_path / "q").model.layers[0].self_attn.q_proj.bias is not None
    assert load_model(tmp_path / "l").model.layers[0].self_attn.q_proj.bias is None


def test_save_then_load_round_trips_weights_and_config(tmp_path):
    cfg = ModelConfig(**TINY, rope_theta=1234.0, tie_word_embeddings=True, model_type="qwen2")
    model = random_model(cfg, seed=3)
    save_model(model, tmp_path)
    again = load_model(tmp_path)
    assert again.config == cfg
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))


def test_unsupported_rope_scaling_is_refused_with_the_field_named(tmp_path):
    raw = {**TINY, "model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="rope"):
        load_model(tmp_path)


def _model(dtype=torch.float64):
    return random_model(ModelConfig(**TINY), seed=5, dtype=dtype, init_std=0.2)


def test_incremental_decoding_with_cache_matches_full_forward_for_ragged_batch():
    model = _model()
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 97, (n,), generator=gen) for n in (5, 12, 8)]
    prompt_lens = [3, 7, 8]
    cache = model.new_cache(num_slots=6, capacity=32)
    slots = torch.tensor([4, 1, 2])
    # ragged prefill, right padded
    width = max(prompt_lens)
    ids = torch.zeros(3, width, dtype=torch.long)
    for b, (s, n) in enumerate(zip(seqs, prompt_lens)):
        ids[b, :n] = s[:n]
    pos = torch.arange(width).expand(3, width)
    with torch.no_grad():
        h = model.hidden(ids, pos, cache=cache, slots=slots)
        cache.advance(slots, torch.tensor(prompt_lens))
        got = {b: [h[b, : prompt_lens[b]]] for b in range(3)}
        # decode the rest one token at a time (rows that ran out re-feed a dummy, not committed)
        for step in range(max(len(s) - n for s, n in zip(seqs, prompt_lens))):
            cur = torch.tensor([s[min(n + step, len(s) - 1)] for s, n in zip(seqs, prompt_lens)])
            lens = cache.lengths[slots].clone()
            h = model.hidden(cur[:, None], lens[:, None], cache=cache, slots=slots)
            live = torch.tensor([n + step < len(s) for s, n in zip(seqs, prompt_lens)])
            cache.advance(slots, live.long())
            for b in range(3):
                if live[b]:
                    got[b].append(h[b])
        for b, s in enumerate(seqs):
            full = model.hidden(s[None])[0]
            assert torch.allclose(torch.cat(got[b]), full, atol=1e-10)


def _tree():
    # node 0 = root; parents describe a small tree, depth by parent chain
    parents = [-1, 0, 0, 1, 1, 2, 3]
    depth = [0, 1, 1, 2, 2, 2, 3]
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parents[j]
    return torch.tensor(depth), mask


def test_cache_after_tree_verification_equals_fresh_prefill_of_accepted_path():
    model = _model()
    gen = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 97, (2, 6), generator=gen)
    tree_tokens = torch.randint(0, 97, (2, 7), generator=gen)
    depth, mask = _tree()
    paths = [[0, 1, 3, 6], [0, 2]]  # accepted root-to-node paths per row
    cache = model.new_cache(num_slots=2, capacity=32)
    slots = torch.tensor([1, 0])
    with torch.no_grad():
        model.hidden(prompt, cache=cache, slots=slots)
        cache.advance(slots, 6)
        tree_h = model.hidden(tree_tokens, 6 + depth.expand(2, -1), cache=cache, slots=slots,
                              tail_mask=mask.expand(2, -1, -1))
        offsets = torch.tensor([p + [0] * (4 - len(p)) for p in paths])
        cache.keep(slots, offsets, torch.tensor([len(p) for p in paths]))
        assert cache.lengths[slots].tolist() == [10, 8]
        for b, path in enumerate(paths):
            seq = torch.cat([prompt[b], tree_tokens[b, path]])
            fresh = model.new_cache(num_slots=1, capacity=32)
            h = model.hidden(seq[None], cache=fresh, slots=torch.tensor([0]))
            n = len(seq)
            slot = slots[b]
            assert torch.allclose(cache.k[:, slot, :n], fresh.k[:, 0, :n], atol=1e-12)
            assert torch.allclose(cache.v[:, slot, :n], fresh.v[:, 0, :n], atol=1e-12)
            # hidden states of the tree nodes on the path equal the prefill's
            assert torch.allclose(tree_h[b, path], h[0, 6:], atol=1e-10)


def test_bfloat16_model_runs_and_stays_close_to_float32():
    m32 = _model(torch.float32)
    m16 = random_model(ModelConfig(**TINY), seed=5, dtype=torch.bfloat16, init_std=0.2)
    ids = torch.randint(0, 97, (1, 8))
    with torch.no_grad():
        a, b = m32(ids), m16(ids).float()
    assert b.dtype == torch.float32 and (a - b).abs().max() < 0.25 * a.abs().max()
