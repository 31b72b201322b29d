"""The optimiser settings the trainers share, and the optimiser and learning-rate schedule built from them.

Field names follow transformers' `TrainingArguments` (learning_rate, weight_decay, warmup_ratio / warmup_steps,
max_grad_norm, max_steps, seed; its `lr_scheduler_type` is `lr_scheduler` here). As in TRL's trainer configs (e.g.
`RewardConfig(TrainingArguments)`), a trainer's config extends a base here and re-declares a field only to give it
its own default or help text. The warm-up keeps each trainer's unit: `warmup_ratio` (a fraction of the schedule's
steps, rounded up, as `TrainingArguments.get_warmup_steps`) or `warmup_steps` (a count), see `warmup_steps_of`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from transformers import get_scheduler


@dataclass
class OptimiserConfig:
    """The fields every trainer has: seed, learning rate, gradient clipping, a step cap and the precision."""

    seed: int = 42
    learning_rate: float = 1e-5
    max_grad_norm: float = 1.0
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many steps (all epochs)"})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16"})


@dataclass
class EpochTrainingConfig(OptimiserConfig):
    """Epochs of global batches split into micro batches, AdamW on a named schedule, periodic checkpoints: the
    supervised trainers (SFT, RRHF, the reward models, OPT-RM). Each adds its warm-up field (ratio or steps)."""

    num_epochs: int = 1
    batch_size: int = field(default=32, metadata={"help": "examples per optimiser step, all processes"})
    micro_batch_size: int = field(default=8, metadata={"help": "examples per forward pass on one process"})
    weight_decay: float = 0.0
    lr_scheduler: str = field(default="linear", metadata={"help": "transformers scheduler name"})
    checkpoint_every: int = 100


def warmup_steps_of(config: EpochTrainingConfig, schedule_steps: int) -> int:
    """Warm-up steps of a schedule of `schedule_steps` optimiser steps: ceil(warmup_ratio x steps) for a config with
    `warmup_ratio`, else its `warmup_steps`."""
    ratio = getattr(config, "warmup_ratio", None)
    return math.ceil(ratio * schedule_steps) if ratio is not None else config.warmup_steps


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that get gradients (all of a freshly loaded model; frozen ones are left out)."""
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def prepare_with_schedule(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: str,
    warmup_steps: int,
    training_steps: int,
):
    """(model, optimizer, scheduler): model and optimiser prepared, then the named transformers schedule built on the
    PREPARED optimiser and registered for checkpointing.

    The schedule must follow the prepared optimiser: under ZeRO offload DeepSpeed swaps in its own CPU Adam, and
    after a resume the param groups are new objects; a scheduler on the original optimiser would stop moving the lr.
    """
    model, optimizer = accelerator.prepare(model, optimizer)
    schedule = get_scheduler(scheduler, optimizer, num_warmup_steps=warmup_steps, num_training_steps=training_steps)
    accelerator.register_for_checkpointing(schedule)
    return model, optimizer, schedule


def prepare_adamw(accelerator: Accelerator, model: torch.nn.Module, config: EpochTrainingConfig, schedule_steps: int):
    """(model, optimizer, scheduler) of a supervised trainer: AdamW (`learning_rate`, `weight_decay`, torch's other
    defaults) over the trainable parameters, and `config.lr_scheduler` over `schedule_steps` optimiser steps with
    `warmup_steps_of(config, schedule_steps)` of warm-up."""
    optimizer = torch.optim.AdamW(
        trainable_parameters(model), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    warmup = warmup_steps_of(config, schedule_steps)
    return prepare_with_schedule(accelerator, model, optimizer, config.lr_scheduler, warmup, schedule_steps)
