"""An OpenAI-compatible chat-completions server on loopback, scripted per request, for tests of the real client.

`StubOpenAIServer(script)` listens on 127.0.0.1 on an ephemeral port. For each POST to .../chat/completions it
calls `script(user_message, attempt)` (attempt: 0 for the first request with that user message, 1 for the next,
...) which returns an `Action`: an HTTP status, a reply text or a raw body, extra headers, and a delay. It counts
requests, the most requests in flight at once, and the Authorization headers it saw (kept in memory only).

Bounded: at most `max_requests` are served (later ones get HTTP 503 without calling the script), a delay is cut
at `max_delay_s`, and `stop()` wakes every sleeping handler, so the server ends promptly with the test.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from collections import Counter
from collections.abc import Callable

from loopback_http import LoopbackHTTPServer


@dataclasses.dataclass
class Action:
    status: int = 200
    text: str | None = "5"  # the assistant's reply (status 200 and no body)
    body: bytes | dict | None = None  # a raw body instead of a chat completion
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0


def completion_body(text: str, model: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def error_body(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": "stub_error", "param": None, "code": str(status)}}


class StubOpenAIServer(LoopbackHTTPServer):
    def __init__(
        self,
        script: Callable[[str, int], Action] | None = None,
        max_requests: int = 300,
        max_delay_s: float = 3.0,
    ):
        self.script = script or (lambda user, attempt: Action())
        self.max_requests = max_requests
        self.max_delay_s = max_delay_s
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.attempts: Counter[str] = Counter()
        self.authorization: set[str] = set()
        self.models: set[str] = set()
        self._lock = threading.Lock()
        super().__init__()

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    def _handler_class(self):
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
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
                with stub._lock:
                    stub.requests += 1
                    number = stub.requests
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                    stub.authorization.add(self.headers.get("Authorization", ""))
                try:
                    if not self.path.endswith("/chat/completions"):
                        self._send(404, json.dumps(error_body(404, "no such route")).encode(), {})
                        return
                    if number > stub.max_requests:
                        self._send(503, json.dumps(error_body(503, "stub request limit reached")).encode(), {})
                        return
                    request = json.loads(raw)
                    user = next(m["content"] for m in reversed(request["messages"]) if m["role"] == "user")
                    with stub._lock:
                        attempt = stub.attempts[user]
                        stub.attempts[user] += 1
                        stub.models.add(request.get("model", ""))
                    action = stub.script(user, attempt)
                    if action.delay_s:
                        stub._stopping.wait(min(action.delay_s, stub.max_delay_s))
                    if action.body is not None:
                        body = action.body if isinstance(action.body, bytes) else json.dumps(action.body).encode()
                    elif action.status == 200:
                        prompt_tokens = sum(len(m["content"].split()) for m in request["messages"])
                        completion_tokens = len((action.text or "").split())
                        body = json.dumps(
                            completion_body(action.text, request.get("model", ""), prompt_tokens, completion_tokens)
                        ).encode()
                    else:
                        body = json.dumps(error_body(action.status, f"stub says {action.status}")).encode()
                    self._send(action.status, body, action.headers)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1

        return Handler
