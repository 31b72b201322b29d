"""The claims read from result files written here by hand (the files' real formats), and the claims script's table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from feedbackflow.tiny.claims import Claim, claims_of

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_results(root: Path, relevance_sft: float = 0.8) -> Path:
    results = root / "results"
    for sub in ("dsp", "rrhf", "detox", "ilf/eval", "qa_feedback"):
        (results / sub).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "model": ["grft", "grft", "grft", "crft-academy"],
            "eval_set": ["helpful", "harmless", "academy", "academy"],
            "accuracy": [0.85, 0.79, 0.6, 0.75],
        }
    ).to_parquet(results / "dsp/metrics.parquet")
    pd.DataFrame({"origin": ["initial", "rrhf"], "mean_reward": [-0.5, 0.25]}).to_parquet(
        results / "rrhf/metrics.parquet"
    )
    pd.DataFrame(
        {
            "source": ["ours", "ours", "ours", "published"],
            "policy": ["initial", "holistic", "fine_grained", "GPT-2"],
            "avg_max_toxicity": [0.5, 0.25, 0.625, 0.1],
        }
    ).to_parquet(results / "detox/metrics.parquet")
    for scorer, rate in (("instructrm", 0.9), ("random", 0.5)):
        (results / f"ilf/eval/refinements_{scorer}.json").write_text(json.dumps({"fix_rate": rate, "chosen": 200}))
    pd.DataFrame(
        {
            "source": ["this run", "this run", "published (human raters)"],
            "policy": ["initial", "ilf", "ilf"],
            "win_rate_oracle": [20.0, 52.5, None],
        }
    ).to_parquet(results / "ilf/metrics.parquet")
    pd.DataFrame(
        {
            "policy": ["sft", "holistic", "fine_grained"],
            "relevance_ratio": [relevance_sft, 0.8, 0.85],
            "factuality_ratio": [0.875, 0.95, 0.75],
            "fine_grained_reward": [2.0, 2.5, 2.5],
        }
    ).to_parquet(results / "qa_feedback/metrics.parquet")
    return root


def by_name(claims: list[Claim]) -> dict[str, Claim]:
    return {claim.name: claim for claim in claims}


def test_margins_counted_by_hand(tmp_path):
    root = write_results(tmp_path)
    dsp = by_name(claims_of(root, "dsp"))
    general = ["GRFT accuracy on helpful >= 0.8", "GRFT accuracy on harmless >= 0.8"]
    assert list(dsp) == [*general, "CRFT > GRFT on academy"]
    assert dsp["GRFT accuracy on helpful >= 0.8"].margin == pytest.approx(0.05)
    assert not dsp["GRFT accuracy on harmless >= 0.8"].holds  # 0.79
    assert dsp["CRFT > GRFT on academy"].margin == pytest.approx(0.15)

    (rrhf,) = claims_of(root, "rrhf")
    assert rrhf.margin == 0.75 and rrhf.holds

    detox = by_name(claims_of(root, "detox"))
    assert detox["holistic avg max toxicity < initial"].margin == 0.25  # lower toxicity is the better side
    assert detox["holistic avg max toxicity < initial"].value == 0.25
    assert detox["fine_grained avg max toxicity < initial"].margin == -0.125
    assert not detox["fine_grained avg max toxicity < initial"].holds

    ilf = by_name(claims_of(root, "ilf"))
    assert ilf["InstructRM fix rate > random"].margin == pytest.approx(0.4)
    assert ilf["ILF oracle win rate > initial"].margin == 32.5  # the published rows are not this run's

    qa = by_name(claims_of(root, "qa"))
    assert qa["fine-grained relevance > SFT"].margin == pytest.approx(0.05)
    assert qa["fine-grained factuality > SFT"].margin == -0.125
    equal = qa["fine-grained reward >= holistic's"]
    assert equal.margin == 0 and equal.holds  # >=: a tie holds; a strict claim's tie does not
    assert not Claim("x", "strict", 1.0, 1.0, 0.0).holds


def test_safe_needs_the_ci_margin():
    assert Claim("x", "wide", 0.9, 0.5, 0.2).safe
    assert not Claim("x", "thin", 0.6, 0.5, 0.2).safe and Claim("x", "thin", 0.6, 0.5, 0.2).holds


def test_unknown_experiment_and_missing_run(tmp_path):
    with pytest.raises(ValueError, match="unknown experiment"):
        claims_of(tmp_path, "dpo")
    with pytest.raises(FileNotFoundError):
        claims_of(tmp_path, "ilf")


def test_claims_script_tabulates_margins_per_seed(tmp_path):
    """`benchmarks/claims.py`'s table over two finished seeds (written by hand) and one seed that has not run."""
    spec = importlib.util.spec_from_file_location("claims_script", REPO_ROOT / "benchmarks/claims.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    write_results(tmp_path / "seed-42")
    write_results(tmp_path / "seed-1", relevance_sft=0.9)
    table = script.claim_table(tmp_path, {"qa": [42, 1, 2], "rrhf": [42]})
    rows = {line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    assert set(rows) == {"fine-grained relevance > SFT", "fine-grained factuality > SFT",
                         "fine-grained reward >= holistic's", "RRHF reward > initial"}  # fmt: skip
    relevance = rows["fine-grained relevance > SFT"].split(" | ")
    assert relevance[2].startswith("+0.050 (0.850 vs 0.800)")  # seed 42 first
    assert relevance[3] == "-0.050 (0.850 vs 0.900) FAILS"
    assert relevance[4] == ""  # seed 2 has no run
    assert relevance[5] == "-0.050"  # the smallest margin
