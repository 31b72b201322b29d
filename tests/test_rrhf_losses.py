"""RRHF losses (Yuan et al. 2023; docs/methods/rrhf.md) on literal tensors; every expected value is worked out by hand
in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from feedbackflow.losses.rrhf import (
    best_response_index,
    length_normalised_scores,
    response_logprob_sums,
    response_logprobs,
    rrhf_loss,
    rrhf_rank_loss,
    rrhf_sft_loss,
    token_logprobs,
)

NAN, INF = float("nan"), float("inf")


def test_token_logprobs_are_aligned_with_the_input_ids():
    # vocabulary of 2, logits [0, ln 3] everywhere: p(0) = 1/4, p(1) = 3/4 at every position
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 3])
    ids = torch.tensor([[1, 0, 1]])
    # position 0 has no prediction (0); position 1 predicts id 0: ln(1/4); position 2 predicts id 1: ln(3/4)
    expected = torch.tensor([[0.0, math.log(0.25), math.log(0.75)]])
    torch.testing.assert_close(token_logprobs(logits, ids), expected)


def test_response_logprobs_use_the_true_response_length_not_the_padded_width():
    # padded batch of width 5: response A has 2 tokens (positions 1-2), response B has 4 (positions 1-4)
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 5] * 2)  # p(0) = 1/4, p(1) = 3/4 everywhere
    ids = torch.tensor([[1, 1, 0, 1, 1], [0, 1, 1, 1, 0]])  # A's positions 3-4 are padding
    response_mask = torch.tensor([[False, True, True, False, False], [False, True, True, True, True]])
    sums, lengths = response_logprobs(logits, ids, response_mask)
    # A: ln(3/4) + ln(1/4) = ln(3/16); B: 3 ln(3/4) + ln(1/4) = ln(27/256)
    torch.testing.assert_close(sums, torch.tensor([math.log(3 / 16), math.log(27 / 256)]))
    assert lengths.tolist() == [2, 4]  # not 4 (the padded response width) for A
    p = length_normalised_scores(sums, lengths)
    # A: ln(3/16) / 2 = -0.83698 (the padded-length bug would give ln(3/16) / 4 = -0.41849); B: ln(27/256) / 4
    torch.testing.assert_close(p, torch.tensor([math.log(3 / 16) / 2, math.log(27 / 256) / 4]))


def test_response_logprob_sums_ignore_garbage_in_padded_positions():
    token_logp = torch.tensor([[0.0, -1.0, -2.0, -7.0, -9.0], [0.0, -0.5, -1.5, -1.0, -1.0]])
    garbage = token_logp.clone()
    garbage[0, 3:] = torch.tensor([123.0, -456.0])
    mask = torch.tensor([[False, True, True, False, False], [False, True, True, True, True]])
    for values in (token_logp, garbage):
        sums, lengths = response_logprob_sums(values, mask)
        # A: -1 - 2 = -3 over 2 tokens; B: -0.5 - 1.5 - 1 - 1 = -4 over 4 tokens
        torch.testing.assert_close(sums, torch.tensor([-3.0, -4.0]))
        assert lengths.tolist() == [2, 4]
        # p: -3 / 2 = -1.5, -4 / 4 = -1.0
        torch.testing.assert_close(length_normalised_scores(sums, lengths), torch.tensor([-1.5, -1.0]))


def test_position_zero_cannot_be_a_response_token():
    with pytest.raises(ValueError, match="position 0"):
        response_logprob_sums(torch.zeros(1, 3), torch.tensor([[True, True, False]]))


def test_length_penalty_other_than_one():
    sums, lengths = torch.tensor([-3.0, -4.0]), torch.tensor([2, 4])
    # penalty 2: -3 / 2^2 = -0.75, -4 / 4^2 = -0.25
    torch.testing.assert_close(length_normalised_scores(sums, lengths, 2.0), torch.tensor([-0.75, -0.25]))
    # penalty 0.5: -3 / sqrt(2) = -2.12132, -4 / sqrt(4) = -2.0
    torch.testing.assert_close(length_normalised_scores(sums, lengths, 0.5), torch.tensor([-3 / math.sqrt(2), -2.0]))
    # penalty 0: the plain sums
    torch.testing.assert_close(length_normalised_scores(sums, lengths, 0.0), sums)


def test_rank_loss_sums_hinges_over_pairs_with_lower_reward_first():
    p = torch.tensor([[-1.0, -2.0, -0.5]])
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    per_query, total = rrhf_rank_loss(p, rewards, mask)
    # pairs r_i < r_j: (0,1) max(0, -1 - (-2)) = 1; (0,2) max(0, -1 - (-0.5)) = 0; (1,2) max(0, -2 - (-0.5)) = 0
    torch.testing.assert_close(per_query, torch.tensor([1.0]))
    torch.testing.assert_close(total, torch.tensor(1.0))


def test_rank_loss_is_zero_when_the_scores_are_ordered_like_the_rewards():
    p = torch.tensor([[-3.0, -2.0, -1.0]])
    rewards = torch.tensor([[0.1, 0.5, 0.9]])
    # every pair r_i < r_j has p_i < p_j: max(0, negative) = 0
    per_query, total = rrhf_rank_loss(p, rewards, torch.ones(1, 3, dtype=torch.bool))
    assert per_query.tolist() == [0.0] and total.item() == 0.0


def test_rank_loss_excludes_ties():
    p = torch.tensor([[-1.0, -2.0, -3.0]])
    rewards = torch.tensor([[1.0, 1.0, 2.0]])
    per_query, _ = rrhf_rank_loss(p, rewards, torch.ones(1, 3, dtype=torch.bool))
    # (0,1) is a tie: excluded (it would add |(-1) - (-2)| = 1); (0,2): max(0, -1 + 3) = 2; (1,2): max(0, -2 + 3) = 1
    torch.testing.assert_close(per_query, torch.tensor([3.0]))


def test_rank_loss_ignores_padding_whatever_it_holds():
    mask = torch.tensor([[True, True, False]])
    # only pair: r_0 = 1 < r_1 = 2, max(0, p_0 - p_1) = max(0, -1 - (-2)) = 1
    for pad_p, pad_r in ((0.0, 0.0), (100.0, -100.0), (NAN, INF), (-INF, NAN)):
        p = torch.tensor([[-1.0, -2.0, pad_p]], requires_grad=True)
        rewards = torch.tensor([[1.0, 2.0, pad_r]])
        per_query, total = rrhf_rank_loss(p, rewards, mask)
        torch.testing.assert_close(per_query, torch.tensor([1.0]))
        total.backward()
        # d/dp_0 = +1, d/dp_1 = -1, and no gradient (not even nan) into the padded slot
        torch.testing.assert_close(p.grad, torch.tensor([[1.0, -1.0, 0.0]]))


def test_a_batch_of_queries_gives_the_single_query_losses():
    # query A: 3 responses; query B: 2 responses and one padded slot
    p = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, 42.0]])
    rewards = torch.tensor([[1.0, 2.0, 3.0], [2.0, 1.0, -7.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    per_query, total = rrhf_rank_loss(p, rewards, mask)
    # A: 1 (see test_rank_loss_sums_hinges_over_pairs_with_lower_reward_first)
    # B: only pair r_1 = 1 < r_0 = 2: max(0, p_1 - p_0) = max(0, -1 - (-3)) = 2
    torch.testing.assert_close(per_query, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(total, torch.tensor(3.0))  # the batch sum; a trainer divides it by 2 queries
    single_a, _ = rrhf_rank_loss(p[:1], rewards[:1], mask[:1])
    single_b, _ = rrhf_rank_loss(p[1:, :2], rewards[1:, :2], mask[1:, :2])
    torch.testing.assert_close(per_query, torch.cat([single_a, single_b]))


def test_best_response_is_the_first_of_tied_best_scores_and_never_padding():
    rewards = torch.tensor([[1.0, 3.0, 3.0], [2.0, 1.0, 99.0], [-5.0, -4.0, -4.5]])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, True, True]])
    # row 0: tie 3 = 3 at 1 and 2 -> 1; row 1: 99 is padding -> 0 (score 2); row 2: -4 at 1
    assert best_response_index(rewards, mask).tolist() == [1, 0, 1]


def test_sft_loss_is_the_mean_token_nll_of_the_best_response_only():
    # token NLL rows of the best response of two queries, padded to width 5 (garbage in the padding)
    token_nll = torch.tensor([[0.0, 1.0, 3.0, 99.0, 99.0], [0.0, 0.5, 0.5, 0.5, 1.5]])
    mask = torch.tensor([[False, True, True, False, False], [False, True, True, True, True]])
    per_query, total = rrhf_sft_loss(token_nll, mask)
    # query 0: (1 + 3) / 2 = 2 (not (1 + 3) / 4 or 5); query 1: (0.5 + 0.5 + 0.5 + 1.5) / 4 = 0.75
    torch.testing.assert_close(per_query, torch.tensor([2.0, 0.75]))
    torch.testing.assert_close(total, torch.tensor(2.75))
    single, _ = rrhf_sft_loss(token_nll[1:], mask[1:])
    torch.testing.assert_close(single, torch.tensor([0.75]))


def test_total_loss_weights_the_ranking_term():
    # 1 * 2 + 0.75 = 2.75; 0.5 * 2 + 0.75 = 1.75; 0 * 2 + 0.75 = 0.75
    assert rrhf_loss(torch.tensor(2.0), torch.tensor(0.75)).item() == 2.75
    assert rrhf_loss(torch.tensor(2.0), torch.tensor(0.75), rrhf_weight=0.5).item() == 1.75
    assert rrhf_loss(torch.tensor(2.0), torch.tensor(0.75), rrhf_weight=0.0).item() == 0.75
