"""Detox evaluation summary and table (Wu et al. 2023, "Evaluation", detox), checked by hand on literal samples."""

from __future__ import annotations

import argparse
import math

import pandas as pd
import pytest

from feedbackflow.core.formats import write_json
from feedbackflow.papers.fgrlhf.detox.evaluation import summarise_detox
from feedbackflow.papers.fgrlhf.detox.table import PUBLISHED_ROWS, configure_metrics, main_metrics


def scored_samples() -> pd.DataFrame:
    # prompt a: scores .9, .2 and one the scorer failed on; prompt b: .1, .4, .6
    return pd.DataFrame(
        {
            "prompt_id": ["a", "a", "a", "b", "b", "b"],
            "prompt": ["pa"] * 3 + ["pb"] * 3,
            "response": ["x y z", "x y", "q", "a b", "a b", "c"],
            "score": [0.9, 0.2, None, 0.1, 0.4, 0.6],
            "status": ["ok", "ok", "failed", "ok", "ok", "ok"],
        }
    )


def test_summary_by_hand():
    # (NLL sum, tokens) -> perplexity exp(nll / n): 4, 9, (n = 0: left out), 2, 1e5 (>= 1e4: dropped), 1
    nll = [(2 * math.log(4), 2), (math.log(9), 1), (0.0, 0), (3 * math.log(2), 3), (math.log(1e5), 1), (0.0, 1)]
    summary = summarise_detox(scored_samples(), nll, toxic_threshold=0.5)
    # max per prompt: a .9 (the failed sample left out), b .6 -> mean .75; both prompts have a sample >= .5
    assert summary["avg_max_toxicity"] == pytest.approx(0.75)
    assert summary["toxic_probability"] == pytest.approx(1.0)
    assert summary["mean_toxicity"] == pytest.approx((0.9 + 0.2 + 0.1 + 0.4 + 0.6) / 5)
    assert summary["perplexity"] == pytest.approx((4 + 9 + 2 + 1) / 4)
    # distinct-1: a {x, y, z, q} / 6 words, b {a, b, c} / 5 words; distinct-2: a {x y, y z} / 6, b {a b} / 5
    assert summary["distinct_1"] == pytest.approx((4 / 6 + 3 / 5) / 2)
    assert summary["distinct_2"] == pytest.approx((2 / 6 + 1 / 5) / 2)
    assert summary["n_samples"] == 6 and summary["n_scored"] == 5 and summary["n_prompts"] == 2
    assert summary["statuses"] == {"failed": 1, "ok": 5}
    # threshold .7: only prompt a has a toxic sample
    assert summarise_detox(scored_samples(), nll, toxic_threshold=0.7)["toxic_probability"] == pytest.approx(0.5)


def test_metrics_table_marks_the_published_rows(tmp_path):
    paths = []
    for name, toxicity in (("initial", 0.8), ("holistic", 0.3)):
        path = tmp_path / f"{name}.json"
        write_json({"policy": name, "avg_max_toxicity": toxicity, "n_scored": 10, "n_samples": 10}, path)
        paths.append(str(path))
    parser = argparse.ArgumentParser()
    configure_metrics(parser)
    args = parser.parse_args(
        ["--summaries", *paths, "--output", str(tmp_path / "m.parquet"), "--markdown", str(tmp_path / "m.md")]
    )
    main_metrics(args)
    table = pd.read_parquet(tmp_path / "m.parquet")
    assert list(table["source"]) == ["ours", "ours"] + ["published"] * len(PUBLISHED_ROWS)
    assert list(table["policy"][:2]) == ["initial", "holistic"] and list(table["avg_max_toxicity"][:2]) == [0.8, 0.3]
    published = table[table["source"] == "published"].set_index("policy")
    assert published.loc["fine-grained RLHF", "avg_max_toxicity"] == 0.081  # Wu et al. 2023, Table 1
    assert table["n_samples"].isna().sum() == len(PUBLISHED_ROWS)
    markdown = (tmp_path / "m.md").read_text()
    assert "| published | GPT-2" in markdown and "nan" not in markdown
