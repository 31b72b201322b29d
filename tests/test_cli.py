"""Every workflow stage runs outside Snakemake too: `python -m feedbackflow <stage> --help`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from feedbackflow.cli import STAGES, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "feedbackflow", *args], capture_output=True, text=True)


def test_stage_list():
    result = run_cli("--help")
    assert result.returncode == 0
    for stage in STAGES:
        assert stage in result.stdout


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_has_help(stage, capsys):
    """In this process (the module import and its parser are what is checked; a subprocess per stage would add
    a 2-second interpreter start each, and `test_stage_list` runs the real entry point)."""
    with pytest.raises(SystemExit) as exited:
        main([stage, "--help"])
    assert exited.value.code == 0
    assert f"python -m feedbackflow {stage}" in capsys.readouterr().out


def test_unknown_hyperparameter_is_named():
    result = run_cli(
        "train-reward-model", "--train", "x.parquet", "--model", "m", "--output", "o", "--work-dir", "w",
        "--hparams", '{"learning_rat": 0.1}',
    )  # fmt: skip
    assert result.returncode != 0
    assert "learning_rat" in result.stderr
