"""qa-feedback's policy table (the `qa-metrics` stage): the evaluate-qa summaries of SFT, holistic and fine-grained
PPO in one Parquet / Markdown table, and the PPO training curves (Wu et al. 2023, Table 2's columns). No model is
loaded, so neither torch nor transformers is imported: the job starts fast."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from feedbackflow.rl.curves import add_policy_table_and_curve_arguments, write_policy_table_and_curves

log = logging.getLogger(__name__)


METRIC_COLUMNS = [
    "rouge_lsum",
    "relevance_ratio",
    "factuality_ratio",
    "completeness",
    "fine_grained_reward",
    "preference",
    "mean_length",
    "n_responses",
]


def collect_qa_metrics(summary_paths: list[str]) -> pd.DataFrame:
    """One row per policy summary, in the given order."""
    rows = [json.loads(Path(p).read_text()) for p in summary_paths]
    return pd.DataFrame(rows)[["policy", *METRIC_COLUMNS]]


def configure_metrics(parser: argparse.ArgumentParser) -> None:
    add_policy_table_and_curve_arguments(parser, "evaluate-qa summary JSONs")


def main_metrics(args: argparse.Namespace) -> None:
    frame = collect_qa_metrics(args.summaries)
    write_policy_table_and_curves(
        frame,
        args,
        "# qa-feedback: policies on the test prompts (greedy)\n\n"
        + frame.to_markdown(index=False, floatfmt=".3f")
        + "\n\nrelevance / factuality ratio: sub-sentences / sentences that R1 / R2 label without error; "
        "completeness: R3 (score - mean) / std; fine_grained_reward: R1 + R2 + R3 as PPO pays them (sum per "
        "response); preference: the holistic preference RM's (score - mean) / std (the holistic PPO's reward).\n",
    )
    log.info("wrote %s and %s", args.output, args.markdown)
