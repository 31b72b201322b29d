"""Token ids of prompts and responses: encoding, left and right padding, and decoding a generated response.

Shared by every stage that batches token ids (sampling, SFT, RRHF, PPO, the reward models). Prompts are bos + ids,
left-truncated so the end of a dialogue, next to the response, is kept (RRHF's sampling rule).

Decoding skips special tokens. With `clean_up_spaces` it also removes the space before punctuation and English
contractions (`clean_up_tokenization_spaces`), as Fine-Grained RLHF's original code decodes policy samples
(allenai/FineGrainedRLHF fgrlhf/policy.py: `clean_up_tokenization_spaces=True`; docs/methods/fine_grained_rlhf.md).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from feedbackflow.errors import ConfigError


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into (input_ids, attention_mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def pad_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for padding (masked out everywhere): pad, else eos."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_prompt_tokens: int) -> list[list[int]]:
    """bos + ids of each prompt, left-truncated to `max_prompt_tokens` tokens in all."""
    special = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    room = max_prompt_tokens - len(special)
    if room < 1:
        raise ConfigError(f"max_prompt_tokens {max_prompt_tokens} leaves no room for the prompt")
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    return [special + ids[-room:] for ids in encoded]


def pad_left(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (input_ids, attention_mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def cut_at_stop_strings(text: str, stop_strings: list[str] | tuple[str, ...]) -> str:
    """`text` up to the earliest occurrence of any stop string."""
    cut = len(text)
    for stop in stop_strings:
        position = text.find(stop)
        if position >= 0:
            cut = min(cut, position)
    return text[:cut]


# transformers' `clean_up_tokenization`: the same ten replacements in 4.23.1 (the original's requirements.txt) and 5.x
CLEAN_UP_REPLACEMENTS = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
    (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)  # fmt: skip


def clean_up_tokenization_spaces(text: str) -> str:
    """`text` with each of `CLEAN_UP_REPLACEMENTS` applied in turn: "He said , yes ." -> "He said, yes."."""
    for old, new in CLEAN_UP_REPLACEMENTS:
        text = text.replace(old, new)
    return text


def decode_tokens(tokenizer, ids: list[int], clean_up_spaces: bool = False) -> str:
    """`ids` decoded without special tokens; with `clean_up_spaces`, then `clean_up_tokenization_spaces`.

    Without it the tokenizer's own setting applies, as before. The clean-up is applied here, not by
    `decode(clean_up_tokenization_spaces=True)`: transformers 5 ignores that flag for BPE tokenizers (the tiny
    models' byte-level BPE), while the original's transformers applied it to every tokenizer."""
    if not clean_up_spaces:
        return tokenizer.decode(ids, skip_special_tokens=True)
    return clean_up_tokenization_spaces(
        tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    )


def decode_response(tokenizer, ids: list[int], eos_ids: set[int], stop_strings, clean_up_spaces: bool = False) -> str:
    """The generated ids up to the first eos, decoded (`decode_tokens`), cut at the stop strings, stripped."""
    for position, token in enumerate(ids):
        if token in eos_ids:
            ids = ids[:position]
            break
    text = decode_tokens(tokenizer, ids, clean_up_spaces)
    return cut_at_stop_strings(text, stop_strings).strip()
