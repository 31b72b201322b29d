"""The reward-model trainer, run through its CLI on tiny data the pipeline's own generators make.

Each run is a subprocess, as under Snakemake: determinism, exact gradient accumulation, and resume after a kill.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from feedbackflow.core.batches import PreferenceBatchPlan
from feedbackflow.papers.dsp.reward_training import global_counts
from feedbackflow.stages.preferences import convert_preferences
from feedbackflow.tiny.models import TinyModelConfig, build_tiny_models
from feedbackflow.tiny.synthetic import SyntheticDataConfig, make_synthetic_data

HPARAMS = {
    "batch_size": 16,
    "micro_batch_size": 16,
    "learning_rate": 1e-3,
    "num_epochs": 3,
    "max_length": 96,
    "warmup_steps": 2,
    "checkpoint_every": 5,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    raw = root / "raw"
    make_synthetic_data(
        raw,
        SyntheticDataConfig(
            dsp_train_queries=20,
            dsp_test_queries=5,
            hh_train_pairs=160,
            hh_test_pairs=10,
            text_score_train_lists=10,
            text_score_test_lists=5,
        ),
    )
    train = root / "hh_train.parquet"
    convert_preferences(raw / "hh/helpful-base/train.jsonl.gz", "hh", train)
    model = build_tiny_models([raw / "corpus.txt"], root / "model", TinyModelConfig(vocab_size=500, hidden_size=32))
    return {"train": train, "model": model, "root": root}


def train_command(tiny, output: Path, work: Path, **overrides) -> list[str]:
    hparams = {**HPARAMS, **overrides}
    return [
        sys.executable, "-m", "feedbackflow", "train-reward-model",
        "--train", str(tiny["train"]), "--model", str(tiny["model"]),
        "--output", str(output), "--work-dir", str(work), "--threads", "1",
        "--hparams", json.dumps(hparams),
    ]  # fmt: skip


def train(tiny, output: Path, work: Path, **overrides) -> str:
    result = subprocess.run(train_command(tiny, output, work, **overrides), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(model_dir / "model.safetensors")
    tensors["reward_head"] = load_file(model_dir / "reward_head.safetensors")["weight"]
    return tensors


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=atol, rtol=0.0 if atol == 0 else 1e-5, msg=name)


@pytest.fixture(scope="module")
def reference_run(tiny) -> Path:
    out = tiny["root"] / "reference"
    train(tiny, out, tiny["root"] / "reference_work")
    return out


def test_global_counts_are_ordered_pairs_and_lm_texts():
    """The divisors of a step's two means. The LM loss is a mean over texts, so token counts play no part.

    list 0 [1, 0]: ordered pairs (0, 1), (1, 0) -> 2; normalised [1, 0] -> 1 LM text.
    list 1 [2, 2, 1]: pairs with different scores (0, 2), (2, 0), (1, 2), (2, 1) -> 4; normalised [1, 1, 0.5] -> 2.
    list 2 [-1, -2]: 2 pairs; best score not positive -> no LM text.
    """
    plan = PreferenceBatchPlan(
        token_ids=[[[0, 5, 1], [0, 6, 7, 8, 1]], [[0, 5, 1]] * 3, [[0, 9, 1]] * 2],
        scores=[[1.0, 0.0], [2.0, 2.0, 1.0], [-1.0, -2.0]],
        steps_per_epoch=1,
    )
    assert global_counts(plan, [0, 1, 2], 0.85) == (8, 3)
    assert global_counts(plan, [1], 0.85) == (4, 2)
    assert global_counts(plan, [2], 0.85) == (2, 0)


def test_training_learns_and_writes_a_reward_model_directory(reference_run):
    log = pd.read_parquet(reference_run / "training_log.parquet")
    assert list(log["step"]) == list(range(1, 31))  # 160 lists / 16 per step x 3 epochs
    assert log["loss"].iloc[-5:].mean() < 0.5 * log["loss"].iloc[:3].mean()
    meta = json.loads((reference_run / "reward_model.json").read_text())
    assert meta["pooling"] == "last" and meta["head"] == "linear_no_bias"
    assert meta["training"]["learning_rate"] == HPARAMS["learning_rate"]
    assert not (reference_run.parent / "reference_work").exists()  # checkpoints removed once the model is saved


def test_same_seed_gives_identical_weights(tiny, reference_run):
    again = tiny["root"] / "again"
    train(tiny, again, tiny["root"] / "again_work")
    assert_same_weights(reference_run, again)
    pd.testing.assert_frame_equal(
        pd.read_parquet(reference_run / "training_log.parquet"), pd.read_parquet(again / "training_log.parquet")
    )


def test_micro_batches_accumulate_to_the_same_step(tiny, reference_run):
    """16 lists in micro batches of 4 give the loss of one batch of 16 (a mean over the global batch's pairs)."""
    micro = tiny["root"] / "micro"
    train(tiny, micro, tiny["root"] / "micro_work", micro_batch_size=4)
    reference = pd.read_parquet(reference_run / "training_log.parquet")
    accumulated = pd.read_parquet(micro / "training_log.parquet")
    assert accumulated["loss"].tolist() == pytest.approx(reference["loss"].tolist(), rel=1e-4, abs=1e-5)
    assert_same_weights(reference_run, micro, atol=1e-4)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_and_ends_with_the_uninterrupted_weights(tiny, reference_run, signum):
    """SIGKILL: resume from the last periodic checkpoint. SIGTERM (SLURM preemption): the run saves a checkpoint
    at the step it was in, exits 143, and the rerun resumes at exactly that step."""
    out, work = tiny["root"] / f"killed_{signum.name}", tiny["root"] / f"killed_{signum.name}_work"
    first_log = tiny["root"] / f"killed_{signum.name}.log"
    with first_log.open("w") as stderr:
        process = subprocess.Popen(
            train_command(tiny, out, work), stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while not (work / "checkpoint-00000010" / "trainer_state.json").exists():
            assert process.poll() is None, "training ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.killpg(process.pid, signum)
        process.wait()
    assert not out.exists()
    log = train(tiny, out, work)
    resumed = [line for line in log.splitlines() if "resuming from" in line]
    assert resumed, log[-2000:]
    step = int(resumed[0].split(" at step ")[1].split()[0])
    assert step >= 10
    if signum == signal.SIGTERM:
        assert process.returncode == 143
        saved = [line for line in first_log.read_text().splitlines() if "SIGTERM: checkpoint saved at step" in line]
        assert saved and f"at step {step} of" in saved[0]
    assert_same_weights(reference_run, out)
    steps = pd.read_parquet(out / "training_log.parquet")["step"].tolist()
    assert steps == list(range(1, 31))


def test_two_processes_follow_the_one_process_run(tiny, reference_run, repo_root):
    """2 CPU processes (DDP over gloo, through `launch`) with the same global batch of 16: same curve and weights."""
    out = tiny["root"] / "two_processes"
    command = train_command(tiny, out, tiny["root"] / "two_processes_work", micro_batch_size=8)
    stage_args = command[command.index("train-reward-model") :]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(
        [sys.executable, "-m", "feedbackflow", "launch", "--processes", "2", "--", *stage_args],
        cwd=repo_root, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    reference = pd.read_parquet(reference_run / "training_log.parquet")
    two = pd.read_parquet(out / "training_log.parquet")
    assert two["loss"].tolist() == pytest.approx(reference["loss"].tolist(), rel=1e-4, abs=1e-5)
    assert_same_weights(reference_run, out, atol=1e-4)


def test_checkpoints_of_other_hyperparameters_are_not_resumed(tiny):
    out, work = tiny["root"] / "changed", tiny["root"] / "changed_work"
    process = subprocess.Popen(
        train_command(tiny, out, work), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not (work / "checkpoint-00000005" / "trainer_state.json").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    log = train(tiny, out, work, learning_rate=5e-4)
    assert "resuming from" not in log
    assert "training from" in log
