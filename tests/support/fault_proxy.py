"""A loopback HTTP proxy that injects faults between a client and a local server (fake-gcs-server, the Earth
Engine stand-in): 503 and 429 answers, connection resets, delays, and — the nastiest — a request that reaches
the server but whose answer is lost (the client sees a reset after the write happened).

Point a client at :attr:`FaultProxy.url` instead of the server (e.g. ``STORAGE_EMULATOR_HOST``). What happens to
each request is decided by ``faults(method, path, n)`` (n counts requests from 1); :class:`RandomFaults` draws
them reproducibly from a seed.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PASS, STATUS_503, STATUS_429, RESET, DELAY, LOST_ANSWER = "pass", "503", "429", "reset", "delay", "lost_answer"
FAULTS = (STATUS_503, STATUS_429, RESET, DELAY, LOST_ANSWER)
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "content-length"}

Decide = Callable[[str, str, int], str]


@dataclass
class RandomFaults:
    """Each request gets a fault with probability ``rate`` (kinds drawn uniformly), reproducibly from ``seed``.

    ``only`` restricts faults to requests whose method+path contains one of the given substrings.
    """

    seed: int = 0
    rate: float = 0.3
    kinds: tuple[str, ...] = FAULTS
    only: tuple[str, ...] = ()
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def __call__(self, method: str, path: str, n: int) -> str:
        if self.only and not any(s in f"{method} {path}" for s in self.only):
            return PASS
        with self._lock:
            return self._rng.choice(self.kinds) if self._rng.random() < self.rate else PASS


class FaultProxy:
    """``with FaultProxy(upstream, faults) as proxy: ...`` — serves on a free loopback port."""

    def __init__(self, upstream: str, faults: Decide | None = None, delay_s: float = 2.0):
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream_host, self.upstream_port = parsed.hostname, parsed.port or 80
        self.faults: Decide = faults or (lambda m, p, n: PASS)
        self.delay_s = delay_s
        self.counts: Counter[str] = Counter()
        self._n = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next(self, method: str, path: str) -> str:
        with self._lock:
            self._n += 1
            n = self._n
        fault = self.faults(method, path, n)
        with self._lock:
            self.counts[fault] += 1
        return fault

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet: tests read their own output
                pass

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends RST, so the client sees "connection reset", not a clean EOF.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _answer(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in _HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self, body: bytes) -> tuple[int, bytes, list[tuple[str, str]]]:
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                    headers["Host"] = f"{proxy.upstream_host}:{proxy.upstream_port}"
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    return resp.status, resp.read(), resp.getheaders()
                finally:
                    conn.close()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._next(self.command, self.path)
                if fault in (STATUS_503, STATUS_429):
                    self._answer(int(fault), b'{"error": {"code": %s, "message": "injected"}}' % fault.encode(),
                                 [("Content-Type", "application/json")])
                    return
                if fault == RESET:
                    self._reset()
                    return
                if fault == DELAY:
                    time.sleep(proxy.delay_s)
                status, data, headers = self._forward(body)
                if fault == LOST_ANSWER:  # the server did the work; the client never hears of it
                    self._reset()
                    return
                self._answer(status, data, headers)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        return Handler


__all__ = ["DELAY", "FAULTS", "LOST_ANSWER", "PASS", "RESET", "STATUS_429", "STATUS_503", "FaultProxy",
           "RandomFaults"]
