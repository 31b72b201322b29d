"""Tiny models and tokenizers built from config (the tiny scale: README, "What the default run produces").

A byte-level BPE tokenizer is trained on a text corpus (one text per line, a newline inside a text written as
backslash n: see `synthetic.escape_corpus_line`) and a small model is initialised from a seed. Both are saved with
`save_pretrained`, so every later stage loads them with the same `from_pretrained` code it uses for hub ids.

Three architectures (`--architecture`):
- `causal` (default): a LLaMA-architecture causal LM. Its tokenizer adds no special tokens by itself: callers build
  bos + ids + eos (Cheng et al. 2023).
- `seq2seq`: a T5 encoder-decoder, the stand-in for t5-large / t5-base (Wu et al. 2023). Like T5's tokenizer, its
  tokenizer appends </s> to every text; decoding starts from <pad> (T5's decoder_start_token_id = pad_token_id).
- `longformer`: a Longformer encoder, the stand-in for allenai/longformer-base-4096 (Wu et al. 2023); load it with
  `AutoModelForTokenClassification` / `AutoModelForSequenceClassification.from_pretrained(dir, num_labels=...)`, which
  add a freshly initialised head, as for the hub checkpoint. Like RoBERTa's tokenizer, its tokenizer wraps every
  text as <s> ... </s> (the sequence-classification head reads the first token, <s>); pairs are
  <s> A </s></s> B </s>. It also adds a prefix space, as the paper's reward-model code loads the Longformer
  tokenizer (add_prefix_space=True), so words tokenized one by one (`is_split_into_words=True`) get the same tokens
  as in running text. The separator of the reward models' inputs is </s> (Wu et al. 2023), the tokenizer's eos and
  the config's sep_token_id.

The vocabulary is the same for all three (same corpus, same deterministic BPE training): only the special-token
template and prefix space differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTJConfig,
    GPTJForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LongformerConfig,
    LongformerForSequenceClassification,
    LongformerForTokenClassification,
    LongformerModel,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from feedbackflow.core.formats import atomic_directory
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.tiny.synthetic import unescape_corpus_line

log = logging.getLogger(__name__)

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = [BOS, EOS, PAD, UNK]  # ids 0, 1, 2, 3
ARCHITECTURES = ("causal", "seq2seq", "longformer")


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
    dropout: float = dataclasses.field(
        default=0.1, metadata={"help": "seq2seq and longformer only (as T5 / Longformer); the causal LM has none"}
    )
    attention_window: int = dataclasses.field(
        default=32, metadata={"help": "longformer only: local attention window, even (one side sees half of it)"}
    )

    def __post_init__(self) -> None:
        if self.attention_window <= 0 or self.attention_window % 2:
            raise ValueError(f"attention_window must be even and positive, got {self.attention_window}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
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


def add_special_token_template(tokenizer: PreTrainedTokenizerFast, architecture: str) -> PreTrainedTokenizerFast:
    """Make `tokenizer` add special tokens as the hub tokenizer of `architecture` does (module docstring), in place.

    causal: nothing (unchanged); seq2seq (T5): "A </s>", pairs "A </s> B </s>"; longformer (RoBERTa):
    "<s> A </s>", pairs "<s> A </s> </s> B </s>", and a prefix space before the first word.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    if architecture == "causal":
        return tokenizer
    backend = tokenizer.backend_tokenizer
    specials = [(BOS, tokenizer.convert_tokens_to_ids(BOS)), (EOS, tokenizer.convert_tokens_to_ids(EOS))]
    if architecture == "seq2seq":
        backend.post_processor = processors.TemplateProcessing(
            single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=specials
        )
    else:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} {EOS} $B {EOS}", special_tokens=specials
        )
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    return tokenizer


def build_seq2seq_lm(tokenizer: PreTrainedTokenizerFast, config: TinyModelConfig) -> T5ForConditionalGeneration:
    """A freshly initialised T5 encoder-decoder sized by `config` (both stacks num_hidden_layers deep).

    As T5: relative position buckets (so no length limit of its own; 32 buckets up to distance 128), ReLU
    feed-forward, tied input/output embeddings, decoding starts from the pad token and stops at </s>.
    """
    t5_config = T5Config(
        vocab_size=len(tokenizer),
        d_model=config.hidden_size,
        d_kv=config.hidden_size // config.num_attention_heads,
        d_ff=config.intermediate_size,
        num_layers=config.num_hidden_layers,
        num_decoder_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        dropout_rate=config.dropout,
        feed_forward_proj="relu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(config.seed)
    model = T5ForConditionalGeneration(t5_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.decoder_start_token_id = tokenizer.pad_token_id
    return model.float()


def longformer_config(tokenizer: PreTrainedTokenizerFast, config: TinyModelConfig, **kwargs) -> LongformerConfig:
    """The LongformerConfig of the tiny reward-model encoder (`kwargs`: e.g. num_labels).

    Longformer numbers positions from pad_token_id + 1 (as RoBERTa), so the position table has
    max_position_embeddings + pad_token_id + 1 rows; inputs are padded to a multiple of `attention_window` with the
    pad token inside the model.
    """
    return LongformerConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        max_position_embeddings=config.max_position_embeddings + tokenizer.pad_token_id + 1,
        type_vocab_size=1,
        attention_window=[config.attention_window] * config.num_hidden_layers,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        sep_token_id=tokenizer.eos_token_id,
        **kwargs,
    )


def build_encoder(tokenizer: PreTrainedTokenizerFast, config: TinyModelConfig) -> LongformerModel:
    """A freshly initialised Longformer encoder (what build-tiny-models saves for `--architecture longformer`)."""
    torch.manual_seed(config.seed)
    return LongformerModel(longformer_config(tokenizer, config), add_pooling_layer=False).float()


def build_token_classifier(
    tokenizer: PreTrainedTokenizerFast, config: TinyModelConfig, num_labels: int
) -> LongformerForTokenClassification:
    """A freshly initialised Longformer with a token-classification head (R1 / R2 of Wu et al. 2023)."""
    torch.manual_seed(config.seed)
    return LongformerForTokenClassification(longformer_config(tokenizer, config, num_labels=num_labels)).float()


def build_sequence_classifier(
    tokenizer: PreTrainedTokenizerFast, config: TinyModelConfig, num_labels: int = 1
) -> LongformerForSequenceClassification:
    """A freshly initialised Longformer with a sequence head on the first token (R3 / preference RM)."""
    torch.manual_seed(config.seed)
    return LongformerForSequenceClassification(longformer_config(tokenizer, config, num_labels=num_labels)).float()


def _special_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}  # fmt: skip


def _seeded_lm(model_class, model_config, tokenizer: PreTrainedTokenizerFast, seed: int) -> PreTrainedModel:
    """`model_class(model_config)` initialised under `seed`, with the tokenizer's special ids for generation."""
    torch.manual_seed(seed)
    model = model_class(model_config)
    for name, value in _special_ids(tokenizer).items():
        setattr(model.generation_config, name, value)
    return model.float()


def build_gpt2_lm(tokenizer: PreTrainedTokenizerFast, config: TinyModelConfig) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 (learned absolute positions, GELU MLP, tied embeddings): the stand-in for
    gpt2-large / gpt2-xl (Wu et al. 2023, detoxification) and gpt2-medium (RRHF perplexity) at toy width."""
    gpt2_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.max_position_embeddings,
        n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_inner=config.intermediate_size,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        **_special_ids(tokenizer),
    )
    return _seeded_lm(GPT2LMHeadModel, gpt2_config, tokenizer, config.seed)


def build_opt_lm(tokenizer: PreTrainedTokenizerFast, config: TinyModelConfig) -> OPTForCausalLM:
    """A freshly initialised OPT (learned positions offset by 2, ReLU MLP): the stand-in for facebook/opt-2.7b
    (ILF policy) and opt-1.3b (OPT-RM) of Scheurer et al. 2023 (ILF) at toy width."""
    opt_config = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        word_embed_proj_dim=config.hidden_size,
        ffn_dim=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        dropout=config.dropout,
        **_special_ids(tokenizer),
    )
    return _seeded_lm(OPTForCausalLM, opt_config, tokenizer, config.seed)


def build_gptj_lm(tokenizer: PreTrainedTokenizerFast, config: TinyModelConfig) -> GPTJForCausalLM:
    """A freshly initialised GPT-J (rotary on part of each head, parallel attention + MLP): the body of the RRHF
    paper's scorer Dahoas/gptj-rm-static (Yuan et al. 2023; `import_reward_model`) at toy width."""
    head_dim = config.hidden_size // config.num_attention_heads
    gptj_config = GPTJConfig(
        vocab_size=len(tokenizer),
        n_positions=config.max_position_embeddings,
        n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        rotary_dim=max(2, head_dim // 2 // 2 * 2),
        n_inner=config.intermediate_size,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        **_special_ids(tokenizer),
    )
    return _seeded_lm(GPTJForCausalLM, gptj_config, tokenizer, config.seed)


# The causal LM families of the paper configs (paper-shape CI scenarios build them at toy width).
CAUSAL_FAMILY_BUILDERS = {
    "llama": build_causal_lm,
    "gpt2": build_gpt2_lm,
    "opt": build_opt_lm,
    "gptj": build_gptj_lm,
}


MODEL_BUILDERS = {"causal": build_causal_lm, "seq2seq": build_seq2seq_lm, "longformer": build_encoder}


def build_tiny_models(
    corpus_paths: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    config: TinyModelConfig | None = None,
    architecture: str = "causal",
) -> Path:
    """Train the tokenizer, build the model of `architecture`, and save both (safetensors) into `output_dir`,
    atomically."""
    config = config or TinyModelConfig()
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    tokenizer = train_tokenizer(corpus_paths, config.vocab_size, config.max_position_embeddings)
    add_special_token_template(tokenizer, architecture)
    model = MODEL_BUILDERS[architecture](tokenizer, config)
    n_params = sum(p.numel() for p in model.parameters())
    with atomic_directory(output_dir) as tmp:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp, safe_serialization=True)
    log.info("wrote %s (%s): vocabulary %d, %d parameters", output_dir, architecture, len(tokenizer), n_params)
    return Path(output_dir)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", nargs="+", required=True, help="text file(s), one training text per line")
    parser.add_argument("--output-dir", required=True, help="model directory (tokenizer + weights)")
    parser.add_argument(
        "--architecture",
        choices=ARCHITECTURES,
        default="causal",
        help="causal LM (LLaMA), seq2seq (T5) or longformer encoder (default: causal)",
    )
    add_dataclass_arguments(parser, TinyModelConfig)


def main(args: argparse.Namespace) -> None:
    config = dataclass_from_args(TinyModelConfig, args)
    build_tiny_models(args.corpus, args.output_dir, config, args.architecture)
