"""moto's HTTP server answering one request at a time: `python moto_serial.py HOST PORT`.

moto's in-memory backends are not made for concurrent changes, and Terraform calls the endpoint
from up to ten goroutines at once. Under load a request that raced another could fail half-done on
the server; the AWS SDK then retried it, and the retry met the half it had done (for example
`InvalidPermission.Duplicate` for a security group rule the first attempt had added). Connections
are still served by threads (Terraform keeps them open); only the requests take turns.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


def serialised(app: Callable[..., Iterable[bytes]]) -> Callable[..., list[bytes]]:
    """`app` as a WSGI application that runs one request, body included, at a time."""
    turn = threading.Lock()

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with turn:
            answer = app(environ, start_response)
            try:
                return list(answer)
            finally:
                close = getattr(answer, "close", None)
                if close is not None:  # WSGI: an answer with close() is closed once read
                    close()

    return serve


def main(host: str, port: int) -> None:
    os.environ.setdefault("MOTO_PORT", str(port))  # moto names itself with it (as its own server does)
    run_simple(host, port, serialised(DomainDispatcherApplication(create_backend_app)), threaded=True,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
