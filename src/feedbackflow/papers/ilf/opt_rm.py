"""OPT-RM (Scheurer et al. 2023): a causal LM trained to answer " Yes" / " No" to "Is the above an
excellent summary ...?", its held-out accuracy, P(Yes) scores of samples, and best-of-n selection.

Training data: SLF5K_COMPARISONS rows. Each pair gives two examples: `ilf_prompts.opt_rm_prompt(title, post,
preferred summary)` answered " Yes" and the same prompt with the other summary answered " No". Examples are
shuffled per epoch from the seed, independently of their pair; an incomplete last batch of an epoch is dropped.

- Answer tokens: " Yes" and " No" as the tokenizer encodes them after "Answer:" (the ids that "\\n\\nAnswer: Yes"
  adds to "\\n\\nAnswer:"). Each must be ONE token, or the stage stops with a ConfigError naming the tokenizer and the
  word (OPT's and LLaMA's tokenizers have both as single tokens; the tiny tokenizer must see them in its corpus).
- Input: bos (when the tokenizer has one) + the prompt ids, nothing after "Answer:". The model's logits at the last
  input position are the distribution of the answer token.
- Loss: full-vocabulary cross-entropy of the answer token only (`answer_token_loss`); no other token is trained.
  A step's loss is the mean over the global batch's examples, whatever the micro-batch size and process count.
- Length rule (`encode_prompts`): bos + prompt may have at most `max_input_length` tokens. The end of the prompt
  ("TL;DR: <summary>\\n\\nQuestion: ... Answer:") and its head ("Title: <title>\\n\\nText: ") are kept whole; the
  tokens are cut from the END OF THE POST (the post's beginning is kept), the post being the prompt's middle (its
  tokens are found by character offsets, so a fast tokenizer is needed). Only when the prompt does not fit even
  with no post token at all is the rest LEFT-truncated (title first), so the question and "Answer:" always stay
  next to the answer. Both counts are logged and written.
- Score: `yes_probability` = P(Yes) / (P(Yes) + P(No)) at the answer position (normalised over the two answers, as
  InstructRM's score in `papers.ilf.instruct_rm`). The paper's accuracy rule is P(Yes | preferred) > P(Yes | other);
  we apply it to this normalised P(Yes); the unnormalised P(Yes) (`accuracy_unnormalised`) is reported beside it. A
  tie counts 1/2 (`pair_accuracy`).

Stages:
- `train-opt-rm`: accelerate loop (core.training, checkpoints in --work-dir, resume on rerun, SIGTERM saves and exits
  143); with --dev comparisons, the pair accuracy after every epoch (and the last step). Output (atomic): a causal-LM
  directory (save_pretrained + tokenizer), `opt_rm.json` (answer token ids, the prompt template, the length rule,
  training figures and dev evaluations) and `training_log.parquet` (TRAINING_LOG; `loss` = the answer loss).
- `evaluate-opt-rm`: held-out SLF5K_COMPARISONS -> JSON {accuracy, n_pairs, ties, ...}. The paper's OPT-1.3B RM
  reached 73.4% with 5K training comparisons, 67.2% with 1K and 53.4% with 100.
- `score-opt-rm`: SAMPLES (response = a summary) joined to SLF5K_POSTS by prompt_id = post_id for the title and post
  -> SCORED_SAMPLES, score = P(Yes), status "ok", scorer "opt-rm:<model>". Batched (sorted by length), no_grad,
  left padding with position ids counted from the first real token. An empty response is scored like any other
  (the question then follows "TL;DR: " with nothing after it).
- `best-of-n`: SCORED_SAMPLES with n samples per prompt -> SAMPLES holding each prompt's best-scored sample (ties: the
  lowest sample_index), origin from --origin, sample_index 0 (the paper: best of 64).

Bad input is a DataError naming file, record and field: `preferred` not "A"/"B", an empty summary, a sample whose
prompt_id is not in the posts table.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel, gather_object
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from feedbackflow.core.batches import length_sorted_batches
from feedbackflow.core.checkpoints import StopSignal
from feedbackflow.core.formats import (
    SAMPLES,
    SCORED_SAMPLES,
    SLF5K_COMPARISONS,
    SLF5K_POSTS,
    TRAINING_LOG,
    atomic_directory,
    read_json,
    read_sample_rows,
    read_table,
    write_json,
    write_rows,
    write_table,
)
from feedbackflow.core.inference import load_for_inference
from feedbackflow.core.optim import EpochTrainingConfig, prepare_adamw
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.core.training import (
    add_run_arguments,
    backward_micro_batch,
    checkpoint_after_step,
    open_checkpoints,
    run_as_module,
    start_accelerator,
    steps_to_train,
    world_size_from_env,
)
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.papers.ilf.prompts import OPT_RM_PROMPT, opt_rm_prompt
from feedbackflow.stages.sample_tables import merge_samples
from feedbackflow.text.tokens import pad_id_of, pad_left

log = logging.getLogger("feedbackflow.papers.ilf.opt_rm")

META_FILE = "opt_rm.json"
LOG_FILE = "training_log.parquet"
YES, NO = "Yes", "No"
ANSWER_CONTEXT = "\n\nAnswer:"  # how every OPT-RM prompt ends; the answer token follows it
PAPER_ACCURACY = {"5K": 0.734, "1K": 0.672, "100": 0.534}  # Scheurer et al. 2023, OPT-1.3B classification RM


@dataclass
class OptRMTrainingConfig(EpochTrainingConfig):
    """Hyperparameters of one OPT-RM run. The paper (Scheurer et al. 2023) gives only the method; these are ordinary
    fine-tuning settings for an OPT-1.3B-sized model (lr 1e-5, 1 epoch, 32 examples a step, short warm-up, no weight
    decay). Seed, AdamW, schedule, clipping, precision and checkpoint fields: `core.optim.EpochTrainingConfig`."""

    max_input_length: int = field(
        default=1024, metadata={"help": "tokens of bos + prompt; the post is cut from its end to fit"}
    )
    batch_size: int = field(default=32, metadata={"help": "examples (summaries) per optimiser step, all processes"})
    learning_rate: float = 1e-5
    warmup_ratio: float = field(default=0.03, metadata={"help": "warm-up steps: ceil(ratio x all steps)"})
    eval_batch_size: int = field(default=32, metadata={"help": "dev examples per forward pass on one process"})
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        if self.max_input_length < 2:
            raise ConfigError(f"max_input_length must be at least 2, got {self.max_input_length}")
        for name in ("num_epochs", "batch_size", "micro_batch_size", "eval_batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1 when set, got {self.max_steps}")


@dataclass
class OptRMScoringConfig:
    """Settings of scoring with a trained OPT-RM (evaluate-opt-rm, score-opt-rm)."""

    max_input_length: int | None = field(
        default=None, metadata={"help": "tokens of bos + prompt (default: the model's training value, else 1024)"}
    )
    batch_size: int = field(default=16, metadata={"help": "prompts per forward pass"})
    dtype: str | None = field(default=None, metadata={"help": "dtype on a GPU (null: bf16 if supported); CPU: fp32"})


# --- the rules: loss, score, accuracy -----------------------------------------------------------------------------


def answer_token_loss(
    logits_at_answer: torch.Tensor,
    target_is_yes: torch.Tensor,
    yes_id: int,
    no_id: int,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy over the FULL vocabulary of the answer token: -log softmax(logits)[yes_id] for an example whose
    target is " Yes" (the preferred summary), -log softmax(logits)[no_id] otherwise. `logits_at_answer` is
    (examples, vocab), the logits at the last prompt position; reduction "mean", "sum" or "none"."""
    targets = torch.where(
        target_is_yes.to(logits_at_answer.device).bool(),
        torch.tensor(yes_id, device=logits_at_answer.device),
        torch.tensor(no_id, device=logits_at_answer.device),
    )
    return F.cross_entropy(logits_at_answer.float(), targets, reduction=reduction)


def yes_probability(logits_at_answer: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """P(Yes) / (P(Yes) + P(No)) from the logits at the answer position (the softmax over the two answers only, which
    is sigmoid(logit_yes - logit_no)); shape (...,) for logits (..., vocab)."""
    logits = logits_at_answer.float()
    return torch.sigmoid(logits[..., yes_id] - logits[..., no_id])


def pair_accuracy(
    p_yes_preferred: Sequence[float] | torch.Tensor, p_yes_other: Sequence[float] | torch.Tensor
) -> float:
    """The share of pairs with P(Yes | preferred) > P(Yes | other) (the paper's rule); a tie counts 1/2, so a model
    that gives every summary the same score is at 0.5, chance, not 0."""
    preferred = torch.as_tensor(p_yes_preferred, dtype=torch.float64)
    other = torch.as_tensor(p_yes_other, dtype=torch.float64)
    if preferred.shape != other.shape or preferred.ndim != 1:
        raise ValueError(f"pair_accuracy needs two 1-D lists of equal length, got {preferred.shape}, {other.shape}")
    if preferred.numel() == 0:
        raise ValueError("pair_accuracy of no pairs")
    wins = (preferred > other).double() + 0.5 * (preferred == other).double()
    return float(wins.mean())


# --- tokens -------------------------------------------------------------------------------------------------------


def answer_token_id(tokenizer: PreTrainedTokenizerBase, word: str) -> int:
    """The id of " <word>" as the tokenizer encodes it after "Answer:" (ConfigError unless exactly one token)."""
    context = tokenizer(ANSWER_CONTEXT, add_special_tokens=False)["input_ids"]
    full = tokenizer(f"{ANSWER_CONTEXT} {word}", add_special_tokens=False)["input_ids"]
    if full[: len(context)] != context or len(full) != len(context) + 1:
        added = tokenizer.convert_ids_to_tokens(full[len(context) :]) if full[: len(context)] == context else full
        raise ConfigError(
            f"tokenizer {tokenizer.name_or_path!r}: the answer {word!r} after 'Answer:' is not one token ({added}); "
            "OPT-RM needs ' Yes' and ' No' to be single tokens"
        )
    return full[-1]


def answer_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """(yes_id, no_id); ConfigError when they are not single tokens or are the same token."""
    yes_id, no_id = answer_token_id(tokenizer, YES), answer_token_id(tokenizer, NO)
    if yes_id == no_id:
        raise ConfigError(f"tokenizer {tokenizer.name_or_path!r}: ' Yes' and ' No' are the same token {yes_id}")
    return yes_id, no_id


@dataclass
class EncodedPrompts:
    """bos + prompt ids of every example, and how many were cut (post tokens only / also left-truncated)."""

    token_ids: list[list[int]]
    truncated_posts: int = 0
    left_truncated: int = 0


def post_span(title: str, post: str) -> tuple[int, int]:
    """Character span [start, end) of the post inside `opt_rm_prompt(title, post, summary)` (any summary)."""
    start = len(OPT_RM_PROMPT.split("{post}")[0].format(title=title))
    return start, start + len(post)


def fit_prompt(ids: list[int], post_tokens: tuple[int, int], room: int) -> tuple[list[int], bool, bool]:
    """(ids of at most `room` tokens, post cut?, left-truncated?): drop the post's last tokens (ids[i0:i1] are the
    post) until the prompt fits; if it does not fit without any post token, drop the post and keep the last `room`."""
    excess = len(ids) - room
    if excess <= 0:
        return ids, False, False
    i0, i1 = post_tokens
    if excess <= i1 - i0:
        return ids[: i1 - excess] + ids[i1:], True, False
    rest = ids[:i0] + ids[i1:]
    return rest[len(rest) - room :], i1 > i0, True


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    titles: list[str],
    posts: list[str],
    summaries: list[str],
    max_input_length: int,
) -> EncodedPrompts:
    """bos + ids of `opt_rm_prompt(title, post, summary)`, at most `max_input_length` tokens (module doc, "Length
    rule"): the post loses its last tokens first; the question and "Answer:" are always kept."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"tokenizer {tokenizer.name_or_path!r} is not a fast tokenizer: OPT-RM needs its offsets")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    room = max_input_length - len(bos)
    if room < 1:
        raise ConfigError(f"max_input_length {max_input_length} leaves no room for the prompt")
    prompts = [opt_rm_prompt(t, p, s) for t, p, s in zip(titles, posts, summaries, strict=True)]
    if not prompts:
        return EncodedPrompts([])
    encoded = tokenizer(prompts, add_special_tokens=False, return_offsets_mapping=True)
    result = EncodedPrompts([])
    for ids, offsets, title, post in zip(encoded["input_ids"], encoded["offset_mapping"], titles, posts, strict=True):
        start, end = post_span(title, post)
        inside = [k for k, (a, b) in enumerate(offsets) if a < end and b > start]
        if inside:
            post_tokens = (inside[0], inside[-1] + 1)
        else:  # an empty post: no token to cut
            first_after = next((k for k, (a, _) in enumerate(offsets) if a >= start), len(ids))
            post_tokens = (first_after, first_after)
        kept, cut_post, left = fit_prompt(list(ids), post_tokens, room)
        result.token_ids.append(bos + kept)
        result.truncated_posts += cut_post
        result.left_truncated += left
    return result


# --- data ---------------------------------------------------------------------------------------------------------


@dataclass
class Comparisons:
    """Validated comparison pairs: the preferred and the other summary of each post, and where each row came from."""

    post_ids: list[str]
    titles: list[str]
    posts: list[str]
    preferred: list[str]
    other: list[str]
    origins: list[tuple[str, int]]

    def __len__(self) -> int:
        return len(self.post_ids)


def load_comparisons(paths: Sequence[str | os.PathLike]) -> Comparisons:
    """Read SLF5K_COMPARISONS files; `preferred` not "A"/"B" or an empty summary is a DataError (file, record,
    field)."""
    data = Comparisons([], [], [], [], [], [])
    for path in paths:
        try:
            rows = read_table(path, SLF5K_COMPARISONS).to_pylist()
        except ValueError as error:  # missing columns, nulls in a non-null column, not Parquet
            raise DataError(str(path), None, None, str(error)) from error
        for record, row in enumerate(rows):
            for name in ("post_id", "title", "post"):
                if row[name] is None:
                    raise DataError(str(path), record, name, "missing value")
            if row["preferred"] not in ("A", "B"):
                raise DataError(str(path), record, "preferred", f"is {row['preferred']!r}, not 'A' or 'B'")
            for name in ("summary_a", "summary_b"):
                if row[name] is None or not row[name].strip():
                    raise DataError(str(path), record, name, "empty summary")
            a_wins = row["preferred"] == "A"
            data.post_ids.append(row["post_id"])
            data.titles.append(row["title"])
            data.posts.append(row["post"])
            data.preferred.append(row["summary_a"] if a_wins else row["summary_b"])
            data.other.append(row["summary_b"] if a_wins else row["summary_a"])
            data.origins.append((str(path), record))
    return data


@dataclass
class PairEncoding:
    """Token ids of both examples of every pair: example 2i is pair i's preferred summary (target Yes), 2i + 1 its
    other summary (target No)."""

    token_ids: list[list[int]]
    truncated_posts: int
    left_truncated: int

    @property
    def labels(self) -> list[bool]:
        return [k % 2 == 0 for k in range(len(self.token_ids))]


def encode_pairs(data: Comparisons, tokenizer: PreTrainedTokenizerBase, max_input_length: int) -> PairEncoding:
    """Both examples of every pair (preferred first), encoded by `encode_prompts`."""
    summaries = [s for pair in zip(data.preferred, data.other, strict=True) for s in pair]
    titles = [t for t in data.titles for _ in range(2)]
    posts = [p for p in data.posts for _ in range(2)]
    encoded = encode_prompts(tokenizer, titles, posts, summaries, max_input_length)
    return PairEncoding(encoded.token_ids, encoded.truncated_posts, encoded.left_truncated)


@dataclass
class TrainingPlan:
    """Training examples (token ids, Yes target) and the global batches of every step."""

    token_ids: list[list[int]]
    labels: list[bool]
    steps_per_epoch: int

    def batch_indices(self, step: int, batch_size: int, seed: int) -> list[int]:
        """The examples of optimiser step `step`: a seeded permutation per epoch, cut into whole batches."""
        epoch, position = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(self.token_ids), generator=generator).tolist()
        return order[position * batch_size : (position + 1) * batch_size]


# --- forward ------------------------------------------------------------------------------------------------------


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    return set(inspect.signature(extract_model_from_parallel(model).forward).parameters)


def answer_logits(model: torch.nn.Module, sequences: list[list[int]], pad_id: int, device) -> torch.Tensor:
    """(examples, vocab) logits at the last token of each sequence: one forward, left-padded, with position ids
    counted from each sequence's first real token (so padding changes nothing) and only the last logits computed
    where the model allows it."""
    input_ids, attention_mask = pad_left(sequences, pad_id)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    accepted = _forward_parameters(model)
    kwargs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "use_cache": False}
    if "position_ids" in accepted:
        kwargs["position_ids"] = position_ids.to(device)
    if "logits_to_keep" in accepted:
        kwargs["logits_to_keep"] = 1
    return model(**kwargs).logits[:, -1]


@torch.no_grad()
def answer_log_probabilities(
    model: torch.nn.Module, sequences: list[list[int]], pad_id: int, yes_id: int, no_id: int, batch_size: int
) -> torch.Tensor:
    """(examples, 2) float64: full-vocabulary log P(Yes) and log P(No) at the answer position of every sequence,
    in input order; batched by similar length."""
    was_training = model.training
    model.eval()
    device = next(extract_model_from_parallel(model).parameters()).device
    out = torch.zeros((len(sequences), 2), dtype=torch.float64)
    for chunk in length_sorted_batches(sequences, batch_size):
        logp = torch.log_softmax(answer_logits(model, [sequences[i] for i in chunk], pad_id, device).float(), dim=-1)
        out[chunk] = logp[:, [yes_id, no_id]].double().cpu()
    model.train(was_training)
    return out


def normalised_p_yes(log_probs: torch.Tensor) -> torch.Tensor:
    """P(Yes) / (P(Yes) + P(No)) from (examples, 2) log P(Yes), log P(No) (equal to `yes_probability`)."""
    return torch.sigmoid(log_probs[:, 0] - log_probs[:, 1])


def comparison_metrics(log_probs: torch.Tensor) -> dict:
    """Accuracy figures from the (2 x pairs, 2) answer log-probs of `PairEncoding` order (preferred, other, ...)."""
    p_yes = normalised_p_yes(log_probs)
    raw = log_probs[:, 0].exp()
    preferred, other = p_yes[0::2], p_yes[1::2]
    return {
        "accuracy": pair_accuracy(preferred, other),
        "n_pairs": int(preferred.numel()),
        "ties": int((preferred == other).sum()),
        "accuracy_unnormalised": pair_accuracy(raw[0::2], raw[1::2]),
        "mean_p_yes_preferred": float(preferred.mean()),
        "mean_p_yes_other": float(other.mean()),
        "mean_yes_no_mass": float((log_probs.exp().sum(dim=1)).mean()),
    }


# --- training -----------------------------------------------------------------------------------------------------


def load_causal_lm(name_or_path: str, dtype: str | None = None) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    torch_dtype = torch.float32
    if dtype is not None:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ConfigError(f"dtype {dtype!r} is not a torch dtype")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype)
    return model, tokenizer


def evaluate_during_training(accelerator, model, dev: PairEncoding, pad_id, yes_id, no_id, batch_size) -> dict:
    """Dev pair metrics: every process scores an equal share of the examples (the last index repeated to fill the
    share: under ZeRO-3 every process must make the same number of forward passes) and all gather them."""
    world, rank, n = accelerator.num_processes, accelerator.process_index, len(dev.token_ids)
    padded = list(range(n)) + [n - 1] * (-n % world)
    mine = padded[rank::world]
    unwrapped = accelerator.unwrap_model(model)
    logp = answer_log_probabilities(unwrapped, [dev.token_ids[i] for i in mine], pad_id, yes_id, no_id, batch_size)
    gathered = gather_object([(i, row) for i, row in zip(mine, logp.tolist(), strict=True)])
    full = torch.zeros((len(dev.token_ids), 2), dtype=torch.float64)
    for i, row in gathered:
        full[i] = torch.tensor(row, dtype=torch.float64)
    return comparison_metrics(full)


def is_eval_step(done: int, steps_per_epoch: int, total_steps: int) -> bool:
    return done % steps_per_epoch == 0 or done == total_steps


def train_opt_rm(
    train_paths: list[str],
    dev_paths: list[str] | None,
    model_name_or_path: str,
    output_dir: str,
    work_dir: str,
    config: OptRMTrainingConfig,
) -> dict:
    """Fine-tune a causal LM as OPT-RM on comparisons and save it to `output_dir`; returns `opt_rm.json`'s content."""
    config.validate()
    dev_paths = list(dev_paths or [])
    train_data = load_comparisons(train_paths)  # fails early, before any model is loaded
    dev_data = load_comparisons(dev_paths) if dev_paths else None
    if not len(train_data):
        raise DataError(", ".join(map(str, train_paths)), None, None, "no comparisons to train on")
    micro = config.micro_batch_size
    accelerator, accumulation = start_accelerator(config)
    world = accelerator.num_processes

    model, tokenizer = load_causal_lm(model_name_or_path)
    yes_id, no_id = answer_token_ids(tokenizer)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    train = encode_pairs(train_data, tokenizer, config.max_input_length)
    dev = encode_pairs(dev_data, tokenizer, config.max_input_length) if dev_data is not None else None
    if train.truncated_posts or train.left_truncated:
        log.warning(
            "%d of %d training prompts lost the end of their post to fit max_input_length %d; %d were also "
            "left-truncated",
            train.truncated_posts, len(train.token_ids), config.max_input_length, train.left_truncated,
        )  # fmt: skip
    plan = TrainingPlan(train.token_ids, train.labels, len(train.token_ids) // config.batch_size)
    if plan.steps_per_epoch == 0:
        raise ConfigError(f"batch_size {config.batch_size} exceeds the {len(plan.token_ids)} training examples")
    steps_per_epoch = plan.steps_per_epoch
    total_steps = steps_to_train(steps_per_epoch, config.num_epochs, config.max_steps)

    # the schedule spans every epoch; max_steps only stops the run early
    model, optimizer, scheduler = prepare_adamw(accelerator, model, config, steps_per_epoch * config.num_epochs)
    store, start_step, history = open_checkpoints(
        work_dir, accelerator, total_steps, config,
        [*map(str, train_paths), *map(str, dev_paths), model_name_or_path],
        stage="opt-rm", model=model_name_or_path, world=world,
    )  # fmt: skip
    if start_step == 0:
        log.info(
            "OPT-RM from %s: %d pairs (%d examples), %d steps; answers ' Yes' = %d, ' No' = %d",
            model_name_or_path, len(train_data), len(plan.token_ids), total_steps, yes_id, no_id,
        )  # fmt: skip

    pad_id = pad_id_of(tokenizer)
    stop = StopSignal()
    model.train()
    for step in range(start_step, total_steps):
        indices = plan.batch_indices(step, config.batch_size, config.seed)
        mine = indices[accelerator.process_index :: world]
        loss_total = torch.zeros((), device=accelerator.device)
        for chunk in [mine[i : i + micro] for i in range(0, len(mine), micro)]:
            with accelerator.accumulate(model):
                logits = answer_logits(model, [plan.token_ids[i] for i in chunk], pad_id, accelerator.device)
                targets = torch.tensor([plan.labels[i] for i in chunk])
                loss = answer_token_loss(logits, targets, yes_id, no_id, reduction="sum") / config.batch_size
                backward_micro_batch(accelerator, model, optimizer, loss, accumulation, config.max_grad_norm)
            loss_total += loss.detach()
        learning_rate = scheduler.get_last_lr()[0]
        scheduler.step()
        done = step + 1
        row = {
            "step": done,
            "epoch": step // steps_per_epoch,
            "loss": accelerator.reduce(loss_total, reduction="sum").item(),
            "ranking_loss": None,
            "lm_loss": None,
            "learning_rate": learning_rate,
            "dev": None,
        }
        history.append(row)
        if dev is not None and is_eval_step(done, steps_per_epoch, total_steps):
            row["dev"] = evaluate_during_training(
                accelerator, model, dev, pad_id, yes_id, no_id, config.eval_batch_size
            )
            log.info("step %d/%d loss %.4f dev accuracy %.4f", done, total_steps, row["loss"], row["dev"]["accuracy"])
        elif done % 10 == 0 or done == total_steps:
            log.info("step %d/%d loss %.4f", done, total_steps, row["loss"])
        checkpoint_after_step(store, accelerator, stop, done, total_steps, config.checkpoint_every, history)

    last_epoch = [r["loss"] for r in history if r["epoch"] == history[-1]["epoch"]]
    summary = {
        "kind": "opt-rm",
        "base_model": model_name_or_path,
        "prompt_template": OPT_RM_PROMPT,
        "answers": {"yes": {"text": f" {YES}", "id": yes_id}, "no": {"text": f" {NO}", "id": no_id}},
        "score": "P(Yes) / (P(Yes) + P(No)) of the token after the prompt",
        "max_input_length": config.max_input_length,
        "length_rule": "bos + prompt <= max_input_length: the post loses its last tokens; if that is not enough, "
        "the rest is left-truncated (the question is always kept)",
        "training": dataclasses.asdict(config),
        "train_files": [str(p) for p in train_paths],
        "dev_files": [str(p) for p in dev_paths],
        "train_pairs": len(train_data),
        "train_examples": len(plan.token_ids),
        "truncated_posts": train.truncated_posts,
        "left_truncated": train.left_truncated,
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "first_loss": history[0]["loss"],
        "last_epoch_mean_loss": sum(last_epoch) / len(last_epoch),
        "evaluations": [{"step": r["step"], "epoch": r["epoch"], **r["dev"]} for r in history if r.get("dev")],
    }
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        with atomic_directory(output_dir) as tmp:
            accelerator.unwrap_model(model).save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            write_rows([{k: r[k] for k in TRAINING_LOG.names} for r in history], tmp / LOG_FILE, TRAINING_LOG)
            write_json(summary, tmp / META_FILE)
        log.info("saved %s after %d steps", output_dir, total_steps)
    store.remove(accelerator)
    return summary


# --- scoring ------------------------------------------------------------------------------------------------------


@dataclass
class LoadedRM:
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    yes_id: int
    no_id: int
    max_input_length: int


def load_opt_rm(model_name_or_path: str, config: OptRMScoringConfig) -> LoadedRM:
    """A trained OPT-RM directory (or any causal LM: a zero-shot baseline) through `inference.load_for_inference`
    (the job's device, eval mode, `config.dtype` on a GPU); the answer ids are checked against `opt_rm.json` when
    it is there."""
    if config.batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {config.batch_size}")
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    model = load_for_inference(AutoModelForCausalLM, model_name_or_path, dtype=config.dtype)
    yes_id, no_id = answer_token_ids(tokenizer)
    meta_path = Path(model_name_or_path) / META_FILE
    meta = read_json(meta_path) if meta_path.is_file() else None
    if meta is not None and [meta["answers"]["yes"]["id"], meta["answers"]["no"]["id"]] != [yes_id, no_id]:
        raise ConfigError(f"{meta_path}: answer ids {meta['answers']} differ from the tokenizer's ({yes_id}, {no_id})")
    if meta is None:
        log.warning("%s has no %s: scoring it as a plain causal LM (zero-shot)", model_name_or_path, META_FILE)
    max_input_length = config.max_input_length or (meta["max_input_length"] if meta else 1024)
    return LoadedRM(model, tokenizer, yes_id, no_id, max_input_length)


def score_prompts(rm: LoadedRM, titles: list[str], posts: list[str], summaries: list[str], batch_size: int):
    """((examples, 2) answer log-probs, EncodedPrompts) of OPT-RM's question about each summary."""
    encoded = encode_prompts(rm.tokenizer, titles, posts, summaries, rm.max_input_length)
    if encoded.truncated_posts:
        log.info(
            "%d of %d prompts lost the end of their post (%d also left-truncated) to fit %d tokens",
            encoded.truncated_posts, len(encoded.token_ids), encoded.left_truncated, rm.max_input_length,
        )  # fmt: skip
    logp = answer_log_probabilities(
        rm.model, encoded.token_ids, pad_id_of(rm.tokenizer), rm.yes_id, rm.no_id, batch_size
    )
    return logp, encoded


@torch.inference_mode()
def evaluate_opt_rm(
    comparison_paths: list[str], model_name_or_path: str, output: str | os.PathLike, config: OptRMScoringConfig
) -> dict:
    """Pair accuracy of OPT-RM on held-out comparisons, written as JSON."""
    data = load_comparisons(comparison_paths)
    if not len(data):
        raise DataError(", ".join(map(str, comparison_paths)), None, None, "no comparisons to evaluate")
    rm = load_opt_rm(model_name_or_path, config)
    pairs = encode_pairs(data, rm.tokenizer, rm.max_input_length)
    logp = answer_log_probabilities(
        rm.model, pairs.token_ids, pad_id_of(rm.tokenizer), rm.yes_id, rm.no_id, config.batch_size
    )
    result = {
        "model": model_name_or_path,
        "comparisons": [str(p) for p in comparison_paths],
        **comparison_metrics(logp),
        "rule": "P(Yes | preferred) > P(Yes | other), P(Yes) normalised over Yes and No; ties count 1/2",
        "max_input_length": rm.max_input_length,
        "truncated_posts": pairs.truncated_posts,
        "left_truncated": pairs.left_truncated,
        "paper_accuracy": PAPER_ACCURACY,
    }
    write_json(result, output)
    log.info("OPT-RM %s: accuracy %.4f on %d pairs", model_name_or_path, result["accuracy"], result["n_pairs"])
    return result


def load_posts(paths: Sequence[str | os.PathLike]) -> dict[str, dict]:
    """post_id -> SLF5K_POSTS row; the same id with another title or text in a later row is a DataError."""
    posts: dict[str, dict] = {}
    for path in paths:
        try:
            rows = read_table(path, SLF5K_POSTS).to_pylist()
        except ValueError as error:
            raise DataError(str(path), None, None, str(error)) from error
        for record, row in enumerate(rows):
            for name in ("post_id", "title", "post"):
                if row[name] is None:
                    raise DataError(str(path), record, name, "missing value")
            seen = posts.setdefault(row["post_id"], row)
            if (seen["title"], seen["post"]) != (row["title"], row["post"]):
                raise DataError(
                    str(path), record, "post", f"post {row['post_id']!r} has another text in an earlier row"
                )
    return posts


@torch.inference_mode()
def score_samples(
    samples_paths: list[str | os.PathLike],
    posts_paths: list[str | os.PathLike],
    model_name_or_path: str,
    output: str | os.PathLike,
    config: OptRMScoringConfig,
) -> pa.Table:
    """SCORED_SAMPLES with score = OPT-RM's P(Yes) of every sample's response as a summary of its post."""
    posts = load_posts(posts_paths)
    for path in samples_paths:  # every sample must join to a post; errors name the file and its row
        for record, row in enumerate(read_sample_rows(path)):
            if row["prompt_id"] not in posts:
                raise DataError(str(path), record, "prompt_id", f"{row['prompt_id']!r} is not a post_id of the posts")
    samples = merge_samples(list(samples_paths))
    if samples.num_rows == 0:
        raise DataError(", ".join(map(str, samples_paths)), None, None, "no samples to score")
    rm = load_opt_rm(model_name_or_path, config)
    joined = [posts[pid] for pid in samples.column("prompt_id").to_pylist()]
    logp, _ = score_prompts(
        rm,
        [p["title"] for p in joined],
        [p["post"] for p in joined],
        samples.column("response").to_pylist(),
        config.batch_size,
    )
    n = samples.num_rows
    columns = {name: samples.column(name) for name in SAMPLES.names}
    columns.update(
        score=pa.array(normalised_p_yes(logp).tolist(), pa.float64()),
        status=pa.array(["ok"] * n, pa.string()),
        reason=pa.nulls(n, pa.string()),
        scorer=pa.array([f"opt-rm:{model_name_or_path}"] * n, pa.string()),
        prompt_tokens=pa.nulls(n, pa.int64()),
        completion_tokens=pa.nulls(n, pa.int64()),
    )
    table = pa.table(columns).cast(SCORED_SAMPLES)
    write_table(table, output)
    log.info("scored %d samples with OPT-RM %s into %s", n, model_name_or_path, output)
    return table


# --- best of n ----------------------------------------------------------------------------------------------------


def best_of_n_rows(
    scored: list[dict], origin: str, n: int | None = None, where: str = "<scored samples>"
) -> list[dict]:
    """SAMPLES rows: for each prompt (first-seen order) its highest-scored sample (status "ok"); ties go to the
    lowest sample_index, then the earlier row. With `n`, only samples with sample_index < n take part and a prompt
    with fewer than n of them is a DataError. One scorer only: mixing scorers' scales is a DataError."""
    if n is not None and n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    groups: dict[str, list[tuple[int, dict]]] = {}
    scorers: set[str] = set()
    for record, row in enumerate(scored):
        if n is not None and row["sample_index"] >= n:
            continue
        group = groups.setdefault(row["prompt_id"], [])
        if group and group[0][1]["prompt"] != row["prompt"]:
            raise DataError(where, record, "prompt", f"prompt {row['prompt_id']!r} has another text in an earlier row")
        group.append((record, row))
        if row["status"] == "ok":
            if row["score"] is None or not math.isfinite(row["score"]):
                raise DataError(where, record, "score", f"status 'ok' but the score is {row['score']!r}")
            scorers.add(row["scorer"])
    if len(scorers) > 1:
        raise DataError(where, None, "scorer", f"several scorers {sorted(scorers)}: best-of-n needs one scale")
    out = []
    for pid, group in groups.items():
        if n is not None and len(group) < n:
            raise DataError(where, group[0][0], "sample_index", f"prompt {pid!r} has {len(group)} of {n} samples")
        ok = [(record, row) for record, row in group if row["status"] == "ok"]
        if not ok:
            raise DataError(where, group[0][0], "status", f"prompt {pid!r} has no sample scored 'ok'")
        _, best = min(ok, key=lambda item: (-item[1]["score"], item[1]["sample_index"], item[0]))
        out.append(
            {"prompt_id": pid, "prompt": best["prompt"], "response": best["response"], "origin": origin,
             "sample_index": 0}
        )  # fmt: skip
    return out


def best_of_n(
    scored_paths: list[str | os.PathLike],
    output: str | os.PathLike,
    origin: str,
    n: int | None = None,
    summary_path: str | os.PathLike | None = None,
) -> list[dict]:
    """Read SCORED_SAMPLES file(s) and write the best sample of every prompt as SAMPLES."""
    rows: list[dict] = []
    for path in scored_paths:
        try:
            rows.extend(read_table(path, SCORED_SAMPLES).to_pylist())
        except ValueError as error:
            raise DataError(str(path), None, None, str(error)) from error
    where = str(scored_paths[0]) if len(scored_paths) == 1 else ", ".join(map(str, scored_paths))
    if not rows:
        raise DataError(where, None, None, "no scored samples")
    best = best_of_n_rows(rows, origin, n, where)
    write_rows(best, output, SAMPLES)
    counts: dict[str, int] = {}
    for row in rows:
        if n is None or row["sample_index"] < n:
            counts[row["prompt_id"]] = counts.get(row["prompt_id"], 0) + 1
    log.info("best of %s: %d prompts, %d to %d samples each", n or "all", len(best), min(counts.values()),
             max(counts.values()))  # fmt: skip
    if summary_path is not None:
        write_json(
            {"origin": origin, "n": n, "prompts": len(best), "min_samples": min(counts.values()),
             "max_samples": max(counts.values()), "scored": [str(p) for p in scored_paths]},
            summary_path,
        )  # fmt: skip
    return best


# --- command line -------------------------------------------------------------------------------------------------


def _threads(args: argparse.Namespace, processes: int = 1) -> None:
    if getattr(args, "threads", None):
        torch.set_num_threads(max(1, args.threads // processes))


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of `train-opt-rm`."""
    parser.add_argument("--train", nargs="+", required=True, help="SLF5K_COMPARISONS Parquet files")
    parser.add_argument("--dev", nargs="*", default=None, help="SLF5K_COMPARISONS for the per-epoch accuracy")
    parser.add_argument("--model", required=True, help="causal LM directory or hub id (e.g. facebook/opt-1.3b)")
    parser.add_argument("--output", required=True, help="model directory to write")
    add_run_arguments(parser, OptRMTrainingConfig)


def main(args: argparse.Namespace) -> None:
    _threads(args, world_size_from_env())
    config = dataclass_from_args(OptRMTrainingConfig, args)
    train_opt_rm(args.train, args.dev, args.model, args.output, args.work_dir, config)


def configure_evaluate(parser: argparse.ArgumentParser) -> None:
    """Flags of `evaluate-opt-rm`."""
    parser.add_argument("--comparisons", nargs="+", required=True, help="held-out SLF5K_COMPARISONS Parquet files")
    parser.add_argument("--model", required=True, help="OPT-RM directory (train-opt-rm), or a causal LM: zero-shot")
    parser.add_argument("--output", required=True, help="JSON to write")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_dataclass_arguments(parser, OptRMScoringConfig)


def main_evaluate(args: argparse.Namespace) -> None:
    _threads(args)
    evaluate_opt_rm(args.comparisons, args.model, args.output, dataclass_from_args(OptRMScoringConfig, args))


def configure_score(parser: argparse.ArgumentParser) -> None:
    """Flags of `score-opt-rm`."""
    parser.add_argument("--samples", nargs="+", required=True, help="SAMPLES Parquet file(s); prompt_id = post_id")
    parser.add_argument("--posts", nargs="+", required=True, help="SLF5K_POSTS Parquet file(s) with those posts")
    parser.add_argument("--model", required=True, help="OPT-RM directory (train-opt-rm)")
    parser.add_argument("--output", required=True, help="SCORED_SAMPLES Parquet to write")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_dataclass_arguments(parser, OptRMScoringConfig)


def main_score(args: argparse.Namespace) -> None:
    _threads(args)
    config = dataclass_from_args(OptRMScoringConfig, args)
    score_samples(args.samples, args.posts, args.model, args.output, config)


def configure_best_of_n(parser: argparse.ArgumentParser) -> None:
    """Flags of `best-of-n`."""
    parser.add_argument("--scored", nargs="+", required=True, help="SCORED_SAMPLES Parquet file(s)")
    parser.add_argument("--output", required=True, help="SAMPLES Parquet to write: one sample per prompt")
    parser.add_argument("--origin", required=True, help="origin of the written samples (e.g. ilf+opt-rm-best-of-64)")
    parser.add_argument("--n", type=int, default=None, help="use the samples with sample_index < n (default: all)")
    parser.add_argument("--summary", default=None, help="JSON to write with the counts")


def main_best_of_n(args: argparse.Namespace) -> None:
    best_of_n(args.scored, args.output, args.origin, args.n, args.summary)


if __name__ == "__main__":  # `python -m feedbackflow.papers.ilf.opt_rm ...`: training without cli.py
    run_as_module("python -m feedbackflow.papers.ilf.opt_rm", "OPT-RM training", configure, main, log)
