"""The accelerate set-up every training stage shares."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator, InitProcessGroupKwargs


def world_size_from_env() -> int:
    """Processes of this launch (`accelerate launch` / torchrun set WORLD_SIZE; a plain run is 1)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def build_accelerator(**kwargs) -> Accelerator:
    """An Accelerator; without CUDA, a multi-process or DeepSpeed launch gets the gloo backend.

    DeepSpeed defaults to nccl, which needs GPUs, so a custom accelerate loop on CPU must ask for gloo explicitly.
    A single plain process needs no process group at all.
    """
    distributed = world_size_from_env() > 1 or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    handlers = list(kwargs.pop("kwargs_handlers", []))
    if distributed and not torch.cuda.is_available():
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(kwargs_handlers=handlers, **kwargs)
