"""Shared fixtures: the repository root and the real public data samples in ../shared/data; the units of work of
`make test`'s two pytest workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# `make test` runs two pytest workers (`-n 2 --dist loadfile`), each test file a unit of work given to whichever worker
# is free, with these files grouped into one unit: the default run (`finished_run`, both cores for about 16 minutes)
# and the SLURM tests (one test cluster at a time) on one worker, the paper-shape scenarios (`paper_shape_assets`) on
# one. A session fixture is built per worker, so a test that uses one of these fixtures must be in its group, or a
# second worker would build it again. (pytest-xdist's own `loadgroup` marks do not reach its scheduler under pytest
# 9, whose node ids are no longer rewritable: `pytest_xdist_make_scheduler` below groups by file name instead.)
XDIST_GROUPS = {
    "test_workflow.py": "default_run_and_slurm",
    "test_slurm.py": "default_run_and_slurm",
    "test_slurm_cluster.py": "default_run_and_slurm",
    "test_paper_shape.py": "paper_shape",
}
SESSION_FIXTURE_GROUPS = {"finished_run": "default_run_and_slurm", "paper_shape_assets": "paper_shape"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        group = XDIST_GROUPS.get(item.path.name)
        for fixture, needed in SESSION_FIXTURE_GROUPS.items():
            if fixture in getattr(item, "fixturenames", ()) and group != needed:
                raise pytest.UsageError(f"{item.nodeid} uses {fixture}: add its file to XDIST_GROUPS as {needed!r}")


def xdist_unit(nodeid: str) -> str:
    """The unit of work of a test under `--dist loadfile`: its file, or its file's group in XDIST_GROUPS."""
    file = nodeid.split("::", 1)[0]
    return XDIST_GROUPS.get(Path(file).name, file)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_unit(nodeid)

    return FileGroupScheduling(config, log)


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
