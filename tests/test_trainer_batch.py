"""Rollout batches: padding into model inputs and the planning of micro-batches."""

import pytest
import torch

from tlt.trainer import Rollouts, collate, plan_micro_batches


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


def test_micro_batches_by_token_budget_group_the_longest_sequences_first():
    # longest first: 100 (1), 90 (3), 7 (2), 5 (0); a chunk grows while rows x its first length <= 200
    assert plan_micro_batches([5, 100, 7, 90], max_tokens=200) == [[1, 3], [2, 0]]
    # a sequence longer than the budget still gets a micro-batch of its own
    assert plan_micro_batches([300, 5], max_tokens=200) == [[0], [1]]


def test_micro_batches_by_count_and_forced_count():
    assert plan_micro_batches([5, 100, 7, 90, 6], max_sequences=2) == [[1, 3], [2, 4], [0]]
    assert plan_micro_batches([5, 100, 7, 90, 6]) == [[1, 3, 2, 4, 0]]
    assert plan_micro_batches([5, 100, 7, 90, 6], count=2) == [[1, 3, 2], [4, 0]]
    with pytest.raises(ValueError, match="micro-batches"):
        plan_micro_batches([5, 6], count=3)
