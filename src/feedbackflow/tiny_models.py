"""Tiny models and tokenizers built from config (DESIGN.md, "Scales").

A byte-level BPE tokenizer is trained on a text corpus (one text per line, a newline inside a text written as
backslash n: see `synthetic.escape_corpus_line`) and a small LLaMA-architecture causal
LM is initialised from a seed. Both are saved with `save_pretrained`, so every later stage loads them with the same
`AutoTokenizer.from_pretrained` / `AutoModelForCausalLM.from_pretrained` code it uses for hub ids.

The tokenizer adds no special tokens by itself: callers build bos + ids + eos (SPEC section 4).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from feedbackflow.formats import atomic_directory
from feedbackflow.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.synthetic import unescape_corpus_line

log = logging.getLogger(__name__)

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = [BOS, EOS, PAD, UNK]  # ids 0, 1, 2, 3


@dataclasses.dataclass
class TinyModelConfig:
    seed: int = dataclasses.field(default=42, metadata={"help": "seed of the weight initialisation"})
    vocab_size: int = dataclasses.field(default=2000, metadata={"help": "target BPE vocabulary size"})
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = dataclasses.field(
        default=256, metadata={"help": "longest sequence; also the tokenizer's model_max_length"}
    )

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.vocab_size < len(SPECIAL_TOKENS) + 256:
            raise ValueError(f"vocab_size must be at least {len(SPECIAL_TOKENS) + 256} (specials + bytes)")


def _lines(paths: Iterable[str | os.PathLike]) -> Iterator[str]:
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.rstrip("\n")
                if line:
                    yield unescape_corpus_line(line)


def train_tokenizer(
    corpus_paths: Iterable[str | os.PathLike], vocab_size: int, model_max_length: int = 256
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the (unescaped) lines of `corpus_paths`.

    Special tokens: <s> (bos, id 0), </s> (eos, 1), <pad> (2), <unk> (3). Nothing is added automatically when
    encoding. Byte-level, so any text round-trips through encode/decode.
    """
    paths = [Path(p) for p in corpus_paths]
    if not paths:
        raise ValueError("train_tokenizer needs at least one corpus file")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_lines(paths), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="left",
        clean_up_tokenization_spaces=False,
    )


def build_causal_lm(tokenizer: PreTrainedTokenizerFast, config: TinyModelConfig) -> LlamaForCausalLM:
    """A freshly initialised LLaMA-architecture causal LM sized by `config`, with the tokenizer's vocabulary."""
    llama_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(llama_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.float()


def build_tiny_models(
    corpus_paths: Iterable[str | os.PathLike], output_dir: str | os.PathLike, config: TinyModelConfig | None = None
) -> Path:
    """Train the tokenizer, build the model, and save both (safetensors) into `output_dir`, atomically."""
    config = config or TinyModelConfig()
    tokenizer = train_tokenizer(corpus_paths, config.vocab_size, config.max_position_embeddings)
    model = build_causal_lm(tokenizer, config)
    n_params = sum(p.numel() for p in model.parameters())
    with atomic_directory(output_dir) as tmp:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
    log.info("wrote %s: vocabulary %d, %d parameters", output_dir, len(tokenizer), n_params)
    return Path(output_dir)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", nargs="+", required=True, help="text file(s), one training text per line")
    parser.add_argument("--output-dir", required=True, help="model directory (tokenizer + weights)")
    add_dataclass_arguments(parser, TinyModelConfig)


def main(args: argparse.Namespace) -> None:
    config = dataclass_from_args(TinyModelConfig, args)
    build_tiny_models(args.corpus, args.output_dir, config)
