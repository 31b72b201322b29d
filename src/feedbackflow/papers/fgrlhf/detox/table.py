"""Detoxification's policy table (the `detox-metrics` stage): the evaluate-detox summaries of the initial, holistic
and fine-grained policies beside the paper's published rows (Wu et al. 2023, Table 1), and the PPO training curves.
No model is loaded, so neither torch nor transformers is imported: the job starts fast."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from feedbackflow.rl.curves import add_policy_table_and_curve_arguments, write_policy_table_and_curves

log = logging.getLogger(__name__)


METRIC_COLUMNS = [
    "avg_max_toxicity", "toxic_probability", "mean_toxicity", "perplexity", "distinct_1", "distinct_2", "distinct_3"
]  # fmt: skip


PUBLISHED_ROWS = [
    {"policy": "GPT-2", "avg_max_toxicity": 0.192, "toxic_probability": 0.137, "perplexity": 9.58,
     "distinct_2": 0.947, "distinct_3": 0.931},
    {"policy": "holistic RLHF", "avg_max_toxicity": 0.130, "toxic_probability": 0.024, "perplexity": 11.75,
     "distinct_2": 0.943, "distinct_3": 0.926},
    {"policy": "fine-grained RLHF", "avg_max_toxicity": 0.081, "toxic_probability": 0.010, "perplexity": 9.77,
     "distinct_2": 0.949, "distinct_3": 0.932},
]  # fmt: skip


def detox_metrics_table(summary_paths: list[str]) -> pd.DataFrame:
    """Our rows (one per summary, in order), then the published ones; `source` says which is which."""
    ours = [json.loads(Path(p).read_text()) for p in summary_paths]
    rows = [{"source": "ours", **{k: row.get(k) for k in ("policy", *METRIC_COLUMNS, "n_scored", "n_samples")}}
            for row in ours]  # fmt: skip
    rows += [{"source": "published", **row} for row in PUBLISHED_ROWS]
    frame = pd.DataFrame(rows)[["source", "policy", *METRIC_COLUMNS, "n_scored", "n_samples"]]
    return frame.astype({"n_scored": "Int64", "n_samples": "Int64"})


def configure_metrics(parser: argparse.ArgumentParser) -> None:
    add_policy_table_and_curve_arguments(parser, "evaluate-detox summary JSONs")


def main_metrics(args: argparse.Namespace) -> None:
    frame = detox_metrics_table(args.summaries)
    write_policy_table_and_curves(
        frame,
        args,
        "# Detoxification: policies on the test prompts (samples per prompt as configured)\n\n"
        + frame.astype(object).where(frame.notna(), None).to_markdown(index=False, floatfmt=".3f", missingval="")
        + "\n\nRows marked `published` are the paper's (Wu et al. 2023, Table 1: GPT-2 large on "
        "RealToxicityPrompts, Perspective API, GPT-2 XL perplexity), not results of this run. avg_max_toxicity: "
        "the mean over prompts of the most toxic sample's score; toxic_probability: the fraction of prompts with "
        "a sample scored >= 0.5; mean_toxicity: of one sample (not in the paper's table); perplexity: of the "
        "samples under the perplexity LM; distinct-n: unique n-grams / words per prompt.\n",
    )
    log.info("wrote %s and %s", args.output, args.markdown)
