"""Shared fixtures: the repository root, the real public data samples in ../shared/data, and the default run.

The default run (`finished_run`) is the suite's longest part (about 14 of its minutes on 2 cores). It starts in the
background when the session's first test starts (`default_run_in_background`), when any selected test needs it,
and runs while the tests that do not need it run: those use about 1.2 of the 2 cores (mostly one process, or
waiting on their subprocesses). The paper-shape scenarios, which fill both cores themselves, are moved to the end
of the session (`pytest_collection_modifyitems`), so they do not run at the same time. Measured on fresh clones
(2 cores, quiet): `make test` 28:20 against 29:39 with the default run in the foreground; the harvest is smaller
than the idle share suggests (the two runs together used 2,779 CPU-s of user time against 2,642), and of the order
of this machine's run-to-run spread (a later run of the same suite: 31:13, 3,034 CPU-s). The suite is bound by its
CPU work: with one torch thread here (below) and the smaller SUITE_QA_BUDGET, `make test` took 29:13 (3,179 CPU-s)
against 36:06 (3,998 CPU-s) for cff3d85 run just before it on the same, slower, machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# torch in the test process and in the CLI processes it starts computes on one thread (read when torch is first
# imported, after this file), as each workflow job does (Snakemake sets OMP_NUM_THREADS to the rule's threads).
# The toy models gain nothing from a second thread, and the background default run holds the other core: on 2
# cores the tests besides the default run, the paper-shape scenarios and SLURM took 381 s and 445 CPU-s on one
# thread against 418 s and 497 CPU-s on two, with nothing else running. A value set outside (OMP_NUM_THREADS=2
# make test) is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")


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


# What the suite's default run changes in the scratch copy's config/config.yaml: the qa-feedback budget. The suite
# asserts of qa only what holds at any budget (its reward models learn on held-out data, each PPO step logs its
# rewards, the table compares the three policies: tests/test_workflow.py); the policy comparisons need the full
# budget and are `make run`'s and `make claims`' (docs/claims.md). 2 of 10 SFT epochs, 3 of 20 PPO steps per variant
# (a checkpoint at the last), half an epoch of the two sequence reward models (R3: 80 of 169 steps, preference: 120 of
# 243) and 2 of R2's 4 epochs. Measured at training seeds 42 / 1 / 2 on the suite's data: R3 and preference rank
# held-out pairs at 0.81 / 0.84 / 0.82 and 0.72 / 0.71 / 0.72 (asserted: above 0.6; 0.92 and 0.77 after the whole
# epoch), R2 labels at 0.88 / 0.87 / 0.90 (asserted: above the majority label's 0.78 + 0.02; 0.94 after 4 epochs).
# R1, whose margin is the smallest (0.80 against 0.73 + 0.02 after 4 epochs, 0.795 after 3), keeps its budget.
SUITE_QA_BUDGET = {
    "sft": {"num_epochs": 2},
    "reward_models": {
        "factuality": {"num_epochs": 2},
        "completeness": {"max_steps": 80},
        "preference": {"max_steps": 120},
    },
    "ppo": {"common": {"total_episodes": 192, "save_every": 3}},
}


LAST_MODULES = ("test_paper_shape.py",)  # they fill both cores: not while the default run is in the background


def pytest_collection_modifyitems(session, config, items):
    """LAST_MODULES' tests after every other test (each module's order kept)."""
    items.sort(key=lambda item: item.path.name in LAST_MODULES)


@pytest.fixture(scope="session", autouse=True)
def default_run_in_background(request, tmp_path_factory):
    """The default workflow (tiny scale) started in a scratch copy of the project when the session starts, if a
    selected test needs `finished_run`: (workdir, process, log path), or None. The copy's config has the qa-feedback
    budget of SUITE_QA_BUDGET (so later runs in the copy plan with it too). Teardown stops a run still going
    (an interrupted session)."""
    if not any("finished_run" in item.fixturenames for item in request.session.items):
        yield None
        return
    import yaml
    from snakemake.utils import update_config  # Snakemake's own merge of several --configfile
    from workflow_runs import copy_project, snakemake_command

    workdir = copy_project(REPO_ROOT, tmp_path_factory.mktemp("workflow"))
    config_file = workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    update_config(config["qa_feedback"], SUITE_QA_BUDGET)
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    log = tmp_path_factory.getbasetemp() / "default_run.log"
    command, env = snakemake_command("--cores", "2")
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        yield workdir, process, log
    finally:
        if process.poll() is None:  # Snakemake cancels its jobs on SIGTERM; SIGKILL if it has not ended in a minute
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="session")
def finished_run(default_run_in_background) -> Path:
    """The default workflow (tiny scale, SUITE_QA_BUDGET), run to the end with the local profile in a scratch copy
    of the project: waits for `default_run_in_background`."""
    workdir, process, log = default_run_in_background
    if process.wait() != 0:
        raise AssertionError(f"the default run failed (exit {process.returncode}):\n{log.read_text()[-8000:]}")
    return workdir


@pytest.fixture(scope="session")
def paper_shape_assets(tmp_path_factory, shared_data):
    """The toy models (the paper configs' architecture classes at toy width) and the slices of the real data files
    that the paper-shape overlays name, each built on first use and kept for the session (tests/paper_shape)."""
    from paper_shape.assets import PaperShapeAssets

    return PaperShapeAssets(tmp_path_factory.mktemp("paper_shape_assets"), shared_data)
