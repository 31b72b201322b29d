"""An OpenAI-compatible server on loopback (chat completions and completions), scripted per request, for tests of
the real client.

`StubOpenAIServer(script)` listens on 127.0.0.1 on an ephemeral port. For each POST to .../chat/completions it
calls `script(user_message, attempt)`, and for each POST to .../completions `script(prompt, attempt)` (attempt: 0
for the first request with that text, 1 for the next, ...), which returns an `Action`: an HTTP status, a reply text
(or one text per choice) or a raw body, extra headers, a delay, and the log-probabilities to report. It counts
requests, the most requests in flight at once, and the Authorization headers it saw (kept in memory only), and keeps
every request body it parsed (`bodies`, in arrival order).

Replies carry `n` choices (the request's `n`). Log-probabilities, only when the request asks for them (completions:
`logprobs` set, chat: `logprobs` true; `top_logprobs` / `logprobs` = k alternatives per token): the generated tokens
are `Action.top_logprobs` (per token a dict of alternatives; the chosen token is the most likely one, and the text
is their concatenation) or else the reply text cut by `stub_tokens`, each with `stub_logprob`. A completions request
with `echo` gets the prompt back in front of the text, its tokens (`stub_tokens`, `text_offset` = their character
offsets) scored with `stub_logprob` except the first (null, as nothing predicts it). `Action(logprobs=False)` is a
server that never reports log-probabilities (the field is null).

Bounded: at most `max_requests` are served (later ones get HTTP 503 without calling the script), a delay is cut
at `max_delay_s`, and `stop()` wakes every sleeping handler, so the server ends promptly with the test.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import re
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
    texts: list[str] | None = None  # one text per choice instead of `text` for all (status 200 and no body)
    top_logprobs: list[dict[str, float]] | None = None  # per generated token, its alternatives (see the docstring)
    logprobs: bool = True  # False: the reply has no log-probabilities even when asked for


def stub_tokens(text: str) -> list[str]:
    """The stub's tokenizer: each word with the whitespace before it; trailing whitespace is a token of its own."""
    return re.findall(r"\s*\S+|\s+$", text)


def stub_logprob(token: str) -> float:
    """The stub's log-probability of a token: -0.1 per character (whitespace included)."""
    return round(-0.1 * len(token), 6)


def generated_tokens(action: Action, text: str) -> list[tuple[str, float, dict[str, float]]]:
    """(token, log-probability, alternatives) of each generated token of a reply."""
    if action.top_logprobs is not None:
        out = []
        for alternatives in action.top_logprobs:
            token = max(alternatives, key=alternatives.get)
            out.append((token, alternatives[token], alternatives))
        return out
    return [(token, stub_logprob(token), {token: stub_logprob(token)}) for token in stub_tokens(text or "")]


def top_k(alternatives: dict[str, float], k: int) -> dict[str, float]:
    return dict(sorted(alternatives.items(), key=lambda item: -item[1])[:k])


def reply_texts(action: Action, n: int) -> list[str]:
    if action.texts is not None:
        return list(action.texts)
    if action.top_logprobs is not None:
        return ["".join(token for token, _, _ in generated_tokens(action, ""))] * n
    return [action.text] * n  # None: a choice without content (a malformed reply)


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_body(request: dict, action: Action) -> dict:
    """A chat completion with the request's n choices and, when asked, log-probabilities per generated token."""
    texts = reply_texts(action, int(request.get("n") or 1))
    k = int(request.get("top_logprobs") or 0)
    choices = []
    for index, text in enumerate(texts):
        logprobs = None
        if request.get("logprobs") and action.logprobs:
            content = [
                {
                    "token": token,
                    "logprob": logprob,
                    "bytes": list(token.encode()),
                    "top_logprobs": [
                        {"token": alt, "logprob": value, "bytes": list(alt.encode())}
                        for alt, value in top_k(alternatives, k).items()
                    ],
                }
                for token, logprob, alternatives in generated_tokens(action, text)
            ]
            logprobs = {"content": content, "refusal": None}
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": logprobs,
            }
        )
    prompt_tokens = sum(len(m["content"].split()) for m in request["messages"])
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": request.get("model", ""),
        "choices": choices,
        "usage": usage(prompt_tokens, sum(len((text or "").split()) for text in texts)),
    }


def completions_body(request: dict, action: Action) -> dict:
    """A (legacy) completion: n choices, the prompt echoed in front when asked, log-probabilities when asked."""
    prompt = request["prompt"]
    echo = bool(request.get("echo"))
    n = int(request.get("n") or 1)
    texts = [""] * n if request.get("max_tokens") == 0 else reply_texts(action, n)  # max_tokens 0: echo only
    k = request.get("logprobs")
    choices = []
    for index, text in enumerate(texts):
        logprobs = None
        if k is not None and action.logprobs:
            tokens, values, offsets, tops = [], [], [], []
            position = 0
            if echo:
                for i, token in enumerate(stub_tokens(prompt)):
                    value = None if i == 0 else stub_logprob(token)
                    tokens.append(token)
                    values.append(value)
                    offsets.append(position)
                    tops.append(None if value is None else top_k({token: value}, int(k)))
                    position += len(token)
            for token, value, alternatives in generated_tokens(action, text):
                tokens.append(token)
                values.append(value)
                offsets.append(position)
                tops.append(top_k(alternatives, int(k)))
                position += len(token)
            logprobs = {"tokens": tokens, "token_logprobs": values, "text_offset": offsets, "top_logprobs": tops}
        choices.append(
            {
                "index": index,
                "text": (prompt if echo else "") + (text or ""),
                "finish_reason": "stop" if request.get("max_tokens") != 0 else "length",
                "logprobs": logprobs,
            }
        )
    return {
        "id": "cmpl-stub",
        "object": "text_completion",
        "created": 0,
        "model": request.get("model", ""),
        "choices": choices,
        "usage": usage(len(prompt.split()), sum(len((text or "").split()) for text in texts)),
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
        self.bodies: list[dict] = []
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
                    chat = self.path.endswith("/chat/completions")
                    if not chat and not self.path.endswith("/completions"):
                        self._send(404, json.dumps(error_body(404, "no such route")).encode(), {})
                        return
                    if number > stub.max_requests:
                        self._send(503, json.dumps(error_body(503, "stub request limit reached")).encode(), {})
                        return
                    request = json.loads(raw)
                    if chat:
                        user = next(m["content"] for m in reversed(request["messages"]) if m["role"] == "user")
                    else:
                        user = request["prompt"]
                    with stub._lock:
                        stub.bodies.append(request)
                        attempt = stub.attempts[user]
                        stub.attempts[user] += 1
                        stub.models.add(request.get("model", ""))
                    action = stub.script(user, attempt)
                    if action.delay_s:
                        stub._stopping.wait(min(action.delay_s, stub.max_delay_s))
                    if action.body is not None:
                        body = action.body if isinstance(action.body, bytes) else json.dumps(action.body).encode()
                    elif action.status == 200:
                        reply = chat_body(request, action) if chat else completions_body(request, action)
                        body = json.dumps(reply).encode()
                    else:
                        body = json.dumps(error_body(action.status, f"stub says {action.status}")).encode()
                    self._send(action.status, body, action.headers)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1

        return Handler
