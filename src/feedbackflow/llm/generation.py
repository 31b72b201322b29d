"""Stage `generate-texts`: N texts per prompt from a language model, cached (ILF's initial summaries, refinements,
test summaries and best-of-n candidates; Scheurer et al. 2023, "Training Language Models with Language Feedback at
Scale").

The model is any `language_model.LMConfig`: a local Hugging Face causal LM (`hf`, such as the policy being
evaluated) or an OpenAI-compatible endpoint (`openai`), given as the JSON object `--lm`. Decoding is
`GenerationConfig` (the paper's initial-summary decoding by default: temperature 1.0, top_p 0.95, at most 48
tokens, cut at the first newline). Every reply is cached as it arrives (`--cache`), so a rerun sends nothing twice.

If any prompt is still without a reply after the retries, the stage fails naming the prompts and the reasons and
writes nothing: the replies that came are in the cache, and a rerun sends only the missing ones. An empty text
(a model that stopped at once) is a valid sample and is kept; it is counted in the log. A prompt id given twice in
the prompts file is a DataError (its samples could not be told apart).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field

from feedbackflow.core.formats import PROMPTS, SAMPLES, read_table, write_rows
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.llm.language_model import LanguageModel, LMConfig, lm_config_from_json

log = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    """Decoding of one generation stage (defaults: the ILF paper's initial-summary decoding)."""

    n: int = field(default=1, metadata={"help": "texts per prompt"})
    temperature: float = field(default=1.0, metadata={"help": "0 = greedy"})
    top_p: float | None = 0.95
    max_tokens: int = 48
    stop: list[str] = field(default_factory=lambda: ["\n"], metadata={"help": "JSON list; cut at the first"})
    seed: int = 42
    origin: str = field(default="policy", metadata={"help": "written as the SAMPLES origin"})

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"n: must be at least 1, got {self.n}")
        if not self.origin:
            raise ConfigError("origin: must not be empty")


def read_prompts(prompts_path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(prompt ids, prompts) of a PROMPTS file; DataError for a file that is not one, an empty one, a missing value
    or a prompt id given twice (its samples could not be told apart)."""
    try:
        table = read_table(prompts_path, PROMPTS)
    except ValueError as error:  # missing columns, or not Parquet (ArrowInvalid is a ValueError)
        raise DataError(prompts_path, None, None, str(error)) from error
    if table.num_rows == 0:
        raise DataError(prompts_path, None, None, "no prompts")
    prompt_ids = table.column("prompt_id").to_pylist()
    prompts = table.column("prompt").to_pylist()
    seen: dict[str, int] = {}
    for record, (prompt_id, prompt) in enumerate(zip(prompt_ids, prompts, strict=True)):
        if prompt_id is None:
            raise DataError(prompts_path, record, "prompt_id", "missing value")
        if prompt is None:
            raise DataError(prompts_path, record, "prompt", "missing value")
        if prompt_id in seen:
            raise DataError(prompts_path, record, "prompt_id", f"{prompt_id!r} is also record {seen[prompt_id]}")
        seen[prompt_id] = record
    return prompt_ids, prompts


def generate_texts(
    prompts_path: str | os.PathLike,
    output: str | os.PathLike,
    cache_path: str | os.PathLike,
    lm_config: LMConfig,
    config: GenerationConfig,
) -> list[dict]:
    """Sample `config.n` texts per prompt of a PROMPTS file and write SAMPLES (atomically); see the module doc."""
    prompt_ids, prompts = read_prompts(prompts_path)
    with LanguageModel(lm_config, cache_path) as lm:
        results = lm.sample(prompts, config.n, config.temperature, config.top_p, config.max_tokens, config.stop,
                            config.seed)
        stats = lm.stats
    failed = [(record, result) for record, result in enumerate(results) if not result.ok]
    if failed:
        shown = "; ".join(f"record {record} ({prompt_ids[record]}): {result.error}" for record, result in failed[:5])
        raise DataError(
            prompts_path, failed[0][0], "prompt",
            f"{len(failed)} of {len(prompts)} prompts got no reply from {lm.name} ({shown}); the {stats.replies} "
            "replies received are cached, a rerun sends only the missing ones; nothing was written",
        )
    rows = [
        {"prompt_id": pid, "prompt": prompt, "response": text, "origin": config.origin, "sample_index": k}
        for pid, prompt, result in zip(prompt_ids, prompts, results, strict=True)
        for k, text in enumerate(result.value)
    ]
    write_rows(rows, output, SAMPLES)
    empty = sum(1 for row in rows if not row["response"])
    log.info(
        "%s: %d texts for %d prompts -> %s (%d empty); %d cache hits, %d requests sent",
        lm.name, len(rows), len(prompts), output, empty, stats.cache_hits, stats.requests_sent,
    )
    return rows


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", required=True, help="PROMPTS Parquet")
    parser.add_argument("--output", required=True, help="SAMPLES Parquet to write")
    parser.add_argument("--cache", required=True, help="SQLite reply cache (created if absent)")
    parser.add_argument("--lm", required=True, help='JSON object: LMConfig, e.g. {"backend": "hf", "model": DIR}')
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (hf)")
    add_dataclass_arguments(parser, GenerationConfig)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    generate_texts(args.prompts, args.output, args.cache, lm_config_from_json(args.lm), dataclass_from_args(
        GenerationConfig, args))
