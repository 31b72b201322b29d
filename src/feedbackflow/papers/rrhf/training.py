"""RRHF fine-tuning of a causal LM on ranked responses (Yuan et al. 2023), on accelerate.

Input: RANKED_RESPONSES Parquet (one row per query: `query`, `responses`, `scores`). Every response becomes the
sequence bos + query ids + response ids + eos (bos only when the tokenizer has one; query and response are tokenised
separately and joined with no separator, so a space between them must be in the data). The response tokens, whose
log-probabilities make p_i and the SFT loss, are the response ids AND the final eos.

Length limit (`fit_query`; docs/methods/rrhf.md): `max_length` counts every token of a sequence (bos, prompt,
response, eos). When a query's longest response does not fit, the PROMPT is truncated on the left first (its end, next
to the response, is kept; the same prompt tokens for every response of the query), but never below
`min_prompt_tokens` (or its whole length when shorter). Only a response that still does not fit is truncated, on the
right: it keeps its first tokens and loses its end, eos first. The numbers of truncated prompts and responses are
logged and written to `rrhf_training.json`. (The original, GanjinZero/RRHF train.py, keeps the prompt's beginning up
to model_max_length and cuts each response to what is left, so a long prompt leaves no room for any response.) Bad
input is a DataError: responses and scores of different lengths, an empty (or whitespace-only) response, a non-finite
score, a query with fewer than 2 responses, or an empty query with no bos token. Errors name the file, the record
(the 0-based row index in that file) and the field.

One optimiser step sees `batch_size` queries (global, over all processes); a micro batch of `micro_batch_size`
queries is one forward pass over all their responses. The step's loss is the mean over its queries of the per-query
loss L = rrhf_weight * L_rank + L_sft (see `rrhf_losses`), whatever the micro-batch size and process count, so a
2-process run follows the same curve as a 1-process run.

Layout of a forward pass (speed only; the log-probabilities are those of the full sequences): all responses of a
query share its context, so a query is ONE row holding the context once and then each response in turn (prompt
sharing, `shared_prompt_rows`): a custom 4D attention mask lets a response token attend to the context and to the
earlier tokens of its own response only, and position ids restart after the context for every response, so each
token sees exactly the prefix and positions it has in its full sequence (equal to the full-sequence forward up to
float rounding; tests check log-probs and gradients). This costs one context instead of one per response and pads
only rows to the longest of the micro batch. It needs an attention implementation that takes a 4D mask (sdpa or
eager); otherwise every response is its own full sequence, right-padded (the original code's layout). A process's
queries of a step are sorted by length before they are cut into micro batches (`length_bucketed`), so a micro batch
pads little; only the grouping changes, not the loss. Queries are shuffled per epoch from the seed; an
incomplete last batch of an epoch is dropped. Checkpoints go to `--work-dir`; a rerun resumes from the last one, and
SIGTERM saves one at the current step and exits 143. The weights are kept in float32 (mixed precision only changes
the compute dtype). The output is a causal-LM directory (`save_pretrained` + tokenizer), `training_log.parquet` and
`rrhf_training.json`, written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from feedbackflow.core.batches import PreferenceBatchPlan, pad_scores
from feedbackflow.core.checkpoints import StopSignal
from feedbackflow.core.formats import (
    RANKED_RESPONSES,
    TRAINING_LOG,
    atomic_directory,
    read_table,
    write_json,
    write_rows,
)
from feedbackflow.core.optim import EpochTrainingConfig, prepare_adamw
from feedbackflow.core.stage_args import dataclass_from_args
from feedbackflow.core.training import (
    add_run_arguments,
    backward_micro_batch,
    checkpoint_after_step,
    open_checkpoints,
    run_as_module,
    set_threads,
    start_accelerator,
    steps_to_train,
)
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.losses.rrhf import (
    best_response_index,
    length_normalised_scores,
    response_logprob_sums,
    rrhf_loss,
    rrhf_rank_loss,
    rrhf_sft_loss,
    token_logprobs,
)
from feedbackflow.text.tokens import pad_id_of, pad_right

log = logging.getLogger("feedbackflow.papers.rrhf.training")

META_FILE = "rrhf_training.json"


@dataclass
class RRHFTrainingConfig(EpochTrainingConfig):
    """Hyperparameters of one RRHF run (defaults: the paper's scale, Yuan et al. 2023, except precision). Seed,
    AdamW, schedule, clipping, precision and checkpoint fields: `core.optim.EpochTrainingConfig`."""

    max_length: int = field(
        default=192, metadata={"help": "tokens per sequence (bos, prompt, response, eos); see min_prompt_tokens"}
    )
    min_prompt_tokens: int = field(
        default=32,
        metadata={"help": "the prompt is cut on the left down to this many tokens, then responses on the right"},
    )
    num_epochs: int = 3
    batch_size: int = field(default=64, metadata={"help": "queries per optimiser step, all processes"})
    micro_batch_size: int = field(default=1, metadata={"help": "queries per forward pass on one process"})
    learning_rate: float = 2e-5
    lr_scheduler: str = field(default="cosine", metadata={"help": "transformers scheduler name"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "warm-up steps: ceil(ratio x all steps)"})
    rrhf_weight: float = 1.0
    length_penalty: float = 1.0
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_prompt_tokens <= self.max_length - 2:
            raise ConfigError(
                f"min_prompt_tokens {self.min_prompt_tokens} must be from 0 to max_length - 2 = {self.max_length - 2} "
                "(room for a bos and at least one response token)"
            )


@dataclass
class RankedQueries:
    """Validated training rows, and where each came from (file, 0-based row index) for error messages."""

    queries: list[str]
    responses: list[list[str]]
    scores: list[list[float]]
    origins: list[tuple[str, int]]


@dataclass
class RankedBatchPlan(PreferenceBatchPlan):
    """Tokenised queries: `token_ids[q][k]` is bos + prompt + response k + eos; the first `prompt_lengths[q]` ids
    (bos and the kept prompt) are context, the rest are response tokens."""

    prompt_lengths: list[int]
    truncated_prompts: int = 0
    truncated_responses: int = 0


@dataclass
class FittedQuery:
    """One query's token ids within max_length: `context` (bos + kept prompt) and each response's kept ids (its eos
    is the last one unless the response was cut)."""

    context: list[int]
    responses: list[list[int]]
    prompt_truncated: bool
    responses_truncated: int


def fit_query(
    bos: list[int], prompt: list[int], responses: list[list[int]], eos: int, max_length: int, min_prompt_tokens: int
) -> FittedQuery:
    """Fit bos + prompt + response + eos of every response into `max_length` tokens (the module doc's rule).

    The prompt keeps its last `budget - longest response` tokens, but at least min(len(prompt), min_prompt_tokens)
    (and one token when there is no bos to precede the response); each response (ids + eos) is then cut on the right
    to the room that is left. Needs max_length >= len(bos) + that prompt floor + 1."""
    budget = max_length - len(bos)
    full = [ids + [eos] for ids in responses]
    floor = min(len(prompt), max(min_prompt_tokens, 0 if bos else 1))
    kept = min(len(prompt), max(budget - max(len(ids) for ids in full), floor))
    room = budget - kept
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for a response after {kept} prompt tokens")
    return FittedQuery(
        context=bos + prompt[len(prompt) - kept :],
        responses=[ids[:room] for ids in full],
        prompt_truncated=kept < len(prompt),
        responses_truncated=sum(len(ids) > room for ids in full),
    )


def load_ranked_responses(paths: list[str], min_responses: int = 2) -> RankedQueries:
    """Read RANKED_RESPONSES files and check every row (DataError naming file, record and field).

    RRHF ranks at least 2 responses per query; SFT (rrhf_weight 0, the SFT term alone) accepts one."""
    data = RankedQueries([], [], [], [])
    for path in paths:
        table = read_table(path, RANKED_RESPONSES)
        rows = zip(
            table.column("query").to_pylist(),
            table.column("responses").to_pylist(),
            table.column("scores").to_pylist(),
            strict=True,
        )
        for record, (query, responses, scores) in enumerate(rows):
            if query is None:
                raise DataError(path, record, "query", "is missing")
            if responses is None or len(responses) < min_responses:
                n = 0 if responses is None else len(responses)
                raise DataError(path, record, "responses", f"{n} response(s); at least {min_responses} needed")
            if scores is None or len(scores) != len(responses):
                n = 0 if scores is None else len(scores)
                raise DataError(path, record, "scores", f"{n} scores for {len(responses)} responses")
            for k, response in enumerate(responses):
                if response is None or not response.strip():
                    raise DataError(path, record, "responses", f"response {k} is empty")
            for k, score in enumerate(scores):
                if score is None or not math.isfinite(score):
                    raise DataError(path, record, "scores", f"score {k} is {score!r}, not a finite number")
            data.queries.append(query)
            data.responses.append(list(responses))
            data.scores.append([float(s) for s in scores])
            data.origins.append((str(path), record))
    return data


def tokenize_ranked(
    data: RankedQueries,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    batch_size: int = 1,
    min_prompt_tokens: int = RRHFTrainingConfig.min_prompt_tokens,
) -> RankedBatchPlan:
    """Token ids of every (query, response): bos + prompt + response + eos fitted to `max_length` by `fit_query`."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(f"tokenizer {tokenizer.name_or_path!r} has no eos token")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompts = tokenizer(data.queries, add_special_tokens=False)["input_ids"] if data.queries else []
    flat = [r for responses in data.responses for r in responses]
    flat_ids = tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else []
    token_ids, prompt_lengths, truncated_prompts, truncated_responses, start = [], [], 0, 0, 0
    for q, prompt in enumerate(prompts):
        path, record = data.origins[q]
        count = len(data.responses[q])
        responses = flat_ids[start : start + count]
        start += count
        if not bos and not prompt:
            raise DataError(path, record, "query", "empty query and no bos token: nothing precedes the response")
        fitted = fit_query(bos, prompt, responses, eos, max_length, min_prompt_tokens)
        truncated_prompts += fitted.prompt_truncated
        truncated_responses += fitted.responses_truncated
        token_ids.append([fitted.context + ids for ids in fitted.responses])
        prompt_lengths.append(len(fitted.context))
    steps_per_epoch = len(token_ids) // batch_size
    return RankedBatchPlan(
        token_ids, data.scores, steps_per_epoch, prompt_lengths, truncated_prompts, truncated_responses
    )


def response_mask_of(plan: RankedBatchPlan, indices: list[int], attention_mask: torch.Tensor) -> torch.Tensor:
    """(sequences, len) True at the response tokens (response + eos) of the flattened sequences of `indices`."""
    mask = attention_mask.bool().clone()
    row = 0
    for q in indices:
        for _ in plan.token_ids[q]:
            mask[row, : plan.prompt_lengths[q]] = False
            row += 1
    return mask


def padded_token_logprobs(
    model: torch.nn.Module, plan: RankedBatchPlan, indices: list[int], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token log-probs, response mask), both (sequences, len): one forward over every response of `indices` as its
    own full sequence (context + response), right-padded to the longest (the original RRHF code's layout)."""
    sequences = [ids for q in indices for ids in plan.token_ids[q]]
    input_ids, attention_mask = pad_right(sequences, pad_id)
    response_mask = response_mask_of(plan, indices, attention_mask).to(device)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return token_logprobs(logits, input_ids), response_mask


@dataclass
class SharedPromptRows:
    """Prompt sharing: one row per query holding its context once, then every response (ids + eos) in turn.

    `segments` is 0 on the context, k + 1 on response k and -1 on padding; a response attends causally to the
    context and to itself only, and its positions continue the context's, so each response token sees exactly the
    prefix (bos + prompt + its response so far) and positions of its full sequence. The `token_*` tensors list every
    response token: its row and position, the position whose logits predict it (the context's last for a response's
    first token), and its place in the response-aligned output (flattened sequence, 1-based column).
    """

    input_ids: torch.Tensor  # (queries, width), right-padded
    position_ids: torch.Tensor  # (queries, width)
    segments: torch.Tensor  # (queries, width)
    token_row: torch.Tensor  # (tokens,)
    token_position: torch.Tensor
    token_source: torch.Tensor
    token_sequence: torch.Tensor
    token_column: torch.Tensor
    sequences: int
    columns: int  # 1 + the longest response (with eos)

    def row_lengths(self) -> list[int]:
        return (self.segments >= 0).sum(dim=1).tolist()


def shared_prompt_rows(plan: RankedBatchPlan, indices: list[int], pad_id: int) -> SharedPromptRows:
    """The prompt-sharing layout of the queries `indices` (see `SharedPromptRows`)."""
    rows, positions, segments = [], [], []
    token = {name: [] for name in ("row", "position", "source", "sequence", "column")}
    sequence, columns = 0, 1
    for row, q in enumerate(indices):
        context = plan.prompt_lengths[q]
        ids, pos, seg = list(plan.token_ids[q][0][:context]), list(range(context)), [0] * context
        for k, full in enumerate(plan.token_ids[q]):
            if full[:context] != ids[:context]:
                raise ValueError(f"query {q}: response {k} does not start with the query's context")
            response = full[context:]
            start = len(ids)
            ids += response
            pos += range(context, context + len(response))
            seg += [k + 1] * len(response)
            token["row"] += [row] * len(response)
            token["position"] += range(start, start + len(response))
            token["source"] += [context - 1, *range(start, start + len(response) - 1)]
            token["sequence"] += [sequence] * len(response)
            token["column"] += range(1, len(response) + 1)
            sequence += 1
            columns = max(columns, len(response) + 1)
        rows.append(ids)
        positions.append(pos)
        segments.append(seg)
    width = max(len(ids) for ids in rows)

    def padded(values: list[list[int]], fill: int) -> torch.Tensor:
        return torch.tensor([v + [fill] * (width - len(v)) for v in values], dtype=torch.long)

    return SharedPromptRows(
        padded(rows, pad_id),
        padded(positions, 0),
        padded(segments, -1),
        *(torch.tensor(token[name], dtype=torch.long) for name in token),
        sequences=sequence,
        columns=columns,
    )


def shared_prompt_attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """(rows, 1, width, width) True where query position i may attend to key position j: j <= i and j is in the
    context or in i's own segment (padding, segment -1, sees the context and padding: no empty softmax row)."""
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    keys, queries = segments[:, None, :], segments[:, :, None]
    return (causal & ((keys == 0) | (keys == queries)))[:, None]


PROMPT_SHARING_ATTENTION = ("sdpa", "eager")  # implementations that take a custom 4D mask


def supports_prompt_sharing(model: torch.nn.Module) -> bool:
    """True for a transformers model whose attention implementation takes a custom 4D mask (sdpa, eager)."""
    config = getattr(extract_model_from_parallel(model), "config", None)
    return getattr(config, "_attn_implementation", None) in PROMPT_SHARING_ATTENTION


def shared_prompt_token_logprobs(
    model: torch.nn.Module, rows: SharedPromptRows, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token log-probs, response mask), both (sequences, 1 + longest response): one forward over the prompt-sharing
    rows; column 0 stands for the context (never a response token), column t for a response's token t."""
    visible = shared_prompt_attention_mask(rows.segments).to(device)
    config = getattr(extract_model_from_parallel(model), "config", None)
    if getattr(config, "_attn_implementation", None) == "eager":  # eager adds the mask to the attention scores
        dtype = next(model.parameters()).dtype
        visible = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, torch.finfo(dtype).min)
    input_ids = rows.input_ids.to(device)
    logits = model(
        input_ids=input_ids, attention_mask=visible, position_ids=rows.position_ids.to(device), use_cache=False
    ).logits
    row, position, source = (t.to(device) for t in (rows.token_row, rows.token_position, rows.token_source))
    nll = F.cross_entropy(logits[row, source].float(), input_ids[row, position], reduction="none")
    where = (rows.token_sequence.to(device), rows.token_column.to(device))
    token_logp = torch.zeros((rows.sequences, rows.columns), dtype=nll.dtype, device=device).index_put(where, -nll)
    response_mask = torch.zeros(token_logp.shape, dtype=torch.bool, device=device).index_put(
        where, torch.ones_like(nll, dtype=torch.bool)
    )
    return token_logp, response_mask


def ranked_losses(
    token_logp: torch.Tensor, response_mask: torch.Tensor, scores: list[list[float]], length_penalty: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed per-query ranking and SFT losses from the token log-probs of the flattened responses of the queries
    whose `scores` are given (rows in query order), whatever the layout they came from."""
    device = token_logp.device
    rewards, mask = pad_scores(scores)
    rewards, mask = rewards.to(device), mask.to(device)
    sum_logp, lengths = response_logprob_sums(token_logp, response_mask)
    p_flat = length_normalised_scores(sum_logp, lengths, length_penalty)
    p = torch.zeros(mask.shape, dtype=p_flat.dtype, device=device).masked_scatter(mask, p_flat)
    _, rank_sum = rrhf_rank_loss(p, rewards, mask)
    first_row = torch.cumsum(mask.sum(dim=1), dim=0) - mask.sum(dim=1)
    best_rows = first_row + best_response_index(rewards, mask)
    _, sft_sum = rrhf_sft_loss(-token_logp[best_rows], response_mask[best_rows])
    return rank_sum, sft_sum


def micro_batch_loss(
    model: torch.nn.Module,
    plan: RankedBatchPlan,
    indices: list[int],
    config: RRHFTrainingConfig,
    pad_id: int,
    device: torch.device,
    share_prompt: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed per-query ranking and SFT losses of one micro batch of queries: one forward over all responses.

    The layout is prompt sharing (`shared_prompt_rows`) where the model supports it (`share_prompt` None: ask
    `supports_prompt_sharing`), else one padded full sequence per response. The caller divides the sums by the
    number of queries in the global batch (the mean over queries).
    """
    if share_prompt is None:
        share_prompt = supports_prompt_sharing(model)
    if share_prompt:
        rows = shared_prompt_rows(plan, indices, pad_id)
        token_logp, response_mask = shared_prompt_token_logprobs(model, rows, device)
    else:
        token_logp, response_mask = padded_token_logprobs(model, plan, indices, pad_id, device)
    return ranked_losses(token_logp, response_mask, [plan.scores[q] for q in indices], config.length_penalty)


def query_tokens(plan: RankedBatchPlan, q: int, share_prompt: bool) -> int:
    """Positions query `q` fills in a forward pass: its prompt-sharing row, or its responses padded to the longest."""
    responses = plan.token_ids[q]
    if share_prompt:
        return plan.prompt_lengths[q] + sum(len(ids) - plan.prompt_lengths[q] for ids in responses)
    return len(responses) * max(len(ids) for ids in responses)


def length_bucketed(indices: list[int], lengths: list[int], size: int) -> list[list[int]]:
    """`indices` cut into micro batches of `size` after a stable sort by `lengths` (so a micro batch pads little).

    Only the grouping changes: the step's loss is a sum over its queries, the same in any grouping."""
    order = sorted(range(len(indices)), key=lambda i: lengths[i])
    ordered = [indices[i] for i in order]
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def load_policy(name_or_path: str) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A causal LM (directory or hub id) in float32, and its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32)
    return model, tokenizer


def train_rrhf(
    train_paths: list[str],
    model_name_or_path: str,
    output_dir: str,
    work_dir: str,
    config: RRHFTrainingConfig,
) -> None:
    """Fine-tune a causal LM with the RRHF loss on ranked responses and save it to `output_dir`."""
    micro_per_process = config.micro_batch_size
    data = load_ranked_responses(train_paths, min_responses=1 if config.rrhf_weight == 0 else 2)  # fails early
    accelerator, accumulation = start_accelerator(config)
    world = accelerator.num_processes

    model, tokenizer = load_policy(model_name_or_path)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    plan = tokenize_ranked(data, tokenizer, config.max_length, config.batch_size, config.min_prompt_tokens)
    if plan.truncated_prompts or plan.truncated_responses:
        log.warning(
            "%d of %d prompts left-truncated and %d of %d responses right-truncated to fit max_length %d "
            "(min_prompt_tokens %d)",
            plan.truncated_prompts, len(plan.token_ids), plan.truncated_responses,
            sum(len(ids) for ids in plan.token_ids), config.max_length, config.min_prompt_tokens,
        )  # fmt: skip
    if plan.steps_per_epoch == 0:
        raise ConfigError(f"batch_size {config.batch_size} exceeds the {len(plan.token_ids)} training queries")
    steps_per_epoch = plan.steps_per_epoch
    total_steps = steps_to_train(steps_per_epoch, config.num_epochs, config.max_steps)

    # the schedule spans every epoch; max_steps only stops the run early
    model, optimizer, scheduler = prepare_adamw(accelerator, model, config, steps_per_epoch * config.num_epochs)
    store, start_step, history = open_checkpoints(
        work_dir, accelerator, total_steps, config, [*train_paths, model_name_or_path],
        stage="rrhf", model=model_name_or_path, world=world,
    )  # fmt: skip
    if start_step == 0:
        log.info("training from %s: %d queries, %d steps", model_name_or_path, len(plan.token_ids), total_steps)

    pad_id = pad_id_of(tokenizer)
    share_prompt = supports_prompt_sharing(model)
    if not share_prompt:
        log.warning("attention implementation takes no custom 4D mask: one padded full sequence per response")
    stop = StopSignal()
    model.train()
    for step in range(start_step, total_steps):
        indices = plan.batch_indices(step, config.batch_size, config.seed)
        mine = indices[accelerator.process_index :: world]
        lengths = [query_tokens(plan, q, share_prompt) for q in mine]
        micro_batches = length_bucketed(mine, lengths, micro_per_process)
        rank_total = torch.zeros((), device=accelerator.device)
        sft_total = torch.zeros((), device=accelerator.device)
        for micro in micro_batches:
            with accelerator.accumulate(model):
                rank_sum, sft_sum = micro_batch_loss(
                    model, plan, micro, config, pad_id, accelerator.device, share_prompt
                )
                rank_part = rank_sum / config.batch_size  # the mean over the global batch's queries
                sft_part = sft_sum / config.batch_size
                loss = rrhf_loss(rank_part, sft_part, config.rrhf_weight)
                backward_micro_batch(accelerator, model, optimizer, loss, accumulation, config.max_grad_norm)
            rank_total += rank_part.detach()
            sft_total += sft_part.detach()
        learning_rate = scheduler.get_last_lr()[0]
        scheduler.step()
        rank_total = accelerator.reduce(rank_total, reduction="sum").item()
        sft_total = accelerator.reduce(sft_total, reduction="sum").item()
        history.append(
            {
                "step": step + 1,
                "epoch": step // steps_per_epoch,
                "loss": config.rrhf_weight * rank_total + sft_total,
                "ranking_loss": rank_total,
                "lm_loss": sft_total,
                "learning_rate": learning_rate,
            }
        )
        if (step + 1) % 10 == 0 or step + 1 == total_steps:
            log.info("step %d/%d loss %.4f", step + 1, total_steps, history[-1]["loss"])
        checkpoint_after_step(store, accelerator, stop, step + 1, total_steps, config.checkpoint_every, history)

    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        with atomic_directory(output_dir) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            write_rows(history, tmp / "training_log.parquet", TRAINING_LOG)
            meta = {
                "base_model": model_name_or_path,
                "training": dataclasses.asdict(config),
                "queries": len(plan.token_ids),
                "truncated_prompts": plan.truncated_prompts,
                "responses": sum(len(ids) for ids in plan.token_ids),
                "truncated_responses": plan.truncated_responses,
                "steps": total_steps,
            }
            write_json(meta, tmp / META_FILE)
        log.info("saved %s after %d steps", output_dir, total_steps)
    store.remove(accelerator)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", nargs="+", required=True, help="ranked-responses Parquet files")
    parser.add_argument("--model", required=True, help="causal LM directory or hub id (the policy to fine-tune)")
    parser.add_argument("--output", required=True, help="model directory to write")
    add_run_arguments(parser, RRHFTrainingConfig)


def main(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    config = dataclass_from_args(RRHFTrainingConfig, args)
    train_rrhf(args.train, args.model, args.output, args.work_dir, config)


if __name__ == "__main__":  # `python -m feedbackflow.papers.rrhf.training ...`, the stage without the cli.py registry
    run_as_module("python -m feedbackflow.papers.rrhf.training", "RRHF", configure, main, log)
