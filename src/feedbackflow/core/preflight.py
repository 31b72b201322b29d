"""Planning-time checks of the remote services a configuration names (issue 19, blocker 6): the OpenAI-compatible
endpoints of ILF's language models (`ilf.refinement.lm`, `ilf.selection.instructrm_lm`, `ilf.evaluation.judge`)
and of the RRHF / Wombat judge (`rrhf.judge`, when `rrhf.scorer` is judge), and the Perspective API of the detox
toxicity scorer (`detox.toxicity`, backend perspective).

The Snakefile calls `check_services` while it is parsed, before any job is submitted, so a run that cannot reach a
service fails at once with a message naming the config key and its value, not after 50 SLURM jobs. Three problems:

- the API key's environment variable (`api_key_env`) is not set where Snakemake runs (the jobs inherit that
  environment: the SLURM profile submits with `--export=ALL`);
- a loopback endpoint (localhost, 127.0.0.0/8, ::1, 0.0.0.0, or a name that resolves only to those) while the jobs
  run through a cluster executor: there it is the compute node itself, where nothing serves it;
- an endpoint nobody answers: a TCP connect to its host and port within `timeout_s` seconds (3 by default). Only
  the connection is opened and closed, no HTTP request is sent, so the check costs nothing on a paid API.

Only the experiments listed in `experiments` are checked, and only services their stages use. The stdlib alone is
imported at module level: the Snakefile imports this module in Snakemake's own environment.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import ipaddress
import os
import socket
import urllib.parse
from collections.abc import Mapping

from feedbackflow.errors import ConfigError

OPENAI_DEFAULT_URL = "https://api.openai.com/v1"  # the official client's base_url when none is given
PERSPECTIVE_DEFAULT_URL = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"
CONNECT_TIMEOUT_S = 3.0
# Executors whose jobs run on the machine where Snakemake runs (None: no --executor given, the local one).
LOCAL_EXECUTORS = (None, "local", "dryrun", "touch")


@dataclasses.dataclass(frozen=True)
class Service:
    """One remote service a config section names: `where` is its config key (e.g. "ilf.refinement.lm")."""

    where: str
    url: str
    url_key: str  # the config key of the URL ("<where>.base_url"); the URL may be the client's default
    api_key_env: str


def _openai_service(where: str, section: Mapping) -> Service | None:
    """An LMConfig / JudgeConfig section with backend openai (the dataclasses' default), else None."""
    if not isinstance(section, Mapping) or section.get("backend", "openai") != "openai":
        return None
    return Service(where, section.get("base_url") or OPENAI_DEFAULT_URL, f"{where}.base_url",
                   section.get("api_key_env") or "OPENAI_API_KEY")  # fmt: skip


def configured_services(config: Mapping) -> list[Service]:
    """The remote services the stages of the configured experiments will call."""
    experiments = config.get("experiments") or []
    found: list[Service | None] = []
    ilf = config.get("ilf")
    if "ilf" in experiments and isinstance(ilf, Mapping):
        found.append(_openai_service("ilf.refinement.lm", ilf.get("refinement", {}).get("lm")))
        selection = ilf.get("selection", {})
        if "instructrm" in selection.get("scorers", []) and selection.get("instructrm_lm"):
            found.append(_openai_service("ilf.selection.instructrm_lm", selection["instructrm_lm"]))
        found.append(_openai_service("ilf.evaluation.judge", ilf.get("evaluation", {}).get("judge")))
    rrhf = config.get("rrhf")
    if "rrhf" in experiments and isinstance(rrhf, Mapping) and rrhf.get("scorer") == "judge":
        found.append(_openai_service("rrhf.judge", rrhf.get("judge")))
    detox = config.get("detox")
    if "detox" in experiments and isinstance(detox, Mapping):
        toxicity = detox.get("toxicity") or {}
        if toxicity.get("backend") == "perspective":
            found.append(Service("detox.toxicity", toxicity.get("perspective_url") or PERSPECTIVE_DEFAULT_URL,
                                 "detox.toxicity.perspective_url",
                                 toxicity.get("api_key_env") or "PERSPECTIVE_API_KEY"))  # fmt: skip
    return [service for service in found if service is not None]


def host_and_port(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL, the port defaulting to the scheme's (443 / 80)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _is_loopback_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.is_loopback or ip.is_unspecified


def is_loopback_host(host: str, resolve=socket.getaddrinfo) -> bool:
    """True when `host` is this machine only: localhost, 127.0.0.0/8, ::1, 0.0.0.0 / ::, or a name whose every
    address is one of those (Debian maps the machine's own name to 127.0.1.1)."""
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return _is_loopback_address(host)
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in resolve(host, None)}
    except OSError:
        return False  # unresolvable: the reachability check says so
    return bool(addresses) and all(_is_loopback_address(address) for address in addresses)


def key_problem(service: Service, environ: Mapping[str, str]) -> str | None:
    if environ.get(service.api_key_env):
        return None
    return (f"config {service.where}.api_key_env: the environment variable {service.api_key_env} is not set "
            f"({service.where} calls {service.url}); export it where snakemake runs (jobs inherit it)")  # fmt: skip


def loopback_problem(service: Service, executor: str | None) -> str | None:
    if executor in LOCAL_EXECUTORS:
        return None
    try:
        host, _ = host_and_port(service.url)
    except ValueError:
        return None  # the reachability check reports a malformed URL
    if not is_loopback_host(host):
        return None
    return (f"config {service.url_key}: {service.url} is this machine (loopback), but jobs run through the "
            f"{executor} executor on other nodes, where nothing serves it; give a host name the compute nodes "
            f"reach" + (", or use backend hf (the model inside the job)" if service.where != "detox.toxicity"
                        else ""))  # fmt: skip


def connect_problem(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when a TCP connection to the URL's host and port opens within `timeout_s`, else why not. Nothing is
    sent: the socket is closed at once. Name resolution is bounded by the same timeout (it runs in a thread)."""
    try:
        host, port = host_and_port(url)
    except ValueError as error:
        return str(error)

    def connect() -> None:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=timeout_s + 0.5)
    except concurrent.futures.TimeoutError:
        return f"no answer from {host}:{port} within {timeout_s:g} s"
    except OSError as error:
        return f"TCP connect to {host}:{port} failed: {error.strerror or error}"
    finally:
        pool.shutdown(wait=False)
    return None


def service_problems(config: Mapping, executor: str | None, environ: Mapping[str, str] | None = None,
                     timeout_s: float = CONNECT_TIMEOUT_S) -> list[str]:  # fmt: skip
    """Every problem of every configured service, each naming its config key and value (see the module doc)."""
    environ = os.environ if environ is None else environ
    services = configured_services(config)
    problems = []
    for service in services:
        problems += [p for p in (key_problem(service, environ), loopback_problem(service, executor)) if p]
    urls = sorted({service.url for service in services if not loopback_problem(service, executor)})
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        unreachable = dict(zip(urls, pool.map(lambda url: connect_problem(url, timeout_s), urls), strict=True))
    for service in services:
        if unreachable.get(service.url):
            problems.append(f"config {service.url_key}: {service.url} is unreachable ({unreachable[service.url]})")
    return problems


def snakemake_executor(argv: list[str]) -> str | None:
    """The executor a Snakemake command line submits jobs with (`--executor`, or a profile's `executor:`; None:
    local), read with Snakemake's own argument parser: the workflow learns it only after the Snakefile is parsed.
    Snakemake is imported here only, so the rest of the module keeps to the stdlib."""
    import contextlib
    import io

    from snakemake.cli import parse_args

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return parse_args(argv)[1].executor  # quiet: it would print "Using profile ..." again
    except (SystemExit, Exception):  # not a snakemake command line (e.g. the Python API)
        return None


def check_services(config: Mapping, executor: str | None, environ: Mapping[str, str] | None = None,
                   timeout_s: float = CONNECT_TIMEOUT_S) -> None:  # fmt: skip
    """Raise ConfigError listing every problem of `service_problems`; return quietly when there is none."""
    problems = service_problems(config, executor, environ, timeout_s)
    if problems:
        raise ConfigError("the configuration names services its jobs cannot use:\n- " + "\n- ".join(problems))
