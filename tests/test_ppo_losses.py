"""PPO rules as Fine-Grained RLHF's code applies them (docs/methods/fine_grained_rlhf.md) on literal tensors; every
expected value is worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from feedbackflow.losses.ppo import (
    AdaptiveKLController,
    FixedKLController,
    KLEarlyStop,
    clipped_policy_loss,
    clipped_value_loss,
    gae_advantages,
    kl_penalised_rewards,
    masked_mean,
    masked_moments,
    masked_var,
    masked_whiten,
    mean_of_minibatch_means,
    mean_response_length,
    minibatch_length_weight,
    minibatch_token_weights,
    ppo_loss,
    sequence_sums,
    weighted_ppo_losses,
)

NAN, INF = float("nan"), float("inf")

# Two right-padded responses: row 0 has 3 tokens, row 1 has 1 token (its padded slots hold garbage).
VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, INF]])
MASK = torch.tensor([[True, True, True], [True, False, False]])


def test_masked_mean_and_variance_ignore_padding_even_nan_and_inf():
    # valid values 1, 2, 3, 4: mean = 10 / 4 = 2.5; variance = (1 + 4 + 9 + 16) / 4 - 2.5^2 = 7.5 - 6.25 = 1.25
    torch.testing.assert_close(masked_mean(VALUES, MASK), torch.tensor(2.5))
    torch.testing.assert_close(masked_var(VALUES, MASK), torch.tensor(1.25))
    # a 0/1 float mask works the same
    torch.testing.assert_close(masked_var(VALUES, MASK.float()), torch.tensor(1.25))
    with pytest.raises(ValueError, match="selects no element"):
        masked_mean(VALUES, torch.zeros_like(MASK))


def fake_reduce(other_values: torch.Tensor, other_mask: torch.Tensor):
    """A stand-in for the all-reduce (sum) over 2 processes: adds the other process's (sum x, sum x^2, count)."""

    def reduce(sums: torch.Tensor) -> torch.Tensor:
        keep = other_mask.bool()
        x = torch.where(keep, other_values, torch.zeros_like(other_values)).double()
        return sums + torch.stack([x.sum(), (x * x).sum(), keep.sum().double()])

    return reduce


def test_statistics_across_processes_use_every_process_values():
    # this process holds 1, 2; the other holds 3, 4 (and a padded slot): global mean 2.5 and variance 1.25
    mine, my_mask = torch.tensor([[1.0, 2.0]]), torch.tensor([[True, True]])
    other, other_mask = torch.tensor([[3.0, 4.0, 99.0]]), torch.tensor([[True, True, False]])
    mean, var = masked_moments(mine, my_mask, reduce=fake_reduce(other, other_mask))
    torch.testing.assert_close(mean, torch.tensor(2.5))
    torch.testing.assert_close(var, torch.tensor(1.25))
    # locally alone: mean 1.5, variance (1 + 4) / 2 - 2.25 = 0.25
    torch.testing.assert_close(masked_var(mine, my_mask), torch.tensor(0.25))
    # whitening with the global statistics: (1 - 2.5) / sqrt(1.25) = -1.341641, (2 - 2.5) / sqrt(1.25) = -0.447214
    whitened = masked_whiten(mine, my_mask, reduce=fake_reduce(other, other_mask))
    torch.testing.assert_close(whitened, torch.tensor([[-1.341641, -0.447214]]), atol=1e-6, rtol=0)


def test_whitening_with_and_without_the_mean_shift():
    # mean 2.5, sigma = sqrt(1.25) = 1.118034 (the 1e-8 in sqrt(var + 1e-8) changes nothing at this precision)
    # shifted (advantages): (x - 2.5) / 1.118034 = -1.341641, -0.447214, 0.447214, 1.341641
    shifted = masked_whiten(VALUES, MASK, shift_mean=True)
    expected = torch.tensor([[-1.341641, -0.447214, 0.447214], [1.341641, 0.0, 0.0]])  # padding -> 0
    torch.testing.assert_close(shifted, expected, atol=1e-6, rtol=0)
    # not shifted (rewards, Wu et al. 2023): (x - 2.5) / 1.118034 + 2.5 = 1.158359, 2.052786, 2.947214, 3.841641
    unshifted = masked_whiten(VALUES, MASK, shift_mean=False)
    expected = torch.tensor([[1.158359, 2.052786, 2.947214], [3.841641, 0.0, 0.0]])
    torch.testing.assert_close(unshifted, expected, atol=1e-6, rtol=0)
    # the unshifted result keeps the mean (2.5) and has standard deviation 1
    torch.testing.assert_close(masked_mean(unshifted, MASK), torch.tensor(2.5))
    torch.testing.assert_close(masked_var(unshifted, MASK), torch.tensor(1.0), atol=1e-5, rtol=0)


def test_kl_penalty_on_the_sampled_tokens():
    rewards = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 9.0]])
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -3.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -7.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    penalised, kl = kl_penalised_rewards(rewards, logprobs, ref_logprobs, mask, kl_coef=0.1)
    # kl = logp - ref_logp: row 0: 0.5, -1.0, 0.0; row 1: 1.0, 0.0, (padding) 0
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]]))
    # r - 0.1 kl: row 0: 0 - 0.05 = -0.05, 1 + 0.1 = 1.1, 0; row 1: 0.5 - 0.1 = 0.4, 0, (padding: the 9 is dropped) 0
    torch.testing.assert_close(penalised, torch.tensor([[-0.05, 1.1, 0.0], [0.4, 0.0, 0.0]]))
    # per-response sums (what the log reports): KL 0.5 - 1 = -0.5 and 1.0; penalised 1.05 and 0.4
    torch.testing.assert_close(sequence_sums(kl, mask), torch.tensor([-0.5, 1.0]))
    torch.testing.assert_close(sequence_sums(penalised, mask), torch.tensor([1.05, 0.4]))


def test_gae_over_a_masked_batch_of_two_rows_of_different_lengths():
    # gamma 0.9, lambda 0.5 (gamma lambda = 0.45); V = 0 past each row's end
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 99.0]])
    values = torch.tensor([[0.5, 1.0, 1.5], [0.2, 0.4, 77.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: delta_2 = 2 + 0.9 * 0 - 1.5 = 0.5; delta_1 = 0 + 0.9 * 1.5 - 1.0 = 0.35;
    #        delta_0 = 1 + 0.9 * 1.0 - 0.5 = 1.4
    #        A_2 = 0.5; A_1 = 0.35 + 0.45 * 0.5 = 0.575; A_0 = 1.4 + 0.45 * 0.575 = 1.65875
    # row 1 (2 tokens; the 99 and 77 are padding): delta_1 = 1 + 0.9 * 0 - 0.4 = 0.6;
    #        delta_0 = 0 + 0.9 * 0.4 - 0.2 = 0.16
    #        A_1 = 0.6; A_0 = 0.16 + 0.45 * 0.6 = 0.43
    torch.testing.assert_close(advantages, torch.tensor([[1.65875, 0.575, 0.5], [0.43, 0.6, 0.0]]))
    # returns = A + V: row 0: 2.15875, 1.575, 2.0; row 1: 0.63, 1.0, (padding) 0
    torch.testing.assert_close(returns, torch.tensor([[2.15875, 1.575, 2.0], [0.63, 1.0, 0.0]]))


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    # gamma = lambda = 1: A_t = sum_{k >= t} r_k - V_t; returns = reward to go
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.25, 4.0]])
    advantages, returns = gae_advantages(rewards, values, torch.ones(1, 3, dtype=torch.bool), gamma=1.0, lam=1.0)
    # reward to go: 6, 5, 3; A = 6 - 0.5, 5 - 0.25, 3 - 4 = 5.5, 4.75, -1
    torch.testing.assert_close(advantages, torch.tensor([[5.5, 4.75, -1.0]]))
    torch.testing.assert_close(returns, torch.tensor([[6.0, 5.0, 3.0]]))
    # lambda = 0: A_t = delta_t (one-step TD): 1 + 0.25 - 0.5 = 0.75, 2 + 4 - 0.25 = 5.75, 3 + 0 - 4 = -1
    advantages, _ = gae_advantages(rewards, values, torch.ones(1, 3, dtype=torch.bool), gamma=1.0, lam=0.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.75, 5.75, -1.0]]))


def test_policy_loss_unclipped_regime():
    # ratios 1.1 (A = 2) and 0.9 (A = -1), both inside [0.8, 1.2]; a padded slot with a huge log-ratio is ignored
    logprobs = torch.tensor([[math.log(1.1), math.log(0.9), 500.0]])
    old = torch.zeros(1, 3)
    advantages = torch.tensor([[2.0, -1.0, 7.0]])
    mask = torch.tensor([[True, True, False]])
    loss, clip_fraction = clipped_policy_loss(logprobs, old, advantages, mask, cliprange=0.2)
    # token 1: max(-2 * 1.1, -2 * 1.1) = -2.2; token 2: max(1 * 0.9, 1 * 0.9) = 0.9; mean = (-2.2 + 0.9) / 2 = -0.65
    torch.testing.assert_close(loss, torch.tensor(-0.65))
    assert clip_fraction.item() == 0.0


def test_policy_loss_clipped_regime_takes_the_pessimistic_term():
    ratios = torch.tensor([[1.5, 0.5, 1.5, 0.5]])
    advantages = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    logprobs = torch.log(ratios).requires_grad_(True)
    loss, clip_fraction = clipped_policy_loss(logprobs, torch.zeros(1, 4), advantages, torch.ones(1, 4), 0.2)
    # ratio 1.5, A = +1: max(-1.5, -1.2) = -1.2 (clipped); ratio 0.5, A = -1: max(0.5, 0.8) = 0.8 (clipped);
    # ratio 1.5, A = -1: max(1.5, 1.2) = 1.5 (not clipped); ratio 0.5, A = +1: max(-0.5, -0.8) = -0.5 (not clipped)
    # mean = (-1.2 + 0.8 + 1.5 - 0.5) / 4 = 0.15; 2 of 4 tokens clipped
    torch.testing.assert_close(loss, torch.tensor(0.15))
    torch.testing.assert_close(clip_fraction, torch.tensor(0.5))
    # a clipped token gets no gradient; an unclipped one gets -A * ratio / 4: (1.5 / 4 = 0.375, -0.5 / 4 = -0.125)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 0.0, 0.375, -0.125]]))


def test_value_loss_clipped_and_unclipped():
    old = torch.tensor([[0.5, 2.1]])
    returns = torch.tensor([[2.0, 1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    # clipped regime: V = 1.0, 2.0 -> V_clip = clamp(V, old -+ 0.2) = 0.7, 2.0
    # (V - R)^2 = 1, 1; (V_clip - R)^2 = 1.69, 1; max = 1.69, 1; 0.5 * mean = 0.5 * 1.345 = 0.6725
    torch.testing.assert_close(clipped_value_loss(torch.tensor([[1.0, 2.0]]), old, returns, mask, 0.2),
                               torch.tensor(0.6725))  # fmt: skip
    # unclipped regime: V = 0.6, 2.05 lie within old -+ 0.2, so V_clip = V:
    # (0.6 - 2)^2 = 1.96, (2.05 - 1)^2 = 1.1025; 0.5 * (1.96 + 1.1025) / 2 = 0.765625
    torch.testing.assert_close(clipped_value_loss(torch.tensor([[0.6, 2.05]]), old, returns, mask, 0.2),
                               torch.tensor(0.765625))  # fmt: skip
    # clipping never lowers the loss: V = 3 = R but old = 2.5, so V_clip = 2.7: max(0, 0.09) = 0.09 -> 0.045
    torch.testing.assert_close(
        clipped_value_loss(torch.tensor([[3.0]]), torch.tensor([[2.5]]), torch.tensor([[3.0]]), torch.ones(1, 1), 0.2),
        torch.tensor(0.045),
    )
    # padding is ignored: a third, masked slot with a wild value changes nothing
    padded = clipped_value_loss(
        torch.tensor([[1.0, 2.0, 1e6]]),
        torch.tensor([[0.5, 2.1, 0.0]]),
        torch.tensor([[2.0, 1.0, -1e6]]),
        torch.tensor([[True, True, False]]),
        0.2,
    )
    torch.testing.assert_close(padded, torch.tensor(0.6725))


def test_minibatch_length_weighting():
    # a rollout of 4 responses with 4, 2, 1, 1 tokens: global mean length 8 / 4 = 2
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert mean_response_length(mask) == 2.0
    # minibatches of 2: lengths (4, 2) -> mean 3 -> weight 3 / 2 = 1.5; lengths (1, 1) -> mean 1 -> weight 0.5
    assert minibatch_length_weight(mask[:2], 2.0) == 1.5
    assert minibatch_length_weight(mask[2:], 2.0) == 0.5

    # over 2 processes the mean covers both: the other process has responses of 6 and 4 tokens
    # (8 + 10) tokens / 6 responses = 3
    def other(sums):
        return sums + torch.tensor([10.0, 2.0], dtype=torch.float64)

    assert mean_response_length(mask, reduce=other) == 3.0
    # total loss: weight * (pg + vf): 1.5 * (0.4 + 2.0) = 3.6; with vf_coef 0.5: 1.5 * (0.4 + 1.0) = 2.1
    torch.testing.assert_close(ppo_loss(torch.tensor(0.4), torch.tensor(2.0), 1.5), torch.tensor(3.6))
    torch.testing.assert_close(ppo_loss(torch.tensor(0.4), torch.tensor(2.0), 1.5, vf_coef=0.5), torch.tensor(2.1))


def test_fixed_kl_controller_never_moves():
    controller = FixedKLController(0.3)
    controller.update(current_kl=50.0, n_steps=32)
    assert controller.value == 0.3


def test_adaptive_kl_controller_follows_ziegler_with_the_error_clipped():
    # target 6, horizon 10000, 32 episodes per step, beta starts at 0.2
    controller = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    # KL 9: error 9 / 6 - 1 = 0.5 -> clipped to 0.2; beta *= 1 + 0.2 * 32 / 10000 = 1.00064 -> 0.200128
    controller.update(9.0, 32)
    assert controller.value == pytest.approx(0.200128, abs=1e-12)
    # KL 5.4: error 5.4 / 6 - 1 = -0.1 (inside the clip); beta *= 1 - 0.1 * 32 / 10000 = 0.99968
    controller.update(5.4, 32)
    assert controller.value == pytest.approx(0.200128 * 0.99968, abs=1e-12)
    # KL 0: error -1 -> clipped to -0.2; beta *= 1 - 0.2 * 32 / 10000 = 0.99936
    controller.update(0.0, 32)
    assert controller.value == pytest.approx(0.200128 * 0.99968 * 0.99936, abs=1e-12)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.2, target=0.0, horizon=1.0)


def test_kl_early_stop_counts_steps_above_the_threshold_like_the_paper():
    # the paper never resets its count: KL 11, 5, 12, 9, 13 with threshold 10, patience 3 -> counts 1, 1, 2, 2, 3
    rule = KLEarlyStop(threshold=10.0, patience=3)
    assert [rule.update(kl) for kl in (11.0, 5.0, 12.0, 9.0, 13.0)] == [False, False, False, False, True]
    # KL exactly at the threshold does not count (the paper tests kl > threshold)
    rule = KLEarlyStop(threshold=10.0, patience=1)
    assert rule.update(10.0) is False and rule.update(10.5) is True
    # consecutive variant: 11, 12, 5 (reset), 11, 12 -> counts 1, 2, 0, 1, 2, then 13 -> 3
    rule = KLEarlyStop(threshold=10.0, patience=3, consecutive=True)
    assert [rule.update(kl) for kl in (11.0, 12.0, 5.0, 11.0, 12.0, 13.0)] == [False] * 5 + [True]


def test_the_kl_of_a_step_is_the_mean_of_its_minibatch_means_like_the_original():
    kl = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 20.0])  # per-response KL sums of one process's 6 samples
    # minibatches of 4: [1, 2, 3, 4] -> 2.5 and [10, 20] -> 15; their mean (2.5 + 15) / 2 = 8.75, where the mean over
    # samples is 40 / 6 = 6.667
    assert mean_of_minibatch_means(kl, 4) == pytest.approx(8.75)
    # minibatches of 3 (equal sizes): [1, 2, 3] -> 2, [4, 10, 20] -> 34 / 3; (2 + 34 / 3) / 2 = 40 / 6, the sample mean
    assert mean_of_minibatch_means(kl, 3) == pytest.approx(40 / 6)
    # a second process with one minibatch of mean 6 (its sums [6, 1] added by the reduce): (2.5 + 15 + 6) / 3
    other = torch.tensor([6.0, 1.0], dtype=torch.float64)
    assert mean_of_minibatch_means(kl, 4, lambda t: t + other) == pytest.approx(23.5 / 3)
    # it is what the early stop reads: threshold 8 is exceeded by 8.75, not by the sample mean 6.667
    assert KLEarlyStop(threshold=8.0, patience=1).update(mean_of_minibatch_means(kl, 4)) is True
    assert KLEarlyStop(threshold=8.0, patience=1).update(kl.mean().item()) is False


def test_minibatch_token_weights_by_hand():
    # lengths 4, 2 | 1, 1 in minibatches of 2; global mean length 2
    # minibatch 0: mean length 3 -> weight 3 / 2 = 1.5, 6 tokens -> share 1/6; minibatch 1: mean 1 -> 0.5, 2 tokens
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    weight, share = minibatch_token_weights(mask, 2, 2.0)
    assert weight.tolist() == [1.5, 1.5, 0.5, 0.5]
    assert share.tolist() == pytest.approx([1 / 6, 1 / 6, 0.5, 0.5])


def test_weighted_ppo_losses_by_hand():
    # one sample, 2 tokens, ratio 1: policy terms -A = [-1, 2]; value terms 0.5 * (V - R)^2 = [0.5, 0] (no clip:
    # V = V_old); weight 1.5 x share 1/6 = 0.25 per token: policy 0.25 * (-1 + 2) = 0.25, value 0.25 * 0.5 = 0.125;
    # nothing clipped; loss = 2 * 0.25 + 0.5 * 0.125 = 0.5625 with pg_coef 2, vf_coef 0.5
    zero = torch.zeros(1, 2)
    loss, policy, value, clip = weighted_ppo_losses(
        zero, torch.tensor([[1.0, 0.0]]), zero, torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, -2.0]]), zero,
        torch.ones(1, 2, dtype=torch.bool), torch.tensor([1.5]), torch.tensor([1 / 6]), pg_coef=2.0, vf_coef=0.5,
    )  # fmt: skip
    assert (float(policy), float(value), float(clip)) == pytest.approx((0.25, 0.125, 0.0))
    assert float(loss) == pytest.approx(0.5625)


def test_weighted_ppo_losses_of_any_passes_sum_to_the_minibatch_losses():
    """Sum over minibatches of w_m * (policy + value loss), clip fractions summed: the same from passes that cut
    across the minibatches (rows 0, 3 | 1, 2, 4 against minibatches 0-1 | 2-3 | 4)."""
    torch.manual_seed(0)
    shape = (5, 6)
    logprobs, old_logprobs = torch.randn(shape) * 0.3, torch.randn(shape) * 0.3
    values, old_values, returns, advantages = (torch.randn(shape) for _ in range(4))
    mask = torch.arange(6).expand(5, 6) < torch.tensor([[6], [2], [4], [1], [5]])
    global_mean = float(mask.sum(dim=1, dtype=torch.float64).mean())
    expected = torch.zeros(3, dtype=torch.float64)
    for rows in (slice(0, 2), slice(2, 4), slice(4, 5)):
        w = minibatch_length_weight(mask[rows], global_mean)
        pg, clipped = clipped_policy_loss(logprobs[rows], old_logprobs[rows], advantages[rows], mask[rows], 0.2)
        vf = clipped_value_loss(values[rows], old_values[rows], returns[rows], mask[rows], 0.2)
        expected += torch.tensor([w * float(pg), w * float(vf), float(clipped)], dtype=torch.float64)
    weight, share = minibatch_token_weights(mask, 2, global_mean)
    got = torch.zeros(3, dtype=torch.float64)
    for rows in (torch.tensor([0, 3]), torch.tensor([1, 2, 4])):
        pick = [t[rows] for t in (logprobs, values, old_logprobs, old_values, advantages, returns, mask, weight, share)]
        _, policy, value, clip = weighted_ppo_losses(*pick)
        got += torch.tensor([float(policy), float(value), float(clip)], dtype=torch.float64)
    assert got.tolist() == pytest.approx(expected.tolist(), rel=1e-6, abs=1e-7)
    assert float(expected[2]) > 0  # some tokens were clipped
