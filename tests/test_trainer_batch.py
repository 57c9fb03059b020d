"""Rollout batches: packing and padding into model inputs, varlen attention, the planning of micro-batches."""

import pytest
import torch

import torch.nn.functional as F

from tlt.trainer import Rollouts, collate, pack, plan_micro_batches
from tlt.trainer.varlen import plan, varlen_attention  # the HF adapter of tlt.models.varlen


def test_collate_lays_out_prompt_and_response_with_the_positions_that_predict_each_response_token():
    r = Rollouts([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], [1.0, -1.0],
                 old_logprobs=[[-0.5, -0.6], [-0.1, -0.2, -0.3]], response_masks=[[1, 1], [1, 0, 1]])
    b = collate(r, [1, 0], pad_id=0)
    assert b.input_ids.tolist() == [[4, 7, 8, 9, 0], [1, 2, 3, 5, 6]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    # logits at position p predict token p + 1: response j of a prompt of length P is predicted at P + j - 1
    assert b.predict_at.tolist() == [[0, 1, 2], [2, 3, 0]]
    assert b.response_ids.tolist() == [[7, 8, 9], [5, 6, 0]]
    assert b.mask.tolist() == [[1, 0, 1], [1, 1, 0]]
    assert torch.allclose(b.old_logprobs, torch.tensor([[-0.1, -0.2, -0.3], [-0.5, -0.6, 0.0]]))
    assert b.advantages.tolist() == [-1.0, 1.0]
    assert b.valid.tolist() == [[True, True, True], [True, True, False]]


def test_pack_lays_sequences_back_to_back_with_positions_restarting_and_no_padding():
    r = Rollouts([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], [1.0, -1.0],
                 old_logprobs=[[-0.5, -0.6], [-0.1, -0.2, -0.3]], response_masks=[[1, 1], [1, 0, 1]])
    b = pack(r, [1, 0], pad_id=0)
    assert b.input_ids.tolist() == [[4, 7, 8, 9, 1, 2, 3, 5, 6]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 4]]
    assert b.attention_mask is None
    # the second sequence starts at 4: its responses are predicted at 4 + 3 - 1 = 6 and 7
    assert b.predict_at.tolist() == [[0, 1, 2], [6, 7, 0]]
    assert b.response_ids.tolist() == [[7, 8, 9], [5, 6, 0]]
    assert b.mask.tolist() == [[1, 0, 1], [1, 1, 0]]
    assert b.valid.tolist() == [[True, True, True], [True, True, False]]
    assert torch.allclose(b.old_logprobs, torch.tensor([[-0.1, -0.2, -0.3], [-0.5, -0.6, 0.0]]))


def test_varlen_attention_of_a_packed_row_equals_each_sequence_attended_alone():
    torch.manual_seed(0)
    lengths = [7, 1, 30, 29, 12, 25, 3]  # several buckets, a bucket with padding, a length-1 sequence
    heads, kv_heads, dim = 4, 2, 8
    q = torch.randn(1, heads, sum(lengths), dim)
    k, v = torch.randn(2, 1, kv_heads, sum(lengths), dim)
    out, _ = varlen_attention(None, q, k, v, None, scaling=0.3, tlt_varlen=plan(lengths))
    assert out.shape == (1, sum(lengths), heads, dim)
    start = 0
    for n in lengths:
        s = slice(start, start + n)
        alone = F.scaled_dot_product_attention(q[:, :, s], k[:, :, s], v[:, :, s], is_causal=True, scale=0.3,
                                               enable_gqa=True)
        assert torch.allclose(out[0, s], alone[0].transpose(0, 1), atol=1e-6)
        start += n


def test_micro_batches_by_token_budget_group_the_longest_sequences_first():
    # longest first: 100 (1), 90 (3), 7 (2), 5 (0); a chunk grows while rows x its first length <= 200
    assert plan_micro_batches([5, 100, 7, 90], max_tokens=200) == [[1, 3], [2, 0]]
    # a sequence longer than the budget still gets a micro-batch of its own
    assert plan_micro_batches([300, 5], max_tokens=200) == [[0], [1]]


def test_packed_micro_batches_by_token_budget_count_real_tokens():
    # packed: 100 + 90 + 7 = 197 fits in 200 (padded, 3 x 100 would not), 5 more would not
    assert plan_micro_batches([5, 100, 7, 90], max_tokens=200, packed=True) == [[1, 3, 2], [0]]
    assert plan_micro_batches([5, 100, 7, 90, 60], max_tokens=160, packed=True) == [[1], [3, 4, 2], [0]]


def test_micro_batches_by_count_and_forced_count():
    assert plan_micro_batches([5, 100, 7, 90, 6], max_sequences=2) == [[1, 3], [2, 4], [0]]
    assert plan_micro_batches([5, 100, 7, 90, 6]) == [[1, 3, 2, 4, 0]]
    assert plan_micro_batches([5, 100, 7, 90, 6], count=2) == [[1, 3, 2], [4, 0]]
    with pytest.raises(ValueError, match="micro-batches"):
        plan_micro_batches([5, 6], count=3)
