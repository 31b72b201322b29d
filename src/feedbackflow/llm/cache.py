"""The reply cache of every remote or local language-model call (and of the Perspective toxicity scores).

A reply is cached under the sha256 of its request's canonical JSON, so a rerun never pays for a request twice.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def request_key(request: dict) -> str:
    """sha256 (hex) of the canonical JSON of a request description (which never holds the key)."""
    return hashlib.sha256(canonical_json(request).encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class CachedReply:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None


class ReplyCache:
    """Successful replies on disk, keyed by `request_key`. One connection shared by threads under a lock.

    Schema (table `replies`): key TEXT PRIMARY KEY (sha256 hex), request TEXT (its canonical JSON), reply TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER, created_at TEXT (UTC ISO 8601). Each put commits at once.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Switching a new file to WAL needs an exclusive lock and SQLite does not wait for it (no busy timeout):
        # ranks opening one fresh cache at once (PPO's reward under DDP) failed with "database is locked". The
        # set-up is serialised across processes by a lock file beside the cache; reads and writes need no more.
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            self._conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS replies ("
                " key TEXT PRIMARY KEY,"
                " request TEXT NOT NULL,"
                " reply TEXT NOT NULL,"
                " prompt_tokens INTEGER,"
                " completion_tokens INTEGER,"
                " created_at TEXT NOT NULL)"
            )

    def get(self, key: str) -> CachedReply | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT reply, prompt_tokens, completion_tokens FROM replies WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else CachedReply(*row)

    def put(self, key: str, request: dict, reply: CachedReply) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?)",
                (key, canonical_json(request), reply.text, reply.prompt_tokens, reply.completion_tokens, now),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
