"""A Perspective API (comments:analyze) server on loopback, for tests of the real httpx client.

`StubPerspectiveServer()` listens on 127.0.0.1 on an ephemeral port and answers POST .../comments:analyze as the
real API does: the TOXICITY summary score of `comment.text` is the highest score of the words of `TOXIC_WORDS` it
contains (case-insensitive), else `clean_score`; bad requests (no text, an empty text, a text over 20,480 bytes, no
requestedAttributes, no key) get HTTP 400 with Perspective's error body {"error": {"code", "message", "status"}}.
Every request is recorded (`requests`: path, query parameters, parsed body, arrival time; kept in memory only).

Scripted trouble, for the next N requests in order: `rate_limit_next(n, retry_after)` (HTTP 429, with a
Retry-After header when given), `error_next(n, status, message)` (an HTTP error with an error body; "{key}" in
the message is replaced by the key the request carried, to test masking), `ok_next(n)` (normal replies, to put
trouble after them), `unscored_next(n)` (200 without
attributeScores), `reply_next(n, body)` (any 200 body) and `delay_next(n, seconds)` (a slow reply, for timeouts).

Bounded: at most `max_requests` are served (later ones get HTTP 503), and `stop()` wakes a sleeping handler.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import re
import threading
import time
import urllib.parse
from collections import deque

from loopback_http import LoopbackHTTPServer

TOXIC_WORDS = {"idiot": 0.9, "stupid": 0.8, "hate": 0.7}
MAX_TEXT_BYTES = 20480


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    path: str
    query: dict[str, list[str]]
    body: dict | None
    at: float = 0.0  # time.time() when the request arrived (rate-limit tests)


@dataclasses.dataclass
class _Action:
    status: int = 200
    body: dict | bytes | None = None  # None: the normal reply (status 200) or an error body (other statuses)
    message: str = ""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0


def error_body(status: int, message: str) -> dict:
    names = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
             503: "UNAVAILABLE"}
    return {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}}


def analyze_body(score: float, text: str, languages: list[str]) -> dict:
    """A comments:analyze reply with one TOXICITY summary score (and the span score the API also returns)."""
    value = {"value": score, "type": "PROBABILITY"}
    return {
        "attributeScores": {
            "TOXICITY": {"spanScores": [{"begin": 0, "end": len(text), "score": value}], "summaryScore": value}
        },
        "languages": languages,
        "detectedLanguages": languages,
    }


class StubPerspectiveServer(LoopbackHTTPServer):
    def __init__(self, toxic_words: dict[str, float] | None = None, clean_score: float = 0.05,
                 max_requests: int = 200, max_delay_s: float = 3.0):
        self.toxic_words = dict(TOXIC_WORDS if toxic_words is None else toxic_words)
        self.clean_score = clean_score
        self.max_requests = max_requests
        self.max_delay_s = max_delay_s
        self.requests: list[RecordedRequest] = []
        self._script: deque[_Action] = deque()
        self._lock = threading.Lock()
        super().__init__()

    @property
    def url(self) -> str:
        return self.origin + "/v1alpha1/comments:analyze"

    # scripted trouble -------------------------------------------------------------------------------------------

    def _queue(self, n: int, action: _Action) -> None:
        with self._lock:
            self._script.extend(dataclasses.replace(action) for _ in range(n))

    def rate_limit_next(self, n: int = 1, retry_after: str | None = None) -> None:
        headers = {} if retry_after is None else {"Retry-After": retry_after}
        self._queue(n, _Action(429, message="Quota exceeded for quota metric 'Analysis requests'", headers=headers))

    def error_next(self, n: int = 1, status: int = 500, message: str = "Internal error encountered.") -> None:
        self._queue(n, _Action(status, message=message))

    def ok_next(self, n: int = 1) -> None:
        """Answer the next n requests normally (to put trouble after them)."""
        self._queue(n, _Action())

    def unscored_next(self, n: int = 1) -> None:
        self._queue(n, _Action(200, body={"languages": ["en"], "detectedLanguages": ["en"]}))

    def reply_next(self, n: int, body: dict | bytes) -> None:
        self._queue(n, _Action(200, body=body))

    def delay_next(self, n: int, seconds: float) -> None:
        self._queue(n, _Action(200, delay_s=seconds))

    # scoring ----------------------------------------------------------------------------------------------------

    def toxicity(self, text: str) -> float:
        words = set(re.findall(r"[a-z']+", text.lower()))
        return max([score for word, score in self.toxic_words.items() if word in words], default=self.clean_score)

    def texts(self) -> list[str]:
        """The comment texts of the recorded requests, in order."""
        return [(r.body or {}).get("comment", {}).get("text") for r in self.requests]

    def _answer(self, path: str, query: dict, body: dict | None) -> tuple[int, dict | bytes, dict]:
        with self._lock:
            action = self._script.popleft() if self._script else _Action()
        key = (query.get("key") or [""])[0]
        if action.delay_s:
            self._stopping.wait(min(action.delay_s, self.max_delay_s))
        if action.status != 200:
            return action.status, error_body(action.status, action.message.replace("{key}", key)), action.headers
        if action.body is not None:
            return 200, action.body, action.headers
        if not path.endswith("/comments:analyze"):
            return 404, error_body(404, f"no such method {path}"), {}
        if not key:
            return 403, error_body(403, "The request is missing a valid API key."), {}
        comment = (body or {}).get("comment")
        text = comment.get("text") if isinstance(comment, dict) else None
        if not isinstance(text, str):
            return 400, error_body(400, "Comment must be specified."), {}
        if not text:
            return 400, error_body(400, "Comment must be non-empty."), {}
        if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
            return 400, error_body(400, f"Comment text too long (max {MAX_TEXT_BYTES} bytes)."), {}
        if "TOXICITY" not in (body.get("requestedAttributes") or {}):
            return 400, error_body(400, "Requested attributes must be specified."), {}
        return 200, analyze_body(self.toxicity(text), text, body.get("languages") or ["en"]), {}

    def _handler_class(self):
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # quiet (and the URL holds the key)
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                split = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(split.query)
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = None
                with stub._lock:
                    stub.requests.append(RecordedRequest(split.path, query, body, time.time()))
                    number = len(stub.requests)
                if number > stub.max_requests:
                    status, reply, headers = 503, error_body(503, "stub request limit reached"), {}
                else:
                    status, reply, headers = stub._answer(split.path, query, body if isinstance(body, dict) else None)
                self._send(status, reply if isinstance(reply, bytes) else json.dumps(reply).encode(), headers)

        return Handler
