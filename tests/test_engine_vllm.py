"""vLLM backend: the config it hands vLLM (always), and a real run (CUDA + vLLM only)."""

import pytest
import torch

from tlt.engine import Request
from tlt.engine.vllm_backend import sampling_kwargs, speculative_config, vllm_available
from tlt.models import ModelConfig, random_model, save_model
from tlt.models.drafter import EagleDrafter


def test_speculative_config_points_vllm_at_an_eagle_drafter_folder(tmp_path):
    target = random_model(ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    EagleDrafter.for_target(target).save(tmp_path / "d")
    assert speculative_config(tmp_path / "d", 3) == {
        "method": "eagle", "model": str(tmp_path / "d"), "num_speculative_tokens": 3}
    assert speculative_config(None, 3) is None
    with pytest.raises(ValueError, match="drafter folder"):
        speculative_config(tmp_path / "missing", 3)


def test_sampling_params_mirror_the_request():
    kw = sampling_kwargs(Request(prompt=[1], max_tokens=9, stop_ids=[2], temperature=0.7, top_p=0.9, seed=5))
    assert (kw["max_tokens"], kw["stop_token_ids"], kw["temperature"], kw["top_p"], kw["seed"]) == (9, [2], 0.7, 0.9, 5)


@pytest.mark.gpu
@pytest.mark.skipif(not vllm_available(), reason="needs CUDA and vLLM")
def test_vllm_engine_generates_with_an_eagle_drafter_and_takes_weight_updates(tmp_path):
    from tlt.engine.vllm_backend import VLLMEngine

    cfg = ModelConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    target = random_model(cfg)
    save_model(target, tmp_path / "m")
    EagleDrafter.for_target(target).save(tmp_path / "d")
    engine = VLLMEngine(tmp_path / "m", drafter_dir=tmp_path / "d", num_speculative_tokens=2,
                        max_model_len=128, dtype="float32", skip_tokenizer_init=True)
    res = engine.generate([Request(prompt=[1, 2, 3], max_tokens=8, temperature=0.0)])[0]
    assert len(res.tokens) == 8
    engine.update_policy_weights({k: v.cuda() for k, v in target.state_dict().items()})
    engine.sleep(1)
    engine.wake()
    assert torch.cuda.is_available()
