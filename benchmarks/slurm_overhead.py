"""Wall time of the tiny default workflow through SLURM against the same workflow run locally.

Brings up the single-node SLURM test cluster (tests/slurm_cluster.py; needs root and Debian's slurm packages, which
it installs when missing), runs the workflow in two scratch copies of the project, `--profile profiles/default`
and `--profile profiles/slurm`, and prints both times and their ratio (SLURM / local).

    .venv/bin/python benchmarks/slurm_overhead.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from slurm_cluster import SlurmCluster, ensure_slurm_installed  # noqa: E402
from workflow_runs import FAST_SLURM_POLLING, copy_project, snakemake  # noqa: E402


def timed_run(workdir: Path, *args: str, **kwargs) -> float:
    start = time.perf_counter()
    snakemake(workdir, *args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    ensure_slurm_installed()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        local_dir = copy_project(ROOT, scratch / "local")
        local = timed_run(local_dir, "--cores", "2")
        print(f"local run (profiles/default, 2 cores): {local:.0f} s", flush=True)
        with SlurmCluster(scratch / "cluster", partitions=("cpu", "a100")) as cluster:
            slurm_dir = copy_project(ROOT, scratch / "slurm")
            on_slurm = timed_run(slurm_dir, *FAST_SLURM_POLLING, profile="profiles/slurm", env=cluster.extra_env)
        print(f"SLURM run (profiles/slurm, 1 node, 2 CPUs): {on_slurm:.0f} s")
        print(f"ratio SLURM/local: {on_slurm / local:.2f} (overhead {on_slurm - local:.0f} s)")


if __name__ == "__main__":
    main()
