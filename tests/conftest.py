"""Shared fixtures: the repository root and the real public data samples in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; in CI (CI=true) its absence is a failure, elsewhere the test is skipped."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{SHARED_DATA} is missing: CI must have shared/ beside the checkout")
        pytest.skip(f"{SHARED_DATA} is not here")
    return SHARED_DATA


# What the suite's default run changes in the scratch copy's config/config.yaml: the qa-feedback policy budget. The
# suite asserts of qa only what holds at any budget (its reward models learn on held-out data, each PPO step logs its
# rewards, the table compares the three policies: tests/test_workflow.py); the policy comparisons need the full
# budget and are `make run`'s and `make claims`' (docs/claims.md). 4 of 10 SFT epochs and 6 of 20 PPO steps per
# variant (a checkpoint every 3) save about 5 minutes of job time, 2.5 of the suite's wall time.
SUITE_QA_BUDGET = {"sft": {"num_epochs": 4}, "ppo": {"common": {"total_episodes": 384, "save_every": 3}}}


def merged(base: dict, overlay: dict) -> dict:
    """`base` with `overlay` merged in (nested dicts merged, everything else replaced), as Snakemake merges configs."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """The default workflow (tiny scale), run to the end with the local profile in a scratch copy of the project,
    with the qa-feedback policy budget of SUITE_QA_BUDGET (written into the copy's config, so later runs in the
    copy plan with it too)."""
    import yaml
    from workflow_runs import copy_project, snakemake

    workdir = copy_project(REPO_ROOT, tmp_path_factory.mktemp("workflow"))
    config_file = workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["qa_feedback"] = merged(config["qa_feedback"], SUITE_QA_BUDGET)
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(workdir, "--cores", "2")
    return workdir


@pytest.fixture(scope="session")
def paper_shape_assets(tmp_path_factory, shared_data):
    """The toy models (the paper configs' architecture classes at toy width) and the slices of the real data files
    that the paper-shape overlays name, each built on first use and kept for the session (tests/paper_shape)."""
    from paper_shape.assets import PaperShapeAssets

    return PaperShapeAssets(tmp_path_factory.mktemp("paper_shape_assets"), shared_data)
