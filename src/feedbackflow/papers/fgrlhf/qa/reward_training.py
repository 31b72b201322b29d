"""Training of the Fine-Grained RLHF reward models (Wu et al. 2023), and their reward mean/std.

- `--kind token` (R1, R2): SEGMENT_LABELS Parquet -> token classifier; cross-entropy on the separator tokens only
  (every other token is ignored, -100), averaged over the labelled separators of the global batch.
- `--kind sequence` (R3, holistic preference): PREFERENCE_LISTS Parquet of two texts -> one-output sequence
  classifier; the pairwise loss -mean log sigmoid(s_preferred - s_other) over the global batch's pairs (ties carry
  no pair and are dropped by the converter).

The loop is the project's shared accelerate loop (`core.training`): global batches independent of micro-batch size
and process count, checkpoints in `--work-dir`, resume on rerun, SIGTERM saves and exits 143. With `--eval` the
model is scored on a held-out file after training: token accuracy and error F1 over labelled separators, or pair
accuracy; the figures go into `fg_reward_model.json` in the output directory.

`reward-mean-std` scores the training pairs with a trained sequence RM, takes one of the two texts of each pair at
random (seeded), and writes their mean and (population) standard deviation to a JSON beside the model, as the
paper's `mean_std.txt`; PPO normalises R3 and the preference reward with them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from feedbackflow.core.checkpoints import StopSignal
from feedbackflow.core.formats import (
    PREFERENCE_LISTS,
    SEGMENT_LABELS,
    TRAINING_LOG,
    atomic_directory,
    read_table,
    write_json,
    write_rows,
)
from feedbackflow.core.inference import INFERENCE_DTYPES
from feedbackflow.core.optim import EpochTrainingConfig, prepare_adamw
from feedbackflow.core.stage_args import dataclass_from_args
from feedbackflow.core.training import (
    add_run_arguments,
    backward_micro_batch,
    checkpoint_after_step,
    open_checkpoints,
    start_accelerator,
    steps_to_train,
)
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.losses.reward import ranking_loss_terms
from feedbackflow.papers.fgrlhf.qa.reward_models import (
    DEFAULT_SEPARATOR,
    META_FILE,
    encode_pair_text,
    encode_segments,
    load_fg_reward_model,
    load_fg_reward_model_for_inference,
    segment_error_predictions,
    sequence_scores,
)
from feedbackflow.text.tokens import pad_id_of, pad_right

log = logging.getLogger("feedbackflow.papers.fgrlhf.qa.reward_training")

IGNORE = -100


@dataclass
class FGRewardTrainingConfig(EpochTrainingConfig):
    """Hyperparameters of one R1 / R2 / R3 / preference reward-model run. Seed, AdamW, schedule, clipping,
    precision and checkpoint fields: `core.optim.EpochTrainingConfig` (no gradient checkpointing here).

    Unlike the other trainers, the schedule (and its warm-up ratio) spans the steps actually run: `max_steps`
    shortens it."""

    kind: str = field(default="token", metadata={"help": "token (R1, R2) or sequence (R3, preference)"})
    max_length: int = field(default=2048, metadata={"help": "tokens per input, special tokens included"})
    separator: str = field(default=DEFAULT_SEPARATOR, metadata={"help": "token before each segment (token kind)"})
    batch_size: int = field(default=24, metadata={"help": "examples (token) or pairs (sequence) per step, global"})
    learning_rate: float = 5e-6
    weight_decay: float = 0.01
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of all steps spent warming up"})
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        if self.kind not in ("token", "sequence"):
            raise ConfigError(f"kind: {self.kind!r} is not token or sequence")


@dataclass
class Examples:
    """Tokenised training examples: token kind -> (ids, [(position, label)]); sequence kind -> (ids_a, ids_b) with
    a preferred first."""

    items: list
    steps_per_epoch: int

    def batch_indices(self, step: int, batch_size: int, seed: int) -> list[int]:
        epoch, position = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.items), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        return order[position * batch_size : (position + 1) * batch_size]


def token_examples(path: str, tokenizer, config: FGRewardTrainingConfig) -> list[tuple[list[int], list[tuple]]]:
    """(input ids, [(separator position, label)]) per row with at least one labelled, kept segment."""
    rows = read_table(path, SEGMENT_LABELS).to_pylist()
    out, dropped_segments, truncated = [], 0, 0
    for index, row in enumerate(rows):
        if len(row["labels"]) != len(row["segments"]):
            raise DataError(path, index, "labels", f"{len(row['labels'])} labels for {len(row['segments'])} segments")
        bad = [label for label in row["labels"] if label not in (0, 1, IGNORE)]
        if bad:
            raise DataError(path, index, "labels", f"labels must be 0, 1 or {IGNORE}, got {bad[0]}")
        encoded = encode_segments(tokenizer, row["prefix"], row["segments"], config.max_length, config.separator)
        truncated += encoded.prefix_truncated
        dropped_segments += len(row["segments"]) - len(encoded.separator_positions)
        targets = [
            (p, label) for p, label in zip(encoded.separator_positions, row["labels"], strict=False) if label != IGNORE
        ]
        if targets:
            out.append((encoded.input_ids, targets))
    log.info(
        "%s: %d rows, %d with labelled segments; %d prefixes truncated, %d segments past max_length dropped",
        path,
        len(rows),
        len(out),
        truncated,
        dropped_segments,
    )
    return out


def pair_examples(path: str, tokenizer, config: FGRewardTrainingConfig) -> list[tuple[list[int], list[int]]]:
    """(preferred ids, other ids) per two-text row with different scores."""
    table = read_table(path, PREFERENCE_LISTS)
    out = []
    for index, (texts, scores) in enumerate(
        zip(table.column("text").to_pylist(), table.column("score").to_pylist(), strict=True)
    ):
        if len(texts) != 2 or len(scores) != 2:
            raise DataError(path, index, "text", f"a pair needs 2 texts and 2 scores, got {len(texts)}/{len(scores)}")
        if scores[0] == scores[1]:
            continue
        better, worse = (0, 1) if scores[0] > scores[1] else (1, 0)
        out.append(
            (
                encode_pair_text(tokenizer, texts[better], config.max_length),
                encode_pair_text(tokenizer, texts[worse], config.max_length),
            )
        )
    log.info("%s: %d pairs", path, len(out))
    return out


def token_loss_sum(model, items: list, pad: int, device) -> torch.Tensor:
    """Summed cross-entropy over the labelled separators of a micro batch."""
    input_ids, attention_mask = pad_right([ids for ids, _ in items], pad)
    labels = torch.full_like(input_ids, IGNORE)
    for row, (_, targets) in enumerate(items):
        for position, label in targets:
            labels[row, position] = label
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
    return F.cross_entropy(
        logits.float().flatten(0, 1), labels.to(device).flatten(), ignore_index=IGNORE, reduction="sum"
    )


def pair_loss_sum(model, items: list, pad: int, device) -> torch.Tensor:
    """Summed pairwise loss -log sigmoid(s_preferred - s_other) of a micro batch."""
    input_ids, attention_mask = pad_right([ids for pair in items for ids in pair], pad)
    scores = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits[:, 0]
    rewards = scores.float().view(len(items), 2)
    order = torch.tensor([[1.0, 0.0]] * len(items), device=device)  # the first text is preferred
    total, _ = ranking_loss_terms(rewards, order, torch.ones_like(order, dtype=torch.bool))
    return total / 2  # ranking_loss_terms counts both orders of each pair


UNUSED_WITHOUT_GLOBAL_ATTENTION = ("query_global", "key_global", "value_global")


def freeze_global_attention(model: torch.nn.Module) -> list[str]:
    """Freeze Longformer's global-attention projections (query/key/value_global); returns the frozen names.

    The token RMs run with local attention only, as the paper's do (reward_modeling/run_fg_rm.py passes no
    global_attention_mask), so these projections never take part in the loss. The original trains on one GPU
    (HF Trainer), where they get no gradient and AdamW leaves them as loaded; frozen here they stay as loaded too, and
    DDP no longer waits for their gradients (without this it stops at the second step: "Expected to have finished
    reduction in the prior iteration"). Freezing keeps the computation of `find_unused_parameters=True` without its
    search of the autograd graph at every step. Models without such projections are left alone.
    """
    frozen = []
    for name, parameter in model.named_parameters():
        if any(f".{unused}." in f".{name}" for unused in UNUSED_WITHOUT_GLOBAL_ATTENTION):
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def train_fg_reward_model(
    train_path: str,
    model_path: str,
    output_dir: str,
    work_dir: str,
    config: FGRewardTrainingConfig,
    eval_path: str | None = None,
) -> dict:
    """Train an R1/R2 (token) or R3/preference (sequence) reward model; returns the saved metadata."""
    accelerator, accumulation = start_accelerator(config)
    world = accelerator.num_processes
    model, tokenizer = load_fg_reward_model(model_path, config.kind)
    if config.kind == "token":  # local attention only: the global projections are unused (see the function)
        frozen = freeze_global_attention(model)
        if frozen:
            log.info("token RM: %d global-attention parameters frozen (unused without global attention)", len(frozen))
    builder = token_examples if config.kind == "token" else pair_examples
    items = builder(train_path, tokenizer, config)
    steps_per_epoch = len(items) // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {config.batch_size} exceeds the {len(items)} training examples")
    data = Examples(items, steps_per_epoch)
    total_steps = steps_to_train(steps_per_epoch, config.num_epochs, config.max_steps)

    model, optimizer, scheduler = prepare_adamw(accelerator, model, config, total_steps)  # the steps run (see above)
    store, start_step, history = open_checkpoints(
        work_dir, accelerator, total_steps, config, [train_path, model_path], model=model_path, world=world
    )
    if start_step == 0:
        log.info(
            "training a %s reward model from %s: %d examples, %d steps",
            config.kind,
            model_path,
            len(items),
            total_steps,
        )
    pad = pad_id_of(tokenizer)
    loss_sum = token_loss_sum if config.kind == "token" else pair_loss_sum
    stop = StopSignal()
    model.train()
    for step in range(start_step, total_steps):
        indices = data.batch_indices(step, config.batch_size, config.seed)
        count = sum(len(items[i][1]) for i in indices) if config.kind == "token" else len(indices)
        mine = indices[accelerator.process_index :: world]
        total = torch.zeros((), device=accelerator.device)
        for start in range(0, len(mine), config.micro_batch_size):
            micro = [items[i] for i in mine[start : start + config.micro_batch_size]]
            with accelerator.accumulate(model):
                loss = loss_sum(model, micro, pad, accelerator.device) / count
                backward_micro_batch(accelerator, model, optimizer, loss, accumulation, config.max_grad_norm)
            total += loss.detach()
        learning_rate = scheduler.get_last_lr()[0]
        scheduler.step()
        total = accelerator.reduce(total, reduction="sum").item()
        history.append(
            {
                "step": step + 1,
                "epoch": step // steps_per_epoch,
                "loss": total,
                "ranking_loss": None,
                "lm_loss": None,
                "learning_rate": learning_rate,
            }
        )
        if (step + 1) % 10 == 0 or step + 1 == total_steps:
            log.info("step %d/%d loss %.4f", step + 1, total_steps, total)
        checkpoint_after_step(store, accelerator, stop, step + 1, total_steps, config.checkpoint_every, history)

    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    meta = {
        "kind": config.kind,
        "base_model": model_path,
        "separator": config.separator,
        "max_length": config.max_length,
        "training": dataclasses.asdict(config),
    }
    if eval_path and accelerator.is_main_process:
        meta["eval"] = evaluate_fg_reward_model(unwrapped, tokenizer, eval_path, config)
        log.info("held-out %s: %s", eval_path, meta["eval"])
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        with atomic_directory(output_dir) as tmp:
            unwrapped.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            write_rows(history, tmp / "training_log.parquet", TRAINING_LOG)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        log.info("saved %s after %d steps", output_dir, total_steps)
    store.remove(accelerator)
    return meta


def evaluate_fg_reward_model(model, tokenizer, path: str, config: FGRewardTrainingConfig) -> dict:
    """Token kind: accuracy and error precision/recall/F1 over labelled separators; sequence kind: pair accuracy."""
    if config.kind == "token":
        rows = read_table(path, SEGMENT_LABELS).to_pylist()
        inputs = [
            encode_segments(tokenizer, r["prefix"], r["segments"], config.max_length, config.separator) for r in rows
        ]
        predicted = segment_error_predictions(model, tokenizer, inputs, config.eval_batch_size)
        pairs = [
            (p, label)
            for row, preds in zip(rows, predicted, strict=True)
            for p, label in zip(preds, row["labels"], strict=False)
            if label != IGNORE
        ]
        tp = sum(p == 1 and y == 1 for p, y in pairs)
        fp = sum(p == 1 and y == 0 for p, y in pairs)
        fn = sum(p == 0 and y == 1 for p, y in pairs)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        return {
            "n_labels": len(pairs),
            "accuracy": sum(p == y for p, y in pairs) / len(pairs) if pairs else None,
            "error_precision": precision,
            "error_recall": recall,
            "error_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "error_rate": sum(y for _, y in pairs) / len(pairs) if pairs else None,
        }
    table = read_table(path, PREFERENCE_LISTS)
    texts, score_lists = table.column("text").to_pylist(), table.column("score").to_pylist()
    kept = [(t, s) for t, s in zip(texts, score_lists, strict=True) if len(t) == 2 and s[0] != s[1]]
    flat = sequence_scores(model, tokenizer, [x for t, _ in kept for x in t], config.max_length, config.eval_batch_size)
    correct = sum((flat[2 * i] > flat[2 * i + 1]) == (s[0] > s[1]) for i, (_, s) in enumerate(kept))
    return {"n_pairs": len(kept), "accuracy": correct / len(kept) if kept else None}


def reward_mean_std(
    model_path: str, pairs_path: str, max_length: int, seed: int, batch_size: int = 32, dtype: str | None = None
) -> dict:
    """Mean and population std of the RM's scores of one randomly chosen text per training pair (the paper's rule);
    the RM on the job's device (`inference.load_for_inference`, `dtype` on a GPU)."""
    model, tokenizer = load_fg_reward_model_for_inference(model_path, "sequence", dtype=dtype)
    table = read_table(pairs_path, PREFERENCE_LISTS)
    rng = random.Random(seed)
    chosen = [texts[rng.randrange(len(texts))] for texts in table.column("text").to_pylist()]
    if not chosen:
        raise DataError(pairs_path, None, "text", "no pairs to score")
    scores = torch.tensor(sequence_scores(model, tokenizer, chosen, max_length, batch_size), dtype=torch.float64)
    return {
        "mean": scores.mean().item(),
        "std": scores.std(unbiased=False).item(),
        "n": len(chosen),
        "model": model_path,
        "pairs": pairs_path,
        "seed": seed,
    }


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True, help="SEGMENT_LABELS (token) or PREFERENCE_LISTS (sequence)")
    parser.add_argument("--eval", default=None, help="held-out file of the same kind (optional)")
    parser.add_argument("--model", required=True, help="base encoder (hub id or directory), e.g. longformer")
    parser.add_argument("--output", required=True, help="model directory to write")
    add_run_arguments(parser, FGRewardTrainingConfig)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = dataclass_from_args(FGRewardTrainingConfig, args)
    train_fg_reward_model(args.train, args.model, args.output, args.work_dir, config, args.eval)


def configure_mean_std(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="trained sequence reward-model directory")
    parser.add_argument("--pairs", required=True, help="PREFERENCE_LISTS Parquet (the RM's training pairs)")
    parser.add_argument("--output", required=True, help="JSON to write: mean, std, n")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--dtype", choices=INFERENCE_DTYPES, default=None, help="model dtype on a GPU (config inference_dtype)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def main_mean_std(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    stats = reward_mean_std(args.model, args.pairs, args.max_length, args.seed, args.batch_size, args.dtype)
    write_json(stats, args.output)
    log.info(
        "%s: mean %.4f std %.4f over %d texts -> %s", args.model, stats["mean"], stats["std"], stats["n"], args.output
    )
