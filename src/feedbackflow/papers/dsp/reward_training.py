"""Reward-model training for DSP's GRFT and CRFT stages (Cheng et al. 2023), on accelerate.

One optimiser step sees `batch_size` preference lists (global, over all processes). Its loss is the ranking loss
averaged over every ordered pair with different scores in that global batch, plus `lm_loss_coeff` times the LM loss:
the mean, over the texts whose normalised score exceeds `lm_score_threshold`, of each text's mean token NLL (the
original's `language_modeling_loss`, Linear95/DSP trainer.py). Both means are taken over the global batch whatever
the micro-batch size and process count, so a 2-process run follows the same curve as a 1-process run (the original
takes them per micro batch; docs/methods/dsp.md lists this and the other differences). An incomplete last batch of an
epoch is dropped. Checkpoints go to `--work-dir`; a rerun resumes from the last one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field

import torch

from feedbackflow.core.batches import PreferenceBatchPlan, pad_scores
from feedbackflow.core.checkpoints import StopSignal
from feedbackflow.core.formats import PREFERENCE_LISTS, TRAINING_LOG, atomic_directory, read_table, write_rows
from feedbackflow.core.optim import EpochTrainingConfig, prepare_adamw
from feedbackflow.core.stage_args import dataclass_from_args
from feedbackflow.core.training import (
    add_run_arguments,
    backward_micro_batch,
    checkpoint_after_step,
    open_checkpoints,
    set_threads,
    start_accelerator,
    steps_to_train,
)
from feedbackflow.errors import ConfigError
from feedbackflow.losses.reward import (
    lm_loss_terms,
    lm_target_mask,
    ranking_loss_terms,
    ranking_pair_mask,
)
from feedbackflow.models.reward_model import POOLINGS, RewardModel, encode_texts, load_reward_model, save_reward_model
from feedbackflow.text.tokens import pad_id_of, pad_right

log = logging.getLogger("feedbackflow.papers.dsp.reward_training")


@dataclass
class RewardTrainingConfig(EpochTrainingConfig):
    """Hyperparameters of one reward-model training run (GRFT or CRFT). Seed, AdamW, schedule, clipping, precision
    and checkpoint fields: `core.optim.EpochTrainingConfig`; the warm-up is a step count."""

    pooling: str = field(default="last", metadata={"help": f"one of {POOLINGS}"})
    max_length: int = field(default=512, metadata={"help": "tokens per text, bos and eos included"})
    batch_size: int = field(default=64, metadata={"help": "preference lists per optimiser step, all processes"})
    micro_batch_size: int = field(default=8, metadata={"help": "lists per forward pass on one process"})
    learning_rate: float = 1e-6
    warmup_steps: int = 0
    lm_loss_coeff: float = 0.0
    lm_score_threshold: float = 0.85
    gradient_checkpointing: bool = False


def load_preference_lists(paths: list[str]) -> tuple[list[list[str]], list[list[float]]]:
    texts, scores = [], []
    for path in paths:
        table = read_table(path, PREFERENCE_LISTS)
        texts.extend(table.column("text").to_pylist())
        scores.extend(table.column("score").to_pylist())
    return texts, scores


def global_counts(plan: PreferenceBatchPlan, indices: list[int], threshold: float) -> tuple[int, int]:
    """(ordered pairs with different scores, LM-target texts) in a global batch: the divisors of the two means."""
    scores, mask = pad_scores([plan.scores[i] for i in indices])
    return int(ranking_pair_mask(scores, mask).sum()), int(lm_target_mask(scores, mask, threshold).sum())


def micro_batch_loss(
    model: RewardModel,
    plan: PreferenceBatchPlan,
    indices: list[int],
    config: RewardTrainingConfig,
    pad_id: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed ranking-loss and LM-loss terms of one micro batch of lists (to be divided by global counts)."""
    scores, mask = pad_scores([plan.scores[i] for i in indices])
    sequences = [ids for i in indices for ids in plan.token_ids[i]]
    input_ids, attention_mask = pad_right(sequences, pad_id)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    need_lm = config.lm_loss_coeff > 0
    output = model(input_ids, attention_mask, return_lm_logits=need_lm)
    rewards = torch.zeros(mask.shape, dtype=output.rewards.dtype, device=device)
    rewards = rewards.masked_scatter(mask.to(device), output.rewards)
    rank_sum, _ = ranking_loss_terms(rewards.float(), scores.to(device), mask.to(device))
    lm_sum = torch.zeros((), device=device)
    if need_lm:
        selected = lm_target_mask(scores, mask, config.lm_score_threshold)[mask].to(device)
        lm_sum, _ = lm_loss_terms(output.lm_logits, input_ids, attention_mask, selected)
    return rank_sum, lm_sum


def train_reward_model(
    train_paths: list[str],
    model_name_or_path: str,
    output_dir: str,
    work_dir: str,
    config: RewardTrainingConfig,
) -> None:
    """Train a reward model from a causal LM or a reward-model directory and save it to `output_dir`."""
    micro_per_process = config.micro_batch_size
    accelerator, accumulation = start_accelerator(config)
    world = accelerator.num_processes

    texts, scores = load_preference_lists(train_paths)
    model, tokenizer = load_reward_model(model_name_or_path, pooling=config.pooling, seed=config.seed)
    if config.gradient_checkpointing:
        model.lm.gradient_checkpointing_enable()
    if config.lm_loss_coeff == 0:
        # Without the LM loss an untied LM head gets no gradient: freeze it, or DDP fails on unused parameters.
        head = model.lm.get_output_embeddings()
        if head is not None and head.weight is not model.lm.get_input_embeddings().weight:
            head.requires_grad_(False)
    token_ids = [encode_texts(tokenizer, group, config.max_length) for group in texts]
    steps_per_epoch = len(scores) // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {config.batch_size} exceeds the {len(scores)} training lists")
    plan = PreferenceBatchPlan(token_ids, scores, steps_per_epoch)
    total_steps = steps_to_train(steps_per_epoch, config.num_epochs, config.max_steps)

    # the schedule spans every epoch; max_steps only stops the run early
    model, optimizer, scheduler = prepare_adamw(accelerator, model, config, steps_per_epoch * config.num_epochs)
    store, start_step, history = open_checkpoints(
        work_dir, accelerator, total_steps, config, [*train_paths, model_name_or_path],
        model=model_name_or_path, world=world,
    )  # fmt: skip
    if start_step == 0:
        log.info("training from %s: %d lists, %d steps", model_name_or_path, len(scores), total_steps)

    pad_id = pad_id_of(tokenizer)
    stop = StopSignal()
    model.train()
    for step in range(start_step, total_steps):
        indices = plan.batch_indices(step, config.batch_size, config.seed)
        n_pairs, n_lm_texts = global_counts(plan, indices, config.lm_score_threshold)
        mine = indices[accelerator.process_index :: world]
        micro_batches = [mine[i : i + micro_per_process] for i in range(0, len(mine), micro_per_process)]
        rank_total = torch.zeros((), device=accelerator.device)
        lm_total = torch.zeros((), device=accelerator.device)
        for micro in micro_batches:
            with accelerator.accumulate(model):
                rank_sum, lm_sum = micro_batch_loss(model, plan, micro, config, pad_id, accelerator.device)
                rank_part = rank_sum / max(n_pairs, 1)
                lm_part = lm_sum / max(n_lm_texts, 1)
                loss = rank_part + config.lm_loss_coeff * lm_part
                backward_micro_batch(accelerator, model, optimizer, loss, accumulation, config.max_grad_norm)
            rank_total += rank_part.detach()
            lm_total += lm_part.detach()
        learning_rate = scheduler.get_last_lr()[0]
        scheduler.step()
        rank_total = accelerator.reduce(rank_total, reduction="sum").item()
        lm_total = accelerator.reduce(lm_total, reduction="sum").item()
        history.append(
            {
                "step": step + 1,
                "epoch": step // steps_per_epoch,
                "loss": rank_total + config.lm_loss_coeff * lm_total,
                "ranking_loss": rank_total,
                "lm_loss": lm_total,
                "learning_rate": learning_rate,
            }
        )
        if (step + 1) % 10 == 0 or step + 1 == total_steps:
            log.info("step %d/%d loss %.4f", step + 1, total_steps, history[-1]["loss"])
        checkpoint_after_step(store, accelerator, stop, step + 1, total_steps, config.checkpoint_every, history)

    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        with atomic_directory(output_dir) as tmp:
            meta = {"base_model": model_name_or_path, "training": dataclasses.asdict(config)}
            save_reward_model(accelerator.unwrap_model(model), tokenizer, tmp, state_dict, meta)
            write_rows(history, tmp / "training_log.parquet", TRAINING_LOG)
        log.info("saved %s after %d steps", output_dir, total_steps)
    store.remove(accelerator)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", nargs="+", required=True, help="preference-lists Parquet files")
    parser.add_argument("--model", required=True, help="causal LM or reward-model directory, or hub id")
    parser.add_argument("--output", required=True, help="reward-model directory to write")
    add_run_arguments(parser, RewardTrainingConfig)


def main(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    config = dataclass_from_args(RewardTrainingConfig, args)
    train_reward_model(args.train, args.model, args.output, args.work_dir, config)
