"""Preference lists in global batches: the seeded per-epoch order and the padded score matrix that the DSP and RRHF
trainers share (Cheng et al. 2023; Yuan et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PreferenceBatchPlan:
    """Tokenised preference lists and the global batches of every step."""

    token_ids: list[list[list[int]]]  # list -> text -> ids
    scores: list[list[float]]
    steps_per_epoch: int

    def batch_indices(self, step: int, batch_size: int, seed: int) -> list[int]:
        """The lists of optimiser step `step`: a seeded permutation per epoch, cut into whole batches."""
        epoch, position = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(self.scores), generator=generator).tolist()
        return order[position * batch_size : (position + 1) * batch_size]


def pad_scores(score_lists: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in score_lists)
    scores = torch.zeros((len(score_lists), width), dtype=torch.float64)
    mask = torch.zeros((len(score_lists), width), dtype=torch.bool)
    for row, values in enumerate(score_lists):
        scores[row, : len(values)] = torch.tensor(values, dtype=torch.float64)
        mask[row, : len(values)] = True
    return scores, mask
