"""The heal server's HTTP side: one asyncio event loop thread serves every connection.

Anyone on the bridge can connect, so the front end is built for abuse: a thread per connection
(http.server) let 300 slow unauthenticated clients hold 186 threads, and a client sending a byte
every 12 s kept its connection for minutes. Here

- every connection lives in the one loop thread; at most `max_connections` are open at once,
  the next ones get 503 and are closed at once;
- a whole request (line, headers, body) must arrive within `deadline` seconds, however the
  client paces its bytes; then 408 and close. Headers are at most MAX_HEAD_BYTES;
- the bearer token is checked on the headers, before a byte of the body is read;
- one request per connection (`Connection: close`): nothing lingers between requests;
- what may block (the audit log, the journal) runs on a small thread pool, never in the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

#: largest webhook body accepted (Alertmanager sends a few KB per group)
MAX_BODY_BYTES = 1 << 20


#: largest request line plus headers
MAX_HEAD_BYTES = 16 << 10


#: connections open at once; more are answered 503 and closed (Alertmanager retries). Each costs a
#: socket and a coroutine, not a thread, so a flood of slow clients cannot starve the loop.
MAX_CONNECTIONS = 512


#: seconds a whole request may take to arrive (Alertmanager sends a few KB at once)
REQUEST_DEADLINE = 5.0


#: threads running blocking work for requests (audit writes, journal reads)
IO_THREADS = 2


Reply = tuple[HTTPStatus, Mapping[str, Any]]


class HealApp(Protocol):
    """What the HTTP side asks of the heal server."""

    def authorized(self, header: str) -> bool:
        """Whether an Authorization header value carries the bearer token."""
        ...

    def health(self) -> Reply: ...

    def status(self) -> Reply: ...

    def alerts(self, body: bytes) -> Reply:
        """Handle an authorized webhook body (may block: runs on the I/O pool)."""
        ...

    def refuse(self, client: str, path: str) -> None:
        """Count and audit a request without the right token (may block: runs on the I/O pool)."""
        ...


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


_UNAUTHORIZED: Reply = (HTTPStatus.UNAUTHORIZED, {"error": "missing or wrong bearer token"})
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="orchestrate-heal"'}


def _response(status: HTTPStatus, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> bytes:
    data = (json.dumps(body) + "\n").encode()
    lines = [f"HTTP/1.1 {status.value} {status.phrase}", "Content-Type: application/json",
             f"Content-Length: {len(data)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def parse_head(head: bytes) -> _Request:
    """The request line and headers of `head` (up to the blank line); _BadRequest when malformed."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "undecodable request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed request line")
    request = _Request(method=parts[0], path=parts[1].split("?", 1)[0])
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed header line")
        key = name.lower()
        if key in request.headers and key in ("content-length", "authorization", "transfer-encoding"):
            raise _BadRequest(HTTPStatus.BAD_REQUEST, f"header {name} given twice")
        request.headers[key] = value.strip()
    return request


class HttpFront:
    """Serves `app` on any number of listeners from one event loop thread."""

    def __init__(self, app: HealApp, *, deadline: float = REQUEST_DEADLINE,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.app = app
        self.deadline = deadline
        self.max_connections = max_connections
        self.open_connections = 0
        self.refused_busy = 0
        self._loop = asyncio.new_event_loop()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="heal-io")
        self._servers: list[asyncio.AbstractServer] = []
        self._thread = threading.Thread(target=self._run, name="heal-http", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    # lifecycle (called from other threads)

    def bind(self, address: tuple[str, int]) -> tuple[str, int]:
        """Listen on `address`; OSError when it cannot be bound. Returns the bound (host, port)."""
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, address[0], address[1], family=family,
                                 limit=MAX_HEAD_BYTES, reuse_address=True, backlog=128), self._loop)
        server = future.result(timeout=30)
        self._servers.append(server)
        host, port = server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop listening, drop open connections and stop the loop thread."""
        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            # connections still open are dropped: their clients (Alertmanager) retry elsewhere or later
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._servers.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # connections (in the loop thread)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open_connections >= self.max_connections:
            self.refused_busy += 1
            writer.write(_response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many connections; retry later"}))
            writer.close()
            return
        self.open_connections += 1
        try:
            try:
                reply = await asyncio.wait_for(self._serve(reader, writer), self.deadline)
            except TimeoutError:
                reply = _response(HTTPStatus.REQUEST_TIMEOUT,
                                  {"error": f"the request did not arrive within {self.deadline:g} s"})
            except _BadRequest as exc:
                reply = _response(exc.status, {"error": str(exc)})
            except (ConnectionError, asyncio.IncompleteReadError):
                reply = b""
            except Exception as exc:  # a bug answering one request must not reach the event loop
                reply = _response(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})
            if reply:
                writer.write(reply)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.drain(), self.deadline)
        finally:
            self.open_connections -= 1
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                              f"request line and headers must be at most {MAX_HEAD_BYTES} bytes") from None
        request = parse_head(head[:-4])
        client = str((writer.get_extra_info("peername") or ("?",))[0])
        if request.path == "/healthz" and request.method == "GET":
            return _response(*self.app.health())
        if request.path not in ("/alerts", "/status"):
            return _response(HTTPStatus.NOT_FOUND, {"error": "not found; Alertmanager posts to /alerts"})
        expected = "POST" if request.path == "/alerts" else "GET"
        if request.method != expected:
            return _response(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{request.path} takes {expected}"},
                             {"Allow": expected})
        # the token first: an unauthenticated client never gets its body read
        if not self.app.authorized(request.headers.get("authorization", "")):
            await self._blocking(self.app.refuse, client, request.path)
            return _response(*_UNAUTHORIZED, _CHALLENGE)
        if request.path == "/status":
            return _response(*self.app.status())
        body = await self._read_body(reader, request)
        return _response(*await self._blocking(self.app.alerts, body))

    async def _read_body(self, reader: asyncio.StreamReader, request: _Request) -> bytes:
        if "transfer-encoding" in request.headers:
            raise _BadRequest(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length")
        text = request.headers.get("content-length", "0")
        if not text.isdigit():
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "Content-Length must be a number")
        length = int(text)
        if length > MAX_BODY_BYTES:
            raise _BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body must be at most {MAX_BODY_BYTES} bytes")
        return await reader.readexactly(length)

    async def _blocking(self, function: Callable[..., Any], *args: Any) -> Any:
        return await self._loop.run_in_executor(self._pool, function, *args)
