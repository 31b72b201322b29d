"""Scoring samples with a reward model (Yuan et al. 2023, RRHF): SAMPLES -> SCORED_SAMPLES Parquet.

The text of a sample is prompt + " " + response (the paper's input to `Dahoas/gptj-rm-static`), encoded as
bos + ids + eos (`reward_model.encode_texts`; no bos when the tokenizer has none) and read with the "eos" pooling
of `RewardModel`, so the score is the reward head on the hidden state at the appended eos, the first eos of the
sequence. A text longer than `max_length` tokens (bos and eos included) is LEFT-truncated, so the response and the
end of the dialogue are kept and the oldest turns dropped, as GanjinZero/RRHF
`data_generation/scoring_responses.py` does (truncation side left, no bos). A bos, when the scoring model's
tokenizer has one (a DSP reward model at tiny scale), is kept (`keep_bos`); DSP's own stages drop it from a cut
text. A plain causal LM (not a reward-model directory) gets a new head drawn from `seed`, which is only useful in
tests.

Every row is written with status "ok", the score, scorer f"rm:{model}" and null token counts (those are for
LLM judges).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field

import pyarrow as pa
import torch
from transformers import AutoTokenizer

from feedbackflow.core.formats import SCORED_SAMPLES, write_table
from feedbackflow.core.inference import load_for_inference
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.models.reward_model import POOLINGS, RewardModel, encode_texts, is_reward_model_dir, score_sequences
from feedbackflow.stages.sample_tables import merge_samples
from feedbackflow.text.tokens import pad_id_of

log = logging.getLogger(__name__)


@dataclass
class RewardScoringConfig:
    max_length: int = field(default=512, metadata={"help": "longest scored sequence; longer texts lose their start"})
    batch_size: int = 16
    pooling: str = field(default="eos", metadata={"help": f"one of {POOLINGS}; RRHF reads the score at eos"})
    seed: int = field(default=42, metadata={"help": "seed of a new head when the model is a plain LM"})
    dtype: str | None = field(
        default=None, metadata={"help": "model dtype on a GPU (config `inference_dtype`; the CPU: float32)"}
    )


def sample_texts(prompts: list[str], responses: list[str]) -> list[str]:
    """The reward-model text of each sample: prompt + " " + response."""
    return [f"{prompt} {response}" for prompt, response in zip(prompts, responses, strict=True)]


def score_texts(model, tokenizer, texts: list[str], config: RewardScoringConfig) -> list[float]:
    """Reward of each text (bos + ids + eos, left-truncated to max_length), in input order."""
    if config.batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {config.batch_size}")
    if not texts:
        return []
    sequences = encode_texts(tokenizer, texts, config.max_length, keep_bos=True)
    truncated = sum(1 for text, ids in zip(texts, sequences, strict=True) if len(ids) >= config.max_length)
    if truncated:
        log.info("%d of %d texts reached max_length %d (left-truncated)", truncated, len(texts), config.max_length)
    return score_sequences(model, sequences, pad_id_of(tokenizer), config.batch_size)


def scored_table(samples: pa.Table, scores: list[float], scorer: str) -> pa.Table:
    """SAMPLES columns + score, status "ok", reason null, `scorer`, null token counts."""
    n = samples.num_rows
    columns = {name: samples.column(name) for name in ("prompt_id", "prompt", "response", "origin", "sample_index")}
    columns.update(
        score=pa.array(scores, pa.float64()),
        status=pa.array(["ok"] * n, pa.string()),
        reason=pa.nulls(n, pa.string()),
        scorer=pa.array([scorer] * n, pa.string()),
        prompt_tokens=pa.nulls(n, pa.int64()),
        completion_tokens=pa.nulls(n, pa.int64()),
    )
    return pa.table(columns).cast(SCORED_SAMPLES)


def score_samples(
    samples_paths: list[str | os.PathLike],
    model_name: str,
    output: str | os.PathLike,
    config: RewardScoringConfig,
) -> pa.Table:
    """Merge the SAMPLES file(s), score every sample, and write SCORED_SAMPLES Parquet atomically."""
    if config.pooling not in POOLINGS:
        raise ConfigError(f"pooling {config.pooling!r} is not one of {POOLINGS}")
    samples = merge_samples(list(samples_paths))
    if samples.num_rows == 0:
        raise DataError(", ".join(map(str, samples_paths)), None, None, "no samples to score")
    if not is_reward_model_dir(model_name):
        log.warning("%s is not a reward-model directory: its head is new (seed %d)", model_name, config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    model = load_for_inference(RewardModel, model_name, dtype=config.dtype, pooling=config.pooling, seed=config.seed)
    texts = sample_texts(samples.column("prompt").to_pylist(), samples.column("response").to_pylist())
    scores = score_texts(model, tokenizer, texts, config)
    table = scored_table(samples, scores, f"rm:{model_name}")
    write_table(table, output)
    log.info("scored %d samples with %s into %s", table.num_rows, model_name, output)
    return table


def configure(parser: argparse.ArgumentParser) -> None:
    """Flags of the `score-samples` stage."""
    parser.add_argument("--samples", nargs="+", required=True, help="SAMPLES Parquet file(s), merged in order")
    parser.add_argument("--model", required=True, help="reward-model directory (or a causal LM: new head)")
    parser.add_argument("--output", required=True, help="SCORED_SAMPLES Parquet to write")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_dataclass_arguments(parser, RewardScoringConfig)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = dataclass_from_args(RewardScoringConfig, args)
    score_samples(args.samples, args.model, args.output, config)
