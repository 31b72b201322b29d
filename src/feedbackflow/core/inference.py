"""The one loader of every model a stage loads for inference (issue 19, blocker 4).

Evaluation, scoring, sampling, the LM and judge `hf` backends and PPO's frozen reference and reward models all load
their models with `load_for_inference(model_class, name_or_path, device=..., dtype=..., **kwargs)`:

- `model_class` is anything with `from_pretrained(name_or_path, dtype=..., **kwargs)`: `AutoModelForCausalLM`,
  `AutoModelForSeq2SeqLM`, `AutoModelForTokenClassification` / `...SequenceClassification` (with `num_labels`), or
  a custom class such as `reward_model.RewardModel`;
- the device is the job's: the one asked for, else `cuda` (the process's current GPU: accelerate sets it per rank)
  when there is one, else `cpu`;
- the dtype: on the CPU always float32 (bf16 matmuls are slow on CPUs and would change the tiny runs' numbers);
  on an accelerator the one asked for (a name such as "bfloat16" or a torch dtype; the config's `inference_dtype`
  or a stage's own `dtype` key), and when none is asked for, bfloat16 where the GPU supports it, else float32.
  The dtype goes to `from_pretrained`, so modules a model keeps in float32 (`_keep_in_fp32_modules`) stay so;
- the model is returned in eval mode with `requires_grad` off; its forward passes run under
  `torch.inference_mode()` (the stages' scoring functions, or `with torch.inference_mode():` at the call).

Batches meet the model through `to_model_device(model, *tensors)`. Training stages load their trainable models
themselves (tests/test_inference.py lists them); only inference goes through here.
"""

from __future__ import annotations

import torch
from torch import nn

from feedbackflow.errors import ConfigError

INFERENCE_DTYPES = ("float32", "bfloat16", "float16")


def inference_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for, else the current GPU when there is one, else the CPU."""
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ConfigError(f"device {device!r} is not a torch device: {error}") from error
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A torch dtype from its name ("bfloat16", "torch.bfloat16"); None stays None; ConfigError naming it otherwise."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    value = getattr(torch, name, None)
    if name not in INFERENCE_DTYPES or not isinstance(value, torch.dtype):
        raise ConfigError(f"dtype {dtype!r} is not one of {INFERENCE_DTYPES}")
    return value


def inference_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """float32 on the CPU; on an accelerator `dtype`, or bfloat16 (float32 where the GPU has no bf16) for None."""
    asked = parse_dtype(dtype)
    kind = torch.device(device).type
    if kind == "cpu":
        return torch.float32
    if asked is not None:
        return asked
    if kind == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float32
    return torch.bfloat16


def prepare_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` on `device`, in eval mode, without gradients."""
    return model.to(device).eval().requires_grad_(False)


def load_for_inference(
    model_class,
    name_or_path: str,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    **kwargs,
) -> nn.Module:
    """`model_class.from_pretrained(name_or_path, dtype=..., **kwargs)` on the job's device, in eval mode."""
    where = inference_device(device)
    model = model_class.from_pretrained(name_or_path, dtype=inference_dtype(dtype, where), **kwargs)
    return prepare_for_inference(model, where)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


def to_model_device(model: nn.Module, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors moved to the model's device."""
    device = model_device(model)
    return tuple(tensor.to(device) for tensor in tensors)
