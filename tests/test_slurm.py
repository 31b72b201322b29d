"""The DSP part of the tiny default workflow with `--profile profiles/slurm` on a real single-node SLURM cluster.

The cluster (tests/slurm_cluster.py: Debian's slurmctld, slurmd and munge, installed here when missing) has two
partitions on this machine's one node: `cpu` (the default) and `a100`, the GPU partition the profile names. The
GPU rules must go through sbatch into `a100`, the local rules must not reach SLURM, and the results must equal a
local run's (the session's `finished_run`). To keep the suite short, the SLURM run trains one domain's reward models
(`dsp.domains: [academy]`, every eval set kept); its rows must equal the local run's rows of the same models.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from slurm_cluster import SlurmCluster, ensure_slurm_installed
from workflow_runs import FAST_SLURM_POLLING, copy_project, snakemake

DSP_TARGETS = ("results/dsp/metrics.parquet", "results/dsp/metrics.md", "results/dsp/accuracy.png")
SLURM_DOMAINS = ["academy"]
SUBMITTED_RULES = {"train_grft": 1, "train_crft": 2, "evaluate_reward_model": 4}  # base, GRFT, CRFT, CRFT-imitation
LOCAL_RULES = ("make_synthetic_data", "build_tiny_models", "convert_preferences", "convert_dsp_domain", "dsp_metrics")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the SLURM test cluster needs root, and CI runs as root")
        pytest.skip("the SLURM test cluster needs root")
    ensure_slurm_installed()
    with SlurmCluster(tmp_path_factory.mktemp("slurm"), partitions=("cpu", "a100")) as running:
        yield running


@pytest.fixture(scope="module")
def slurm_run(cluster, repo_root, tmp_path_factory) -> Path:
    workdir = copy_project(repo_root, tmp_path_factory.mktemp("slurm_workflow"))
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    config["dsp"]["domains"] = SLURM_DOMAINS
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    snakemake(workdir, *DSP_TARGETS, *FAST_SLURM_POLLING, profile="profiles/slurm", env=cluster.extra_env)
    print(f"\nSLURM run of the tiny workflow: {time.perf_counter() - start:.0f} s")
    return workdir


def gpu_rules(repo_root: Path) -> set[str]:
    """Every rule (in any workflow/rules/*.smk, also those defined only under some configs) whose resources are the
    `training` or `evaluation` family."""
    rules = set()
    for path in sorted((repo_root / "workflow" / "rules").glob("*.smk")):
        text = path.read_text()
        for match in re.finditer(r"^\s*rule (\w+):\n(.*?)(?=^\s*rule \w+:|\Z)", text, re.S | re.M):
            if re.search(r'job_resources\("(training|evaluation)"\)', match.group(2)):
                rules.add(match.group(1))
    return rules


def test_the_profile_sends_every_gpu_rule_to_the_gpu_partition(repo_root):
    """No cluster needed: the profile's set-resources must name every rule that loads a model, all with one
    partition (the anchor), and only rules that exist."""
    profile = yaml.safe_load((repo_root / "profiles/slurm/config.yaml").read_text())
    placed = profile["set-resources"]
    expected = gpu_rules(repo_root)
    assert {"train_grft", "train_ilf_policy", "train_qa_ppo", "train_rrhf", "sample_detox"} <= expected
    assert set(placed) == expected, (sorted(expected - set(placed)), sorted(set(placed) - expected))
    assert {resources["slurm_partition"] for resources in placed.values()} == {"a100"}


def slurm_job_ids(workdir: Path, rule: str) -> list[int]:
    """Job ids from the plugin's per-job SLURM logs (.snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log)."""
    logs = (workdir / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob("*.log")
    return sorted(int(path.stem) for path in logs if path.stem.isdigit())


def job_field(cluster: SlurmCluster, job_id: int, field: str) -> str:
    shown = cluster.run(["scontrol", "show", "job", str(job_id)]).stdout
    return re.search(rf"\b{field}=(\S+)", shown).group(1)


def test_gpu_rules_went_through_sbatch_into_the_gpu_partition(slurm_run, cluster):
    for rule, count in SUBMITTED_RULES.items():
        job_ids = slurm_job_ids(slurm_run, rule)
        assert len(job_ids) == count, (rule, job_ids)
        for job_id in job_ids:
            assert job_field(cluster, job_id, "Partition") == "a100", (rule, job_id)
            assert job_field(cluster, job_id, "JobState") == "COMPLETED", (rule, job_id)
    for rule in LOCAL_RULES:
        assert slurm_job_ids(slurm_run, rule) == [], rule


def test_results_equal_a_local_run(slurm_run, finished_run):
    on_slurm = pd.read_parquet(slurm_run / "results/dsp/metrics.parquet")
    local = pd.read_parquet(finished_run / "results/dsp/metrics.parquet")
    models = [
        "base",
        "grft",
        *(f"{variant}-{domain}" for variant in ("crft", "crft_imitation") for domain in SLURM_DOMAINS),
    ]
    assert sorted(on_slurm["model"].unique()) == sorted(models)
    local = local[local["model"].isin(models)].reset_index(drop=True)
    pd.testing.assert_frame_equal(on_slurm.reset_index(drop=True), local)


def test_rerun_on_slurm_does_nothing(slurm_run, cluster):
    result = snakemake(slurm_run, "-n", *DSP_TARGETS, profile="profiles/slurm", env=cluster.extra_env)
    assert "Nothing to be done" in result.stdout + result.stderr
