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


def test_a_stage_ends_its_process_group(tmp_path):
    """A stage run under `accelerate launch` leaves no process group to interpreter finalisation (where gloo's
    threads aborted a finished ZeRO-3 job): here a real one-process gloo group around a real stage."""
    import torch.distributed as dist

    from feedbackflow.core.formats import SLF5K_POSTS, write_rows

    posts = tmp_path / "posts.parquet"
    post = {"post_id": "p1", "subreddit": "Advice", "title": "A title", "post": "A post.",
            "reference_summary": "A summary.", "source": "train.jsonl", "record": 0}  # fmt: skip
    write_rows([post], posts, SLF5K_POSTS)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        main(["ilf-reference-samples", "--posts", str(posts), "--output", str(tmp_path / "samples.parquet")])
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
