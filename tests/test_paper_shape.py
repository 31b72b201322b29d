"""Paper-shape scenarios (DESIGN.md, "Scales"; issue 19): each paper config of config/experiments/ runs through
Snakemake on the CPU, up to its metrics table, with an overlay (tests/paper_shape/<paper>.yaml, a second
--configfile merged over the paper file) that changes sizes only: toy models of the paper's architecture classes,
slices of the real data files of ../shared/data (or files in the paper's format at real lengths), a few steps,
2 CPU processes under the paper's accelerate config. They catch what the tiny world cannot: real data lengths at
the paper's max lengths, DDP / DeepSpeed ZeRO behaviour of the real architectures, batch arithmetic.

Each scenario runs in a scratch copy of the project; its wall time is recorded as the test's `seconds` property
(`pytest --junitxml` keeps it). A scenario that hits a known, open blocker of issue 19 is xfail(strict=True) naming
it, so the blocker's fix turns it into an unexpected pass that must drop the mark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from safetensors.torch import load_file
from workflow_runs import copy_project, snakemake

REPO_ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = REPO_ROOT / "tests" / "paper_shape"


@dataclass
class Scenario:
    paper: str  # config/experiments/<paper>.yaml and tests/paper_shape/<paper>.yaml
    experiment: str  # results/<experiment>/metrics.parquet
    assets: list[str]  # PaperShapeAssets names the overlay refers to
    env: dict = field(default_factory=dict)


SCENARIOS = {
    "dsp": Scenario(
        "dsp", "dsp",
        ["models/llama", "data/hh/harmless-base-test.jsonl.gz", "data/dsp/domain_specific_preference.test.json",
         "data/text_score/hh_pairs.json"],
    ),
}  # fmt: skip


def run_scenario(scenario: Scenario, assets, tmp_path: Path, record_property) -> tuple[Path, pd.DataFrame]:
    """Run the paper file + its overlay to the end in a scratch project; return the workdir and metrics table."""
    (tmp_path / "project").mkdir()
    workdir = copy_project(REPO_ROOT, tmp_path / "project")
    assets.install(workdir, scenario.assets)
    configs = [f"config/experiments/{scenario.paper}.yaml", str(OVERLAYS / f"{scenario.paper}.yaml")]
    start = time.monotonic()
    try:
        snakemake(workdir, "--cores", "2", "--configfile", *configs, env=scenario.env)
    finally:
        record_property("seconds", round(time.monotonic() - start, 1))
    table = workdir / "results" / scenario.experiment / "metrics.parquet"
    assert (workdir / "results" / scenario.experiment / "metrics.md").is_file()
    return workdir, pd.read_parquet(table)


def test_overlays_change_sizes_only():
    """Every paper config has an overlay, and no overlay touches what makes the paper's shape: the accelerate
    config, the experiments, and the max lengths."""
    import yaml

    papers = sorted(p.stem for p in (REPO_ROOT / "config" / "experiments").glob("*.yaml"))
    for paper in sorted(p.stem for p in OVERLAYS.glob("*.yaml")):
        assert paper in papers, f"overlay {paper}.yaml has no config/experiments/{paper}.yaml"
        overlay = yaml.safe_load((OVERLAYS / f"{paper}.yaml").read_text())
        assert not {"accelerate_config", "experiments", "seed"} & set(overlay), paper
        lengths = [key for key in _keys(overlay) if "max_length" in key or "max_input" in key or "max_new" in key]
        assert not lengths, f"{paper}: the overlay changes {lengths}"


def _keys(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield f"{prefix}{key}"
            yield from _keys(value, f"{prefix}{key}.")


def test_dsp(paper_shape_assets, tmp_path, record_property):
    """GRFT then CRFT (with and without the LM loss) of a toy LLaMA under ZeRO-3 + offload on 2 processes, at
    max length 512 on real HH dialogues and DSP responses; every model evaluated on every set."""
    workdir, table = run_scenario(SCENARIOS["dsp"], paper_shape_assets, tmp_path, record_property)
    assert set(table["model"]) >= {"base", "grft", "crft-academy", "crft_imitation-academy"}
    # ZeRO-3 saved the gathered weights (a partitioned save leaves empty tensors): the base model's shapes
    base = load_file(workdir / "paper_shape" / "models" / "llama" / "model.safetensors")
    grft = load_file(workdir / "results" / "dsp" / "models" / "grft" / "model.safetensors")
    assert {k: v.shape for k, v in grft.items()} == {k: v.shape for k, v in base.items()}
