"""Every byte the exporter reads from a WinRM server: under a size bound and under the poll's deadline.

requests and urllib3 give only a timeout per socket read, so a server that drips one byte a second never
trips it; and requests_ntlm reads its handshake answers itself (`response.content`), unbounded, inside a
response hook. Both bounds therefore sit below everything that reads, in a transport adapter mounted
before the first request is sent:
- `guard(deadline)` arms a watchdog for the whole poll; when the deadline passes, the watchdog shuts the
  adapter's sockets down. That is the only way to interrupt a read blocked in another thread, and it covers
  the TCP connect, the TLS handshake, the status line, the headers and every body read, whoever reads it;
- `send` puts a counting reader under each response, which raises once the body passes
  `max_response_bytes`, and refuses compressed answers (asked for `identity`: WinRM never compresses),
  whose decoded size the count of wire bytes would not bound.
The reader is put *under* urllib3's response rather than the body read eagerly, because requests_ntlm
takes the server certificate for channel binding from the live response's socket.
"""

from __future__ import annotations

import heapq
import itertools
import math
import socket
import threading
import time
import weakref
from typing import Callable

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class ResponseTooLarge(Exception):
    """A response body above `max_response_bytes`."""


class UnexpectedResponse(Exception):
    """An answer no WinRM service sends (e.g. compressed)."""


class DeadlineExceeded(Exception):
    """The poll's deadline passed while a request was being sent or its answer read."""


class Watchdog:
    """Calls a function at a monotonic time unless cancelled first: one thread for the whole process."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[list] = []  # [when, token, action]; a cancelled entry's action is None
        self._entries: dict[int, list] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, when: float, action: Callable[[], None]) -> int:
        with self._lock:
            token = next(self._ids)
            entry = [when, token, action]
            self._entries[token] = entry
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
                self._thread.start()
            if self._heap[0] is entry:  # the thread sleeps until the earliest entry: wake it only for an earlier one
                self._lock.notify()
            return token

    def cancel(self, token: int) -> None:
        with self._lock:
            entry = self._entries.pop(token, None)
            if entry is not None:
                entry[2] = None

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._heap and self._heap[0][2] is None:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._lock.wait()
                    continue
                when, token, action = self._heap[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._lock.wait(delay)
                    continue
                heapq.heappop(self._heap)
                del self._entries[token]
            try:
                action()
            except Exception:  # an action must never stop the watchdog
                pass


WATCHDOG = Watchdog()
_sending = threading.local()  # the adapter whose send() runs in this thread; new sockets register with it


def _register(sock: socket.socket) -> None:
    adapter = getattr(_sending, "adapter", None)
    if adapter is not None:
        adapter.sockets.add(sock)


class _DeadlineConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _register(sock)
        return sock


class _DeadlineHTTPSConnection(HTTPSConnection):
    """TLS wraps the TCP socket in a new object and detaches the old one, so the handshake is guarded by a
    duplicate of the descriptor (closed once connected) and the wrapped socket is registered after it."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._handshake_guard = sock.dup()
        _register(self._handshake_guard)
        return sock

    def connect(self) -> None:
        try:
            super().connect()
        finally:
            guard = getattr(self, "_handshake_guard", None)
            if guard is not None:
                guard.close()
                self._handshake_guard = None
        if self.sock is not None:
            _register(self.sock)


class _Pool(HTTPConnectionPool):
    ConnectionCls = _DeadlineConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


class BoundedAdapter(HTTPAdapter):
    """A requests adapter for one server's connection, used by one poll at a time."""

    def __init__(self, max_response_bytes: int):
        self.max_response_bytes = max_response_bytes
        self.deadline = math.inf
        self.sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._token: int | None = None
        self._expired = threading.Event()
        self.last_connection = None  # the urllib3 connection of the last answer (kept_connection adopts it)
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _HTTPSPool}

    # ------------------------------------------------------------ the deadline

    def guard(self, deadline: float) -> None:
        """Hold every read to `deadline` (monotonic) until `release()`; a later call moves the deadline."""
        if deadline == self.deadline and self._token is not None:
            return
        self.release()
        self.deadline = deadline
        self._expired = expired = threading.Event()

        def expire() -> None:
            expired.set()
            self._shut_down()

        self._token = WATCHDOG.arm(deadline, expire)

    def release(self) -> None:
        if self._token is not None:
            WATCHDOG.cancel(self._token)
            self._token = None

    @property
    def expired(self) -> bool:
        """Whether the watchdog cut the connection: whatever error the cut caused is a missed deadline."""
        return self._expired.is_set()

    def _shut_down(self) -> None:
        for sock in list(self.sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed
                pass

    # ------------------------------------------------------------ the size bound

    def send(self, request, **kwargs):
        if self.expired or time.monotonic() >= self.deadline:
            raise DeadlineExceeded("the poll deadline passed before the request was sent")
        request.headers["Accept-Encoding"] = "identity"
        outer, _sending.adapter = getattr(_sending, "adapter", None), self
        try:
            response = super().send(request, **kwargs)
        except Exception:
            if self.expired:
                raise DeadlineExceeded("the poll deadline passed while waiting for the answer") from None
            raise
        finally:
            _sending.adapter = outer
        if self.expired:  # http.client takes the end of the stream for the end of the headers
            response.close()
            raise DeadlineExceeded("the poll deadline passed while reading the answer")
        limit = self.max_response_bytes
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        declared = response.headers.get("Content-Length", "")
        if encoding not in ("", "identity"):
            response.close()
            raise UnexpectedResponse(f"a compressed answer (Content-Encoding {encoding[:20]!r}) though none was asked for")
        if declared.isdigit() and int(declared) > limit:
            response.close()
            raise ResponseTooLarge(f"WinRM response of {declared} bytes exceeds limits.max_response_bytes ({limit})")
        self.last_connection = response.raw.connection
        original = getattr(response.raw, "_fp", None)
        if original is not None and getattr(original, "fp", None) is not None:
            original.fp = _CappedReader(original.fp, limit, self._expired)
        return response


class _CappedReader:
    """The socket file under one http.client response: every body read passes here, whoever asks for it, so
    here the size bound holds and a read the watchdog cut short becomes DeadlineExceeded."""

    def __init__(self, inner, limit: int, expired: threading.Event):
        self._inner = inner
        self._left = limit
        self._expired = expired

    def _check(self, size: int) -> None:
        if self._expired.is_set():
            raise DeadlineExceeded("the poll deadline passed while reading the answer")
        self._left -= size
        if self._left < 0:
            raise ResponseTooLarge("WinRM response exceeds limits.max_response_bytes")

    def _size(self, size: int | None) -> int:
        return self._left + 1 if size is None or size < 0 else min(size, self._left + 1)

    def read(self, size: int | None = -1) -> bytes:
        data = self._inner.read(self._size(size))
        self._check(len(data))
        return data

    def read1(self, size: int = -1) -> bytes:
        data = self._inner.read1(self._size(size))
        self._check(len(data))
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self._inner.readline(self._size(size))
        self._check(len(data))
        return data

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)[: self._size(len(buffer))]
        size = self._inner.readinto(view) or 0
        self._check(size)
        return size

    def __getattr__(self, name):  # close, peek, raw (requests_ntlm reads the certificate through it), ...
        return getattr(self._inner, name)
