"""Time per stage (feedbackflow.core.timing) from Snakemake benchmark files written as Snakemake writes them."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from feedbackflow.core.timing import job_times, stage_times, write_stage_times
from feedbackflow.errors import DataError

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def write_benchmark(root, relative: str, *rows: tuple[float, str, float]) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{s}\t0:00:00\t{rss}\t-\t-\t-\t-\t-\t-\t{cpu}\n" for s, rss, cpu in rows]
    path.write_text(HEADER + "".join(lines))


@pytest.fixture
def benchmarks(tmp_path):
    root = tmp_path / "benchmarks"
    write_benchmark(root, "train_crft/dsp/train_crft_academy.tsv", (10.0, "500.5", 19.0))
    write_benchmark(root, "train_crft/dsp/train_crft_business.tsv", (30.0, "700.0", 50.0))
    write_benchmark(root, "train_qa_sft/qa_feedback/train_sft.tsv", (25.0, "-", 40.0))
    # two repeats (snakemake `repeat("...", 2)`): the mean of each field
    write_benchmark(root, "dsp_metrics/dsp/metrics.tsv", (1.0, "100.0", 1.0), (3.0, "200.0", 2.0))
    write_benchmark(root, "stage_times/timing.tsv", (99.0, "1.0", 1.0))  # this stage's own: left out
    return root


def test_jobs_are_read_longest_first_with_rule_and_experiment(benchmarks):
    jobs = job_times(benchmarks)
    assert jobs["job"].tolist() == [
        "dsp/train_crft_business", "qa_feedback/train_sft", "dsp/train_crft_academy", "dsp/metrics",
    ]  # fmt: skip
    assert jobs["rule"].tolist() == ["train_crft", "train_qa_sft", "train_crft", "dsp_metrics"]
    assert jobs["experiment"].tolist() == ["dsp", "qa_feedback", "dsp", "dsp"]
    metrics = jobs.set_index("job").loc["dsp/metrics"]
    assert (metrics["seconds"], metrics["cpu_seconds"], metrics["max_rss_mb"]) == (2.0, 1.5, 150.0)
    assert math.isnan(jobs.set_index("job").loc["qa_feedback/train_sft", "max_rss_mb"])  # "-": not measured


def test_stages_sum_their_jobs_longest_total_first(benchmarks):
    stages = stage_times(job_times(benchmarks)).set_index("rule")
    assert stages.index.tolist() == ["train_crft", "train_qa_sft", "dsp_metrics"]  # 40 s, 25 s, 2 s
    crft = stages.loc["train_crft"]
    assert (crft["jobs"], crft["seconds"], crft["longest_job_seconds"], crft["cpu_seconds"]) == (2, 40.0, 30.0, 69.0)
    assert crft["max_rss_mb"] == 700.0


def test_stage_writes_parquet_and_markdown(benchmarks, tmp_path):
    write_stage_times(str(benchmarks), str(tmp_path / "timing.parquet"), str(tmp_path / "timing.md"))
    table = pd.read_parquet(tmp_path / "timing.parquet")
    assert table["rule"].tolist() == ["train_crft", "train_qa_sft", "dsp_metrics"]
    text = (tmp_path / "timing.md").read_text()
    assert "4 jobs, 1.1 min of job time" in text  # (30 + 25 + 10 + 2) s = 67 s
    assert "| dsp          |      3 |      42.0 |" in text  # per experiment: 3 jobs, 30 + 10 + 2 s


def test_bad_benchmark_file_is_named(tmp_path):
    root = tmp_path / "benchmarks"
    write_benchmark(root, "train_grft/dsp/train_grft.tsv", (5.0, "lots", 1.0))
    with pytest.raises(DataError, match=r"train_grft\.tsv: record 0: field 'max_rss': 'lots' is not a number"):
        job_times(root)
    (root / "train_grft/dsp/train_grft.tsv").write_text(HEADER)
    with pytest.raises(DataError, match="no measurement rows"):
        job_times(root)
    with pytest.raises(DataError, match="no benchmark directory"):
        write_stage_times(str(tmp_path / "missing"), str(tmp_path / "t.parquet"), str(tmp_path / "t.md"))
    assert not (tmp_path / "t.parquet").exists()
