"""The diverse (group) beam search of `feedbackflow.stages.sampling` as it was before its decode step was vectorised
(commit 1a9b829): a Python loop per prompt and per group with host syncs at every step. Kept verbatim as the
reference that `tests/test_sampling.py` compares the vectorised step with, and that
`benchmarks/group_beam_step.py` times against it. Not used by the package.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from feedbackflow.errors import ConfigError


class _Hypotheses:
    """The best `size` finished hypotheses of one (prompt, group)."""

    def __init__(self, size: int, length_penalty: float):
        self.size = size
        self.length_penalty = length_penalty
        self.items: list[tuple[float, list[int]]] = []

    def add(self, tokens: list[int], sum_logprobs: float, length: int) -> None:
        self.items.append((sum_logprobs / max(length, 1) ** self.length_penalty, tokens))
        self.items.sort(key=lambda item: -item[0])
        del self.items[self.size :]

    def is_done(self, best_running_sum: float, length: int) -> bool:
        """No running beam can still beat the worst kept hypothesis (Transformers' non-early-stopping rule)."""
        if len(self.items) < self.size:
            return False
        return self.items[-1][0] >= best_running_sum / max(length, 1) ** self.length_penalty


@torch.no_grad()
def reference_diverse_beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    num_beams: int,
    num_beam_groups: int,
    diversity_penalty: float,
    max_new_tokens: int,
    eos_token_ids: set[int],
    pad_token_id: int,
    num_return_sequences: int,
    length_penalty: float = 1.0,
) -> list[list[list[int]]]:
    """Diverse (group) beam search on left-padded prompts; per prompt, the best `num_return_sequences` token lists.

    The returned token lists are the generated ids without the prompt, ending with an eos id when finished.
    """
    if num_beams % num_beam_groups or num_return_sequences > num_beams:
        raise ConfigError("num_beams must be divisible by num_beam_groups and at least num_return_sequences")
    device = next(model.parameters()).device
    batch = input_ids.shape[0]
    group_size = num_beams // num_beam_groups
    ids = input_ids.to(device).repeat_interleave(num_beams, dim=0)
    mask = attention_mask.to(device).repeat_interleave(num_beams, dim=0)
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    output = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)

    # only the first beam of each group is live at the start, so a group does not pick the same token several times
    beam_scores = torch.full((batch, num_beams), -1e9, device=device)
    beam_scores[:, ::group_size] = 0.0
    generated = torch.empty((batch * num_beams, 0), dtype=torch.long, device=device)
    hypotheses = [[_Hypotheses(group_size, length_penalty) for _ in range(num_beam_groups)] for _ in range(batch)]
    done = [[False] * num_beam_groups for _ in range(batch)]
    eos_list = sorted(eos_token_ids)

    for step in range(max_new_tokens):
        logprobs = torch.log_softmax(output.logits[:, -1, :].float(), dim=-1)
        vocab = logprobs.shape[-1]
        logprobs = logprobs.view(batch, num_beams, vocab)
        next_tokens = torch.full((batch, num_beams), pad_token_id, dtype=torch.long, device=device)
        next_scores = torch.zeros((batch, num_beams), device=device)
        sources = torch.arange(batch * num_beams, device=device).view(batch, num_beams)
        generated_list = None  # the token lists, converted only when a hypothesis finishes
        for group in range(num_beam_groups):
            start, stop = group * group_size, (group + 1) * group_size
            scores = logprobs[:, start:stop, :]
            if group > 0 and diversity_penalty:
                earlier = next_tokens[:, :start]
                counts = torch.zeros((batch, vocab), device=device).scatter_add_(
                    1, earlier, torch.ones_like(earlier, dtype=torch.float)
                )
                scores = scores - diversity_penalty * counts[:, None, :]
            total = (scores + beam_scores[:, start:stop, None]).view(batch, -1)
            top_scores, top_indices = total.topk(2 * group_size, dim=1)
            top_scores, top_indices = top_scores.tolist(), top_indices.tolist()
            for b in range(batch):
                if done[b][group]:
                    next_scores[b, start:stop] = 0.0  # finished groups carry on with pad tokens
                    continue
                filled = 0
                for rank, (score, index) in enumerate(zip(top_scores[b], top_indices[b], strict=True)):
                    beam, token = divmod(index, vocab)
                    source = b * num_beams + start + beam
                    if token in eos_token_ids:
                        if rank < group_size:
                            if generated_list is None:
                                generated_list = generated.tolist()
                            hypotheses[b][group].add(generated_list[source] + [token], score, step + 1)
                        continue
                    next_tokens[b, start + filled] = token
                    next_scores[b, start + filled] = score
                    sources[b, start + filled] = source
                    filled += 1
                    if filled == group_size:
                        break
                best_running = max(next_scores[b, start:stop].tolist())
                done[b][group] = hypotheses[b][group].is_done(best_running, step + 1)
        order = sources.view(-1)
        generated = torch.cat([generated[order], next_tokens.view(-1, 1)], dim=1)
        beam_scores = next_scores
        if all(all(row) for row in done) or step + 1 == max_new_tokens:
            break
        cache.reorder_cache(order)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        positions = positions[:, -1:] + 1
        output = model(
            input_ids=next_tokens.view(-1, 1),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )

    generated_list = generated.tolist()
    length = generated.shape[1]
    results = []
    for b in range(batch):
        for group in range(num_beam_groups):
            if done[b][group]:
                continue
            for beam in range(group * group_size, (group + 1) * group_size):
                hypotheses[b][group].add(generated_list[b * num_beams + beam], beam_scores[b, beam].item(), length)
        candidates = [item for group in hypotheses[b] for item in group.items]
        candidates.sort(key=lambda item: -item[0])
        results.append([_until_eos(tokens, eos_list) for _score, tokens in candidates[:num_return_sequences]])
    return results


def _until_eos(tokens: list[int], eos_list: list[int]) -> list[int]:
    for position, token in enumerate(tokens):
        if token in eos_list:
            return tokens[: position + 1]
    return tokens
