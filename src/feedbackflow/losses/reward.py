"""Reward-model losses of DSP ("Everyone Deserves A Reward", Cheng et al. 2023), as small pure functions.

All functions take padded batches: `rewards` and `scores` are (lists, max_list_len) with `mask` True where an entry
is a real text; token tensors are right-padded with an attention mask. Each loss can return its sum and its count,
so that a trainer can average over a global batch that is split into micro batches and processes. The rules and
where they differ from the original code (Linear95/DSP `trainer.py`, `reward_datasets.py`): docs/methods/dsp.md.
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
    best score is not positive cannot be normalised this way and contributes no text. The original
    (`reward_datasets.py` `prepare_data_item`) divides by max + 1e-5 instead: that moves the boundary (a text needs
    score > 0.85 * (max + 1e-5), and a list whose max is at most ~5.7e-5 selects nothing), and a negative max flips
    the order, so [-1, -2] becomes [1.00001, 2.00002]: both texts selected, the worse one ranked first. Here [-1, -2]
    selects nothing, and the ranking loss reads the raw scores (docs/methods/dsp.md, "Differences").
    """
    best = scores.masked_fill(~mask, float("-inf")).max(dim=1, keepdim=True).values
    positive_best = best > 0
    normalised = scores / torch.where(positive_best, best, torch.ones_like(best))
    return mask & positive_best & (normalised > threshold)


def lm_loss_terms(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, selected: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over the `selected` sequences of each one's mean next-token NLL, and the number of selected sequences.

    `logits` (seqs, len, vocab) predict token t+1 at position t; a prediction counts when both tokens are real. Each
    sequence's NLL is averaged over its own predictions first, then the sequences are averaged with equal weight
    (Linear95/DSP `trainer.py` `language_modeling_loss`), so a long text weighs as much as a short one.
    """
    targets = input_ids[:, 1:]
    valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none")
    nll = torch.where(valid, nll.view_as(targets), torch.zeros_like(targets, dtype=nll.dtype))
    per_sequence = nll.sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    return torch.where(selected, per_sequence, torch.zeros_like(per_sequence)).sum(), selected.sum()


def lm_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, selected: torch.Tensor
) -> torch.Tensor:
    """Mean over the selected sequences of their mean token NLL (0 when none is selected)."""
    total, count = lm_loss_terms(logits, input_ids, attention_mask, selected)
    return total / count.clamp(min=1)
