"""Reward-model losses of DSP ("Everyone Deserves A Reward", Cheng et al. 2023), as small pure functions.

All functions take padded batches: `rewards` and `scores` are (lists, max_list_len) with `mask` True where an entry
is a real text; token tensors are right-padded with an attention mask. Each loss can return its sum and its count,
so that a trainer can average over a global batch that is split into micro batches and processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ranking_pair_mask(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(lists, i, j) True for ordered pairs of real texts with different scores (ties and padding excluded)."""
    real = mask[:, :, None] & mask[:, None, :]
    return real & (scores[:, :, None] != scores[:, None, :])


def ranking_loss_terms(
    rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of -log sigmoid((r_j - r_i) * sign(s_j - s_i)) over ordered pairs with s_i != s_j."""
    pairs = ranking_pair_mask(scores, mask)
    reward_gap = rewards[:, None, :] - rewards[:, :, None]  # [list, i, j] = r_j - r_i
    direction = torch.sign(scores[:, None, :] - scores[:, :, None])
    losses = -F.logsigmoid(torch.where(pairs, reward_gap * direction, torch.zeros_like(reward_gap)))
    return torch.where(pairs, losses, torch.zeros_like(losses)).sum(), pairs.sum()


def ranking_loss(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """DSP's ranking loss: the mean over ordered pairs with different scores (0 when there is none)."""
    total, count = ranking_loss_terms(rewards, scores, mask)
    return total / count.clamp(min=1)


def lm_target_mask(scores: torch.Tensor, mask: torch.Tensor, threshold: float = 0.85) -> torch.Tensor:
    """Texts whose normalised score (score / the list's max score) exceeds `threshold`.

    DSP adds the language-modelling loss only on these ("imitation learning" on preferred responses). A list whose
    best score is not positive cannot be normalised this way and contributes no text.
    """
    best = scores.masked_fill(~mask, float("-inf")).max(dim=1, keepdim=True).values
    positive_best = best > 0
    normalised = scores / torch.where(positive_best, best, torch.ones_like(best))
    return mask & positive_best & (normalised > threshold)


def lm_loss_terms(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, selected: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of next-token NLL over the real tokens of the `selected` sequences.

    `logits` (seqs, len, vocab) predict token t+1 at position t; a prediction counts when both tokens are real.
    """
    targets = input_ids[:, 1:]
    valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool() & selected[:, None]
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none")
    nll = nll.view_as(targets)
    return torch.where(valid, nll, torch.zeros_like(nll)).sum(), valid.sum()


def lm_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, selected: torch.Tensor
) -> torch.Tensor:
    """Mean token NLL of the selected sequences (0 when none is selected)."""
    total, count = lm_loss_terms(logits, input_ids, attention_mask, selected)
    return total / count.clamp(min=1)
