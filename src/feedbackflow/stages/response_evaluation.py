"""Evaluation of generated responses (RRHF, Yuan et al. 2023; the paper's Table 2): per origin (the data set's chosen
and rejected responses, the initial policy, the trained policy), the mean reward under the scoring model and the
perplexity of the responses under a reference LM.

Perplexity is corpus-level per origin: exp(total NLL of the response tokens given their prompt / number of response
tokens), the response followed by eos; prompts are left-truncated so that prompt + response fit `max_length`
(responses longer than that are cut on the right, and counted in the log).
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from feedbackflow.core.formats import SCORED_SAMPLES, atomic_path, read_table, write_table
from feedbackflow.core.inference import load_for_inference
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.text.nll import sequence_nll

log = logging.getLogger("feedbackflow.stages.response_evaluation")

RESPONSE_METRICS = pa.schema(
    [
        pa.field("origin", pa.string(), nullable=False),
        pa.field("mean_reward", pa.float64()),
        pa.field("perplexity", pa.float64()),
        pa.field("mean_response_tokens", pa.float64()),
        pa.field("n_responses", pa.int64(), nullable=False),
        pa.field("n_scored", pa.int64(), nullable=False),
    ]
)


@dataclass
class ResponseEvaluationConfig:
    max_length: int = 512
    batch_size: int = 8
    dtype: str | None = None  # the reference LM's dtype on a GPU (config `inference_dtype`); the CPU: float32


def response_token_ids(tokenizer, prompt: str, response: str, max_length: int) -> tuple[list[int], int]:
    """(ids of prompt + response + eos, index of the first response token), prompt left-truncated to fit."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    response_ids = response_ids[: max_length - 1]
    prompt_ids = prompt_ids[-(max_length - len(response_ids)) :]
    return prompt_ids + response_ids, len(prompt_ids)


def response_nll(model, tokenizer, pairs: list[tuple[str, str]], config: ResponseEvaluationConfig) -> list[tuple]:
    """(summed NLL, token count) of each response (+ eos) given its prompt under `model`."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [response_token_ids(tokenizer, p, r, config.max_length) for p, r in pairs]
    return sequence_nll(model, encoded, config.batch_size, pad_id)


def origin_metrics(scored: pd.DataFrame, nll: list[tuple]) -> list[dict]:
    """One row per origin: mean reward over scored responses, corpus perplexity, mean response length."""
    frame = scored.assign(nll=[n for n, _ in nll], tokens=[t for _, t in nll])
    rows = []
    for origin, group in frame.groupby("origin", sort=False):
        ok = group[group["status"] == "ok"]
        tokens = int(group["tokens"].sum())
        rows.append(
            {
                "origin": origin,
                "mean_reward": float(ok["score"].mean()) if len(ok) else None,
                "perplexity": math.exp(group["nll"].sum() / tokens) if tokens else None,
                "mean_response_tokens": float(group["tokens"].mean()),
                "n_responses": len(group),
                "n_scored": len(ok),
            }
        )
    return rows


def evaluate_responses(
    scored_paths: list[str], reference_model: str, output: str, markdown: str, config: ResponseEvaluationConfig
) -> pd.DataFrame:
    scored = pa.concat_tables([read_table(p, SCORED_SAMPLES) for p in scored_paths]).to_pandas()
    tokenizer = AutoTokenizer.from_pretrained(reference_model)
    model = load_for_inference(AutoModelForCausalLM, reference_model, dtype=config.dtype)
    nll = response_nll(model, tokenizer, list(zip(scored["prompt"], scored["response"], strict=True)), config)
    metrics = pd.DataFrame(origin_metrics(scored, nll))
    write_table(pa.Table.from_pandas(metrics, preserve_index=False), output, RESPONSE_METRICS)
    with atomic_path(markdown) as tmp:
        tmp.write_text(
            f"# Responses: reward and perplexity (reference LM: {reference_model})\n\n"
            + metrics.to_markdown(index=False, floatfmt=".3f")
            + "\n"
        )
    log.info("evaluated %d responses of %d origins", len(scored), len(metrics))
    return metrics


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scored", nargs="+", required=True, help="scored-samples Parquet files")
    parser.add_argument("--reference-model", required=True, help="causal LM for perplexity (dir or hub id)")
    parser.add_argument("--output", required=True, help="metrics Parquet")
    parser.add_argument("--markdown", required=True, help="metrics Markdown")
    parser.add_argument("--threads", type=int, default=None)
    add_dataclass_arguments(parser, ResponseEvaluationConfig)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = dataclass_from_args(ResponseEvaluationConfig, args)
    evaluate_responses(args.scored, args.reference_model, args.output, args.markdown, config)
