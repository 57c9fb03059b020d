"""EAGLE drafter: the folder layout vLLM/SGLang load, round trips, shared frozen head."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tlt.models import ConfigError, ModelConfig, random_model
from tlt.models.drafter import EagleDrafter

CFG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, model_type="qwen2")


def test_saved_folder_has_the_eagle_layout_vllm_and_sglang_load(tmp_path):
    target = random_model(CFG)
    EagleDrafter.for_target(target).save(tmp_path)
    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert "fc.weight" in names and "fc.bias" in names
    assert "layers.0.self_attn.q_proj.weight" in names and "layers.0.post_attention_layernorm.weight" in names
    assert not any(n.startswith(("model.", "lm_head", "embed_tokens", "norm.")) for n in names)
    assert not any("input_layernorm" in n for n in names)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert (cfg["model_type"], cfg["num_hidden_layers"], cfg["architectures"]) == ("llama", 1, ["LlamaForCausalLM"])
    assert cfg["hidden_size"] == 32 and cfg["vocab_size"] == 50


def test_load_round_trips_predictions_and_shares_the_target_head(tmp_path):
    target = random_model(CFG)
    drafter = EagleDrafter.for_target(target, seed=4)
    drafter.save(tmp_path)
    again = EagleDrafter.load(tmp_path, target)
    ids = torch.randint(0, 50, (2, 6))
    h = target.hidden(ids)
    assert torch.equal(again.features(ids, h), drafter.features(ids, h))
    assert not any(p is target.lm_head.weight for p in again.parameters())
    assert again.logits(h).shape == (2, 6, 50)


def test_loss_trains_only_the_drafter():
    target = random_model(CFG)
    drafter = EagleDrafter.for_target(target)
    ids = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        h = target.hidden(ids)
    drafter.loss(ids, h).backward()
    assert drafter.fc.weight.grad is not None
    assert target.lm_head.weight.grad is None


def test_drafter_for_another_target_size_is_refused(tmp_path):
    EagleDrafter.for_target(random_model(CFG)).save(tmp_path)
    other = random_model(CFG.replace(hidden_size=64, head_dim=0))
    with pytest.raises(ConfigError, match="does not fit target"):
        EagleDrafter.load(tmp_path, other)
