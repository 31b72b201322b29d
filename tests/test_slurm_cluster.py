"""Tests of the single-node SLURM harness in tests/slurm_cluster.py: bring-up, two partitions, clean shutdown."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster, SlurmClusterError, ensure_slurm_installed


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the SLURM test cluster needs root, and CI runs as root")
        pytest.skip("the SLURM test cluster needs root")
    t0 = time.monotonic()
    installed = ensure_slurm_installed()
    t_install = time.monotonic() - t0
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm_harness"))
    with cluster:
        print(
            f"\nSLURM install: {t_install:.1f}s (installed: {installed or 'nothing'}); "
            f"bring-up: {cluster.startup_seconds:.1f}s"
        )
        pids = [p.pid for p in cluster.processes]
        yield cluster
    # Teardown check: leaving the context manager stopped every daemon the harness started.
    assert all(p.poll() is not None for p in cluster.processes)
    leftover = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert not leftover, f"daemons still running after stop(): {leftover}"
    print(f"\nSLURM daemons {pids} stopped")


def test_partitions_and_node_idle(slurm_cluster: SlurmCluster):
    assert slurm_cluster.partitions == ("cpu", "a100")
    out = slurm_cluster.run(["sinfo", "--noheader", "--format=%P %a %T"]).stdout.split("\n")
    rows = [line.split() for line in out if line.strip()]
    assert [r[0] for r in rows] == ["cpu*", "a100"]
    assert all(r[1] == "up" and r[2] == "idle" for r in rows)
    assert slurm_cluster.env["SLURM_CONF"] == str(slurm_cluster.conf_path)


def test_jobs_run_in_requested_partitions(slurm_cluster: SlurmCluster, tmp_path: Path):
    jobs = {}
    for partition in ("a100", "cpu"):
        workdir = tmp_path / partition
        workdir.mkdir()
        result = slurm_cluster.run(
            ["sbatch", "--parsable", "-p", partition, "--wrap", "echo $SLURM_JOB_PARTITION > out.txt"], cwd=workdir
        )
        job_id = result.stdout.strip()
        assert job_id.isdigit(), result.stdout
        jobs[partition] = (int(job_id), workdir)
    states = slurm_cluster.wait_for_jobs([job_id for job_id, _ in jobs.values()], timeout=60)
    assert set(states.values()) == {"COMPLETED"}, states
    for partition, (_, workdir) in jobs.items():
        assert (workdir / "out.txt").read_text().strip() == partition
    # No accounting: squeue keeps finished jobs (MinJobAge) and is the way to ask.
    assert slurm_cluster.job_state(jobs["cpu"][0]) == "COMPLETED"


def test_default_partition_and_failure_state(slurm_cluster: SlurmCluster, tmp_path: Path):
    ok = slurm_cluster.submit("--wrap", "echo $SLURM_JOB_PARTITION > default.txt", cwd=tmp_path)
    bad = slurm_cluster.submit("--wrap", "exit 3", cwd=tmp_path)
    states = slurm_cluster.wait_for_jobs([ok, bad])
    assert states == {str(ok): "COMPLETED", str(bad): "FAILED"}
    assert (tmp_path / "default.txt").read_text().strip() == "cpu"


def test_stop_terminates_daemons(slurm_cluster: SlurmCluster, tmp_path: Path):
    # A second, independent cluster on other ports, stopped explicitly (the module one keeps running).
    other = SlurmCluster(tmp_path, partitions=("only",))
    try:
        other.start()
    except SlurmClusterError as e:  # pragma: no cover - diagnostic
        pytest.fail(str(e))
    assert (other.ctld_port, other.slurmd_port) != (slurm_cluster.ctld_port, slurm_cluster.slurmd_port)
    pids = [p.pid for p in other.processes]
    assert len(pids) == 3 and all(p.poll() is None for p in other.processes)
    other.stop()
    assert all(p.poll() is not None for p in other.processes)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} still exists"
    other.stop()  # idempotent


def test_srun_inside_job_without_slurm_conf(slurm_cluster: SlurmCluster, tmp_path: Path):
    # snakemake's slurm-jobstep executor strips SLURM_CONF before its nested srun; the PATH wrappers cope.
    job = slurm_cluster.submit("--wrap", "env -u SLURM_CONF srun -n1 echo step-ok > step.txt", cwd=tmp_path)
    assert slurm_cluster.wait_for_jobs([job]) == {str(job): "COMPLETED"}
    assert (tmp_path / "step.txt").read_text().strip() == "step-ok"
