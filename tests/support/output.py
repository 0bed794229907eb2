"""What a process the tests started has written so far."""

from __future__ import annotations

import time
from pathlib import Path


def text_holding(path: Path, text: str, *, timeout: float = 5) -> str:
    """The content of `path` once it holds `text` (or, after `timeout` seconds, as it is): a line a
    service writes after its response went out may trail that response by a moment."""
    deadline = time.monotonic() + timeout
    content = path.read_text()
    while text not in content and time.monotonic() < deadline:
        time.sleep(0.05)
        content = path.read_text()
    return content
