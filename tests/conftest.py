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


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """The default workflow (tiny scale), run to the end with the local profile in a scratch copy of the project."""
    from workflow_runs import copy_project, snakemake

    workdir = copy_project(REPO_ROOT, tmp_path_factory.mktemp("workflow"))
    snakemake(workdir, "--cores", "2")
    return workdir


@pytest.fixture(scope="session")
def paper_shape_assets(tmp_path_factory, shared_data):
    """The toy models (the paper configs' architecture classes at toy width) and the slices of the real data files
    that the paper-shape overlays name, each built on first use and kept for the session (tests/paper_shape)."""
    from paper_shape.assets import PaperShapeAssets

    return PaperShapeAssets(tmp_path_factory.mktemp("paper_shape_assets"), shared_data)
