"""The rules of PPO as Fine-Grained RLHF's code applies them (Wu et al. 2023, "PPO (as in the paper's code)").

Small pure functions on tensors; `feedbackflow.rl.ppo` wires them into the trainer. The paper's code is
allenai/FineGrainedRLHF (fgrlhf/ppo.py `compute_advantages` and `loss`, fgrlhf/reward.py `kl_penalize_reward`,
fgrlhf/utils.py `whiten`, tasks/qa_feedback/training/train_finegrained.py for the optimiser and schedule). Each
function names the rule it follows and any place where it deliberately differs.

Shapes: a rollout is a right-padded batch (B, T) of response tokens with a mask that is 1 (True) on the real tokens
of each response (up to and including its eos) and 0 past its end. Statistics that must cover every process take a
`reduce` callable that SUMS a tensor over the processes (e.g. `lambda t: accelerator.reduce(t, "sum")`); without it
they cover this tensor only, so the functions stay pure and testable.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]

WHITEN_EPS = 1e-8  # the paper's `torch.rsqrt(var + 1e-8)`
ADAPTIVE_KL_ERROR_CLIP = 0.2  # Ziegler et al. 2019: the proportional error is clipped to [-0.2, 0.2]


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of `values` where `mask` is set; whatever sits in masked positions (even inf or nan) is ignored."""
    return torch.where(mask.bool(), values, torch.zeros_like(values)).sum()


def masked_moments(
    values: torch.Tensor, mask: torch.Tensor, reduce: Reduce | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) of the masked values, over all processes when `reduce` sums over them.

    The paper's `reduce_mean` / `reduce_var`: mean = sum(x) / n, variance = sum(x^2) / n - mean^2 (the population
    variance, no Bessel correction). The three sums go through ONE `reduce` call, in float64.
    """
    keep = mask.bool()
    x = torch.where(keep, values, torch.zeros_like(values)).double()
    sums = torch.stack([x.sum(), (x * x).sum(), keep.sum().double()])
    total, total_sq, count = (reduce or _identity)(sums).unbind()
    if count <= 0:
        raise ValueError("masked_moments: the mask selects no element")
    mean = total / count
    variance = (total_sq / count - mean * mean).clamp(min=0.0)
    return mean.to(values.dtype), variance.to(values.dtype)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
    """Mean of the masked values (over all processes with `reduce`): the paper's `reduce_mean(value, mask)`."""
    return masked_moments(values, mask, reduce)[0]


def masked_var(values: torch.Tensor, mask: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
    """Population variance of the masked values (over all processes with `reduce`): the paper's `reduce_var`."""
    return masked_moments(values, mask, reduce)[1]


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    reduce: Reduce | None = None,
    eps: float = WHITEN_EPS,
) -> torch.Tensor:
    """Whiten over the masked values: (x - mu) / sqrt(var + eps), plus mu again when `shift_mean` is False.

    Wu et al. 2023: rewards are whitened WITHOUT shifting the mean ((r - mu) / sigma + mu), advantages with it;
    mu and var come from every process (the paper gathers the rollout of all GPUs). Masked positions are 0 in the
    result: past its end a response has no reward and no advantage.

    Differences from the paper's fgrlhf/utils.py `whiten`, both deliberate and both following the paper's formula:
    (1) there, the variable named `var` holds the standard deviation (`reduce_std`), so it divides by
    sqrt(sigma + 1e-8) instead of sigma; (2) it whitens padded positions too, so with `shift_mean=False` every
    position past a response's end gets the reward mu - mu / sigma, which its GAE loop then adds to the advantages of
    the shorter responses. Here the divisor is sqrt(var + 1e-8) and the episode ends at the response's end.
    """
    mean, var = masked_moments(values, mask, reduce)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def kl_penalised_rewards(
    rewards: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(penalised rewards, per-token KL): r_t - kl_coef * (log pi(a_t) - log pi_ref(a_t)) on the sampled tokens.

    The paper's `kl_penalize_reward` (fgrlhf/reward.py): kl = mask_pad(logprobs - ref_logprobs, mask, 0),
    penalised = rewards - kl_coef * kl. Both are 0 past each response's end.
    """
    keep = mask.bool()
    zeros = torch.zeros_like(logprobs)
    kl = torch.where(keep, logprobs - ref_logprobs, zeros)
    penalised = torch.where(keep, rewards, zeros) - kl_coef * kl
    return penalised, kl


def sequence_sums(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) per-response sums over the masked tokens (the paper logs rewards and KL as these sums' mean)."""
    return torch.where(mask.bool(), values, torch.zeros_like(values)).sum(dim=1)


def mean_of_minibatch_means(values: torch.Tensor, minibatch_size: int, reduce: Reduce | None = None) -> float:
    """The mean over minibatches (of every process, with `reduce`) of each minibatch's mean of `values` (B,).

    The minibatches are rows [0, size), [size, 2 size), ... of each process, the last possibly shorter: the PPO
    epochs' split. This is the KL the original logs and stops on (fgrlhf/ppo.py `train`: `reward_kl` per minibatch,
    concatenated, gathered from every GPU, then averaged). It equals the mean over samples when every minibatch has
    the same size, and weighs the samples of a short last minibatch more otherwise."""
    means = torch.stack([chunk.double().mean() for chunk in values.split(minibatch_size)])
    count = torch.tensor(float(len(means)), dtype=torch.float64, device=values.device)
    total, n = (reduce or _identity)(torch.stack([means.sum(), count])).tolist()
    return total / n


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalised advantage estimation over a right-padded batch.

    The paper's `compute_advantages`: delta_t = r_t + gamma V_{t+1} - V_t with V = 0 past the end,
    A_t = delta_t + gamma lambda A_{t+1}, returns = A + V. Instead of its loop over positions this computes
    A_t = sum_{k >= t} (gamma lambda)^(k - t) delta_k as one product with a triangular discount matrix (in float64).
    Rewards and values past a response's end are treated as 0 whatever they hold; A and returns are 0 there.
    """
    keep = mask.bool()
    r = torch.where(keep, rewards, torch.zeros_like(rewards)).double()
    v = torch.where(keep, values, torch.zeros_like(values)).double()
    next_v = torch.nn.functional.pad(v[:, 1:], (0, 1))
    deltas = torch.where(keep, r + gamma * next_v - v, torch.zeros_like(r))
    length = rewards.shape[1]
    positions = torch.arange(length, device=rewards.device)
    offset = positions[:, None] - positions[None, :]  # [k, t] = k - t
    discount = torch.where(
        offset >= 0,
        torch.pow(torch.full((), gamma * lam, dtype=torch.float64, device=rewards.device), offset.clamp(min=0)),
        torch.zeros((), dtype=torch.float64, device=rewards.device),
    )
    advantages = deltas @ discount
    advantages = torch.where(keep, advantages, torch.zeros_like(advantages))
    returns = advantages + v
    return advantages.to(rewards.dtype), returns.to(rewards.dtype)


def clipped_policy_terms(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: (max(-A * ratio, -A * clamp(ratio, 1 - c, 1 + c)), whether the clipped term won), ratio =
    exp(logp - old_logp); ratio 1 past each response's end. The paper's `loss` before its masked mean."""
    keep = mask.bool()
    log_ratio = torch.where(keep, logprobs - old_logprobs, torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return torch.max(unclipped, clipped), clipped > unclipped


def clipped_value_terms(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, cliprange_value: float
) -> torch.Tensor:
    """Per token: 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = clamp(V, V_old -+ c). The paper's `loss` (value
    part) before its masked mean."""
    clipped_values = torch.max(torch.min(values, old_values + cliprange_value), old_values - cliprange_value)
    return 0.5 * torch.max(torch.square(values - returns), torch.square(clipped_values - returns))


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, fraction of tokens clipped): the clipped surrogate, mean over the masked tokens of the minibatch.

    The paper's `loss`: ratio = exp(logp - old_logp); mean of max(-A * ratio, -A * clamp(ratio, 1 - c, 1 + c)).
    """
    keep = mask.bool()
    terms, clipped = clipped_policy_terms(logprobs, old_logprobs, advantages, keep, cliprange)
    return masked_mean(terms, keep), masked_mean(clipped.to(logprobs.dtype), keep)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float = 0.2,
) -> torch.Tensor:
    """0.5 * mean over the masked tokens of max((V - R)^2, (V_clip - R)^2), V_clip = clamp(V, V_old -+ c).

    The paper's `loss` (value part), clip 0.2.
    """
    return masked_mean(clipped_value_terms(values, old_values, returns, cliprange_value), mask)


def minibatch_token_weights(
    mask: torch.Tensor, minibatch_size: int, global_mean_length: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (B,): (its minibatch's length weight, 1 / its minibatch's token count), the minibatches being rows
    [0, size), [size, 2 size), ... (the PPO epochs' split; the last possibly shorter).

    The epoch's loss is sum over minibatches m of w_m * masked_mean_m(x) = sum over samples s and their tokens t of
    w_s * share_s * x_st (`minibatch_length_weight`, masked mean over m's tokens): a sum of per-sample terms, so any
    grouping of the samples into forward/backward passes accumulates the same gradient as one pass per minibatch.
    """
    weights, shares = [], []
    for rows in mask.split(minibatch_size):
        count = rows.sum(dtype=torch.float64).clamp(min=1.0)
        weights.append(torch.full((len(rows),), minibatch_length_weight(rows, global_mean_length), dtype=torch.float64))
        shares.append(torch.full((len(rows),), 1.0 / count.item(), dtype=torch.float64))
    return torch.cat(weights).to(mask.device), torch.cat(shares).to(mask.device)


def weighted_ppo_losses(
    logprobs: torch.Tensor,
    values: torch.Tensor,
    old_logprobs: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    length_weight: torch.Tensor,
    token_share: torch.Tensor,
    cliprange: float = 0.2,
    cliprange_value: float = 0.2,
    pg_coef: float = 1.0,
    vf_coef: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, policy part, value part, clip part) of any group of samples (B,), with each sample's minibatch weights
    from `minibatch_token_weights`:
    - policy part = sum of w_s * share_s * policy term over the masked tokens (summed over every pass of an epoch:
      sum over minibatches of w_m * `clipped_policy_loss`);
    - value part likewise with the value term (sum of w_m * `clipped_value_loss`);
    - clip part = sum of share_s * clipped (sum over minibatches of their clip fractions);
    - loss = pg_coef * policy part + vf_coef * value part (sum over minibatches of `ppo_loss`).
    """
    keep = mask.bool()
    scale = (length_weight * token_share).to(logprobs.dtype).unsqueeze(1)
    policy_terms, clipped = clipped_policy_terms(logprobs, old_logprobs, advantages, keep, cliprange)
    value_terms = clipped_value_terms(values, old_values, returns, cliprange_value)
    zero = torch.zeros_like(policy_terms)
    policy_part = torch.where(keep, scale * policy_terms, zero).sum()
    value_part = torch.where(keep, scale * value_terms.to(policy_terms.dtype), zero).sum()
    clip_part = (token_share.unsqueeze(1) * (clipped & keep)).sum()
    return pg_coef * policy_part + vf_coef * value_part, policy_part, value_part, clip_part


def mean_response_length(mask: torch.Tensor, reduce: Reduce | None = None) -> float:
    """Mean number of response tokens per sample (over all processes with `reduce`).

    Both sums are on the mask's device: the all-reduce (NCCL) needs them on the GPU, and stacking a GPU sum with a
    CPU count would fail."""
    samples = torch.tensor(float(mask.shape[0]), dtype=torch.float64, device=mask.device)
    sums = torch.stack([mask.sum(dtype=torch.float64), samples])
    total, count = (reduce or _identity)(sums).tolist()
    return total / count


def minibatch_length_weight(minibatch_mask: torch.Tensor, global_mean_length: float) -> float:
    """The weight of a minibatch's loss: its mean response length / the mean response length of the whole rollout.

    The paper's `loss`: weight = mask.sum(dim=1).float().mean() / all_mask_weight, where all_mask_weight is the mean
    length over the rollout gathered from every GPU (the paper's code: "each minibatch weighted by its mean length /
    global mean length"). A minibatch of long responses counts for more than its token-mean loss alone would give it.
    """
    return minibatch_mask.sum(dim=1, dtype=torch.float64).mean().item() / global_mean_length


def ppo_loss(
    policy_loss: torch.Tensor,
    value_loss: torch.Tensor,
    weight: float,
    pg_coef: float = 1.0,
    vf_coef: float = 1.0,
) -> torch.Tensor:
    """Total minibatch loss: weight * (pg_coef * policy loss + vf_coef * value loss) (the paper's code: 1.0 and 1.0).

    The paper multiplies both losses by the length weight, then sums them with pg_coef and vf_coef.
    """
    return pg_coef * (policy_loss * weight) + vf_coef * (value_loss * weight)


class FixedKLController:
    """A constant KL coefficient (the paper: kl_coef 0.3 fine-grained, 0.2 holistic)."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing changes."""


class AdaptiveKLController:
    """Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences"), section 2.2: after each batch,
    e = clip(KL / target - 1, -0.2, 0.2) and beta <- beta * (1 + e * n_steps / horizon), where KL is the batch's
    mean per-response KL and n_steps its number of episodes."""

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs a positive target and horizon, got {target} and {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -ADAPTIVE_KL_ERROR_CLIP), ADAPTIVE_KL_ERROR_CLIP)
        self.value *= 1.0 + error * n_steps / self.horizon


class KLEarlyStop:
    """Stop training once the mean per-response KL has exceeded `threshold` on `patience` PPO steps.

    The paper's rule (fgrlhf/ppo.py `train`, threshold 10, patience 5): `huge_kl_count` grows on every step whose KL
    is above the threshold and is never reset, so the steps need NOT be consecutive. With `consecutive=True` a step
    at or under the threshold resets the count instead.
    """

    def __init__(self, threshold: float, patience: int, consecutive: bool = False):
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        self.threshold = float(threshold)
        self.patience = int(patience)
        self.consecutive = consecutive
        self.count = 0

    def update(self, current_kl: float) -> bool:
        """Count this step's KL; True once training should stop."""
        if current_kl > self.threshold:
            self.count += 1
        elif self.consecutive:
            self.count = 0
        return self.count >= self.patience
