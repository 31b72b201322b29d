"""A real single-node SLURM cluster for tests, run from a private directory.

The harness writes its own ``slurm.conf`` under ``<workdir>/slurm`` and points every SLURM command at it via the
``SLURM_CONF`` environment variable, so nothing under ``/etc/slurm`` is touched.  It runs its own ``munged``
(private key, socket, pid, log and seed files) and tells SLURM about the socket with ``AuthInfo=socket=...``, so
the system munge installation is left alone as well.  ``slurmctld`` and ``slurmd`` run in the foreground (``-D``)
as children of this process, so :meth:`SlurmCluster.stop` can terminate them and wait for them.

There is no accounting (no slurmdbd): ask for job state with ``squeue --states=all`` (``MinJobAge`` is one hour,
so finished jobs stay visible), not with ``sacct``.  Jobs run as root.

Usage::

    ensure_slurm_installed()
    with SlurmCluster(tmp_path) as cluster:
        subprocess.run(["sbatch", "-p", "a100", "--wrap", "hostname"], env=cluster.env, check=True)
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

REQUIRED_COMMANDS = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "munged")
# Client commands that get a SLURM_CONF-setting wrapper in <private dir>/bin (see _write_client_wrappers).
CLIENT_COMMANDS = (
    "sacct",
    "sacctmgr",
    "salloc",
    "sattach",
    "sbatch",
    "sbcast",
    "scancel",
    "scontrol",
    "sinfo",
    "sprio",
    "squeue",
    "srun",
    "sshare",
    "sstat",
    "strigger",
)
DEBIAN_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DEFAULT_CTLD_PORT = 16817
DEFAULT_SLURMD_PORT = 16818
# States a job can be in once it will not run any more (squeue --states=all).
TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
# AF_UNIX socket paths are limited to 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 100


class SlurmClusterError(RuntimeError):
    """The SLURM cluster could not be installed, started or used."""


def _missing_commands(commands: Iterable[str] = REQUIRED_COMMANDS) -> list[str]:
    # The daemons live in /usr/sbin, which is not always on a non-root PATH.
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return [c for c in commands if shutil.which(c, path=path) is None]


def _which(command: str) -> str:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    found = shutil.which(command, path=path)
    if found is None:
        raise SlurmClusterError(f"{command!r} is not installed; call ensure_slurm_installed() first")
    return found


def ensure_slurm_installed(packages: Sequence[str] = DEBIAN_PACKAGES) -> list[str]:
    """Install Debian's SLURM and munge packages unless their commands are already on PATH.

    Returns the packages installed (empty when nothing had to be installed).  Raises
    :class:`SlurmClusterError` when installing is needed but impossible (not root, no apt-get, apt failure).
    """
    missing = _missing_commands()
    if not missing:
        return []
    if os.geteuid() != 0:
        raise SlurmClusterError(
            f"SLURM commands {missing} are missing and installing them needs root; run as root or install "
            f"{' '.join(packages)} yourself"
        )
    if shutil.which("apt-get") is None:
        raise SlurmClusterError(f"SLURM commands {missing} are missing and apt-get is not available to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = "apt-get update && apt-get install -y --no-install-recommends " + " ".join(packages)
    result = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SlurmClusterError(
            f"installing SLURM failed (exit {result.returncode}): {command}\n"
            f"--- stdout (tail) ---\n{result.stdout[-4000:]}\n--- stderr (tail) ---\n{result.stderr[-4000:]}"
        )
    still_missing = _missing_commands()
    if still_missing:
        raise SlurmClusterError(f"after installing {' '.join(packages)}, still missing: {still_missing}")
    return list(packages)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _pick_port(preferred: int, avoid: Iterable[int] = ()) -> int:
    avoid = set(avoid)
    if preferred not in avoid and _port_is_free(preferred):
        return preferred
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("0.0.0.0", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port
    raise SlurmClusterError("could not find a free TCP port")


def _node_hardware() -> dict[str, int]:
    """CPUs, sockets, cores, threads and memory (MB) of this machine, as slurmd sees them."""
    hardware: dict[str, int] = {}
    try:
        out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
        for key, value in re.findall(r"(\w+)=(\d+)", out):
            hardware[key] = int(value)
    except (OSError, subprocess.SubprocessError, SlurmClusterError):
        pass
    if "CPUs" not in hardware or "RealMemory" not in hardware:
        cpus = os.cpu_count() or 1
        mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
        hardware = {"CPUs": cpus, "RealMemory": int(mem_mb)}
    return hardware


class SlurmCluster:
    """A single-node SLURM cluster (slurmctld + slurmd + munged) living in ``workdir / "slurm"``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.  Daemons are also stopped at interpreter
    exit should neither happen.

    Attributes:
        partitions: partition names; the first is the default partition.
        node: the node (and controller) name, the machine's short hostname.
        env: full environment to run sbatch/squeue/snakemake with (``os.environ`` plus ``extra_env``, with
            any inherited ``SLURM_*`` job variables removed).
        extra_env: only the variables the harness adds: ``SLURM_CONF`` and ``PATH`` with ``bin_dir`` first.
        bin_dir: wrappers for srun/sbatch/squeue/... that set SLURM_CONF (they survive env scrubbing in jobs).
        conf_path: the private slurm.conf.
        cpus, real_memory_mb, def_mem_per_cpu_mb: the node's configured resources.
    """

    def __init__(
        self,
        workdir: Path | str,
        partitions: Sequence[str] = ("cpu", "a100"),
        *,
        cluster_name: str = "feedbackflow",
        ctld_port: int = DEFAULT_CTLD_PORT,
        slurmd_port: int = DEFAULT_SLURMD_PORT,
        oversubscribe: int = 4,
        memory_fraction: float = 0.8,
        startup_timeout: float = 60.0,
    ) -> None:
        if not partitions:
            raise ValueError("at least one partition is needed")
        self.workdir = Path(workdir).resolve()
        self.root = self.workdir / "slurm"
        self.partitions: tuple[str, ...] = tuple(partitions)
        self.cluster_name = cluster_name
        self.node = socket.gethostname().split(".")[0]
        self.startup_timeout = startup_timeout
        self._oversubscribe = oversubscribe
        self._memory_fraction = memory_fraction
        self._preferred_ports = (ctld_port, slurmd_port)
        self.conf_path = self.root / "etc" / "slurm.conf"
        self.bin_dir = self.root / "bin"
        self.log_dir = self.root / "log"
        self.ctld_port = ctld_port
        self.slurmd_port = slurmd_port
        self.cpus = 0
        self.real_memory_mb = 0
        self.def_mem_per_cpu_mb = 0
        self.munge_socket: Path | None = None
        self.munged: subprocess.Popen | None = None
        self.slurmctld: subprocess.Popen | None = None
        self.slurmd: subprocess.Popen | None = None
        self._socket_dir: Path | None = None
        self._log_files: list = []
        self._started = False
        self.startup_seconds: float | None = None
        self.extra_env: dict[str, str] = {}
        self.env: dict[str, str] = {}

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------ public API
    @property
    def processes(self) -> list[subprocess.Popen]:
        """The daemon processes this harness started (munged, slurmctld, slurmd)."""
        return [p for p in (self.munged, self.slurmctld, self.slurmd) if p is not None]

    def start(self) -> SlurmCluster:
        """Write the configuration, start munged, slurmctld and slurmd, and wait until the node is idle."""
        if self._started:
            return self
        if os.geteuid() != 0:
            raise SlurmClusterError("the SLURM test cluster must run as root (SlurmUser=root, jobs run as root)")
        missing = _missing_commands()
        if missing:
            raise SlurmClusterError(f"SLURM commands {missing} are missing; call ensure_slurm_installed() first")
        t0 = time.monotonic()
        self._started = True
        atexit.register(self.stop)
        try:
            self._prepare_dirs()
            self._start_munged()
            self._write_config()
            self._start_slurm()
            self._wait_until_idle()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Cancel remaining jobs, terminate the daemons this harness started and wait for them. Idempotent."""
        if not self._started:
            return
        self._started = False
        try:
            atexit.unregister(self.stop)
        except Exception:  # pragma: no cover - atexit never raises here, but be safe during shutdown
            pass
        if self.slurmctld is not None and self.slurmctld.poll() is None:
            # Kill remaining jobs so that no slurmstepd/job processes outlive the cluster.
            try:
                self.run(["scancel", "--full", "--quiet", "--user", "root"], check=False, timeout=10)
                self._wait_for_no_jobs(timeout=10)
            except (OSError, subprocess.SubprocessError):
                pass
        for proc in (self.slurmd, self.slurmctld, self.munged):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in (self.slurmd, self.slurmctld, self.munged):
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for fh in self._log_files:
            fh.close()
        self._log_files.clear()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    def run(
        self, args: Sequence[str], *, check: bool = True, timeout: float = 60, cwd: Path | str | None = None
    ) -> subprocess.CompletedProcess:
        """Run a SLURM client command (sbatch, squeue, ...) against this cluster and capture its output."""
        result = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        if check and result.returncode != 0:
            raise SlurmClusterError(
                f"{' '.join(args)} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    def submit(self, *sbatch_args: str, cwd: Path | str | None = None) -> int:
        """``sbatch --parsable <sbatch_args>``; returns the job id."""
        out = self.run(["sbatch", "--parsable", *sbatch_args], cwd=cwd).stdout.strip()
        return int(out.split(";")[0])

    def job_state(self, job_id: int | str) -> str | None:
        """The job's state as squeue reports it (e.g. PENDING, RUNNING, COMPLETED), None if unknown."""
        result = self.run(["squeue", "--noheader", "--states=all", "--jobs", str(job_id), "--format=%T"], check=False)
        lines = result.stdout.split()
        return lines[0] if result.returncode == 0 and lines else None

    def wait_for_jobs(self, job_ids: Iterable[int | str], timeout: float = 60.0) -> dict[str, str]:
        """Wait until all jobs reach a terminal state (by squeue); returns ``{job_id: state}``."""
        pending = {str(j) for j in job_ids}
        states: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while pending:
            for job_id in sorted(pending):
                state = self.job_state(job_id)
                if state is not None:
                    states[job_id] = state
                if state in TERMINAL_STATES:
                    pending.discard(job_id)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise SlurmClusterError(
                    f"jobs {sorted(pending)} not finished after {timeout:.0f}s (states: {states})\n"
                    + self.squeue_report()
                    + self.logs()
                )
            time.sleep(0.5)
        return states

    def squeue_report(self) -> str:
        result = self.run(["squeue", "--states=all", "--long"], check=False)
        return f"--- squeue ---\n{result.stdout}{result.stderr}\n"

    def logs(self, tail_chars: int = 4000) -> str:
        """The tails of the daemon logs, for error messages."""
        parts = []
        paths = sorted(self.log_dir.glob("*")) if self.log_dir.exists() else []
        for path in paths:
            # The daemons' stdout repeats their log file; show it only when the log file says nothing.
            log_file = path.with_suffix(".log")
            if path.suffix == ".stdout" and log_file.exists() and log_file.stat().st_size > 0:
                continue
            try:
                text = path.read_text(errors="replace")
            except OSError as e:
                text = f"<unreadable: {e}>"
            parts.append(f"--- {path.name} (tail) ---\n{text[-tail_chars:]}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ internals
    def _prepare_dirs(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        for sub in ("etc", "log", "run", "state", "spool", "munge"):
            (self.root / sub).mkdir(parents=True, mode=0o755)
        os.chmod(self.root / "munge", 0o700)
        # munged refuses sockets in world-writable directories and AF_UNIX paths are short; keep the
        # socket in the private dir unless that path would be too long.
        sock = self.root / "run" / "munge.socket"
        if len(str(sock)) > _MAX_SOCKET_PATH:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="ffslurm-"))
            os.chmod(self._socket_dir, 0o755)
            sock = self._socket_dir / "munge.socket"
        self.munge_socket = sock

    def _open_log(self, name: str):
        fh = open(self.log_dir / name, "ab")  # noqa: SIM115 - closed in stop()
        self._log_files.append(fh)
        return fh

    def _start_munged(self) -> None:
        munge_dir = self.root / "munge"
        key = munge_dir / "munge.key"
        mungekey = shutil.which("mungekey", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if mungekey:
            subprocess.run([mungekey, "--create", "--keyfile", str(key)], check=True, capture_output=True)
        else:
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        out = self._open_log("munged.stdout")
        # munged runs as root here (--force) so that the root-owned private directories and key are acceptable.
        self.munged = subprocess.Popen(
            [
                _which("munged"),
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
                f"--log-file={self.log_dir / 'munged.log'}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while not self.munge_socket.exists():
            if self.munged.poll() is not None:
                raise SlurmClusterError(f"munged exited with {self.munged.returncode}\n{self.logs()}")
            if time.monotonic() > deadline:
                raise SlurmClusterError(f"munged did not create {self.munge_socket} within 20s\n{self.logs()}")
            time.sleep(0.05)

    def _write_config(self) -> None:
        self.ctld_port = _pick_port(self._preferred_ports[0])
        self.slurmd_port = _pick_port(self._preferred_ports[1], avoid={self.ctld_port})
        hw = _node_hardware()
        self.cpus = hw["CPUs"]
        self.real_memory_mb = max(256, int(hw["RealMemory"] * self._memory_fraction))
        # Leave room for several jobs at once when a job does not ask for memory.
        self.def_mem_per_cpu_mb = max(64, min(2048, self.real_memory_mb // max(1, self.cpus * self._oversubscribe)))
        topology = ""
        if all(k in hw for k in ("SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")):
            topology = (
                f" Sockets={hw['SocketsPerBoard'] * hw.get('Boards', 1)} CoresPerSocket={hw['CoresPerSocket']}"
                f" ThreadsPerCore={hw['ThreadsPerCore']}"
            )
        r = self.root
        partition_lines = [
            f"PartitionName={name} Nodes={self.node} Default={'YES' if i == 0 else 'NO'} MaxTime=INFINITE "
            f"State=UP OverSubscribe=FORCE:{self._oversubscribe}"
            for i, name in enumerate(self.partitions)
        ]
        conf = f"""\
# Written by tests/slurm_cluster.py -- a private single-node test cluster.
ClusterName={self.cluster_name}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={self.def_mem_per_cpu_mb}
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=3600
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=60
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "run" / "slurmctld.pid"}
SlurmdPidFile={r / "run" / "slurmd.pid"}
SlurmctldLogFile={self.log_dir / "slurmctld.log"}
SlurmdLogFile={self.log_dir / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={r / "etc" / "plugstack.conf"}
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus}{topology} RealMemory={self.real_memory_mb} State=UNKNOWN
{chr(10).join(partition_lines)}
"""
        self.conf_path.write_text(conf)
        (r / "etc" / "plugstack.conf").write_text("")
        self._write_client_wrappers()
        env = {k: v for k, v in os.environ.items() if not (k.startswith("SLURM_") or k.startswith("SBATCH_"))}
        self.extra_env = {
            "SLURM_CONF": str(self.conf_path),
            "PATH": str(self.bin_dir) + os.pathsep + env.get("PATH", os.defpath),
        }
        env.update(self.extra_env)
        self.env = env

    def _write_client_wrappers(self) -> None:
        """Put wrappers that set SLURM_CONF in front of the real client commands.

        Inside a job, snakemake's slurm-jobstep executor strips every ``SLURM_*`` variable (SLURM_CONF too)
        before it calls ``srun``; without /etc/slurm/slurm.conf that srun would then fail with "Could not
        establish a configuration source".  PATH survives, so the wrappers keep pointing at this cluster.
        """
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        for command in CLIENT_COMMANDS:
            real = shutil.which(command, path=os.environ.get("PATH", "") + ":/usr/bin:/usr/sbin")
            if real is None:
                continue
            wrapper = self.bin_dir / command
            wrapper.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf_path}"\nexport SLURM_CONF\nexec "{real}" "$@"\n')
            wrapper.chmod(0o755)

    def _start_slurm(self) -> None:
        conf = str(self.conf_path)
        self.slurmctld = subprocess.Popen(
            [_which("slurmctld"), "-D", "-c", "-i", "-f", conf],
            env=self.env,
            stdout=self._open_log("slurmctld.stdout"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.slurmd = subprocess.Popen(
            [_which("slurmd"), "-D", "-c", "-f", conf, "-N", self.node],
            env=self.env,
            stdout=self._open_log("slurmd.stdout"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _wait_until_idle(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        while True:
            for name, proc in (("munged", self.munged), ("slurmctld", self.slurmctld), ("slurmd", self.slurmd)):
                if proc is not None and proc.poll() is not None:
                    raise SlurmClusterError(
                        f"{name} exited with code {proc.returncode} during start-up\n"
                        f"--- slurm.conf ---\n{self.conf_path.read_text()}\n{self.logs()}"
                    )
            result = subprocess.run(
                ["sinfo", "--noheader", "--Node", "--format=%N %T"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            last = (result.stdout + result.stderr).strip()
            states = [line.split()[1] for line in result.stdout.splitlines() if len(line.split()) == 2]
            if result.returncode == 0 and states and all(s.rstrip("*~#") in ("idle", "mixed") for s in states):
                return
            if time.monotonic() > deadline:
                raise SlurmClusterError(
                    f"node {self.node} not idle after {self.startup_timeout:.0f}s; last sinfo: {last!r}\n"
                    f"--- slurm.conf ---\n{self.conf_path.read_text()}\n{self.logs()}"
                )
            time.sleep(0.25)

    def _wait_for_no_jobs(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.run(
                ["squeue", "--noheader", "--format=%i", "--states=PENDING,RUNNING,COMPLETING,SUSPENDED"],
                check=False,
                timeout=10,
            )
            if result.returncode != 0 or not result.stdout.strip():
                return
            time.sleep(0.25)
