"""Fine-Grained RLHF reward models (Wu et al. 2023): inputs, loading and scoring.

Two kinds, both plain Hugging Face models (Longformer at paper scale, a tiny Longformer at tiny scale):
- `token`: R1 (NF-ERR, sub-sentences) and R2 (F-ERR, sentences) are token classifiers
  (`AutoModelForTokenClassification`, 2 labels: 0 = "O", 1 = error). Their input is the prefix followed by every
  segment with the separator token (`</s>`) before it; the label of a segment sits on its separator. The original's
  model has three labels (error, ignore, O) and takes the argmax over [error, O] (tasks/qa_feedback/training/
  reward.py), so a tie is an error; two labels are the same decision, and a tie is an error here too.
- `sequence`: R3 (completeness) and the holistic preference RM are `AutoModelForSequenceClassification` with one
  output, trained with the pairwise loss on `prompt + " " + response`.

Token inputs are built from token ids, not from a re-tokenised string: ids = [bos] + prefix + for each segment
([sep] + ids(" " + segment)) + [eos], so a separator can never merge with a neighbour and its position is known.
When the input is longer than `max_length`, the prefix is cut from its end first (the question at its start is
kept; passages lose their tail), then trailing segments are dropped: a dropped segment has no prediction, so it
gets no reward while the segments before it keep theirs. The original truncates the word list on the right, reads
the logits at the separators left (the question's own `</s>` included, so from then on those of a neighbour) and
fails on the first segment past them; docs/methods/fine_grained_rlhf.md.

Attention is Longformer's local window only, as in the paper's RMs. Global attention on the separators (so that R2
could see passages outside a small window) was tried at tiny scale: the tiny RM then learned markedly worse in the
same number of steps (its global projections start untrained), so it is not used. Training freezes those unused
global projections (`reward_training.freeze_global_attention`), so DDP does not wait for their gradients.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from feedbackflow.core.batches import length_sorted_batches
from feedbackflow.core.inference import load_for_inference
from feedbackflow.errors import ConfigError
from feedbackflow.text.tokens import pad_id_of, pad_right

KINDS = ("token", "sequence")
LABELS = {0: "O", 1: "ERR"}
META_FILE = "fg_reward_model.json"
DEFAULT_SEPARATOR = "</s>"


@dataclass
class SegmentInput:
    """Token ids of one token-classifier input and the position of each kept segment's separator."""

    input_ids: list[int]
    separator_positions: list[int]  # one per kept segment (a prefix of the segments)
    prefix_truncated: bool


def separator_id(tokenizer: PreTrainedTokenizerBase, separator: str = DEFAULT_SEPARATOR) -> int:
    token_id = tokenizer.convert_tokens_to_ids(separator)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ConfigError(f"separator {separator!r} is not a token of {tokenizer.name_or_path!r}")
    return token_id


def encode_segments(
    tokenizer: PreTrainedTokenizerBase,
    prefix: str,
    segments: list[str],
    max_length: int,
    separator: str = DEFAULT_SEPARATOR,
) -> SegmentInput:
    """[bos] + prefix + ([sep] + " segment") per segment + [eos], cut to `max_length` (see the module doc)."""
    sep = separator_id(tokenizer, separator)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    segment_ids = (
        [[sep, *ids] for ids in tokenizer([" " + s for s in segments], add_special_tokens=False)["input_ids"]]
        if segments
        else []
    )
    room = max_length - len(bos) - len(eos)
    needed = sum(len(ids) for ids in segment_ids)
    truncated = False
    if len(prefix_ids) + needed > room:
        keep = max(0, room - needed)
        truncated = keep < len(prefix_ids)
        prefix_ids = prefix_ids[:keep]
    ids = [*bos, *prefix_ids]
    positions = []
    for piece in segment_ids:
        if len(ids) + len(piece) > room + len(bos):
            break
        positions.append(len(ids))
        ids.extend(piece)
    return SegmentInput([*ids, *eos], positions, truncated)


def encode_pair_text(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int) -> list[int]:
    """Sequence-RM input: the tokenizer's own special tokens, truncated on the right like the paper's code."""
    return tokenizer(text, truncation=True, max_length=max_length)["input_ids"]


def fg_model_class(kind: str) -> tuple[type, dict]:
    """(Auto class, from_pretrained kwargs) of a reward model of `kind`: token (2 labels) or sequence (1 output)."""
    if kind not in KINDS:
        raise ConfigError(f"kind {kind!r} is not one of {KINDS}")
    if kind == "token":
        return AutoModelForTokenClassification, {
            "num_labels": 2,
            "id2label": LABELS,
            "label2id": {v: k for k, v in LABELS.items()},
        }
    return AutoModelForSequenceClassification, {"num_labels": 1}


def _pad_token_from(model, tokenizer):
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_fg_reward_model(path: str | os.PathLike, kind: str, dtype: torch.dtype | None = None):
    """(model, tokenizer) of `kind` from a trained directory or a base encoder (new head, seeded by the caller), as
    loaded: for training (inference uses `load_fg_reward_model_for_inference`)."""
    model_class, kwargs = fg_model_class(kind)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if dtype is not None:
        kwargs["dtype"] = dtype
    return _pad_token_from(model_class.from_pretrained(path, **kwargs), tokenizer)


def load_fg_reward_model_for_inference(
    path: str | os.PathLike, kind: str, device: str | None = None, dtype: str | torch.dtype | None = None
):
    """(model, tokenizer) of `kind` through `inference.load_for_inference`: on the job's device, eval mode."""
    model_class, kwargs = fg_model_class(kind)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return _pad_token_from(load_for_inference(model_class, path, device=device, dtype=dtype, **kwargs), tokenizer)


@torch.inference_mode()
def segment_error_predictions(model, tokenizer, inputs: list[SegmentInput], batch_size: int = 16) -> list[list[int]]:
    """Per input (in input order, batched by similar length), the label (1 = error, 0 = O) at each kept separator:
    1 when the error logit is at least the O logit, the original's argmax over [error, O], which picks the error on
    a tie (its reward.py)."""
    device = next(model.parameters()).device
    out: list[list[int]] = [[] for _ in inputs]
    for chunk in length_sorted_batches([c.input_ids for c in inputs], batch_size):
        input_ids, attention_mask = pad_right([inputs[i].input_ids for i in chunk], pad_id_of(tokenizer))
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        labels = (logits[..., 1] >= logits[..., 0]).long().cpu()
        for row, i in enumerate(chunk):
            out[i] = labels[row, inputs[i].separator_positions].tolist()
    return out


@torch.inference_mode()
def sequence_scores(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 16) -> list[float]:
    """The sequence RM's score of each text, in input order (batched by similar length)."""
    device = next(model.parameters()).device
    encoded = [encode_pair_text(tokenizer, t, max_length) for t in texts]
    scores: list[float] = [0.0] * len(texts)
    for chunk in length_sorted_batches(encoded, batch_size):
        input_ids, attention_mask = pad_right([encoded[i] for i in chunk], pad_id_of(tokenizer))
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        for i, score in zip(chunk, logits[:, 0].float().cpu().tolist(), strict=True):
            scores[i] = score
    return scores


def read_mean_std(path: str | os.PathLike) -> tuple[float, float]:
    """(mean, std) from a `reward-mean-std` JSON."""
    data = json.loads(Path(path).read_text())
    return float(data["mean"]), float(data["std"])
