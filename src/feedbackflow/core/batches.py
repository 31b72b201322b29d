"""Batches shared by several stages: inference batches of similar length (`length_sorted_batches`), and preference
lists in global batches, the seeded per-epoch order and the padded score matrix that the DSP and RRHF trainers share
(Cheng et al. 2023; Yuan et al. 2023)."""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass

import torch


def length_sorted_batches(items: list[Sized], batch_size: int) -> list[list[int]]:
    """The indices of `items` in inference batches: sorted by length (ties in input order), in consecutive chunks of
    `batch_size`, so that each batch pads little (real data's long tail otherwise pads a whole batch to its longest
    text). Callers put each result back at its index, so the output order is the input order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


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
