"""Shared test models for the engine tests: a near-bigram float64 target with peaked
distributions and an EAGLE drafter that follows its bigram part (acceptance > 1.5)."""

import torch

from tlt.engine import Request
from tlt.models import ModelConfig, random_model
from tlt.models.drafter import EagleDrafter

CFG = ModelConfig(vocab_size=48, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=500.0)
STOP = 7


def near_bigram_target():
    """A float64 target whose next token depends mostly on the current one (attention
    and MLP outputs scaled down but not off, so the KV cache still matters), with peaked
    distributions so that sampled text repeats enough for the n-gram drafter too."""
    model = random_model(CFG, seed=11, dtype=torch.float64, init_std=0.3)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.005)
            layer.mlp.down_proj.weight.mul_(0.005)
        model.lm_head.weight.mul_(6.0)  # peaked next-token distributions, as a trained model's
    return model


def bigram_drafter(target):
    """Known-high-acceptance EAGLE drafter: fc passes the token embedding through and the
    layer's outputs are small, so drafts follow the target's bigram part."""
    drafter = EagleDrafter.for_target(target, seed=3, init_std=0.05)
    with torch.no_grad():
        h = CFG.hidden_size
        drafter.fc.weight.zero_()
        drafter.fc.weight[:, :h] = torch.eye(h, dtype=drafter.fc.weight.dtype)
    return drafter


def mixed_prompts(n=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        if i % 2:  # repetitive prompts give the n-gram drafter something to find
            unit = torch.randint(8, 48, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g).tolist()
            out.append((unit * 4)[: int(torch.randint(4, 12, (1,), generator=g))])
        else:
            out.append(torch.randint(0, 48, (int(torch.randint(1, 10, (1,), generator=g)),), generator=g).tolist())
    return out


def mixed_requests(prompts, **kw):
    # varied max lengths so some sequences end by length, others at the stop token
    # groups of 4 as in GRPO: the n-gram drafter also searches earlier responses of the group
    return [Request(prompt=p, max_tokens=20 + (i * 7) % 41, stop_ids=[STOP], id=i, group=i // 4, seed=1000 + i, **kw)
            for i, p in enumerate(prompts)]
