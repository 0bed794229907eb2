"""moto's HTTP server answering one request at a time: `python moto_serial.py HOST PORT`.

moto's in-memory backends are not made for concurrent changes, and Terraform calls the endpoint
from up to ten goroutines at once. Under load a request that raced another could fail half-done on
the server; the AWS SDK then retried it, and the retry met the half it had done (for example
`InvalidPermission.Duplicate` for a security group rule the first attempt had added). Connections
are still served by threads (Terraform keeps them open); only the requests take turns.

Each request is logged on stdout (the server's log file) with its AWS action, the client's port,
the status and the time it took, so that a failed apply can be read against what moto was asked.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


def action_of(environ: dict[str, Any]) -> str:
    """The AWS action a request asks for (query APIs: `Action` in the form body or the query
    string; others: the target header or the path). Reads the body and puts it back."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = b""
    if length > 0:  # a body without a length (chunked) is left for moto to read
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
    form = "x-www-form-urlencoded" in str(environ.get("CONTENT_TYPE", ""))
    for text in ((body.decode("latin-1") if form else ""), environ.get("QUERY_STRING", "")):
        found = urllib.parse.parse_qs(text).get("Action")
        if found:
            return found[0]
    return str(environ.get("HTTP_X_AMZ_TARGET") or f"{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}")


def serialised(app: Callable[..., Iterable[bytes]]) -> Callable[..., list[bytes]]:
    """`app` as a WSGI application that runs one request, body included, at a time."""
    turn = threading.Lock()

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        action = action_of(environ)
        status: list[str] = []

        def record_status(line: str, headers: Any, *exc: Any) -> Any:
            status.append(line)
            return start_response(line, headers, *exc)

        with turn:
            started = time.monotonic()
            answer = app(environ, record_status)
            try:
                return list(answer)
            finally:
                close = getattr(answer, "close", None)
                if close is not None:  # WSGI: an answer with close() is closed once read
                    close()
                print(f"request port={environ.get('REMOTE_PORT')} {action} -> {status[0] if status else '?'} "
                      f"{time.monotonic() - started:.3f}s", flush=True)

    return serve


def main(host: str, port: int) -> None:
    os.environ.setdefault("MOTO_PORT", str(port))  # moto names itself with it (as its own server does)
    run_simple(host, port, serialised(DomainDispatcherApplication(create_backend_app)), threaded=True,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
