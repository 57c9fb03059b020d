"""The KV cache is sized from spec.rollout.gpuMemoryUtilization: how many sequences fit a
device's memory, and a clear error naming the fields when the job's batch does not."""

import pytest
import torch

from tlt.engine.memory import GIB, KVMemoryError, fit_kv_memory, plan_kv_memory, slot_bytes
from tlt.engine.torch_engine import TorchEngine
from tlt.models.drafter import EagleDrafter
from tlt.models.shapes import random_on_device, shape_config


@pytest.fixture(scope="module")
def model():
    return random_on_device(shape_config("tiny"), "cpu", torch.float32)


def test_slot_bytes_are_what_the_engine_allocates(model):
    drafter = EagleDrafter.for_target(model)
    engine = TorchEngine(model, num_slots=3, max_model_len=100, drafter=drafter)
    allocated = sum(t.numel() * t.element_size() for t in (
        engine.cache.k, engine.cache.v, engine.dcache.k, engine.dcache.v, engine.hist, engine.seq, engine.out_lp))
    per, cap = slot_bytes(model, 100, drafter)
    assert cap == engine.cache.capacity
    assert per * (3 + 1) == allocated  # three slots and the scratch slot


def test_slots_that_fit_grow_with_the_utilization_and_shrink_with_the_length(model):
    device = 2 * GIB
    low = plan_kv_memory(model, 8, 1024, 0.3, device_bytes=device)
    high = plan_kv_memory(model, 8, 1024, 0.9, device_bytes=device)
    longer = plan_kv_memory(model, 8, 4096, 0.9, device_bytes=device)
    assert 0 < low.slots_fit < high.slots_fit
    assert longer.slots_fit < high.slots_fit
    assert high.budget_bytes == int(0.9 * device)
    used = high.weight_bytes + high.activation_bytes + high.slots_fit * high.bytes_per_slot
    assert used <= high.budget_bytes < used + high.bytes_per_slot
    assert high.tokens_fit == high.slots_fit * high.tokens_per_slot


def test_a_batch_that_does_not_fit_is_refused_naming_the_fields(model):
    plan = fit_kv_memory(model, 4, 1024, 0.9, device_bytes=GIB)
    assert plan.slots_fit >= 4
    with pytest.raises(KVMemoryError) as err:
        fit_kv_memory(model, 4096, 4096, 0.5, device_bytes=GIB)
    text = str(err.value)
    for field in ("spec.rollout.gpuMemoryUtilization=0.5", "rollout.maxBatchSize=4096", "algorithm.maxResponseTokens"):
        assert field in text
    with pytest.raises(ValueError, match="gpuMemoryUtilization"):
        plan_kv_memory(model, 4, 1024, 1.5, device_bytes=GIB)
