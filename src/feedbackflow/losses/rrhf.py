"""RRHF losses (Yuan et al. 2023, "Rank Responses to align Human Feedback"), as small pure functions.

A batch holds several queries, each with several responses. Token tensors are one row per response (all responses
of all queries, flattened, right-padded); per-response values are then laid out as (queries, max_responses) with a
boolean `mask` that is True where a slot holds a real response, like `reward_losses`.

Yuan et al. 2023 (differences from the original code, GanjinZero/RRHF train.py: docs/methods/rrhf.md):

- p_i = (sum over the response tokens of log pi(y_i,t | x, y_i,<t)) / |y_i| ** length_penalty, with |y_i| the TRUE
  number of response tokens, as in the paper (the original code divides by the padded width of the batch's rows);
- L_rank = sum over pairs (i, j) of one query with r_i < r_j of max(0, p_i - p_j) (ties and padding excluded);
- L_sft = token NLL of the highest-scored response averaged over its TRUE number of response tokens (for tied best
  scores, the first). The paper writes L_ft as the sum over those tokens; the original code takes `.mean()` over the
  whole padded row, i.e. divides that sum by the padded query + response width. Our mean keeps the code's per-token
  scale without its dependence on the prompt's length and on the other responses' padding;
- L = rrhf_weight * L_rank + L_sft.

Reduction: The paper's L is a per-query loss. Every loss here returns the per-query values (shape (queries,)) and their
batch sum; a trainer divides the sum over its global batch by the number of queries in that batch, i.e. the loss of
a batch is the MEAN over its queries of the per-query L (what the original code's gradient accumulation over
one-query micro batches computed). Because the per-query values do not depend on which other queries share the
batch, a batch of several queries gives exactly the per-query values of single-query batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log pi(input_ids[:, t] | input_ids[:, :t]) at every position t, aligned with `input_ids`; position 0 is 0.

    `logits` (seqs, len, vocab) predict token t + 1 at position t (causal LM). Computed in float32.
    """
    targets = input_ids[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none")
    return F.pad(-nll.view_as(targets), (1, 0))


def response_logprob_sums(token_logp: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of `token_logp` over the response tokens, number of response tokens) per sequence.

    `response_mask` (seqs, len) is True at the positions of response tokens (the final eos included), aligned with
    the input ids; position 0 has no prediction and must not be a response token.
    """
    response_mask = response_mask.bool()
    if response_mask[:, 0].any():
        raise ValueError("position 0 cannot be a response token: nothing precedes it")
    sums = torch.where(response_mask, token_logp, torch.zeros_like(token_logp)).sum(dim=1)
    return sums, response_mask.sum(dim=1)


def response_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence, sum over response tokens of log pi(y_t | prefix), and the TRUE response length (Yuan et al. 2023).

    The length is the count of response tokens (True entries of `response_mask`), the paper's |y_i|, not the padded
    width: the original code (GanjinZero/RRHF train.py) sets its -100 labels to 0 in place in `gather_logits_labels`
    before `get_score` counts them, so it divides by the padded width (docs/methods/rrhf.md).
    """
    return response_logprob_sums(token_logprobs(logits, input_ids), response_mask)


def length_normalised_scores(
    sum_logp: torch.Tensor, lengths: torch.Tensor, length_penalty: float = 1.0
) -> torch.Tensor:
    """p = sum_logp / lengths ** length_penalty (Yuan et al. 2023: a response's length-normalised log-prob)."""
    return sum_logp / lengths.to(sum_logp.dtype) ** length_penalty


def rrhf_pair_mask(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(queries, i, j) True where responses i and j are both real and r_i < r_j (ties and padding excluded)."""
    real = mask[:, :, None] & mask[:, None, :]
    return real & (rewards[:, :, None] < rewards[:, None, :])


def rrhf_rank_loss(p: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RRHF's (Yuan et al. 2023) ranking loss: per query, the sum over pairs with r_i < r_j of max(0, p_i - p_j).

    `p`, `rewards` and `mask` are (queries, max_responses); padded slots (mask False) may hold anything, even
    inf or nan, and change nothing. Returns (per-query losses, their sum over the batch).
    """
    mask = mask.bool()
    p = p.masked_fill(~mask, 0.0)  # padded slots: no nan from garbage, and no gradient
    rewards = rewards.masked_fill(~mask, 0.0)
    pairs = rrhf_pair_mask(rewards, mask)
    hinge = torch.relu(p[:, :, None] - p[:, None, :])  # [query, i, j] = max(0, p_i - p_j)
    per_query = torch.where(pairs, hinge, torch.zeros_like(hinge)).sum(dim=(1, 2))
    return per_query, per_query.sum()


def best_response_index(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Index of the highest-scored real response of each query; among tied best scores, the first."""
    masked = rewards.masked_fill(~mask.bool(), float("-inf"))
    best = masked.max(dim=1, keepdim=True).values
    is_best = (masked == best) & mask.bool()
    positions = torch.arange(rewards.shape[1], device=rewards.device).expand_as(rewards)
    return torch.where(is_best, positions, torch.full_like(positions, rewards.shape[1])).min(dim=1).values


def rrhf_sft_loss(token_nll: torch.Tensor, response_mask_of_best: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RRHF's (Yuan et al. 2023) SFT loss: per query, the mean token NLL of its highest-scored response.

    `token_nll` (queries, len) holds the NLL of each token of the best response of each query (pick the rows with
    `best_response_index`), aligned with `response_mask_of_best` (queries, len), True at its response tokens; only
    those count, and the mean is over the TRUE number of response tokens. Returns (per-query losses, batch sum).
    The original code's `sft_loss` averages over the padded query + response width instead (`.mean()` of the whole
    row, zeros outside the response), so the same response would weigh less beside a longer prompt or a longer
    sibling response; the paper's L_ft is the plain sum (docs/methods/rrhf.md, "Differences").
    """
    response_mask_of_best = response_mask_of_best.bool()
    sums = torch.where(response_mask_of_best, token_nll, torch.zeros_like(token_nll)).sum(dim=1)
    per_query = sums / response_mask_of_best.sum(dim=1).clamp(min=1).to(sums.dtype)
    return per_query, per_query.sum()


def rrhf_loss(rank_loss: torch.Tensor, sft_loss: torch.Tensor, rrhf_weight: float = 1.0) -> torch.Tensor:
    """RRHF's total loss L = rrhf_weight * L_rank + L_sft (per query, or of sums or means alike; Yuan et al. 2023)."""
    return rrhf_weight * rank_loss + sft_loss
