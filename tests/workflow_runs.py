"""Running the project's Snakemake workflow for real in a scratch copy of the project (used by several tests)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT_ITEMS = ("Snakefile", "workflow", "config", "profiles")
# Quick job-status polling for the single-node test cluster; the profile's own values suit a real cluster.
FAST_SLURM_POLLING = ("--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2")


def copy_project(repo_root: Path, target: Path) -> Path:
    """Copy what `snakemake` needs (not results/, not .snakemake/) into `target`."""
    for item in PROJECT_ITEMS:
        source = repo_root / item
        if source.is_dir():
            shutil.copytree(source, target / item)
        else:
            shutil.copy(source, target / item)
    return target


def snakemake_command(*args: str, profile: str = "profiles/default", env: dict | None = None):
    """(argv, environment) of a snakemake run with this interpreter's environment first on PATH (rules call
    `python`)."""
    run_env = dict(os.environ, **(env or {}))
    run_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{run_env['PATH']}"
    return [sys.executable, "-m", "snakemake", "--profile", profile, *args], run_env


def snakemake(
    workdir: Path, *args: str, profile: str = "profiles/default", env: dict | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run snakemake in `workdir` (`snakemake_command`) to the end."""
    command, run_env = snakemake_command(*args, profile=profile, env=env)
    result = subprocess.run(command, cwd=workdir, env=run_env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def planned_jobs(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    stats = output.split("Job stats:", 1)[1]
    jobs = {}
    for line in stats.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        if match.group(1) != "total":
            jobs[match.group(1)] = int(match.group(2))
    return jobs


def planned_resources(output: str) -> dict[str, list[dict[str, str]]]:
    """The `resources:` line of each planned job in a dry run's output, per rule (values as printed)."""
    resources: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in output.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            rule = match.group(1)
        elif line.strip().startswith("resources:") and rule:
            values = dict(item.split("=", 1) for item in line.strip().removeprefix("resources:").split(", "))
            resources.setdefault(rule, []).append(values)
            rule = None
    return resources


def write_service_overlay(path: Path, services, openai_url: str, perspective_url: str) -> dict[str, str]:
    """Write a --configfile at `path` pointing each remote service (feedbackflow.core.preflight.Service) at a loopback
    stub (Perspective for `detox.toxicity`, else the OpenAI-compatible one); return the key variables to set."""
    import yaml

    changes: dict = {}
    for service in services:
        *parents, leaf = service.url_key.split(".")
        section = changes
        for name in parents:
            section = section.setdefault(name, {})
        section[leaf] = perspective_url if service.where == "detox.toxicity" else openai_url
    path.write_text(yaml.safe_dump(changes))
    return {service.api_key_env: "test-key" for service in services}
