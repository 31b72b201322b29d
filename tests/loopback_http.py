"""The lifecycle shared by the tests' HTTP stub servers: a threaded HTTP server on 127.0.0.1 (ephemeral port),
started and stopped with the test (`with Stub(...) as server:`), whose `stop()` also wakes sleeping handlers
(they wait on `_stopping`)."""

from __future__ import annotations

import http.server
import threading


class LoopbackHTTPServer:
    """Subclasses set their own state, then call `super().__init__()`; `_handler_class()` gives the handler."""

    def __init__(self):
        self._stopping = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        raise NotImplementedError

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
