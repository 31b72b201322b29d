"""Reward-model evaluation for DSP (Cheng et al. 2023): pair accuracy and first-two accuracy per eval set.

Accuracy counts every unordered pair of texts in a list with different scores; a pair is right when the reward
order matches the score order strictly (equal rewards are wrong). First-two accuracy looks only at the first two
texts of each list (chosen then rejected in HH, the domain's response then another in DSP), over lists whose first
two scores differ.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field

import torch
from transformers import AutoTokenizer

from feedbackflow.core.formats import PREFERENCE_LISTS, REWARD_METRICS, REWARD_SCORES, read_table, write_rows
from feedbackflow.core.inference import load_for_inference
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.errors import ConfigError
from feedbackflow.models.reward_model import POOLINGS, RewardModel, encode_texts, score_sequences
from feedbackflow.text.tokens import pad_id_of

log = logging.getLogger("feedbackflow.papers.dsp.reward_evaluation")


@dataclass
class RewardEvaluationConfig:
    seed: int = field(default=42, metadata={"help": "seed of the new head when the model is a plain LM"})
    pooling: str | None = field(default=None, metadata={"help": f"override the saved pooling, one of {POOLINGS}"})
    max_length: int = 512
    batch_size: int = 32
    dtype: str | None = field(
        default=None, metadata={"help": "model dtype on a GPU (config `inference_dtype`; the CPU: float32)"}
    )


def pair_accuracy(rewards: list[list[float]], scores: list[list[float]]) -> tuple[int, int]:
    """(correct, total) over unordered pairs with different scores in each list."""
    correct = total = 0
    for list_rewards, list_scores in zip(rewards, scores, strict=True):
        for i in range(len(list_scores)):
            for j in range(i + 1, len(list_scores)):
                if list_scores[i] == list_scores[j]:
                    continue
                total += 1
                correct += (list_rewards[i] - list_rewards[j]) * (list_scores[i] - list_scores[j]) > 0
    return correct, total


def first_two_accuracy(rewards: list[list[float]], scores: list[list[float]]) -> tuple[int, int]:
    """(correct, total) over the first two texts of lists whose first two scores differ."""
    correct = total = 0
    for list_rewards, list_scores in zip(rewards, scores, strict=True):
        if len(list_scores) < 2 or list_scores[0] == list_scores[1]:
            continue
        total += 1
        correct += (list_rewards[0] - list_rewards[1]) * (list_scores[0] - list_scores[1]) > 0
    return correct, total


def score_lists(model, tokenizer, texts: list[list[str]], config: RewardEvaluationConfig) -> list[list[float]]:
    sequences = [ids for group in texts for ids in encode_texts(tokenizer, group, config.max_length)]
    flat = score_sequences(model, sequences, pad_id_of(tokenizer), config.batch_size)
    out, position = [], 0
    for group in texts:
        out.append(flat[position : position + len(group)])
        position += len(group)
    return out


def parse_eval_sets(items: list[str]) -> dict[str, str]:
    """`name=path` items -> {name: path}."""
    sets = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--eval-set {item!r}: expected name=path")
        if name in sets:
            raise ConfigError(f"--eval-set: name {name!r} given twice")
        sets[name] = path
    return sets


def evaluate_reward_model(
    model_path: str,
    model_name: str,
    eval_sets: dict[str, str],
    metrics_out: str,
    rewards_out: str,
    config: RewardEvaluationConfig,
) -> list[dict]:
    """Score every eval set; write one metrics row per set and every reward, both as Parquet."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = load_for_inference(RewardModel, model_path, dtype=config.dtype, pooling=config.pooling, seed=config.seed)
    metrics, reward_rows = [], []
    for name, path in eval_sets.items():
        table = read_table(path, PREFERENCE_LISTS)
        texts, scores = table.column("text").to_pylist(), table.column("score").to_pylist()
        rewards = score_lists(model, tokenizer, texts, config)
        correct, total = pair_accuracy(rewards, scores)
        first_correct, first_total = first_two_accuracy(rewards, scores)
        metrics.append(
            {
                "model": model_name,
                "eval_set": name,
                "accuracy": correct / total if total else None,
                "first_two_accuracy": first_correct / first_total if first_total else None,
                "n_pairs": total,
                "n_first_two": first_total,
                "n_lists": len(scores),
            }
        )
        records = table.column("record").to_pylist()
        for record, list_scores, list_rewards in zip(records, scores, rewards, strict=True):
            reward_rows.append({"eval_set": name, "record": record, "score": list_scores, "reward": list_rewards})
        log.info("%s on %s: accuracy %s over %d pairs", model_name, name, metrics[-1]["accuracy"], total)
    write_rows(reward_rows, rewards_out, REWARD_SCORES)
    write_rows(metrics, metrics_out, REWARD_METRICS)
    return metrics


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="reward-model directory, or a causal LM (new head)")
    parser.add_argument("--model-name", required=True, help="name of the model in the metrics table")
    parser.add_argument("--eval-set", nargs="+", required=True, metavar="NAME=PATH", help="preference-lists Parquet")
    parser.add_argument("--metrics", required=True, help="metrics Parquet to write")
    parser.add_argument("--rewards", required=True, help="per-text rewards Parquet to write")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_dataclass_arguments(parser, RewardEvaluationConfig)


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = dataclass_from_args(RewardEvaluationConfig, args)
    evaluate_reward_model(
        args.model, args.model_name, parse_eval_sets(args.eval_set), args.metrics, args.rewards, config
    )
