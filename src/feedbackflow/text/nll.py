"""Negative log-likelihood of responses under a causal LM: RRHF's response perplexity (Yuan et al. 2023, Table 2),
detoxification's fluency (Wu et al. 2023, section 4) and ILF's scorers share it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from feedbackflow.core.batches import length_sorted_batches


@torch.inference_mode()
def sequence_nll(model, encoded: list[tuple[list[int], int]], batch_size: int, pad_id: int) -> list[tuple[float, int]]:
    """(summed NLL, number of scored tokens) of each (ids, first) sequence under the causal LM `model`: the loss on
    ids[first:] (never on ids[0], which nothing predicts). Batched by length, right-padded, on the model's device."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    model.eval()
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
    for chunk in length_sorted_batches([sequence for sequence, _ in encoded], batch_size):
        width = max(len(encoded[i][0]) for i in chunk)
        if width < 2:
            continue  # nothing can be predicted: every sequence of the batch keeps (0.0, 0)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        scored = torch.zeros((len(chunk), width), dtype=torch.bool)
        for row, i in enumerate(chunk):
            sequence, first = encoded[i]
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
            scored[row, max(first, 1) : len(sequence)] = True
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:].to(device), reduction="none").cpu()
        predicted = scored[:, 1:]
        for row, i in enumerate(chunk):
            results[i] = (float(nll[row][predicted[row]].sum()), int(predicted[row].sum()))
    return results
