"""Toxicity scorers for the detoxification task (Wu et al. 2023: the reward comes from a toxicity scorer, the
Perspective API in the paper; its evaluation reports average max toxicity and toxic probability over samples).

Two backends behind one interface (`ToxicityScorer.score(texts) -> list[ToxicityScore]`, one result per text, same
order):

- `profanity_check` (offline, the default): the linear model that `alt-profanity-check` ships in its wheel,
  `predict_prob` over batches of texts. No network, no key; a stand-in for Perspective at tiny scale.
- `perspective`: Google's Perspective API, `comments:analyze` with the TOXICITY attribute, one text per request
  (POST {perspective_url}?key=KEY, body {"comment": {"text": t}, "languages": [...], "requestedAttributes":
  {"TOXICITY": {}}, "doNotStore": true}); the score is attributeScores.TOXICITY.summaryScore.value, the
  probability that a reader finds the text toxic, as in the paper.

Statuses (`TOXICITY_STATUSES`): "ok" (score in [0, 1]); "unparsed" (a 200 reply without a readable score in
[0, 1]: recorded with the reason, never guessed); "failed" (no reply after the retries, or an HTTP error: the reason
carries the server's error message); "too_long" (perspective only: the text is over `max_text_bytes` in utf-8, the
API's own limit being 20 KB, so it is not sent). A whitespace-only text is scored 0.0 without a request (Perspective
rejects empty comments).

Cache: every "ok" score is stored in a SQLite file (`llm.cache.ReplyCache`: the key is the sha256 of a canonical JSON
of the scorer's identity plus the text; the reply is the score). For profanity_check the identity is the scorer name
and the alt-profanity-check version; for perspective it is the URL (never the key), the languages and the
attribute. A score is written the moment it arrives, so an interrupted run loses no paid result; a rerun scores
only what is not cached (a fully cached run needs no key); failed / unparsed results are not cached, so a rerun
retries them. Duplicate texts within one call are scored once.

Rate limit and retries (perspective): requests, retries included, start at least 1 / requests_per_second seconds
apart (the Perspective default quota is 1 query per second). The quota is per key, not per process, so the spacing
is shared by every process that scores into the same cache directory (the PPO ranks of one job, parallel scoring
jobs): the next free start time is kept in `<cache dir>/perspective.ratelimit`, read and advanced under an
exclusive `flock` (`SharedSlots`; wall-clock seconds, so on a shared file system it holds across nodes whose clocks
agree and whose file system honours flock). Up to `max_concurrency` requests are in flight at once (each still waits
for its slot), so a slow reply does not hold back the next slot. HTTP 429 and the transient 502 / 503 / 504, timeouts
and connection errors are retried up to `max_retries` times, waiting as a Retry-After header (in seconds) says, else
BACKOFF_S doubling per retry, each wait capped at MAX_WAIT_S; then the text is "failed". Other HTTP errors fail the
text at once, except 401 / 403 which raise ConfigError (a bad key or a disabled API fails every request alike).
The key is read from the environment variable named by `api_key_env` only when a request must be sent, and is
masked ("***") in every reason, error and log record (httpx logs request URLs, which carry it).

The stage `score-toxicity` scores the `response` (the continuation, not the prompt, as in RealToxicityPrompts
evaluations) of every row of a SAMPLES Parquet into a SCORED_SAMPLES Parquet.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import math
import os
import threading
import time
import typing
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Protocol

from feedbackflow.core.formats import SCORED_SAMPLES, read_sample_rows, write_json, write_rows
from feedbackflow.errors import ConfigError
from feedbackflow.llm.cache import CachedReply, ReplyCache, request_key

log = logging.getLogger(__name__)

TOXICITY_STATUSES = ("ok", "unparsed", "failed", "too_long")
BACKENDS = ("profanity_check", "perspective")
CACHE_KEY_VERSION = 1
EMPTY_REASON = "empty text: not scored"
ATTRIBUTE = "TOXICITY"
PROFANITY_BATCH_SIZE = 256
BACKOFF_S = 1.0  # first retry wait without Retry-After; doubles each retry
MAX_WAIT_S = 60.0  # cap on one retry wait, Retry-After included
RETRY_STATUSES = (429, 502, 503, 504)


@dataclasses.dataclass(frozen=True)
class ToxicityScore:
    score: float | None  # toxicity probability in [0, 1]; None unless status == "ok"
    status: str  # one of TOXICITY_STATUSES
    reason: str | None  # why, when not ok (never contains the API key)
    cached: bool  # came from the cache


@dataclasses.dataclass
class ToxicityConfig:
    backend: str = "profanity_check"
    perspective_url: str = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"
    api_key_env: str = "PERSPECTIVE_API_KEY"
    requests_per_second: float = 1.0
    max_retries: int = 5
    timeout_s: float = 30.0
    languages: list[str] = dataclasses.field(default_factory=lambda: ["en"])
    max_text_bytes: int = 20480
    max_concurrency: int = 1

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: {self.backend!r} is not one of {list(BACKENDS)}")
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = hints[field.name]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, field.name, value)
            expected = list if typing.get_origin(kind) is list else kind
            if not isinstance(value, expected) or isinstance(value, bool):
                raise ConfigError(f"{field.name}: expected {expected.__name__}, got {value!r}")
        if not all(isinstance(language, str) and language for language in self.languages):
            raise ConfigError(f"languages: expected a list of language codes, got {self.languages!r}")
        if not self.api_key_env:
            raise ConfigError("api_key_env: must name an environment variable")
        if not self.perspective_url.startswith(("http://", "https://")):
            raise ConfigError(f"perspective_url: not an http(s) URL: {self.perspective_url!r}")
        if "key=" in self.perspective_url:
            raise ConfigError("perspective_url: must not hold the key; put it in the environment variable api_key_env")
        if not (math.isfinite(self.requests_per_second) and self.requests_per_second > 0):
            raise ConfigError(f"requests_per_second: must be positive, got {self.requests_per_second}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries: must not be negative, got {self.max_retries}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s: must be positive, got {self.timeout_s}")
        if self.max_concurrency < 1:
            raise ConfigError(f"max_concurrency: must be at least 1, got {self.max_concurrency}")
        if self.max_text_bytes < 1:
            raise ConfigError(f"max_text_bytes: must be at least 1, got {self.max_text_bytes}")

    @classmethod
    def from_dict(cls, values: dict) -> ToxicityConfig:
        """Build from a config dict ({"backend": ..., ...}); an unknown key raises ConfigError naming it."""
        if not isinstance(values, dict):
            raise ConfigError(f"toxicity scorer: expected a JSON object, got {values!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"toxicity scorer: unknown key(s) {unknown}; known keys: {sorted(names)}")
        values = dict(values)
        if isinstance(values.get("languages"), list):
            values["languages"] = list(values["languages"])
        return cls(**values)


class ToxicityScorer(Protocol):
    name: str

    def score(self, texts: Sequence[str]) -> list[ToxicityScore]: ...

    def close(self) -> None: ...


@dataclasses.dataclass
class ToxicityStats:
    """Counts over every `score` call of one scorer."""

    texts: int = 0  # texts asked for, duplicates included
    unique_texts: int = 0  # distinct texts per call, summed over calls
    empty: int = 0  # whitespace-only texts (0.0, not scored)
    cache_hits: int = 0
    scored: int = 0  # texts given to the backend in this run (not from the cache)
    requests_sent: int = 0  # HTTP requests, retries included (0 for the offline scorer)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class _MemoryCache:
    """The cache for `cache_path=None`: the scores of this process only."""

    def __init__(self):
        self._replies: dict[str, CachedReply] = {}

    def get(self, key: str) -> CachedReply | None:
        return self._replies.get(key)

    def put(self, key: str, request: dict, reply: CachedReply) -> None:
        self._replies[key] = reply

    def __len__(self) -> int:
        return len(self._replies)

    def close(self) -> None:
        pass


def _readable_score(value) -> float | None:
    """`value` as a float when it is a number in [0, 1], else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


class _CachedScorer:
    """Dedupe, skip empty texts, look up the cache, score the rest with `_score_missing`, store each "ok" score."""

    name = ""

    def __init__(self, cache_path: str | os.PathLike | None):
        self.cache = ReplyCache(cache_path) if cache_path is not None else _MemoryCache()
        self.stats = ToxicityStats()

    def _identity(self) -> dict:
        raise NotImplementedError

    def _score_missing(self, texts: list[str], on_result: Callable[[int, ToxicityScore], None]) -> None:
        raise NotImplementedError

    def _request(self, text: str) -> dict:
        return {"v": CACHE_KEY_VERSION, **self._identity(), "text": text}

    def score(self, texts: Sequence[str]) -> list[ToxicityScore]:
        """One ToxicityScore per text, in order; duplicates are scored once, "ok" scores come from / go to the cache."""
        texts = [str(text) for text in texts]
        results: dict[str, ToxicityScore] = {}
        missing: list[str] = []
        requests: dict[str, dict] = {}
        for text in dict.fromkeys(texts):
            if not text.strip():
                results[text] = ToxicityScore(0.0, "ok", EMPTY_REASON, False)
                self.stats.empty += 1
                continue
            request = self._request(text)
            requests[text] = request
            hit = self.cache.get(request_key(request))
            score = None
            if hit is not None:
                try:
                    score = _readable_score(float(hit.text))
                except ValueError:
                    score = None
            if score is None:
                missing.append(text)
            else:
                results[text] = ToxicityScore(score, "ok", None, True)
                self.stats.cache_hits += 1
        self.stats.texts += len(texts)
        self.stats.unique_texts += len(set(texts))
        self.stats.scored += len(missing)
        if missing:
            log.info("%s: %d of %d distinct texts not cached; scoring them", self.name, len(missing), len(set(texts)))

        def on_result(position: int, result: ToxicityScore) -> None:
            text = missing[position]
            if result.status == "ok":
                request = requests[text]
                self.cache.put(request_key(request), request, CachedReply(repr(float(result.score)), None, None))
            results[text] = result

        if missing:
            self._score_missing(missing, on_result)
        return [results[text] for text in texts]

    def close(self) -> None:
        self.cache.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProfanityCheckScorer(_CachedScorer):
    """alt-profanity-check's `predict_prob` (offline), in batches of PROFANITY_BATCH_SIZE texts."""

    name = "profanity_check"

    def __init__(self, cache_path: str | os.PathLike | None = None, batch_size: int = PROFANITY_BATCH_SIZE):
        super().__init__(cache_path)
        self.batch_size = batch_size
        self.version = importlib.metadata.version("alt-profanity-check")

    def _identity(self) -> dict:
        return {"scorer": self.name, "version": self.version}

    def _score_missing(self, texts: list[str], on_result: Callable[[int, ToxicityScore], None]) -> None:
        from profanity_check import predict_prob  # loads the model (about a second): only when there is work

        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            for offset, value in enumerate(predict_prob(batch)):
                score = _readable_score(float(value))
                result = (
                    ToxicityScore(score, "ok", None, False)
                    if score is not None
                    else ToxicityScore(None, "unparsed", f"predict_prob gave {value!r}, not a number in [0, 1]", False)
                )
                on_result(start + offset, result)


class _MaskFilter(logging.Filter):
    """Replaces a secret in log records (httpx logs each request's URL, which carries the key)."""

    def __init__(self, secret: str):
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg = message.replace(self.secret, "***")
            record.args = ()
        return True


_MASKED_LOGGERS = ("httpx", "httpcore")


def _retry_after_s(headers) -> float | None:
    value = headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the backoff
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def _error_message(response) -> str:
    """Perspective's {"error": {"code", "message", "status"}} as "STATUS: message", else the start of the body."""
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and error.get("message"):
            status = error.get("status")
            return f"{status}: {error['message']}" if status else str(error["message"])
    except (ValueError, AttributeError):
        pass
    text = response.text.strip()
    return text[:200] if text else response.reason_phrase


def parse_perspective_reply(body, attribute: str = ATTRIBUTE) -> tuple[float | None, str | None]:
    """(score, None) from a comments:analyze reply, or (None, why not): attributeScores.A.summaryScore.value."""
    try:
        value = body["attributeScores"][attribute]["summaryScore"]["value"]
    except (KeyError, TypeError, IndexError):
        return None, f"no attributeScores.{attribute}.summaryScore.value in the reply {json.dumps(body)[:200]}"
    score = _readable_score(value)
    if score is None:
        return None, f"{attribute} score {value!r} is not a number in [0, 1]"
    return score, None


class SharedSlots:
    """Start times at least `interval` seconds apart, for every thread and process that uses the same `path` (a file
    holding the next free start time, read and advanced under an exclusive flock); this process only when `path` is
    None. `wait()` reserves the next slot and sleeps until it."""

    def __init__(self, interval: float, path: str | os.PathLike | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep):  # fmt: skip
        self.interval = interval
        self.path = None if path is None else os.fspath(path)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next: float | None = None

    def _reserve(self) -> float:
        with self._lock:
            if self.path is None:
                now = self._clock()
                start = now if self._next is None else max(now, self._next)
                self._next = start + self.interval
                return start
            import fcntl

            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(self.path, "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    handle.seek(0)
                    try:
                        reserved = float(handle.read().strip())
                    except ValueError:
                        reserved = None  # a new (empty) file
                    now = self._clock()
                    start = now if reserved is None else max(now, reserved)
                    handle.seek(0)
                    handle.truncate()
                    handle.write(repr(start + self.interval))
                    handle.flush()
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
            return start

    def wait(self) -> None:
        delay = self._reserve() - self._clock()
        if delay > 0:
            self._sleep(delay)


RATE_LIMIT_FILE = "perspective.ratelimit"


class PerspectiveScorer(_CachedScorer):
    """Perspective API comments:analyze, one text per request, rate limited and retried (see the module doc).

    `clock` and `sleep` (default time.time / time.sleep: wall clock, as the shared slot file) are injectable so
    tests check the waits."""

    name = "perspective"

    def __init__(
        self,
        config: ToxicityConfig,
        cache_path: str | os.PathLike | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        super().__init__(cache_path)
        self.config = config
        self._clock = clock
        self._sleep = sleep
        shared = None if cache_path is None else os.path.join(os.path.dirname(os.fspath(cache_path)), RATE_LIMIT_FILE)
        self._slots = SharedSlots(1.0 / config.requests_per_second, shared, clock, sleep)
        self._client = None
        self._client_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._secret: str | None = None
        self._filter: _MaskFilter | None = None

    def _identity(self) -> dict:
        return {
            "scorer": self.name,
            "url": self.config.perspective_url,
            "languages": list(self.config.languages),
            "attribute": ATTRIBUTE,
        }

    def _mask(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _ensure_client(self):
        with self._client_lock:
            return self._make_client()

    def _make_client(self):
        if self._client is None:
            import httpx

            name = self.config.api_key_env
            secret = os.environ.get(name)
            if not secret:
                raise ConfigError(
                    f"api_key_env: the environment variable {name} is not set (it must hold the Perspective API key)"
                )
            self._secret = secret
            self._filter = _MaskFilter(secret)
            for logger_name in _MASKED_LOGGERS:
                logging.getLogger(logger_name).addFilter(self._filter)
            self._client = httpx.Client(timeout=self.config.timeout_s)
        return self._client

    def _wait_for_slot(self) -> None:
        """Sleep until this request's slot: 1 / requests_per_second after the previous one of any process sharing the
        cache directory (SharedSlots)."""
        self._slots.wait()

    def body(self, text: str) -> dict:
        body = {"comment": {"text": text}, "requestedAttributes": {ATTRIBUTE: {}}, "doNotStore": True}
        if self.config.languages:
            body["languages"] = list(self.config.languages)
        return body

    def score_one(self, text: str) -> ToxicityScore:
        """Send one text (with retries); never raises for a bad reply (ConfigError for a missing / rejected key)."""
        import httpx

        size = len(text.encode("utf-8"))
        if size > self.config.max_text_bytes:
            return ToxicityScore(
                None, "too_long", f"{size} bytes (utf-8) > max_text_bytes {self.config.max_text_bytes}: not sent", False
            )
        client = self._ensure_client()
        attempts = self.config.max_retries + 1
        problem = ""
        for attempt in range(attempts):
            self._wait_for_slot()
            with self._count_lock:
                self.stats.requests_sent += 1
            retry_after = None
            try:
                response = client.post(
                    self.config.perspective_url, params={"key": self._secret}, json=self.body(text)
                )
            except httpx.TimeoutException as error:
                problem = f"timeout after {self.config.timeout_s:g} s ({type(error).__name__})"
            except httpx.TransportError as error:
                problem = f"connection error: {type(error).__name__}: {self._mask(str(error))}"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        body = response.json()
                    except ValueError:
                        return ToxicityScore(
                            None, "unparsed", self._mask(f"reply is not JSON: {response.text[:200]!r}"), False
                        )
                    score, reason = parse_perspective_reply(body)
                    if score is None:
                        return ToxicityScore(None, "unparsed", self._mask(reason), False)
                    return ToxicityScore(score, "ok", None, False)
                message = self._mask(f"HTTP {status}: {_error_message(response)}")
                if status in (401, 403):
                    raise ConfigError(
                        f"perspective: the API refused the key from {self.config.api_key_env} ({message})"
                    )
                if status not in RETRY_STATUSES:
                    return ToxicityScore(None, "failed", message, False)
                problem = message
                retry_after = _retry_after_s(response.headers)
            if attempt + 1 < attempts:
                wait = retry_after if retry_after is not None else BACKOFF_S * 2**attempt
                wait = min(wait, MAX_WAIT_S)
                log.info("perspective: %s; retry %d/%d in %.1f s", problem, attempt + 1, attempts - 1, wait)
                if wait > 0:
                    self._sleep(wait)
        return ToxicityScore(None, "failed", f"{problem} (gave up after {attempts} attempts)", False)

    def _score_missing(self, texts: list[str], on_result: Callable[[int, ToxicityScore], None]) -> None:
        """Up to max_concurrency requests in flight; results reach `on_result` in this thread (the cache's)."""
        every = max(1, len(texts) // 10)
        if self.config.max_concurrency == 1:
            for index, text in enumerate(texts):
                on_result(index, self.score_one(text))
                if (index + 1) % every == 0 or index + 1 == len(texts):
                    log.info("perspective: %d/%d texts scored", index + 1, len(texts))
            return
        with ThreadPoolExecutor(self.config.max_concurrency, thread_name_prefix="perspective") as pool:
            futures = {pool.submit(self.score_one, text): index for index, text in enumerate(texts)}
            try:
                for done, future in enumerate(as_completed(futures), start=1):
                    on_result(futures[future], future.result())
                    if done % every == 0 or done == len(texts):
                        log.info("perspective: %d/%d texts scored", done, len(texts))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._filter is not None:
            for logger_name in _MASKED_LOGGERS:
                logging.getLogger(logger_name).removeFilter(self._filter)
            self._filter = None
        super().close()


def make_toxicity_scorer(config: ToxicityConfig, cache_path: str | os.PathLike | None) -> ToxicityScorer:
    """The scorer `config.backend` names, caching in the SQLite file `cache_path` (None: in memory only)."""
    if config.backend == "perspective":
        return PerspectiveScorer(config, cache_path)
    return ProfanityCheckScorer(cache_path)


# --------------------------------------------------------------------------------------------------------------
# The stage


def score_toxicity(
    samples_path: str | os.PathLike,
    output_path: str | os.PathLike,
    cache_path: str | os.PathLike,
    config: ToxicityConfig,
    scorer: ToxicityScorer | None = None,
) -> dict:
    """Score the `response` of every sample; write a SCORED_SAMPLES Parquet (atomically); return the counts.

    `scorer` (default: made from `config` and `cache_path`) is closed at the end."""
    rows = read_sample_rows(samples_path)
    scorer = scorer or make_toxicity_scorer(config, cache_path)
    try:
        results = scorer.score([row["response"] for row in rows])
        scorer_stats = scorer.stats.as_dict() if hasattr(scorer, "stats") else {}
    finally:
        scorer.close()
    out = [
        {
            **row,
            "score": result.score,
            "status": result.status,
            "reason": result.reason,
            "scorer": scorer.name,
            "prompt_tokens": None,
            "completion_tokens": None,
        }
        for row, result in zip(rows, results, strict=True)
    ]
    write_rows(out, output_path, SCORED_SAMPLES)
    counts = Counter(result.status for result in results)
    stats = {
        "scorer": scorer.name,
        "samples": len(rows),
        **{status: counts.get(status, 0) for status in TOXICITY_STATUSES},
        "cache_hits": scorer_stats.get("cache_hits", 0),
        "requests_sent": scorer_stats.get("requests_sent", 0),
        "unique_texts": scorer_stats.get("unique_texts", 0),
        "empty": scorer_stats.get("empty", 0),
        "scored": scorer_stats.get("scored", 0),
    }
    log.info("%s: %d samples -> %s; %s", scorer.name, len(rows), output_path, stats)
    if counts.get("failed"):
        reasons = sorted({r.reason for r in results if r.status == "failed"})
        log.warning("%s: %d samples failed (a rerun retries them); reasons: %s", scorer.name, counts["failed"],
                    reasons[:5])
    return stats


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="samples Parquet (prompt_id, prompt, response, ...)")
    parser.add_argument("--output", required=True, help="scored-samples Parquet to write")
    parser.add_argument("--cache", required=True, help="SQLite score cache (created if absent; shared across runs)")
    parser.add_argument(
        "--scorer", default="{}",
        help='JSON object of the toxicity scorer config, e.g. {"backend": "perspective"} (default: profanity_check)',
    )
    parser.add_argument("--stats", default=None, help="JSON to write: counts per status, cache_hits, requests_sent")


def main(args: argparse.Namespace) -> None:
    try:
        values = json.loads(args.scorer)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--scorer: not valid JSON ({error})") from error
    config = ToxicityConfig.from_dict(values)
    stats = score_toxicity(args.samples, args.output, args.cache, config)
    if args.stats:
        write_json(stats, args.stats)
