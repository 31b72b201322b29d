"""A backend behind a reply cache: what the judge and the ILF language model share.

Requests are dicts that describe everything that determines a reply (never the key); each is answered from the
`ReplyCache` under its `request_key`, or sent to the backend, identical requests once. A reply is stored the moment
it arrives, so an interrupted run loses no paid result and a rerun sends only what is not cached; a failure is not
stored, so a rerun retries it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from feedbackflow.llm.cache import CachedReply, ReplyCache, request_key

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclasses.dataclass
class ClientStats:
    items: int = 0
    unique_requests: int = 0
    cache_hits: int = 0
    requests_sent: int = 0  # unique requests not in the cache, sent to the backend
    attempts: int = 0  # backend calls, retries included (hf: prompts run through the model)
    replies: int = 0  # of requests_sent, how many got a usable reply (now in the cache)
    ok: int = 0  # per item
    unparsed: int = 0
    failed: int = 0
    prompt_tokens: int = 0  # of the replies received in this run (not the cached ones)
    completion_tokens: int = 0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


Answer = Callable[[int, Any], None]  # a backend calls it with (index of the request, what it got) as each is done


class CachedClient:
    """`backend` behind the reply cache at `cache_path`, with counts. Use as a context manager (closes the cache)."""

    name = ""

    def __init__(self, config, cache_path: str | os.PathLike, backend):
        self.config = config
        self.cache = ReplyCache(cache_path)
        self.backend = backend
        self.stats = ClientStats()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.cache.close()

    def answer(
        self,
        requests: Sequence[dict],
        send: Callable[[list[dict], Answer], None],
        from_cache: Callable[[CachedReply, dict], R],
        arrived: Callable[[Any, dict], tuple[R, CachedReply | None]],
        label: str | None = None,
    ) -> list[R]:
        """One result per request, in order: `from_cache(hit, request)` for a cached one; the rest go to
        `send(requests, answer)` (identical ones once), and `arrived(what the backend got, request)` gives each
        (result, reply to store or None when it failed). `label` names the run in the log (default: `name`)."""
        keys = [request_key(request) for request in requests]
        unique: dict[str, dict] = {}
        for key, request in zip(keys, requests, strict=True):
            unique.setdefault(key, request)
        results: dict[str, R] = {}
        missing: list[str] = []
        for key, request in unique.items():
            hit = self.cache.get(key)
            if hit is None:
                missing.append(key)
            else:
                results[key] = from_cache(hit, request)
        stats = self.stats
        stats.items += len(requests)
        stats.unique_requests += len(unique)
        stats.cache_hits += len(unique) - len(missing)
        stats.requests_sent += len(missing)
        if missing:
            log.info("%s: %d of %d unique requests not cached; sending them", label or self.name, len(missing),
                     len(unique))
        lock = threading.Lock()
        done = [0]
        every = max(1, len(missing) // 10)

        def answer(position: int, got) -> None:
            key = missing[position]
            request = unique[key]
            result, stored = arrived(got, request)
            if stored is not None:
                self.cache.put(key, request, stored)
            with lock:
                results[key] = result
                if stored is not None:
                    stats.replies += 1
                    stats.prompt_tokens += stored.prompt_tokens or 0
                    stats.completion_tokens += stored.completion_tokens or 0
                done[0] += 1
                if done[0] % every == 0 or done[0] == len(missing):
                    log.info("%s: %d/%d requests done", self.name, done[0], len(missing))

        before = getattr(self.backend, "attempts", 0)
        try:
            send([unique[key] for key in missing], answer)
        finally:
            stats.attempts += getattr(self.backend, "attempts", 0) - before
        return [results[key] for key in keys]
