"""The pieces of an accelerate training loop that every trainer shares (reward models, RRHF, SFT, OPT-RM, PPO).

The optimiser, its schedule and the config fields they read are in `feedbackflow.core.optim`. A step's loss is
normalised by the global batch, so `backward_micro_batch` undoes accelerate's division by the accumulation steps and
DDP's average over processes; results then do not depend on micro-batch size or process count. Checkpoints and
SIGTERM handling follow `feedbackflow.core.checkpoints`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import math
import os
import signal
import sys

import torch
from accelerate import Accelerator, InitProcessGroupKwargs
from accelerate.utils import set_seed

from feedbackflow.core.checkpoints import CheckpointStore, StopSignal, fingerprint_of
from feedbackflow.core.optim import EpochTrainingConfig
from feedbackflow.core.stage_args import add_dataclass_arguments
from feedbackflow.errors import ConfigError, DataError

log = logging.getLogger("feedbackflow.core.training")


def prepare_accelerator(
    batch_size: int, micro_batch_size: int, mixed_precision: str, max_grad_norm: float
) -> tuple[Accelerator, int]:
    """(accelerator, accumulation steps) for a global batch split over the launched processes and micro batches."""
    launched = world_size_from_env()
    if batch_size % launched:
        raise ConfigError(f"batch_size {batch_size} is not divisible by {launched} processes")
    if micro_batch_size < 1:
        raise ConfigError(f"micro_batch_size must be at least 1, got {micro_batch_size}")
    accumulation = math.ceil(batch_size // launched / micro_batch_size)
    accelerator = build_accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=accumulation)
    if accelerator.state.deepspeed_plugin is not None:
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = micro_batch_size
        ds_config["train_batch_size"] = micro_batch_size * accumulation * accelerator.num_processes
        # DeepSpeed clips inside its step (accelerator.clip_grad_norm_ is a no-op there); 0 disables clipping.
        ds_config["gradient_clipping"] = max_grad_norm
    return accelerator, accumulation


def start_accelerator(config: EpochTrainingConfig) -> tuple[Accelerator, int]:
    """(accelerator, accumulation steps) for the config's global and micro batches and precision, then every RNG
    seeded from `config.seed` (the same initial weights and batch order on every process)."""
    accelerator, accumulation = prepare_accelerator(
        config.batch_size, config.micro_batch_size, config.mixed_precision, config.max_grad_norm
    )
    set_seed(config.seed)
    return accelerator, accumulation


def steps_to_train(steps_per_epoch: int, num_epochs: int, max_steps: int | None) -> int:
    """Optimiser steps of a run: every epoch's steps, cut at `max_steps` when given."""
    total = steps_per_epoch * num_epochs
    return total if max_steps is None else min(total, max_steps)


def resume_if_possible(store: CheckpointStore, accelerator: Accelerator, total_steps: int) -> tuple[int, list[dict]]:
    """(first step, history so far): from the newest complete checkpoint in the store, else (0, [])."""
    store.open(accelerator)
    latest = store.latest()
    if latest is None:
        return 0, []
    state = store.load(accelerator, latest)
    log.info("resuming from %s at step %d of %d", latest, state["step"], total_steps)
    return state["step"], state["history"]


def open_checkpoints(
    work_dir: str, accelerator: Accelerator, total_steps: int, config, paths: list[str], **identity
) -> tuple[CheckpointStore, int, list[dict]]:
    """(store, first step, history so far) of a run in `work_dir`, fingerprinted by the config's fields, the
    `identity` entries (stage, model, world size, ...) and the files under `paths` (`checkpoints.fingerprint_of`)."""
    store = CheckpointStore(work_dir, fingerprint_of({"config": dataclasses.asdict(config), **identity}, paths))
    start_step, history = resume_if_possible(store, accelerator, total_steps)
    return store, start_step, history


def backward_micro_batch(
    accelerator: Accelerator, model, optimizer, loss: torch.Tensor, accumulation: int, max_grad_norm: float
) -> None:
    """Backward of one micro batch's share of the global-batch loss; the optimiser steps at the batch's end."""
    accelerator.backward(loss * accelerator.num_processes * accumulation)
    if accelerator.sync_gradients and max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()


def checkpoint_after_step(
    store: CheckpointStore,
    accelerator: Accelerator,
    stop: StopSignal,
    done: int,
    total_steps: int,
    checkpoint_every: int,
    history: list[dict],
) -> None:
    """After `done` steps: save every `checkpoint_every` steps, and on SIGTERM save and exit 143."""
    stopping = stop.agreed(accelerator)  # collective: every process takes the same branch
    if done < total_steps and (stopping or done % checkpoint_every == 0):
        store.save(accelerator, done, {"step": done, "history": history})
        if stopping:
            log.warning("SIGTERM: checkpoint saved at step %d of %d; a rerun resumes there", done, total_steps)
            sys.exit(128 + signal.SIGTERM)


def world_size_from_env() -> int:
    """Processes of this launch (`accelerate launch` / torchrun set WORLD_SIZE; a plain run is 1)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def add_run_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """The flags a trainer's own ones end with: `--work-dir`, `--threads` and the hyperparameters of `config_class`
    (`--hparams` and one flag per field, `core.stage_args`)."""
    parser.add_argument("--work-dir", required=True, help="checkpoint directory (resumed on rerun)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_dataclass_arguments(parser, config_class)


def run_as_module(prog: str, description: str, configure, main, logger: logging.Logger) -> None:
    """`python -m <trainer module> ...`: the stage without the cli.py registry; a DataError or ConfigError is logged
    and ends the process with its message."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    configure(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        main(args)
    except (DataError, ConfigError) as error:
        logger.error("%s", error)
        sys.exit(f"error: {error}")


def set_threads(threads: int | None) -> None:
    """torch CPU threads from a job's `--threads`, shared by the processes of a multi-process launch."""
    if threads:
        torch.set_num_threads(max(1, threads // world_size_from_env()))


def build_accelerator(**kwargs) -> Accelerator:
    """An Accelerator; without CUDA, a multi-process or DeepSpeed launch gets the gloo backend.

    DeepSpeed defaults to nccl, which needs GPUs, so a custom accelerate loop on CPU must ask for gloo explicitly.
    A multi-process launch without DeepSpeed (e.g. config/accelerate/ddp.yaml) on a machine without CUDA must also
    run with `cpu=True`: otherwise accelerate opens the process group but reports DistributedType.NO, so the model is
    not wrapped in DDP and every process trains alone. A single plain process needs no process group at all.
    """
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    distributed = world_size_from_env() > 1 or deepspeed
    handlers = list(kwargs.pop("kwargs_handlers", []))
    if distributed and not torch.cuda.is_available():
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
        if deepspeed:
            skip_deepspeed_shm_build()
        else:
            kwargs.setdefault("cpu", True)
    return Accelerator(kwargs_handlers=handlers, **kwargs)


def skip_deepspeed_shm_build() -> None:
    """On the CPU, DeepSpeed's communication backend compiles a shared-memory all-reduce kernel when it starts
    (`deepspeed.comm.torch.build_shm_op`, a JIT build into TORCH_EXTENSIONS_DIR): 41 s and 81 CPU-s on 2 cores in
    each new environment, and again whenever the venv's path changes. Only DeepSpeed inference's all-reduce uses it;
    training reduces through torch.distributed (gloo here). So a DeepSpeed launch on the CPU opens its backend without
    the kernel; on a GPU DeepSpeed builds no such op and nothing changes."""
    deepspeed_comm_torch = importlib.import_module("deepspeed.comm.torch")  # `from deepspeed.comm import torch`: torch
    if hasattr(deepspeed_comm_torch, "build_shm_op"):  # a DeepSpeed without it builds nothing to skip
        deepspeed_comm_torch.build_shm_op = lambda: None
