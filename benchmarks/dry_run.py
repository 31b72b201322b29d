"""Time of `snakemake -n` on a finished default run (all five experiments in the DAG), against a 2 s target.

Run after `make run` (it times the dry run in this checkout):  .venv/bin/python benchmarks/dry_run.py
Prints the median of several dry runs and the ratio target / measured (>= 1 meets the target).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_SECONDS = 2.0
REPEATS = 5


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", "--profile", "profiles/default", "-n"],
            cwd=root, env=env, capture_output=True, text=True,
        )  # fmt: skip
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            sys.exit(result.stderr[-2000:])
    nothing = "Nothing to be done" in result.stdout + result.stderr
    median = statistics.median(times)
    print(f"dry run: median {median:.2f} s over {REPEATS} runs (min {min(times):.2f} s, max {max(times):.2f} s)")
    print(f"nothing to be done: {nothing}")
    print(f"ratio target/measured: {TARGET_SECONDS / median:.2f} (target {TARGET_SECONDS:.0f} s)")


if __name__ == "__main__":
    main()
