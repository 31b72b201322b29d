"""How training stages are started: in this process, or under `accelerate launch` with N processes.

`python -m feedbackflow launch --processes N [--accelerate-config FILE] -- <stage> <args>` is what the Snakemake
training rules run. One process and no accelerate config runs the stage here (the tiny CPU default, no launcher
overhead); otherwise it execs `accelerate launch --config_file FILE --num_processes N -m feedbackflow <stage> ...`,
with DDP (`config/accelerate/ddp.yaml`) when several processes are asked for without a config. N comes from the
job's resources (its GPU count on a GPU cluster), so the same rule runs on a laptop, a GPU node or under SLURM.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

DEFAULT_MULTI_PROCESS_CONFIG = Path("config/accelerate/ddp.yaml")
# Seconds torch elastic (under `accelerate launch`) lets its workers finish after it forwards a SIGTERM, before it
# SIGKILLs them (torch.distributed.launcher.api reads TORCH_ELASTIC_SHUTDOWN_TIMEOUT; its default is 30 s). A
# training process that gets SIGTERM (SLURM's early `--signal=TERM@900` of profiles/slurm) finishes its step and
# saves a checkpoint, which for 7B takes minutes: the agent must not kill it first. SLURM's time limit still applies.
SHUTDOWN_TIMEOUT_S = 1800


def free_port() -> int:
    """A free TCP port on this host for the rendezvous, so concurrent launches on one node do not collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(processes: int, accelerate_config: str | None, stage_args: list[str]) -> list[str] | None:
    """The `accelerate launch` command for a stage, or None when it should run in this process."""
    if processes <= 1 and not accelerate_config:
        return None
    config_file = accelerate_config or str(DEFAULT_MULTI_PROCESS_CONFIG)
    return [
        "accelerate", "launch", "--config_file", config_file, "--num_processes", str(max(processes, 1)),
        "--main_process_port", str(free_port()), "-m", "feedbackflow", *stage_args,
    ]  # fmt: skip


def launch_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment of `accelerate launch`: `environ` with TORCH_ELASTIC_SHUTDOWN_TIMEOUT = SHUTDOWN_TIMEOUT_S
    unless it is set already."""
    return {"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT_S), **environ}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--processes", type=int, default=1, help="training processes (GPUs, or CPU processes)")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs of the job; more processes than --processes wins")
    parser.add_argument("--accelerate-config", default=None, help="a file from config/accelerate/ (or none)")
    parser.add_argument("stage_args", nargs=argparse.REMAINDER, help="-- <stage> <stage arguments>")


def main(args: argparse.Namespace) -> None:
    stage_args = args.stage_args[1:] if args.stage_args[:1] == ["--"] else args.stage_args
    if not stage_args:
        sys.exit("launch: no stage given (usage: launch --processes N -- <stage> ...)")
    config = args.accelerate_config if args.accelerate_config not in (None, "", "None", "null") else None
    command = launch_command(max(args.processes, args.gpus), config, stage_args)
    if command is None:
        from feedbackflow.cli import main as run_stage

        run_stage(stage_args)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, launch_environment(dict(os.environ)))
