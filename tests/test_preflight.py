"""Planning-time checks of the remote services a config names (feedbackflow.core.preflight; issue 19, blocker 6).

The workflow tests run real `snakemake -n` in a scratch copy of the project, with the tiny default config and an
overlay (a second --configfile) that points ILF's refinement LM, the RRHF judge and the Perspective scorer at
endpoints: each bad case must fail while the Snakefile is parsed, naming the config key and its value; the good case
plans against the loopback stub servers (real HTTP servers; nothing is sent to them, a TCP connect only).
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import yaml
from openai_stub_server import StubOpenAIServer
from perspective_stub_server import StubPerspectiveServer
from workflow_runs import copy_project, planned_jobs, snakemake

from feedbackflow.core.preflight import (
    Service,
    configured_services,
    connect_problem,
    is_loopback_host,
    loopback_problem,
    service_problems,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
UNSET = "FEEDBACKFLOW_TEST_UNSET_KEY"
SET = "FEEDBACKFLOW_TEST_KEY"


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def overlay(openai_url: str, perspective_url: str, key_env: str) -> dict:
    """ILF's refinement LM, the RRHF judge (scorer judge) and the Perspective scorer on the given endpoints."""
    return {
        "experiments": ["rrhf", "detox", "ilf"],
        "ilf": {"refinement": {"lm": {"backend": "openai", "model": "stub", "base_url": openai_url,
                                      "api_key_env": key_env}}},
        "rrhf": {"scorer": "judge", "judge": {"backend": "openai", "model": "stub", "base_url": openai_url,
                                              "api_key_env": key_env}},
        "detox": {"toxicity": {"backend": "perspective", "perspective_url": perspective_url,
                               "api_key_env": key_env}},
    }  # fmt: skip


def plan(tmp_path: Path, changes: dict, profile: str = "profiles/default", env: dict | None = None):
    workdir = tmp_path / "project"
    if not workdir.exists():
        workdir.mkdir()
        copy_project(REPO_ROOT, workdir)
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(changes))
    return snakemake(workdir, "-n", "--configfile", "config/config.yaml", str(tmp_path / "overlay.yaml"),
                     profile=profile, env={SET: "test-key", **(env or {})}, check=False)  # fmt: skip


KEYS = ("ilf.refinement.lm", "rrhf.judge", "detox.toxicity")
URL_KEYS = ("ilf.refinement.lm.base_url", "rrhf.judge.base_url", "detox.toxicity.perspective_url")


def test_an_unset_api_key_variable_fails_planning_naming_each_config_key(tmp_path, monkeypatch):
    monkeypatch.delenv(UNSET, raising=False)
    with StubOpenAIServer() as openai_stub, StubPerspectiveServer() as perspective_stub:
        result = plan(tmp_path, overlay(openai_stub.origin + "/v1", perspective_stub.url, UNSET))
        assert openai_stub.requests == 0 and perspective_stub.requests == []  # a TCP connect only
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for key in KEYS:
        assert f"config {key}.api_key_env: the environment variable {UNSET} is not set" in output, output[-3000:]
    assert "unreachable" not in output and "Job stats" not in output  # nothing else wrong; nothing planned


def test_a_closed_loopback_port_fails_planning_naming_each_url(tmp_path):
    port = closed_port()
    openai_url, perspective_url = f"http://127.0.0.1:{port}/v1", f"http://127.0.0.1:{port}/v1alpha1/comments:analyze"
    result = plan(tmp_path, overlay(openai_url, perspective_url, SET))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for key, url in zip(URL_KEYS, (openai_url, openai_url, perspective_url), strict=True):
        assert f"config {key}: {url} is unreachable (TCP connect to 127.0.0.1:{port} failed" in output, output[-3000:]


def test_reachable_endpoints_with_their_keys_plan(tmp_path):
    with StubOpenAIServer() as openai_stub, StubPerspectiveServer() as perspective_stub:
        result = plan(tmp_path, overlay(openai_stub.origin + "/v1", perspective_stub.url, SET))
        assert openai_stub.requests == 0 and perspective_stub.requests == []
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    jobs = planned_jobs(result.stdout)
    assert {"judge_rrhf_samples", "score_detox_toxicity", "refine_summaries"} <= set(jobs), jobs


def test_a_loopback_endpoint_under_the_slurm_profile_fails_planning(tmp_path):
    """The stub answers on 127.0.0.1, but a SLURM job would ask its own compute node."""
    with StubOpenAIServer() as openai_stub, StubPerspectiveServer() as perspective_stub:
        changes = overlay(openai_stub.origin.replace("127.0.0.1", "localhost") + "/v1", perspective_stub.url, SET)
        result = plan(tmp_path, changes, profile="profiles/slurm")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (f"config ilf.refinement.lm.base_url: {changes['ilf']['refinement']['lm']['base_url']} is this machine "
            "(loopback), but jobs run through the slurm executor") in output, output[-3000:]  # fmt: skip
    assert f"config detox.toxicity.perspective_url: {perspective_stub.url} is this machine (loopback)" in output


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("LOCALHOST", True), ("vllm.localhost", True), ("127.0.0.1", True), ("127.0.1.1", True),
     ("::1", True), ("0.0.0.0", True), ("10.1.2.3", False), ("192.168.0.7", False), ("2001:db8::1", False)],
)  # fmt: skip
def test_loopback_hosts(host, loopback):
    assert is_loopback_host(host) is loopback


def test_a_name_that_resolves_only_to_loopback_is_loopback():
    """Debian's /etc/hosts maps the machine's own name to 127.0.1.1. The resolver is a stand-in for DNS here (this
    machine's name resolution is not ours to set); the function takes it as an argument."""

    def resolver(addresses):
        return lambda host, port: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in addresses]

    assert is_loopback_host("login01", resolve=resolver(["127.0.1.1"]))
    assert not is_loopback_host("login01", resolve=resolver(["127.0.1.1", "10.0.0.5"]))


def test_loopback_matters_only_under_a_cluster_executor():
    service = Service("ilf.refinement.lm", "http://localhost:8000/v1", "ilf.refinement.lm.base_url", "K")
    for executor in (None, "local", "dryrun"):
        assert loopback_problem(service, executor) is None
    assert "is this machine (loopback)" in loopback_problem(service, "slurm")


def test_connect_sends_nothing_and_reports_a_closed_port():
    """A listening socket that records what a client sends: the check opens and closes the connection only."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        received = []

        def accept():
            connection, _ = server.accept()
            with connection:
                connection.settimeout(2)
                received.append(connection.recv(1024))

        thread = threading.Thread(target=accept)
        thread.start()
        assert connect_problem(f"http://127.0.0.1:{port}/v1", timeout_s=2) is None
        thread.join(timeout=5)
    assert received == [b""]  # the peer closed without sending a byte
    port = closed_port()
    assert "failed" in connect_problem(f"https://127.0.0.1:{port}/", timeout_s=2)
    assert "not an http(s) URL" in connect_problem("ftp://example.org/")


def test_only_services_the_configured_stages_use_are_checked():
    """Per paper config: ILF runs its LMs inside the jobs (hf), rrhf_hh scores with a reward model, Wombat asks an
    OpenAI judge, detox asks Perspective."""
    found = {}
    for path in sorted((REPO_ROOT / "config" / "experiments").glob("*.yaml")):
        services = configured_services(yaml.safe_load(path.read_text()))
        found[path.stem] = [(s.where, s.api_key_env) for s in services]
    assert found == {
        "dsp": [], "finegrained_qa": [], "ilf_slf5k": [], "rrhf_hh": [],
        "wombat": [("rrhf.judge", "OPENAI_API_KEY")],
        "finegrained_detox": [("detox.toxicity", "PERSPECTIVE_API_KEY")],
    }  # fmt: skip
    tiny = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    assert configured_services(tiny) == []  # the default run calls no service
    assert service_problems(tiny, "slurm", environ={}) == []
