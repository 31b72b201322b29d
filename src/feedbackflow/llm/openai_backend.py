"""The OpenAI-compatible client under every `openai` backend (the judge's chat completions, the ILF language
model's completions and chat): the official `openai` client against `base_url` (null: OpenAI; Azure or any
OpenAI-compatible server such as vLLM works), with our own retries and bounded concurrency.

- Retries with exponential backoff (doubling from `backoff_s`, capped at `max_backoff_s`; a Retry-After header is
  honoured, with the same cap) on HTTP 429, HTTP 5xx, timeouts, connection errors and malformed replies (a body that
  is not JSON, or one without choices / content: with a fixed request a well-behaved server answers properly, so
  this is treated as a transient server fault). Other 4xx fail at once. HTTP 401 / 403 abort the whole run with
  ConfigError (every request would fail the same way).
- The API key is read from the environment variable named by `api_key_env` only when a request has to be sent (a
  fully cached run needs none), never written anywhere, and masked in any reason taken from a server's message.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from feedbackflow.errors import ConfigError

T = TypeVar("T")


class MalformedReply(Exception):
    """A reply that cannot be read (no choices, no content): retried like a server error."""


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
    """The official `openai` client with the retry rules and bounded concurrency of the module docstring.

    `config` is a `ClientConfig` (base_url, api_key_env, timeout_s, max_retries, backoff_s, max_backoff_s,
    max_concurrency). The client is made, and the key read from the environment, on the first request only; `mask`
    hides the key in any text.
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


def reply_choices(response) -> list:
    """The choices of a reply in index order; MalformedReply when it has none."""
    choices = getattr(response, "choices", None)
    if isinstance(response, str | bytes) or not choices:
        raise MalformedReply("no choices in the reply")
    return sorted(choices, key=lambda choice: getattr(choice, "index", 0) or 0)


def reply_usage(response) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) of a reply; None for a count the server did not give."""
    usage = getattr(response, "usage", None)
    prompt_tokens = getattr(usage, "prompt_tokens", None)
    completion_tokens = getattr(usage, "completion_tokens", None)
    return (
        prompt_tokens if isinstance(prompt_tokens, int) else None,
        completion_tokens if isinstance(completion_tokens, int) else None,
    )


class OpenAIBackendBase:
    """What every openai backend holds: its config, an `OpenAIConnection` (threads named `thread_name_prefix`) and
    the part of the cache key that names the endpoint."""

    thread_name_prefix = "openai"

    def __init__(self, config, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.connection = OpenAIConnection(config, sleep, thread_name_prefix=self.thread_name_prefix)

    @property
    def attempts(self) -> int:
        return self.connection.attempts

    def identity(self) -> dict:
        """What, besides the request itself, determines a reply (goes into the cache key)."""
        return {"backend": "openai", "model": self.config.model, "base_url": self.config.base_url}
