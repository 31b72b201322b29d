"""qa-feedback evaluation: the pooled ratios (the paper's aggregate_metrics) by hand, and the metrics table."""

from __future__ import annotations

import json

import pytest

from feedbackflow.papers.fgrlhf.qa.evaluation import fine_grained_total, summarise
from feedbackflow.papers.fgrlhf.qa.table import collect_qa_metrics


def row(rouge, sub, rel, sent, fact, comp, length, fine=0.0, preference=None):
    return dict(
        rouge_lsum=rouge,
        n_sub_sentences=sub,
        n_relevant=rel,
        n_sentences=sent,
        n_factual=fact,
        completeness=comp,
        fine_grained_reward=fine,
        preference=preference,
        length=length,
    )


def test_fine_grained_total_is_what_ppo_pays():
    # 4 sub-sentences, 3 relevant: 3 x 0.3 - 1 x 0.3 = 0.6; 3 sentences, 1 factual: 0.5 - 2 x 0.5 = -0.5;
    # R3 z = -2.0: 0.3 x -2.0 = -0.6. Total 0.6 - 0.5 - 0.6 = -0.5.
    assert fine_grained_total(4, 3, 3, 1, -2.0) == pytest.approx(-0.5)
    assert fine_grained_total(0, 0, 0, 0, 1.0) == pytest.approx(0.3)  # empty response: R3 only
    assert fine_grained_total(2, 2, 1, 1, 0.0) == pytest.approx(0.6 + 0.5)


def test_ratios_are_pooled_over_segments():
    rows = [row(40.0, 4, 3, 2, 2, 0.5, 10, 1.0, 0.25), row(60.0, 1, 0, 1, 0, -1.5, 30, -2.0, -1.25)]
    got = summarise(rows)
    # relevance: (3 + 0) / (4 + 1) = 0.6 (a mean of per-response ratios would give (0.75 + 0) / 2 = 0.375)
    # factuality: (2 + 0) / (2 + 1); rouge, completeness, length: plain means.
    assert got == pytest.approx(
        {
            "rouge_lsum": 50.0,
            "relevance_ratio": 0.6,
            "factuality_ratio": 2 / 3,
            "completeness": -0.5,
            "fine_grained_reward": -0.5,
            "preference": -0.5,
            "mean_length": 20.0,
            "n_responses": 2,
        }
    )
    assert summarise([row(0.0, 0, 0, 0, 0, 0.0, 1)])["relevance_ratio"] is None  # no segment: no ratio
    assert summarise([row(0.0, 0, 0, 0, 0, 0.0, 1)])["preference"] is None  # no preference RM given


def test_metrics_table_keeps_policy_order(tmp_path):
    paths = []
    for name, rouge in [("sft", 30.0), ("holistic", 35.0), ("fine_grained", 36.0)]:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"policy": name, "model": "m", **summarise([row(rouge, 1, 1, 1, 1, 0.0, 5)])}))
        paths.append(str(path))
    frame = collect_qa_metrics(paths)
    assert frame["policy"].tolist() == ["sft", "holistic", "fine_grained"]
    assert frame["rouge_lsum"].tolist() == [30.0, 35.0, 36.0]
