"""The tiny-scale claims: what each paper's mechanism must show in a finished run, read from its result files.

A tiny run is a test fixture for a paper's mechanism (docs/claims.md). Each claim compares two numbers of one run
and has a margin in the claim's own unit, `value - reference` (`reference - value` where lower is better; positive:
the claim holds), and the margin the test suite asserts (`ci_margin`), set below the smallest margin measured over
seeds (`benchmarks/claims.py` prints the claim x seed table) so that a claim is asserted only where it does not hang
by a hair.

- DSP: GRFT's accuracy on each general test set (helpful, harmless) is at least 0.8; each domain's CRFT model is more
  accurate on its domain than GRFT.
- RRHF: the RRHF policy's mean reward on held-out prompts is above the initial policy's.
- Detox: both PPO variants' average max toxicity (25 samples per test prompt) is below the initial policy's.
- ILF: the refinements InstructRM chooses fix the flaw the feedback names more often than random choice; the ILF
  policy's win rate against the human reference, by the synthetic oracle, is above the initial policy's.
- Fine-Grained qa: fine-grained PPO raises the relevance and the factuality ratio over SFT, and its fine-grained
  reward is at least the holistic policy's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim of one run: `value` against `reference`; it holds when `margin` > 0 (or >= 0 with `inclusive`).
    The margin is `value - reference`, or `reference - value` where lower is better."""

    experiment: str
    name: str
    value: float
    reference: float
    ci_margin: float  # the margin the test suite asserts
    inclusive: bool = False
    lower_is_better: bool = False

    def __post_init__(self) -> None:  # numpy scalars from the tables -> floats (plain reprs in test messages)
        object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "reference", float(self.reference))

    @property
    def margin(self) -> float:
        return self.reference - self.value if self.lower_is_better else self.value - self.reference

    @property
    def holds(self) -> bool:
        return self.margin >= 0 if self.inclusive else self.margin > 0

    @property
    def safe(self) -> bool:
        """The claim holds with at least the margin the suite asserts."""
        return self.holds and self.margin >= self.ci_margin


def dsp_claims(root: Path) -> list[Claim]:
    metrics = pd.read_parquet(root / "results/dsp/metrics.parquet")
    accuracy = metrics.set_index(["model", "eval_set"])["accuracy"]
    claims = [
        Claim("dsp", f"GRFT accuracy on {general} >= 0.8", accuracy["grft", general], 0.8, 0.05, inclusive=True)
        for general in ("helpful", "harmless")
    ]
    domains = sorted({m.removeprefix("crft-") for m in metrics["model"] if m.startswith("crft-")})
    claims += [
        Claim("dsp", f"CRFT > GRFT on {domain}", accuracy[f"crft-{domain}", domain], accuracy["grft", domain], 0.1)
        for domain in domains
    ]
    return claims


def rrhf_claims(root: Path) -> list[Claim]:
    reward = pd.read_parquet(root / "results/rrhf/metrics.parquet").set_index("origin")["mean_reward"]
    return [Claim("rrhf", "RRHF reward > initial", reward["rrhf"], reward["initial"], 0.5)]


def detox_claims(root: Path) -> list[Claim]:
    metrics = pd.read_parquet(root / "results/detox/metrics.parquet")
    toxicity = metrics[metrics["source"] == "ours"].set_index("policy")["avg_max_toxicity"]
    return [
        Claim("detox", f"{variant} avg max toxicity < initial", toxicity[variant], toxicity["initial"], 0.1,
              lower_is_better=True)  # fmt: skip
        for variant in ("holistic", "fine_grained")
    ]


def ilf_claims(root: Path) -> list[Claim]:
    fix = {
        scorer: json.loads((root / f"results/ilf/eval/refinements_{scorer}.json").read_text())["fix_rate"]
        for scorer in ("instructrm", "random")
    }
    metrics = pd.read_parquet(root / "results/ilf/metrics.parquet")
    win = metrics[metrics["source"] == "this run"].set_index("policy")["win_rate_oracle"]
    return [
        Claim("ilf", "InstructRM fix rate > random", fix["instructrm"], fix["random"], 0.2),
        Claim("ilf", "ILF oracle win rate > initial", win["ilf"], win["initial"], 15.0),
    ]


def qa_claims(root: Path) -> list[Claim]:
    metrics = pd.read_parquet(root / "results/qa_feedback/metrics.parquet").set_index("policy")
    fine, sft, holistic = metrics.loc["fine_grained"], metrics.loc["sft"], metrics.loc["holistic"]
    return [
        Claim("qa", "fine-grained relevance > SFT", fine["relevance_ratio"], sft["relevance_ratio"], 0.0),
        Claim("qa", "fine-grained factuality > SFT", fine["factuality_ratio"], sft["factuality_ratio"], 0.0),
        Claim("qa", "fine-grained reward >= holistic's", fine["fine_grained_reward"], holistic["fine_grained_reward"],
              0.0, inclusive=True),  # fmt: skip
    ]


# experiment -> (its claims, the Snakemake targets they read)
EXPERIMENTS: dict[str, tuple[Callable[[Path], list[Claim]], tuple[str, ...]]] = {
    "dsp": (dsp_claims, ("results/dsp/metrics.parquet",)),
    "rrhf": (rrhf_claims, ("results/rrhf/metrics.parquet",)),
    "detox": (detox_claims, ("results/detox/metrics.parquet",)),
    "ilf": (
        ilf_claims,
        ("results/ilf/metrics.parquet", "results/ilf/eval/refinements_instructrm.json",
         "results/ilf/eval/refinements_random.json"),
    ),  # fmt: skip
    "qa": (qa_claims, ("results/qa_feedback/metrics.parquet",)),
}


def claims_of(root: str | Path, experiment: str) -> list[Claim]:
    """The claims of `experiment` read from the finished run under `root` (the project copy it ran in)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; one of {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[experiment][0](Path(root))
