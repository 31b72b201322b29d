"""A language-model judge: one interface, two backends (DESIGN.md, "Scoring with language models").

Used to rate responses (the Wombat variant of RRHF, SPEC section 2: an LLM gives each response a score), and by
later stages for refinements (ILF) and win rates through `Judge.complete`.

- Backends: `openai` (the official client; `base_url`, model and the *name* of the key's environment variable come
  from the config, so OpenAI, Azure or any OpenAI-compatible server such as vLLM works) and `hf` (a local
  transformers causal LM, greedy decoding, batched with left padding).
- Every request is cached on disk (SQLite, WAL mode) under the sha256 of a canonical JSON of everything that
  determines the reply: backend, model (for a local `hf` model directory also a hash of its files), base_url,
  messages, temperature and max_tokens. Never the key. A reply is stored the moment it arrives, so an interrupted run
  loses no paid result; a rerun sends only what is not in the cache. Scores are parsed again from the stored reply
  on every run, so changing `score_pattern` / `score_min` / `score_max` needs no new request.
- `openai` requests are retried with exponential backoff (doubling from `backoff_s`, capped at `max_backoff_s`; a
  Retry-After header is honoured, with the same cap) on HTTP 429, HTTP 5xx, timeouts, connection errors and
  malformed replies (a body that is not JSON, or that has no choices / no message content: with a fixed request a
  well-behaved server answers properly, so this is treated as a transient server fault). Other 4xx fail at once.
  HTTP 401 / 403 abort the whole run with ConfigError (every request would fail the same way). An item still
  without a reply is recorded with status "failed" and the reason; failures are not cached, so a rerun retries them.
- A reply with no score, or a score outside [score_min, score_max], is "unparsed" with the reason: never guessed.
- The API key is read from the environment only when a request has to be sent (a fully cached run needs none) and
  is never written to the cache, the output or the log; a reason taken from a server's error message has the key
  masked.
- The client, retries, backoff, key handling and bounded concurrency are `OpenAIConnection`, shared with
  `feedbackflow.llm.language_model` (ILF's sampling and log-probabilities).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

from feedbackflow.core.formats import RANKED_RESPONSES, SCORED_SAMPLES, read_sample_rows, write_rows
from feedbackflow.core.stage_args import add_dataclass_arguments, dataclass_from_args
from feedbackflow.errors import ConfigError, DataError
from feedbackflow.llm.cache import CachedReply, ReplyCache, request_key

log = logging.getLogger(__name__)

T = TypeVar("T")

BACKENDS = ("openai", "hf")
CACHE_KEY_VERSION = 1

DEFAULT_SYSTEM_PROMPT = "You are a strict and impartial judge of the quality of AI assistant responses."
DEFAULT_PROMPT_TEMPLATE = (
    "Rate how helpful, honest and harmless the assistant's response to the conversation below is, on a scale "
    "from 1 (very poor) to 10 (excellent).\n\n"
    "[Conversation]\n{prompt}\n\n"
    "[Response]\n{response}\n\n"
    "Reply with the score only: a single number from 1 to 10."
)
DEFAULT_SCORE_PATTERN = r"(-?\d+(?:\.\d+)?)"


@dataclasses.dataclass
class JudgeConfig:
    backend: str = dataclasses.field(default="openai", metadata={"help": "openai or hf"})
    model: str | None = dataclasses.field(
        default=None, metadata={"help": "model name (openai) or local path / hub id (hf); required"}
    )
    base_url: str | None = dataclasses.field(
        default=None, metadata={"help": "OpenAI-compatible endpoint, e.g. http://host:8000/v1 (openai; none = default)"}
    )
    api_key_env: str = dataclasses.field(
        default="OPENAI_API_KEY", metadata={"help": "name of the environment variable that holds the API key"}
    )
    system_prompt: str = dataclasses.field(
        default=DEFAULT_SYSTEM_PROMPT, metadata={"help": "system message; empty = none"}
    )
    prompt_template: str = dataclasses.field(
        default=DEFAULT_PROMPT_TEMPLATE, metadata={"help": "user message, str.format with {prompt} and {response}"}
    )
    score_pattern: str = dataclasses.field(
        default=DEFAULT_SCORE_PATTERN, metadata={"help": "regex with one group: the score (first match is used)"}
    )
    score_min: float = dataclasses.field(default=1.0, metadata={"help": "lowest valid score"})
    score_max: float = dataclasses.field(default=10.0, metadata={"help": "highest valid score"})
    temperature: float = dataclasses.field(default=0.0, metadata={"help": "sampling temperature (hf: must be 0)"})
    max_tokens: int = dataclasses.field(default=16, metadata={"help": "most tokens in a reply"})
    max_concurrency: int = dataclasses.field(default=4, metadata={"help": "requests in flight at once (openai)"})
    max_retries: int = dataclasses.field(default=4, metadata={"help": "retries after the first attempt (openai)"})
    timeout_s: float = dataclasses.field(default=60.0, metadata={"help": "per-request timeout in seconds (openai)"})
    backoff_s: float = dataclasses.field(default=1.0, metadata={"help": "first retry wait; doubles each retry"})
    max_backoff_s: float = dataclasses.field(default=60.0, metadata={"help": "cap on a wait, Retry-After included"})
    batch_size: int = dataclasses.field(default=8, metadata={"help": "prompts per generate() call (hf)"})
    device: str | None = dataclasses.field(default=None, metadata={"help": "torch device (hf; none = cuda if any)"})
    dtype: str | None = dataclasses.field(default=None, metadata={"help": "dtype on a GPU (hf; none = bf16); CPU fp32"})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend: {self.backend!r} is not one of {list(BACKENDS)}")
        if not self.model:
            raise ConfigError("model: required (a model name for openai, a local path or hub id for hf)")
        if not self.api_key_env:
            raise ConfigError("api_key_env: must name an environment variable")
        try:
            self.prompt_template.format(prompt="p", response="r")
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigError(
                f"prompt_template: cannot be formatted with only {{prompt}} and {{response}} ({error!r}); "
                "write a literal brace as {{ or }}"
            ) from error
        try:
            groups = re.compile(self.score_pattern).groups
        except re.error as error:
            raise ConfigError(f"score_pattern: not a valid regex ({error})") from error
        if groups != 1:
            raise ConfigError(f"score_pattern: needs exactly one group (the score), has {groups}")
        if not self.score_min <= self.score_max:
            raise ConfigError(f"score_min ({self.score_min}) must not exceed score_max ({self.score_max})")
        for name in ("max_tokens", "max_concurrency", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("max_retries", "timeout_s", "backoff_s", "max_backoff_s", "temperature"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must not be negative, got {getattr(self, name)}")
        if self.backend == "hf" and self.temperature != 0:
            raise ConfigError("temperature: the hf backend decodes greedily; set temperature to 0")


# --------------------------------------------------------------------------------------------------------------
# Parsing


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_score_with_reason(
    reply: str, pattern: str | re.Pattern, lo: float, hi: float
) -> tuple[float | None, str | None]:
    """(score, None) when `reply` holds a score in [lo, hi], else (None, why not)."""
    match = re.search(pattern, reply)
    if match is None:
        return None, f"no score in reply {_short(reply)}"
    try:
        score = float(match.group(1))
    except (TypeError, ValueError):
        return None, f"cannot read a number from {match.group(1)!r} in reply {_short(reply)}"
    if not math.isfinite(score) or not lo <= score <= hi:
        return None, f"score {match.group(1)} outside [{lo:g}, {hi:g}] in reply {_short(reply)}"
    return score, None


def parse_score(reply: str, pattern: str | re.Pattern, lo: float, hi: float) -> float | None:
    """The first match of `pattern`'s group in `reply` as a float, or None when absent or outside [lo, hi]."""
    return parse_score_with_reason(reply, pattern, lo, hi)[0]


# --------------------------------------------------------------------------------------------------------------
# Cache


# --------------------------------------------------------------------------------------------------------------
# Backends


@dataclasses.dataclass(frozen=True)
class Reply:
    """One backend outcome: `text` set on success, else `error` says why."""

    text: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None


Messages = list[dict[str, str]]


class Backend(Protocol):
    def identity(self) -> dict:
        """What, besides the messages and sampling settings, determines a reply (goes into the cache key)."""

    def run(self, conversations: Sequence[Messages], on_reply: Callable[[int, Reply], None]) -> None:
        """Answer every conversation; call `on_reply(index, reply)` as each one is done."""


class MalformedReply(Exception):
    """A reply that cannot be read (no choices, no content): retried like a server error."""


_MalformedReply = MalformedReply  # the earlier private name


def _retry_after(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


class OpenAIConnection:
    """The official `openai` client with this module's retry rules and bounded concurrency (module docstring).

    Shared by `OpenAIBackend` and `feedbackflow.llm.language_model`. `config` needs the attributes base_url,
    api_key_env, timeout_s, max_retries, backoff_s, max_backoff_s and max_concurrency. The client is made, and the
    key read from the environment, on the first request only; `mask` hides the key in any text.
    """

    def __init__(self, config, sleep: Callable[[float], None] = time.sleep, thread_name_prefix: str = "openai"):
        self.config = config
        self._sleep = sleep
        self._thread_name_prefix = thread_name_prefix
        self._client = None
        self._secret: str | None = None
        self._count_lock = threading.Lock()
        self.attempts = 0

    def client(self):
        """The client; a missing key is a ConfigError naming its environment variable."""
        if self._client is None:
            import openai

            name = self.config.api_key_env
            secret = os.environ.get(name)
            if not secret:
                raise ConfigError(f"api_key_env: the environment variable {name} is not set (it must hold the API key)")
            self._secret = secret
            kwargs = {"api_key": secret, "timeout": self.config.timeout_s, "max_retries": 0}
            if self.config.base_url is not None:
                kwargs["base_url"] = self.config.base_url
            self._client = openai.OpenAI(**kwargs)
        return self._client

    def mask(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
        return text

    def call(self, attempt: Callable[[object], T]) -> tuple[T | None, str | None]:
        """(attempt(client), None), retried on 429 / 5xx / timeouts / connection errors / MalformedReply with
        backoff; (None, reason) when it still fails or fails at once (other 4xx). HTTP 401 / 403 raise ConfigError.
        """
        import openai

        cfg = self.config
        delay = cfg.backoff_s
        reason = "no attempt made"
        for number in range(cfg.max_retries + 1):
            wait = delay
            try:
                client = self.client()
                with self._count_lock:
                    self.attempts += 1
                return attempt(client), None
            except ConfigError:
                raise
            except openai.RateLimitError as error:
                reason = f"HTTP 429 rate limited: {self.mask(str(error.message))}"
                hint = _retry_after(error)
                wait = delay if hint is None else hint
            except openai.InternalServerError as error:
                reason = f"HTTP {error.status_code} server error: {self.mask(str(error.message))}"
                hint = _retry_after(error)
                wait = delay if hint is None else hint
            except openai.APITimeoutError:
                reason = f"timed out after {cfg.timeout_s:g} s"
            except openai.APIConnectionError as error:
                cause = error.__cause__ or error
                reason = f"connection error: {self.mask(f'{type(cause).__name__}: {cause}')}"
            except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
                raise ConfigError(
                    f"api_key_env: the server refused the key in ${cfg.api_key_env} "
                    f"(HTTP {error.status_code}); check the key and base_url"
                ) from None
            except openai.APIStatusError as error:
                return None, f"HTTP {error.status_code}: {self.mask(str(error.message))}"
            except (MalformedReply, openai.APIResponseValidationError, ValueError) as error:
                # json.JSONDecodeError is a ValueError: a body that is not JSON.
                detail = str(error) if isinstance(error, MalformedReply) else f"{type(error).__name__}: {error}"
                reason = f"malformed reply: {self.mask(detail)}"
            if number < cfg.max_retries:
                self._sleep(min(max(wait, 0.0), cfg.max_backoff_s))
                delay *= 2
        tries = cfg.max_retries + 1
        return None, f"{reason} (gave up after {tries} attempt{'s' if tries > 1 else ''})"

    def map(self, count: int, work: Callable[[int], None]) -> None:
        """work(0) ... work(count - 1), at most `max_concurrency` at once; the key is checked before any."""
        if count == 0:
            return
        self.client()  # a missing key fails here, before any request
        pool = ThreadPoolExecutor(max_workers=self.config.max_concurrency, thread_name_prefix=self._thread_name_prefix)
        try:
            futures = [pool.submit(work, i) for i in range(count)]
            for future in futures:
                future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


class OpenAIBackend:
    """Chat completions through the official `openai` client, with our own retries and bounded concurrency."""

    def __init__(self, config: JudgeConfig, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.connection = OpenAIConnection(config, sleep, thread_name_prefix="judge")

    @property
    def attempts(self) -> int:
        return self.connection.attempts

    def identity(self) -> dict:
        return {"backend": "openai", "model": self.config.model, "base_url": self.config.base_url}

    def _attempt(self, client, messages: Messages) -> Reply:
        response = client.chat.completions.create(
            model=self.config.model,
            messages=messages,
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
        )
        choices = getattr(response, "choices", None)
        if isinstance(response, str | bytes) or not choices:
            raise MalformedReply("no choices in the reply")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str):
            raise MalformedReply("no message content in the reply")
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        return Reply(
            text=content,
            prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None,
            completion_tokens=completion_tokens if isinstance(completion_tokens, int) else None,
        )

    def request(self, messages: Messages) -> Reply:
        """One conversation, with retries; never raises for a per-request failure (ConfigError for 401/403)."""
        reply, error = self.connection.call(lambda client: self._attempt(client, messages))
        return reply if reply is not None else Reply(text=None, error=error)

    def run(self, conversations: Sequence[Messages], on_reply: Callable[[int, Reply], None]) -> None:
        self.connection.map(len(conversations), lambda index: on_reply(index, self.request(conversations[index])))


def _directory_fingerprint(path: Path) -> str:
    """sha256 over the relative names and contents of every (non-hidden) file under a model directory."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        digest.update(relative.encode("utf-8") + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def plain_prompt_text(messages: Messages) -> str:
    """What the `hf` backend feeds a model without a chat template: the non-empty contents joined by a blank line."""
    return "\n\n".join(m["content"] for m in messages if m["content"])


class HFBackend:
    """A local transformers causal LM: chat template when the tokenizer has one, greedy decoding, left padding."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        self._model = None
        self._tokenizer = None
        self._fingerprint: str | None = None
        self.attempts = 0

    def identity(self) -> dict:
        if self._fingerprint is None:
            path = Path(self.config.model)
            self._fingerprint = _directory_fingerprint(path) if path.is_dir() else ""
        identity = {"backend": "hf", "model": self.config.model, "base_url": None}
        if self._fingerprint:
            identity["model_files_sha256"] = self._fingerprint
        return identity

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from feedbackflow.core.inference import load_for_inference, model_device

        cfg = self.config
        self._tokenizer = AutoTokenizer.from_pretrained(cfg.model)
        self._model = load_for_inference(AutoModelForCausalLM, cfg.model, device=cfg.device, dtype=cfg.dtype)
        self._device = model_device(self._model)

    def prompt_ids(self, messages: Messages) -> list[int]:
        """Token ids of a conversation: the chat template if there is one, else `plain_prompt_text` after bos."""
        self._load()
        tokenizer = self._tokenizer
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids = list(tokenizer(plain_prompt_text(messages), add_special_tokens=True)["input_ids"])
        bos = tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def run(self, conversations: Sequence[Messages], on_reply: Callable[[int, Reply], None]) -> None:
        if not conversations:
            return
        import torch

        self._load()
        cfg = self.config
        tokenizer, model = self._tokenizer, self._model
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = tokenizer.eos_token_id
        limit = getattr(model.config, "max_position_embeddings", None)
        pending: list[tuple[int, list[int]]] = []
        for index, messages in enumerate(conversations):
            ids = self.prompt_ids(messages)
            if limit is not None and len(ids) + cfg.max_tokens > limit:
                on_reply(
                    index,
                    Reply(
                        text=None,
                        error=f"prompt too long: {len(ids)} tokens + max_tokens {cfg.max_tokens} > {limit} positions",
                    ),
                )
            else:
                pending.append((index, ids))
        for start in range(0, len(pending), cfg.batch_size):
            batch = pending[start : start + cfg.batch_size]
            width = max(len(ids) for _, ids in batch)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids in batch], dtype=torch.long)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in batch], dtype=torch.long)
            self.attempts += len(batch)
            with torch.inference_mode():
                out = model.generate(
                    input_ids=input_ids.to(self._device),
                    attention_mask=mask.to(self._device),
                    max_new_tokens=cfg.max_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    eos_token_id=eos,
                )
            for row, (index, ids) in enumerate(batch):
                generated = out[row, width:].tolist()
                count = generated.index(eos) + 1 if eos is not None and eos in generated else len(generated)
                text = tokenizer.decode(generated[:count], skip_special_tokens=True)
                on_reply(index, Reply(text=text, prompt_tokens=len(ids), completion_tokens=count))


# --------------------------------------------------------------------------------------------------------------
# The judge


@dataclasses.dataclass(frozen=True)
class Completion:
    """A reply to one conversation: `text` set when ok, else `error`; `cached` when it came from the cache."""

    text: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.text is not None


@dataclasses.dataclass(frozen=True)
class Rating:
    """A judged response: status "ok" (score set), "unparsed" (reply without a valid score) or "failed"."""

    score: float | None
    status: str
    reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached: bool


@dataclasses.dataclass
class JudgeStats:
    items: int = 0
    unique_requests: int = 0
    cache_hits: int = 0
    requests_sent: int = 0  # unique requests not in the cache, sent to the backend
    attempts: int = 0  # backend calls, retries included
    replies: int = 0  # of requests_sent, how many got a reply (now in the cache)
    ok: int = 0
    unparsed: int = 0
    failed: int = 0
    prompt_tokens: int = 0  # of the replies received in this run (not the cached ones)
    completion_tokens: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_backend(config: JudgeConfig) -> Backend:
    return OpenAIBackend(config) if config.backend == "openai" else HFBackend(config)


def rating_messages(config: JudgeConfig, prompt: str, response: str) -> Messages:
    """The conversation that asks for a rating of `response` to `prompt`: system prompt (if any) + the template."""
    user = config.prompt_template.format(prompt=prompt, response=response)
    system = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    return [*system, {"role": "user", "content": user}]


class Judge:
    """Cached completions and ratings through one backend. Use as a context manager (closes the cache)."""

    def __init__(self, config: JudgeConfig, cache_path: str | os.PathLike, backend: Backend | None = None):
        self.config = config
        self.cache = ReplyCache(cache_path)
        self.backend = backend or make_backend(config)
        self.stats = JudgeStats()
        self._pattern = re.compile(config.score_pattern)

    @property
    def scorer(self) -> str:
        return f"judge:{self.config.backend}:{self.config.model}"

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.cache.close()

    def messages(self, prompt: str, response: str) -> Messages:
        """The conversation that asks for a rating of `response` to `prompt`."""
        return rating_messages(self.config, prompt, response)

    def _request(self, messages: Messages) -> dict:
        return {
            "v": CACHE_KEY_VERSION,
            **self.backend.identity(),
            "messages": messages,
            "temperature": float(self.config.temperature),
            "max_tokens": int(self.config.max_tokens),
        }

    def complete(self, conversations: Sequence[Messages]) -> list[Completion]:
        """Replies to `conversations` (lists of {"role", "content"}), from the cache or the backend.

        Identical conversations are sent once. Each reply is written to the cache as it arrives.
        """
        conversations = [[{"role": str(m["role"]), "content": str(m["content"])} for m in c] for c in conversations]
        keys: list[str] = []
        requests: dict[str, dict] = {}
        for messages in conversations:
            request = self._request(messages)
            key = request_key(request)
            keys.append(key)
            requests.setdefault(key, request)
        results: dict[str, Completion] = {}
        missing: list[str] = []
        for key in requests:
            hit = self.cache.get(key)
            if hit is None:
                missing.append(key)
            else:
                results[key] = Completion(hit.text, hit.prompt_tokens, hit.completion_tokens, cached=True)
        stats = self.stats
        stats.items += len(conversations)
        stats.unique_requests += len(requests)
        stats.cache_hits += len(requests) - len(missing)
        stats.requests_sent += len(missing)
        if missing:
            log.info("%s: %d of %d unique requests not cached; sending them", self.scorer, len(missing), len(requests))
        lock = threading.Lock()
        done = [0]
        every = max(1, len(missing) // 10)

        def on_reply(position: int, reply: Reply) -> None:
            key = missing[position]
            if reply.text is not None:
                self.cache.put(
                    key, requests[key], CachedReply(reply.text, reply.prompt_tokens, reply.completion_tokens)
                )
            with lock:
                results[key] = Completion(
                    reply.text, reply.prompt_tokens, reply.completion_tokens, cached=False, error=reply.error
                )
                if reply.text is not None:
                    stats.replies += 1
                    stats.prompt_tokens += reply.prompt_tokens or 0
                    stats.completion_tokens += reply.completion_tokens or 0
                done[0] += 1
                if done[0] % every == 0 or done[0] == len(missing):
                    log.info("%s: %d/%d requests done", self.scorer, done[0], len(missing))

        before = getattr(self.backend, "attempts", 0)
        try:
            self.backend.run([requests[key]["messages"] for key in missing], on_reply)
        finally:
            stats.attempts += getattr(self.backend, "attempts", 0) - before
        return [results[key] for key in keys]

    def rating(self, completion: Completion) -> Rating:
        """Parse a completion into a Rating (the parse is redone from the stored reply every time)."""
        if completion.text is None:
            return Rating(None, "failed", completion.error, None, None, completion.cached)
        score, reason = parse_score_with_reason(
            completion.text, self._pattern, self.config.score_min, self.config.score_max
        )
        return Rating(
            score,
            "ok" if score is not None else "unparsed",
            reason,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.cached,
        )

    def rate(self, pairs: Sequence[tuple[str, str]]) -> list[Rating]:
        """Rate each (prompt, response) pair."""
        completions = self.complete([self.messages(prompt, response) for prompt, response in pairs])
        ratings = [self.rating(c) for c in completions]
        for rating in ratings:
            setattr(self.stats, rating.status, getattr(self.stats, rating.status) + 1)
        return ratings


# --------------------------------------------------------------------------------------------------------------
# The stage


def judge_samples(
    samples_path: str | os.PathLike,
    output_path: str | os.PathLike,
    cache_path: str | os.PathLike,
    config: JudgeConfig,
    backend: Backend | None = None,
) -> JudgeStats:
    """Rate every sample of a SAMPLES Parquet and write a SCORED_SAMPLES Parquet (atomically); return the counts."""
    rows = read_sample_rows(samples_path)
    with Judge(config, cache_path, backend=backend) as judge:
        ratings = judge.rate([(row["prompt"], row["response"]) for row in rows])
        scorer = judge.scorer
        stats = judge.stats
    out = [
        {
            **row,
            "score": rating.score,
            "status": rating.status,
            "reason": rating.reason,
            "scorer": scorer,
            "prompt_tokens": rating.prompt_tokens,
            "completion_tokens": rating.completion_tokens,
        }
        for row, rating in zip(rows, ratings, strict=True)
    ]
    write_rows(out, output_path, SCORED_SAMPLES)
    log.info(
        "%s: %d samples -> %s; %d unique requests, %d cache hits, %d sent (%d attempts, %d replies, "
        "%d+%d tokens); ok %d, unparsed %d, failed %d",
        scorer,
        stats.items,
        output_path,
        stats.unique_requests,
        stats.cache_hits,
        stats.requests_sent,
        stats.attempts,
        stats.replies,
        stats.prompt_tokens,
        stats.completion_tokens,
        stats.ok,
        stats.unparsed,
        stats.failed,
    )
    if stats.failed:
        reasons = sorted({r.reason for r in ratings if r.status == "failed"})
        log.warning("%s: %d samples failed (a rerun retries them); reasons: %s", scorer, stats.failed, reasons[:5])
    return stats


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="samples Parquet (prompt_id, prompt, response, ...)")
    parser.add_argument("--output", required=True, help="scored-samples Parquet to write")
    parser.add_argument("--cache", required=True, help="SQLite reply cache (created if absent; shared across runs)")
    add_dataclass_arguments(parser, JudgeConfig)


def main(args: argparse.Namespace) -> None:
    config = dataclass_from_args(JudgeConfig, args)
    judge_samples(args.samples, args.output, args.cache, config)


# --------------------------------------------------------------------------------------------------------------
# Training data for a local judge (tiny scale)


def rating_sft_rows(rows: Sequence[dict], config: JudgeConfig, targets: dict[str, float]) -> list[dict]:
    """RANKED_RESPONSES rows that teach a local causal LM to be the `hf` judge: one row per sample whose origin has a
    target, query = exactly the text the `hf` backend sends for its rating request (`plain_prompt_text`; the trainer
    adds bos, as the backend does), response = the target score written as the reply to give.

    The tiny default run has no real LLM to judge with, so it fine-tunes its tiny LM on the data set's own labels
    (e.g. chosen -> 8, rejected -> 3) with the RRHF trainer in SFT mode (rrhf_weight 0); the judge stage then runs
    the same code path (templates, parsing, cache) as with a real model. Samples of other origins are left out.
    """
    pattern = re.compile(config.score_pattern)
    replies = {}
    for origin, score in targets.items():
        reply = f"{score:g}"
        parsed, reason = parse_score_with_reason(reply, pattern, config.score_min, config.score_max)
        if parsed != score:
            raise ConfigError(f"targets: {origin}={score:g} is not a score this judge reads back ({reason})")
        replies[origin] = reply
    out = [
        {
            "prompt_id": row["prompt_id"],
            "query": plain_prompt_text(rating_messages(config, row["prompt"], row["response"])),
            "responses": [replies[row["origin"]]],
            "scores": [0.0],
        }
        for row in rows
        if row["origin"] in replies
    ]
    return out


def _parse_target(text: str) -> tuple[str, float]:
    origin, sep, score = text.partition("=")
    try:
        if not sep or not origin:
            raise ValueError
        return origin, float(score)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ORIGIN=SCORE, got {text!r}") from None


def configure_sft_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="SAMPLES Parquet with labelled origins (e.g. chosen/rejected)")
    parser.add_argument("--output", required=True, help="RANKED_RESPONSES Parquet (rating prompt -> score reply)")
    parser.add_argument(
        "--target", action="append", type=_parse_target, required=True, metavar="ORIGIN=SCORE",
        help="the score the judge should give to samples of ORIGIN (repeat per origin)",
    )
    add_dataclass_arguments(parser, JudgeConfig)


def main_sft_data(args: argparse.Namespace) -> None:
    config = dataclass_from_args(JudgeConfig, args)
    targets = dict(args.target)
    rows = read_sample_rows(args.samples)
    out = rating_sft_rows(rows, config, targets)
    if not out:
        raise DataError(args.samples, None, "origin", f"no sample has one of the target origins {sorted(targets)}")
    write_rows(out, args.output, RANKED_RESPONSES)
    log.info("wrote %d rating examples (%d samples of other origins left out) to %s", len(out), len(rows) - len(out),
             args.output)
