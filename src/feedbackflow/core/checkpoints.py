"""Resumable training checkpoints in a work directory that is not a declared Snakemake output.

Snakemake deletes the declared outputs of a failed job, so checkpoints live elsewhere (`--work-dir`). A checkpoint
is `checkpoint-<step>/` holding `accelerator.save_state` plus `trainer_state.json`, written last, so a checkpoint
without it is incomplete and ignored. The work directory carries a fingerprint of the stage's configuration and
inputs: a rerun with other hyperparameters or data starts fresh instead of resuming a different run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import torch
from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
FINGERPRINT_FILE = "fingerprint.txt"


def fingerprint_of(config: dict, paths: list[str]) -> str:
    """A hash of a JSON-able config and the size and mtime of every file under the given local paths."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for path in paths:
        digest.update(path.encode())
        root = Path(path)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for file in files:
            if file.exists():
                stat = file.stat()
                digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


class CheckpointStore:
    """The checkpoints of one training run; keeps the newest `keep`."""

    def __init__(self, work_dir: str | os.PathLike, fingerprint: str, keep: int = 2):
        self.work_dir = Path(work_dir)
        self.fingerprint = fingerprint
        self.keep = keep

    def open(self, accelerator: Accelerator) -> None:
        """Create the work directory; wipe it if it belongs to a run with another fingerprint."""
        if accelerator.is_main_process:
            marker = self.work_dir / FINGERPRINT_FILE
            if marker.exists() and marker.read_text().strip() != self.fingerprint:
                shutil.rmtree(self.work_dir)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text(self.fingerprint + "\n")
        accelerator.wait_for_everyone()

    def _complete(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.work_dir.glob("checkpoint-*"):
            suffix = path.name.removeprefix("checkpoint-")
            if suffix.isdigit() and (path / STATE_FILE).is_file():
                found.append((int(suffix), path))
        return sorted(found)

    def latest(self) -> Path | None:
        complete = self._complete()
        return complete[-1][1] if complete else None

    def save(self, accelerator: Accelerator, step: int, state: dict) -> Path:
        """Save model, optimiser, registered objects and RNG states, then `state` (JSON) last."""
        final = self.work_dir / f"checkpoint-{step:08d}"
        tmp = self.work_dir / f".checkpoint-{step:08d}.tmp"
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(state, sort_keys=True) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for _, old in self._complete()[: -self.keep]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return final

    def load(self, accelerator: Accelerator, path: Path) -> dict:
        accelerator.load_state(str(path))
        return json.loads((path / STATE_FILE).read_text())

    def remove(self, accelerator: Accelerator) -> None:
        """Delete the work directory once the final model is written."""
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and self.work_dir.exists():
            shutil.rmtree(self.work_dir)


class StopSignal:
    """Catches SIGTERM (what SLURM sends on preemption, at the time limit or on scancel) so that the trainer can
    finish its step, save a checkpoint and exit; the rerun resumes from that step. SIGKILL cannot be caught: a
    killed run resumes from its last periodic checkpoint instead."""

    def __init__(self):
        self.received = False
        signal.signal(signal.SIGTERM, self._receive)

    def _receive(self, signum, frame) -> None:
        self.received = True

    def agreed(self, accelerator: Accelerator) -> bool:
        """True on every process once any process got the signal (checkpointing is collective)."""
        flag = torch.tensor([1.0 if self.received else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
