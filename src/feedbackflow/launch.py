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
    A multi-process launch without DeepSpeed (e.g. config/accelerate/ddp.yaml) on a machine without CUDA must also
    run with `cpu=True`: otherwise accelerate opens the process group but reports DistributedType.NO, so the model is
    not wrapped in DDP and every process trains alone. A single plain process needs no process group at all.
    """
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    distributed = world_size_from_env() > 1 or deepspeed
    handlers = list(kwargs.pop("kwargs_handlers", []))
    if distributed and not torch.cuda.is_available():
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
        if not deepspeed:
            kwargs.setdefault("cpu", True)
    return Accelerator(kwargs_handlers=handlers, **kwargs)
