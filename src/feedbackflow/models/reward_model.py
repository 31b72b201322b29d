"""The DSP reward model: a causal-LM body plus a new bias-free linear reward head (Cheng et al. 2023).

A reward-model directory is a Hugging Face causal-LM directory (`save_pretrained`, safetensors, tokenizer) plus
`reward_head.safetensors` and `reward_model.json` (head kind, pooling, hidden size, and the reward mean/std when a
stage computed them). Loading a plain causal LM (a hub id or the tiny model the pipeline builds) gives the same
class with a freshly initialised head, so GRFT starts from a base LM and CRFT from a GRFT directory with one call.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from feedbackflow.core.batches import length_sorted_batches
from feedbackflow.core.inference import to_model_device
from feedbackflow.errors import ConfigError
from feedbackflow.text.tokens import pad_right

POOLINGS = ("last", "eos", "average", "max")
HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool right-padded hidden states (seqs, len, d) into (seqs, d).

    Sequences end with eos (`encode_texts`: bos + ids + eos, the bos gone when cut). "eos" takes the eos position,
    "last" the last real token before eos (DSP's default), "average" the mean over real tokens, "max" the
    element-wise max over real tokens (padding excluded).
    """
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "eos":
        return hidden[rows, lengths - 1]
    if pooling == "last":
        return hidden[rows, (lengths - 2).clamp(min=0)]
    if pooling == "average":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    if pooling == "max":
        return hidden.masked_fill(~mask.unsqueeze(-1), torch.finfo(hidden.dtype).min).max(dim=1).values
    raise ConfigError(f"pooling {pooling!r} is not one of {POOLINGS}")


def fit_reward_sequence(bos: list[int], ids: list[int], eos: int, max_length: int, keep_bos: bool = False) -> list[int]:
    """bos + ids + eos, cut on the left to `max_length` tokens when longer.

    DSP's rule (Linear95/DSP `reward_datasets.py` `reward_tokenize`, truncation side left): the whole sequence keeps
    its last `max_length` tokens, so a cut sequence loses its bos with its beginning and keeps its eos. `keep_bos`:
    the bos stays and only the text's first ids go (the RRHF scoring stage's rule; its paper's scorer has no bos, and
    without a bos both rules give the same ids).
    """
    sequence = bos + ids + [eos]
    if len(sequence) <= max_length:
        return sequence
    if keep_bos:
        return bos + sequence[len(sequence) - max_length + len(bos) :]
    return sequence[len(sequence) - max_length :]


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, keep_bos: bool = False
) -> list[list[int]]:
    """Token ids bos + ids + eos for each text (no bos when the tokenizer has none), cut on the left to `max_length`
    by `fit_reward_sequence` (DSP's rule drops the bos of a cut text; `keep_bos` keeps it)."""
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"tokenizer {tokenizer.name_or_path!r} has no eos token")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if max_length - len(bos) - 1 < 1:
        raise ConfigError(f"max_length {max_length} leaves no room for text between bos and eos")
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [fit_reward_sequence(bos, ids, tokenizer.eos_token_id, max_length, keep_bos) for ids in encoded]


@dataclass
class RewardOutput:
    rewards: torch.Tensor  # (seqs,)
    lm_logits: torch.Tensor | None = None  # (seqs, len, vocab) when asked for


class RewardModel(nn.Module):
    """Causal LM body + bias-free linear head on the pooled last hidden state."""

    def __init__(self, lm: nn.Module, pooling: str = "last"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling {pooling!r} is not one of {POOLINGS}")
        self.lm = lm
        self.pooling = pooling
        self.reward_head = nn.Linear(lm.config.hidden_size, 1, bias=False)

    @property
    def config(self):
        return self.lm.config

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, pooling: str | None = None, seed: int = 42, dtype: torch.dtype | None = None
    ) -> RewardModel:
        """A reward model directory, or a causal LM (path or hub id) with a new head initialised from `seed`.

        `pooling` overrides the saved pooling; a new head is drawn from N(0, initializer_range) like the paper's
        `post_init`. `dtype` None keeps the saved dtype; the head takes the LM's.
        """
        lm = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
        if is_reward_model_dir(name_or_path):
            meta = json.loads((Path(name_or_path) / META_FILE).read_text())
            model = cls(lm, pooling or meta["pooling"])
            model.reward_head.weight.data.copy_(load_file(Path(name_or_path) / HEAD_FILE)["weight"])
        else:
            model = cls(lm, pooling or "last")
            generator = torch.Generator().manual_seed(seed)
            std = getattr(lm.config, "initializer_range", 0.02)
            head = torch.randn(model.reward_head.weight.shape, generator=generator) * std
            model.reward_head.weight.data.copy_(head)
        model.reward_head.to(lm.dtype)
        return model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_lm_logits: bool = False
    ) -> RewardOutput:
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = pool_hidden_states(hidden, attention_mask, self.pooling)
        rewards = self.reward_head(pooled).squeeze(-1)
        lm_logits = self.lm.get_output_embeddings()(hidden) if return_lm_logits else None
        return RewardOutput(rewards=rewards, lm_logits=lm_logits)


def is_reward_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / META_FILE).is_file()


def load_reward_model(
    name_or_path: str,
    pooling: str | None = None,
    seed: int = 42,
    torch_dtype: torch.dtype | None = None,
) -> tuple[RewardModel, PreTrainedTokenizerBase]:
    """(RewardModel.from_pretrained(...), tokenizer) as they are loaded, for training (inference stages use
    `inference.load_for_inference(RewardModel, ...)`, which puts the model on the job's device)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return RewardModel.from_pretrained(name_or_path, pooling=pooling, seed=seed, dtype=torch_dtype), tokenizer


def save_reward_model(
    model: RewardModel,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | os.PathLike,
    state_dict: dict[str, torch.Tensor] | None = None,
    extra_metadata: dict | None = None,
) -> None:
    """Write the reward-model directory; `state_dict` (e.g. gathered from DeepSpeed ZeRO-3) overrides the model's."""
    output_dir = Path(output_dir)
    state_dict = state_dict if state_dict is not None else model.state_dict()
    lm_state = {k[len("lm.") :]: v for k, v in state_dict.items() if k.startswith("lm.")}
    model.lm.save_pretrained(output_dir, state_dict=lm_state)
    tokenizer.save_pretrained(output_dir)
    save_file({"weight": state_dict["reward_head.weight"].detach().contiguous().cpu()}, output_dir / HEAD_FILE)
    meta = {
        "head": "linear_no_bias",
        "pooling": model.pooling,
        "hidden_size": model.lm.config.hidden_size,
        "mean": None,
        "std": None,
        **(extra_metadata or {}),
    }
    (output_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


@torch.inference_mode()
def score_sequences(model: RewardModel, sequences: list[list[int]], pad_id: int, batch_size: int) -> list[float]:
    """Reward of each token sequence, batched by similar length, on the model's device; returned in input order."""
    model.eval()
    rewards = [0.0] * len(sequences)
    for chunk in length_sorted_batches(sequences, batch_size):
        input_ids, attention_mask = pad_right([sequences[i] for i in chunk], pad_id)
        output = model(*to_model_device(model, input_ids, attention_mask))
        for i, value in zip(chunk, output.rewards.float().cpu().tolist(), strict=True):
            rewards[i] = value
    return rewards
