"""The DSP part of the tiny default workflow with `--profile profiles/slurm` on a real single-node SLURM cluster.

The cluster (tests/slurm_cluster.py: Debian's slurmctld, slurmd and munge, installed here when missing) has two
partitions on this machine's one node: `cpu` (the default) and `a100`, the GPU partition the profile names. The
GPU rules must go through sbatch into `a100`, the local rules must not reach SLURM, and the results must equal a
local run's (the session's `finished_run`). The run costs only what those claims need: its target is the general
reward model's evaluation (`results/dsp/eval/grft.parquet`), so one training job and one evaluation job go through
sbatch (the two resource families the profile sends to the GPU partition), beside the local conversion and tiny
builders; its rows must equal the local run's.
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
from workflow_runs import FAST_SLURM_POLLING, copy_project, planned_jobs, planned_resources, snakemake

DSP_TARGETS = ("results/dsp/eval/grft.parquet",)
SUBMITTED_RULES = {"train_grft": 1, "evaluate_reward_model": 1}  # a training and an evaluation job
LOCAL_RULES = ("make_synthetic_data", "build_tiny_models", "convert_preferences", "convert_dsp_domain")


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
    for table in ("grft.parquet", "grft.rewards.parquet"):
        on_slurm = pd.read_parquet(slurm_run / "results/dsp/eval" / table)
        local = pd.read_parquet(finished_run / "results/dsp/eval" / table)
        assert len(on_slurm) > 0
        pd.testing.assert_frame_equal(on_slurm, local)


def test_rerun_on_slurm_does_nothing(slurm_run, cluster):
    result = snakemake(slurm_run, "-n", *DSP_TARGETS, profile="profiles/slurm", env=cluster.extra_env)
    assert "Nothing to be done" in result.stdout + result.stderr


# --- one node and an early SIGTERM for training jobs (issue 19) -------------------------------------------------


class _Resources(dict):
    """A job's resources as the plugin reads them (`.get(name)` and attribute access)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _typed(value: str):
    return int(value) if value.isdigit() else value


def test_training_jobs_ask_sbatch_for_one_node_and_an_early_sigterm(repo_root, tmp_path):
    """A dry run with the SLURM profile gives each job's resources; the plugin's own `get_submit_command` turns them
    into the sbatch call: a training job must carry `--nodes=1` (else `--gpus=N` may span nodes) and
    `--signal=TERM@900` (a checkpoint before the time limit), and pass the plugin's slurm_extra validation."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra
    from workflow_runs import planned_resources

    workdir = copy_project(repo_root, tmp_path)
    result = snakemake(workdir, "-n", profile="profiles/slurm")
    resources = planned_resources(result.stdout)
    training = {"train_grft", "train_crft", "train_rrhf", "train_detox_ppo", "train_ilf_policy"}
    assert training <= set(resources), sorted(resources)
    params = {"run_uuid": "x", "slurm_logfile": "x.log", "comment_str": "x", "account": "", "partition": "-p a100",
              "workdir": str(workdir)}  # fmt: skip
    for rule, jobs in resources.items():
        for values in jobs:
            job = SimpleNamespace(resources=_Resources({k: _typed(v) for k, v in values.items()}), threads=2)
            validate_slurm_extra(job)
            call = get_submit_command(job, params)
            if rule in training or "processes" in values:
                assert " --nodes=1" in call and " --signal=TERM@900" in call, (rule, call)
            else:
                assert "--signal" not in call, (rule, call)


def test_training_shell_commands_exec_the_launcher(repo_root, tmp_path):
    """Every training job's shell `exec`s `python -m feedbackflow launch` (the rules build it with common.smk's
    `launch`), so no bash sits between Snakemake and the training processes: bash dies at once on SIGTERM, Snakemake
    then counts the job as ended and exits, and SLURM kills what is left of the job step, the checkpoint being written
    included (next test). The default configuration plans every training rule (qa-feedback's on request)."""
    workdir = copy_project(repo_root, tmp_path)
    output = snakemake(workdir, "-n", "-p", "all", "results/qa_feedback/metrics.parquet").stdout
    training = {rule for rule, jobs in planned_resources(output).items() if "processes" in jobs[0]}
    assert len(training) >= 13, sorted(training)
    launches = [line for line in output.splitlines() if "python -m feedbackflow launch" in line]
    assert len(launches) == sum(planned_jobs(output)[rule] for rule in training)
    assert all(line.startswith("Shell command: exec python -m feedbackflow launch ") for line in launches), launches


SAVING_WORKER = """
import signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda *a: got.append(1))
open("started", "w").write("x")
while not got:
    time.sleep(0.05)
time.sleep(2)  # finishing a step and writing a checkpoint
open("saved", "w").write("x")
sys.exit(143)
"""


@pytest.mark.parametrize("shell_exec", [True, False])
def test_snakemake_waits_for_a_checkpoint_only_when_the_shell_execs(tmp_path, shell_exec):
    """Why the rules `exec`: SIGTERM to every process of the job (as slurmstepd signals a job step) while a job saves
    for 2 s. With `exec`, Snakemake exits after the save; with a bash in between, before it (SLURM would then kill the
    saving process)."""
    import signal
    import subprocess
    import sys

    (tmp_path / "work.py").write_text(SAVING_WORKER)
    command = f"{'exec ' if shell_exec else ''}{sys.executable} work.py > work.log 2>&1"
    (tmp_path / "Snakefile").write_text(f'rule all:\n    output: "out"\n    shell: "{command}"\n')
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen([sys.executable, "-m", "snakemake", "-c1", "--quiet"], cwd=tmp_path,
                               start_new_session=True, **quiet)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline and process.poll() is None, "the job did not start"
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGTERM)  # every process of the session: snakemake, (bash,) the worker
        process.wait(timeout=30)
        saved_before_snakemake_exited = (tmp_path / "saved").exists()
        time.sleep(3)
        assert (tmp_path / "saved").exists()  # the worker always finishes: the question is who waited for it
        assert saved_before_snakemake_exited is shell_exec
    finally:
        if process.poll() is None:
            process.kill()


def test_torch_elastic_gives_the_workers_time_to_save(tmp_path):
    """`accelerate launch` runs torch elastic, which on SIGTERM forwards it to the workers and SIGKILLs them after
    TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (30 by default). With 1 s a worker saving for 2 s is killed; with the
    environment `launch` gives it (launch_environment), it saves."""
    import signal
    import subprocess
    import sys

    from feedbackflow.launch import free_port, launch_environment

    profile = yaml.safe_load((Path(__file__).resolve().parents[1] / "profiles/slurm/config.yaml").read_text())
    lead_s = int(re.search(r"--signal=TERM@(\d+)", profile["set-resources"]["train_grft"]["slurm_extra"]).group(1))
    assert int(launch_environment({})["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) >= lead_s  # the whole lead time to save
    (tmp_path / "work.py").write_text(SAVING_WORKER)
    for environment, saves in (({"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "1"}, False), ({}, True)):
        for name in ("started", "saved"):
            (tmp_path / name).unlink(missing_ok=True)
        env = launch_environment({k: v for k, v in os.environ.items() if k != "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"}
                                 | environment)  # fmt: skip
        agent = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
                                  "--master_port", str(free_port()), "work.py"], cwd=tmp_path, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not (tmp_path / "started").exists():
                assert time.monotonic() < deadline and agent.poll() is None, "the worker did not start"
                time.sleep(0.1)
            agent.send_signal(signal.SIGTERM)  # the agent only: it forwards the signal to its worker
            agent.wait(timeout=60)
            time.sleep(0.5)
            assert (tmp_path / "saved").exists() is saves, environment
        finally:
            if agent.poll() is None:
                agent.kill()
