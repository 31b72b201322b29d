"""Responses sampled from a policy (Yuan et al. 2023, RRHF), merging sample files, and ranked training data.

Generation. Prompts are encoded as bos + ids (no eos; no bos when the tokenizer has none), LEFT-truncated to
`max_prompt_tokens` tokens in all (bos included: the end of a dialogue, next to the response, is kept), LEFT-padded
into batches of similar length, and decoded with the KV cache. Greedy, sampling and beam search run through
`model.generate`. A response is the generated ids up to the first eos, decoded without special tokens, cut at the
first occurrence of any stop string (such as "\\n\\nHuman:") and stripped of surrounding whitespace; it may be
empty. Generation is seeded (`torch.manual_seed(seed)` once, before the first batch), so a run is reproducible for
the same prompts, model, config and device; sampled texts do depend on `batch_size` (the random stream is shared).

Shards (`--shard k --shards n`: one job per shard, RRHF's `rrhf.sampling_shards`). The batches are planned over all
prompts as above and shard k takes a run of consecutive batches (`shard_batches`), so greedy and beam-search responses
do not depend on the shard count. Shard k is seeded with `seed + k` (shard 0 of 1 is the unsharded run), so sampled
texts do. `merge-samples --prompts` gathers the shard files in prompt order. With `--work-dir`, each finished batch
is saved with the random state after it (`BatchCheckpoints`), and a rerun resumes after the last saved batch with the
responses an uninterrupted run gives.

Diverse beam search (Vijayakumar et al. 2016; the paper's 4 beams, 4 groups, diversity penalty 1.0). Transformers 5
moved group beam search out of the library into the hub repository "transformers-community/group-beam-search",
loaded with `trust_remote_code`, which cannot be reached offline. So `num_beam_groups > 1` runs
`diverse_beam_search` below, a re-implementation of Transformers 4's `_group_beam_search` with Hamming diversity:
the beams form groups decoded one after another at each step; a group's log-probabilities are lowered by
`diversity_penalty` times the number of times each token was chosen by the earlier groups at that step (the penalty
is accumulated into the beam scores, as in Transformers 4); each group keeps its own finished hypotheses (score =
sum of log-probabilities / generated length ** length_penalty, eos counted); and the `num_return_sequences` best
hypotheses over all groups are returned. Like Transformers 4 beam search without sampling, it ignores
`temperature`, `top_k` and `top_p`. It uses the model's forward pass with a `DynamicCache` (left padding, position
ids from the attention mask), reordered between steps like `generate` does. The decode step runs on tensors for all
prompts at once. It loops over the groups only, and reads from the device once per step (may every group stop?);
`tests/diverse_beam_reference.py` keeps the earlier per-prompt loop, which gives the same token lists.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from feedbackflow.core.batches import length_sorted_batches
from feedbackflow.core.formats import (
    PROMPTS,
    SAMPLES,
    atomic_path,
    read_table,
    write_rows,
)
from feedbackflow.core.inference import load_for_inference
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.text.tokens import cut_at_stop_strings, decode_response, encode_prompts, pad_id_of, pad_left

log = logging.getLogger(__name__)


@dataclass
class SamplingConfig:
    """Generation settings; the defaults are the RRHF paper's (Yuan et al. 2023)."""

    num_return_sequences: int = field(default=4, metadata={"help": "responses per prompt"})
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature (ignored without do_sample)"})
    top_k: int | None = field(default=None, metadata={"help": "sampling: keep the k most likely tokens"})
    top_p: float | None = field(default=None, metadata={"help": "sampling: nucleus probability mass"})
    num_beams: int = 4
    num_beam_groups: int = field(default=4, metadata={"help": "> 1: diverse beam search (our implementation)"})
    diversity_penalty: float = 1.0
    length_penalty: float = field(default=1.0, metadata={"help": "beam scores: sum logprob / length ** this"})
    max_prompt_tokens: int = field(default=256, metadata={"help": "prompts are left-truncated to this many tokens"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generation batch"})
    seed: int = 42
    stop_strings: list[str] = field(
        default_factory=lambda: ["\n\nHuman:", "\n\nAssistant:"],
        metadata={"help": "JSON list; a response is cut at the first occurrence of any"},
    )
    origin: str | None = field(default=None, metadata={"help": "policy name written as origin (default: --model)"})
    dtype: str | None = field(default=None, metadata={"help": "dtype on a GPU (null: bf16 if supported); CPU: fp32"})

    def validate(self) -> None:
        """Raise ConfigError for settings that cannot work together."""
        positive = ("num_return_sequences", "max_new_tokens", "num_beams", "num_beam_groups", "batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_prompt_tokens < 2:
            raise ConfigError(f"max_prompt_tokens must be at least 2, got {self.max_prompt_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ConfigError(f"temperature must be positive when sampling, got {self.temperature}")
        if self.num_beam_groups > 1:
            if self.do_sample:
                raise ConfigError("diverse beam search (num_beam_groups > 1) does not sample: set do_sample false")
            if self.num_beams % self.num_beam_groups:
                raise ConfigError(
                    f"num_beams ({self.num_beams}) must be divisible by num_beam_groups ({self.num_beam_groups})"
                )
        elif self.diversity_penalty and self.num_beams > 1:
            log.info("diversity_penalty %s is unused with num_beam_groups 1", self.diversity_penalty)
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ConfigError(
                f"num_return_sequences ({self.num_return_sequences}) cannot exceed num_beams ({self.num_beams})"
            )
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ConfigError("greedy decoding gives one response per prompt: set do_sample or num_beams > 1")
        if not isinstance(self.stop_strings, (list, tuple)) or not all(
            isinstance(s, str) and s for s in self.stop_strings
        ):
            raise ConfigError(f"stop_strings must be a list of non-empty strings, got {self.stop_strings!r}")


# --- encoding and decoding ------------------------------------------------------------------------


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ConfigError(f"neither the model nor tokenizer {tokenizer.name_or_path!r} defines an eos token")
    return ids


# --- diverse beam search --------------------------------------------------------------------------


class _Hypotheses:
    """The best `size` finished hypotheses of one (prompt, group), on the host (used to assemble the results)."""

    def __init__(self, size: int, length_penalty: float):
        self.size = size
        self.length_penalty = length_penalty
        self.items: list[tuple[float, list[int]]] = []

    def add(self, tokens: list[int], sum_logprobs: float, length: int) -> None:
        self.items.append((sum_logprobs / max(length, 1) ** self.length_penalty, tokens))
        self.items.sort(key=lambda item: -item[0])
        del self.items[self.size :]


class _FinishedBeams:
    """The best `group_size` finished hypotheses of every (prompt, group), as tensors on the model's device, so the
    decode step adds to them and tests Transformers' non-early-stopping rule without a host sync.

    Scores are float64 sums of log-probabilities / length ** length_penalty (as Python computes them from the
    float32 sums); each (prompt, group) keeps its hypotheses sorted best first, a tie keeping the earlier one."""

    def __init__(self, batch: int, groups: int, group_size: int, max_new_tokens: int, pad_token_id: int, device):
        self.group_size, self.pad = group_size, pad_token_id
        self.scores = torch.full((batch, groups, group_size), -math.inf, dtype=torch.float64, device=device)
        self.tokens = torch.full((batch, groups, group_size, max_new_tokens), pad_token_id, device=device)
        self.lengths = torch.zeros((batch, groups, group_size), dtype=torch.long, device=device)
        self.count = torch.zeros((batch, groups), dtype=torch.long, device=device)

    def add(
        self,
        new: torch.Tensor,
        sums: torch.Tensor,
        prefixes: torch.Tensor,
        last: torch.Tensor,
        length: int,
        denominator: float,
    ) -> None:
        """Add, where `new` (batch, groups, k) is true, the hypothesis `prefixes` (batch, groups, k, length - 1) +
        `last` (batch, groups, k) whose float32 sum of log-probabilities is `sums`; k candidates in rank order."""
        scores = torch.where(new, sums.double() / denominator, -math.inf)
        tokens = self.tokens.new_full((*new.shape, self.tokens.shape[-1]), self.pad)
        tokens[..., : length - 1] = prefixes
        tokens[..., length - 1] = last
        merged = torch.cat([self.scores, scores], dim=2)
        keep = merged.argsort(dim=2, descending=True, stable=True)[..., : self.group_size]
        self.scores = merged.gather(2, keep)
        tokens = torch.cat([self.tokens, tokens], dim=2)
        self.tokens = tokens.gather(2, keep[..., None].expand(-1, -1, -1, tokens.shape[-1]))
        lengths = torch.cat([self.lengths, torch.full_like(new, length, dtype=torch.long)], dim=2)
        self.lengths = lengths.gather(2, keep)
        self.count = (self.count + new.sum(dim=2)).clamp(max=self.group_size)

    def is_done(self, best_running: torch.Tensor, denominator: float) -> torch.Tensor:
        """(batch, groups) bool: no running beam can still beat the worst kept hypothesis (Transformers' rule)."""
        return (self.count == self.group_size) & (self.scores[..., -1] >= best_running.double() / denominator)

    def to_host(self, length_penalty: float) -> list[list[_Hypotheses]]:
        """Per prompt, per group: the kept hypotheses as `_Hypotheses` (one host sync)."""
        scores, tokens = self.scores.tolist(), self.tokens.tolist()
        lengths, count = self.lengths.tolist(), self.count.tolist()
        result = []
        for b, per_group in enumerate(count):
            row = []
            for group, n in enumerate(per_group):
                kept = _Hypotheses(self.group_size, length_penalty)
                kept.items = [(scores[b][group][i], tokens[b][group][i][: lengths[b][group][i]]) for i in range(n)]
                row.append(kept)
            result.append(row)
        return result


def _select_group_beams(
    top_scores: torch.Tensor, top_tokens: torch.Tensor, eos: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which of a group's 2 * group_size best candidates (batch, 2 * group_size, in rank order) become its next
    beams: the first `group_size` that are not eos, in rank order. Returns their ranks (batch, group_size), whether
    each slot is filled (with several eos ids some may not be: Transformers 4's loop left such a slot with the pad
    token, score 0 and its own beam), and which of the first `group_size` candidates are eos (finished)."""
    is_eos = torch.isin(top_tokens, eos)
    keep = ~is_eos
    keep &= keep.cumsum(dim=1) <= group_size
    ranks = (~keep).to(torch.int32).argsort(dim=1, stable=True)[:, :group_size]
    return ranks, keep.gather(1, ranks), is_eos[:, :group_size]


@torch.no_grad()
def diverse_beam_search(
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

    The returned token lists are the generated ids without the prompt, ending with an eos id when finished. The
    decode step runs on the model's device for all prompts at once: one loop over the groups (each group's
    diversity penalty needs the tokens the earlier groups chose) and one host sync per step (may every group
    stop?). It gives the same token lists as the per-prompt loop it replaced (tests/diverse_beam_reference.py).
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
    finished = _FinishedBeams(batch, num_beam_groups, group_size, max_new_tokens, pad_token_id, device)
    done = torch.zeros((batch, num_beam_groups), dtype=torch.bool, device=device)
    eos = torch.tensor(sorted(eos_token_ids), dtype=torch.long, device=device)
    beams = torch.arange(batch * num_beams, device=device).view(batch, num_beams)
    ones = torch.ones((batch, group_size), device=device)

    for step in range(max_new_tokens):
        logprobs = torch.log_softmax(output.logits[:, -1, :].float(), dim=-1)
        vocab = logprobs.shape[-1]
        logprobs = logprobs.view(batch, num_beams, vocab)
        next_tokens = torch.full((batch, num_beams), pad_token_id, dtype=torch.long, device=device)
        live = ~done[:, :, None]  # finished groups carry on with pad tokens, score 0 and their own beams
        counts = torch.zeros((batch, vocab), device=device)  # tokens chosen by the earlier groups at this step
        candidates = []
        for group in range(num_beam_groups):
            start, stop = group * group_size, (group + 1) * group_size
            scores = logprobs[:, start:stop, :]
            if group > 0 and diversity_penalty:
                scores = scores - diversity_penalty * counts[:, None, :]
            total = (scores + beam_scores[:, start:stop, None]).view(batch, -1)
            top_scores, top_indices = total.topk(2 * group_size, dim=1)
            top_tokens = top_indices % vocab
            ranks, filled, ends = _select_group_beams(top_scores, top_tokens, eos, group_size)
            filled &= live[:, group]
            chosen = torch.where(filled, top_tokens.gather(1, ranks), pad_token_id)
            next_tokens[:, start:stop] = chosen
            if group + 1 < num_beam_groups and diversity_penalty:
                counts.scatter_add_(1, chosen, ones)
            candidates.append((top_scores, top_tokens, top_indices // vocab + start, ranks, filled, ends))
        # the rest of the step for all groups at once: (batch, groups, candidates)
        top_scores, top_tokens, top_beams, ranks, filled, ends = (
            torch.stack(t, dim=1) for t in zip(*candidates, strict=True)
        )
        top_sources = beams[:, None, :1] + top_beams
        next_scores = torch.where(filled, top_scores.gather(2, ranks), 0.0)
        sources = torch.where(filled, top_sources.gather(2, ranks), beams.view(batch, num_beam_groups, group_size))
        denominator = float(step + 1) ** length_penalty
        head = slice(0, group_size)
        prefixes = generated[top_sources[..., head]]
        finished.add(ends & live, top_scores[..., head], prefixes, top_tokens[..., head], step + 1, denominator)
        done |= finished.is_done(next_scores.max(dim=2).values, denominator)
        order = sources.view(-1)
        generated = torch.cat([generated[order], next_tokens.view(-1, 1)], dim=1)
        beam_scores = next_scores.view(batch, num_beams)
        if step + 1 == max_new_tokens or bool(done.all()):
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

    return _best_hypotheses(finished, done, generated, beam_scores, num_return_sequences, eos_token_ids, length_penalty)


def _best_hypotheses(
    finished: _FinishedBeams,
    done: torch.Tensor,
    generated: torch.Tensor,
    beam_scores: torch.Tensor,
    num_return_sequences: int,
    eos_token_ids: set[int],
    length_penalty: float,
) -> list[list[list[int]]]:
    """Per prompt, the best `num_return_sequences` of its groups' finished hypotheses and, in groups not done,
    running beams (scored at the generated length); each cut after its first eos."""
    hypotheses = finished.to_host(length_penalty)
    generated_list, scores, done_list = generated.tolist(), beam_scores.tolist(), done.tolist()
    length = generated.shape[1]
    num_beams = beam_scores.shape[1]
    group_size = num_beams // len(hypotheses[0]) if hypotheses else 1
    eos_list = sorted(eos_token_ids)
    results = []
    for b, groups in enumerate(hypotheses):
        for group, kept in enumerate(groups):
            if done_list[b][group]:
                continue
            for beam in range(group * group_size, (group + 1) * group_size):
                kept.add(generated_list[b * num_beams + beam], scores[b][beam], length)
        candidates = [item for kept in groups for item in kept.items]
        candidates.sort(key=lambda item: -item[0])
        results.append([_until_eos(tokens, eos_list) for _score, tokens in candidates[:num_return_sequences]])
    return results


def _until_eos(tokens: list[int], eos_list: list[int]) -> list[int]:
    for position, token in enumerate(tokens):
        if token in eos_list:
            return tokens[: position + 1]
    return tokens


# --- generation -----------------------------------------------------------------------------------


def load_policy(name_or_path: str, dtype: str | None = None):
    """(model, tokenizer) of a causal-LM directory or hub id through `inference.load_for_inference`: on the job's
    device in eval mode, in `dtype` on a GPU (null: bfloat16 where supported), float32 on the CPU."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return load_for_inference(AutoModelForCausalLM, name_or_path, dtype=dtype), tokenizer


def shard_batches(n_batches: int, shard: int, shards: int) -> range:
    """The batches of shard `shard` (0-based) of `shards`: consecutive batches of the prompts' length-sorted plan
    (`core.batches.length_sorted_batches`: by encoded length, ties in file order), shard sizes differing by at most one
    batch. Batches are the same whatever the shard count, so deterministic decoding
    (greedy, beam search) gives every prompt the same responses however the prompts are sharded."""
    if not 0 <= shard < shards:
        raise ConfigError(f"shard must be in [0, {shards}), got {shard}")
    return range(shard * n_batches // shards, (shard + 1) * n_batches // shards)


class BatchCheckpoints:
    """The finished batches of one sampling job, one small Parquet per batch in `work_dir` (with the torch random
    state after it), so that a job stopped part way (preempted, out of time) resumes after its last finished batch
    and gives the responses an uninterrupted run gives. `fingerprint` (settings, model, prompts, shard) is written
    to the directory; batches saved under another fingerprint are deleted, not reused."""

    def __init__(self, work_dir: str | os.PathLike, fingerprint: dict):
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        stamp = self.work_dir / "fingerprint.json"
        text = json.dumps(fingerprint, sort_keys=True)
        if not stamp.exists() or stamp.read_text() != text:
            for old in self.work_dir.glob("batch-*"):
                old.unlink()
            stamp.write_text(text)

    def _path(self, batch: int, suffix: str) -> Path:
        return self.work_dir / f"batch-{batch:06d}{suffix}"

    def load(self, batch: int, prompt_indices: list[int]) -> dict[int, list[str]] | None:
        """The saved responses of `batch` by prompt index, or None when it was not finished."""
        path = self._path(batch, ".parquet")
        if not path.exists():
            return None
        table = pq.read_table(path)
        indices = table.column("prompt_index").to_pylist()
        if indices != prompt_indices:
            raise DataError(path, None, "prompt_index", f"saved prompts {indices} are not batch {batch}'s")
        return dict(zip(indices, table.column("responses").to_pylist(), strict=True))

    def save(self, batch: int, responses: dict[int, list[str]]) -> None:
        """Save `batch`: the random state first, then the responses (whose file marks the batch finished)."""
        state = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        with atomic_path(self._path(batch, ".rng.pt")) as tmp:
            torch.save(state, tmp)
        table = pa.table(
            {"prompt_index": list(responses), "responses": list(responses.values())},
            schema=pa.schema([("prompt_index", pa.int64()), ("responses", pa.list_(pa.string()))]),
        )
        with atomic_path(self._path(batch, ".parquet")) as tmp:
            pq.write_table(table, tmp)

    def restore_random_state(self, batch: int) -> None:
        """Set torch's random state to the one saved after `batch`."""
        state = torch.load(self._path(batch, ".rng.pt"), weights_only=True)
        torch.set_rng_state(state["cpu"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def remove(self) -> None:
        """Delete the work directory (the job's output is written)."""
        shutil.rmtree(self.work_dir, ignore_errors=True)


@torch.inference_mode()
def generate_responses(model, tokenizer, prompts: list[str], config: SamplingConfig) -> list[list[str]]:
    """`config.num_return_sequences` responses for each prompt (in beam-score order for beam searches)."""
    results = generate_shard(model, tokenizer, prompts, config)
    return [results[i] for i in range(len(prompts))]


@torch.inference_mode()
def generate_shard(
    model,
    tokenizer,
    prompts: list[str],
    config: SamplingConfig,
    shard: int = 0,
    shards: int = 1,
    checkpoints: BatchCheckpoints | None = None,
) -> dict[int, list[str]]:
    """Responses to the prompts of shard `shard` of `shards` (`shard_batches`), by prompt index.

    Seeded with `config.seed + shard` before the shard's first batch (shard 0 of 1: the whole run, as before
    sharding); with `checkpoints`, finished batches are saved and a rerun resumes after the last one."""
    config.validate()
    torch.manual_seed(config.seed + shard)
    model.eval()
    device = next(model.parameters()).device
    pad_id = pad_id_of(tokenizer)
    eos_ids = _eos_ids(model, tokenizer)
    encoded = encode_prompts(tokenizer, prompts, config.max_prompt_tokens)
    plan = length_sorted_batches(encoded, config.batch_size)
    batches = shard_batches(len(plan), shard, shards)
    results: dict[int, list[str]] = {}
    done = 0
    while checkpoints is not None and done < len(batches):
        saved = checkpoints.load(batches[done], plan[batches[done]])
        if saved is None:
            break
        results.update(saved)
        done += 1
    if done:
        checkpoints.restore_random_state(batches[done - 1])
        log.info("resumed after %d of %d finished batches in %s", done, len(batches), checkpoints.work_dir)
    for batch in batches[done:]:
        chunk = plan[batch]
        input_ids, attention_mask = pad_left([encoded[i] for i in chunk], pad_id)
        if config.num_beam_groups > 1:
            token_lists = diverse_beam_search(
                model,
                input_ids,
                attention_mask,
                num_beams=config.num_beams,
                num_beam_groups=config.num_beam_groups,
                diversity_penalty=config.diversity_penalty,
                max_new_tokens=config.max_new_tokens,
                eos_token_ids=eos_ids,
                pad_token_id=pad_id,
                num_return_sequences=config.num_return_sequences,
                length_penalty=config.length_penalty,
            )
        else:
            token_lists = _generate(model, input_ids.to(device), attention_mask.to(device), pad_id, eos_ids, config)
        responses = {
            i: [decode_response(tokenizer, ids, eos_ids, config.stop_strings) for ids in lists]
            for i, lists in zip(chunk, token_lists, strict=True)
        }
        if checkpoints is not None:
            checkpoints.save(batch, responses)
        results.update(responses)
    return results


def _generate(model, input_ids, attention_mask, pad_id, eos_ids, config: SamplingConfig) -> list[list[list[int]]]:
    kwargs = {
        "max_new_tokens": config.max_new_tokens,
        "do_sample": config.do_sample,
        "num_beams": config.num_beams,
        "num_return_sequences": config.num_return_sequences,
        "pad_token_id": pad_id,
        "eos_token_id": sorted(eos_ids),
        "use_cache": True,
    }
    if config.num_beams > 1:
        kwargs["length_penalty"] = config.length_penalty
    if config.do_sample:
        kwargs.update(temperature=config.temperature, top_k=config.top_k or 0, top_p=config.top_p or 1.0)
    else:  # keep a saved generation_config's sampling settings from raising warnings
        kwargs.update(temperature=None, top_k=None, top_p=None)
    sequences = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    new = sequences[:, input_ids.shape[1] :].tolist()
    n = config.num_return_sequences
    return [new[row * n : (row + 1) * n] for row in range(input_ids.shape[0])]


def sample_responses(
    prompts_path: str | os.PathLike,
    model_name: str,
    output: str | os.PathLike,
    config: SamplingConfig,
    shard: int = 0,
    shards: int = 1,
    work_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Generate for every prompt of a PROMPTS file (or of shard `shard` of `shards`: `shard_batches`) and write
    SAMPLES Parquet in prompt-file order (origin = config.origin or the model). With `work_dir`, each finished
    batch is saved there and a rerun resumes after the last one; the directory is removed once `output` is
    written."""
    config.validate()
    if shards < 1:
        raise ConfigError(f"shards must be at least 1, got {shards}")
    shard_batches(0, shard, shards)  # checks the shard index
    table = read_table(prompts_path, PROMPTS)
    if table.num_rows == 0:
        raise DataError(prompts_path, None, None, "no prompts")
    prompt_ids = table.column("prompt_id").to_pylist()
    prompts = table.column("prompt").to_pylist()
    checkpoints = None
    if work_dir is not None:
        digest = hashlib.sha256(json.dumps([prompt_ids, prompts]).encode()).hexdigest()
        fingerprint = {"config": dataclasses.asdict(config), "model": model_name, "prompts": digest}
        checkpoints = BatchCheckpoints(work_dir, {**fingerprint, "shard": shard, "shards": shards})
    model, tokenizer = load_policy(model_name, config.dtype)
    responses = generate_shard(model, tokenizer, prompts, config, shard, shards, checkpoints)
    origin = config.origin or model_name
    rows = [
        {"prompt_id": prompt_ids[i], "prompt": prompts[i], "response": response, "origin": origin, "sample_index": k}
        for i in sorted(responses)
        for k, response in enumerate(responses[i])
    ]
    empty = sum(1 for row in rows if not row["response"])
    write_rows(rows, output, SAMPLES)
    log.info(
        "wrote %d responses to %d of %d prompts (shard %d of %d; %d empty) to %s",
        len(rows),
        len(responses),
        len(prompts),
        shard,
        shards,
        empty,
        output,
    )
    if checkpoints is not None:
        checkpoints.remove()
    return rows


# --- command line ---------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of the `sample-responses` stage."""
    parser.add_argument("--prompts", required=True, help="PROMPTS Parquet")
    parser.add_argument("--model", required=True, help="policy: causal-LM directory or hub id")
    parser.add_argument("--output", required=True, help="SAMPLES Parquet to write")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--shard", type=int, default=0, help="this job's shard (0-based) of --shards")
    parser.add_argument("--shards", type=int, default=1, help="sample only the prompts of one shard of this many")
    parser.add_argument("--work-dir", default=None, help="save each finished batch here; a rerun resumes")
    add_dataclass_arguments(parser, SamplingConfig)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = dataclass_from_args(SamplingConfig, args)
    sample_responses(args.prompts, args.model, args.output, config, args.shard, args.shards, args.work_dir)


__all__ = [
    "BatchCheckpoints",
    "SamplingConfig",
    "cut_at_stop_strings",
    "decode_response",
    "diverse_beam_search",
    "encode_prompts",
    "generate_responses",
    "generate_shard",
    "load_policy",
    "pad_left",
    "sample_responses",
    "shard_batches",
]
