"""Where a run's time goes: the benchmark file Snakemake writes for every job (each rule's `benchmark:`,
`results/benchmarks/<rule>/<experiment>/<job>.tsv`) gathered into a table of time per stage (README, "Time per stage").

Snakemake's benchmark TSV has a header and one row per repeat: `s` (wall seconds), `max_rss` (MB), `cpu_time`
(seconds) among others, with "-" where a value was not measured. The wall time is exact; CPU time and memory are
Snakemake's samples of the job's processes (every 0.5 s for 30 s, then every 30 s), so up to the last 30 s of a
long job may be missing from its CPU time. Only the stdlib, pandas and pyarrow are imported:
this stage runs at the end of every run and must start fast.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import pandas as pd

from feedbackflow.core.report import write_policy_table
from feedbackflow.errors import DataError

log = logging.getLogger("feedbackflow.core.timing")

JOB_COLUMNS = ["rule", "experiment", "job", "seconds", "cpu_seconds", "max_rss_mb"]
OWN_RULE = "stage_times"  # this stage's own benchmark is written after it has run: left out of its table


def number(value: str, path: Path, row: int, field: str) -> float:
    """A benchmark value as a float; "-" (not measured) is NaN."""
    if value == "-":
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(path, row, field, f"{value!r} is not a number") from None


def read_benchmark(path: Path, root: Path) -> dict:
    """One job's row: its rule and experiment from the path below `root`, the mean of its repeats' measurements."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows:
        raise DataError(path, None, None, "no measurement rows under the header")
    for field in ("s", "cpu_time", "max_rss"):
        if field not in rows[0]:
            raise DataError(path, None, field, "no such column (a Snakemake benchmark file has s, max_rss, cpu_time)")
    parts = path.relative_to(root).with_suffix("").parts
    mean = {
        field: sum(number(row[field], path, index, field) for index, row in enumerate(rows)) / len(rows)
        for field in ("s", "cpu_time", "max_rss")
    }
    return {
        "rule": parts[0],
        "experiment": parts[1] if len(parts) > 2 else "",
        "job": "/".join(parts[1:]),
        "seconds": mean["s"],
        "cpu_seconds": mean["cpu_time"],
        "max_rss_mb": mean["max_rss"],
    }


def job_times(root: Path) -> pd.DataFrame:
    """Every job's benchmark under `root`, longest first."""
    paths = sorted(path for path in root.rglob("*.tsv") if path.relative_to(root).parts[0] != OWN_RULE)
    rows = [read_benchmark(path, root) for path in paths]
    frame = pd.DataFrame(rows, columns=JOB_COLUMNS)
    return frame.sort_values(["seconds", "job"], ascending=[False, True], ignore_index=True)


def stage_times(jobs: pd.DataFrame) -> pd.DataFrame:
    """Time per stage (rule): its jobs, their summed and longest wall time, summed CPU time; longest total first."""
    grouped = jobs.groupby(["rule", "experiment"], sort=False)
    stages = grouped.agg(
        jobs=("job", "size"),
        seconds=("seconds", "sum"),
        longest_job_seconds=("seconds", "max"),
        cpu_seconds=("cpu_seconds", "sum"),
        max_rss_mb=("max_rss_mb", "max"),
    ).reset_index()
    return stages.sort_values(["seconds", "rule"], ascending=[False, True], ignore_index=True)


def timing_markdown(stages: pd.DataFrame, jobs: pd.DataFrame) -> str:
    per_experiment = stages.groupby("experiment", sort=False)[["jobs", "seconds"]].sum()
    per_experiment = per_experiment.sort_values("seconds", ascending=False)
    return (
        "# Time per stage\n\n"
        f"{len(jobs)} jobs, {jobs['seconds'].sum() / 60:.1f} min of job time in all (jobs that ran at once each "
        "count in full; a job that was not rerun keeps its last time). CPU seconds are Snakemake's samples (every "
        "30 s after a job's first 30 s), so they can miss a job's last seconds.\n\n"
        "## Stages, longest total first\n\n"
        + stages.to_markdown(index=False, floatfmt=".1f")
        + "\n\n## Per experiment\n\n"
        + per_experiment.to_markdown(floatfmt=("", ".0f", ".1f"))
        + "\n\n## Jobs, longest first\n\n"
        + jobs.to_markdown(index=False, floatfmt=".1f")
        + "\n"
    )


def write_stage_times(root: str, table: str, markdown: str) -> pd.DataFrame:
    root_path = Path(root)
    if not root_path.is_dir():
        raise DataError(root, None, None, "no benchmark directory (every rule writes its job's benchmark file there)")
    jobs = job_times(root_path)
    stages = stage_times(jobs)
    write_policy_table(stages, table, markdown, timing_markdown(stages, jobs))
    log.info("%d jobs in %d stages, %.1f min of job time", len(jobs), len(stages), jobs["seconds"].sum() / 60)
    return stages


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmarks", required=True, help="the directory of the rules' benchmark files")
    parser.add_argument("--output", required=True, help="time per stage, Parquet")
    parser.add_argument("--markdown", required=True, help="time per stage, stages and jobs, Markdown")


def main(args: argparse.Namespace) -> None:
    write_stage_times(args.benchmarks, args.output, args.markdown)
