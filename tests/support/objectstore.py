"""An S3 bucket in memory with S3's conditional writes, for the unit tests of the shared
coordination (orchestrator.runs.s3lock, s3journal, s3audit): the same interface as
orchestrator.tools.s3.ObjectStore, atomic under concurrent threads, with a clock the test moves.
The integration tests run the same code against a moto server."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from orchestrator.tools.s3 import PreconditionFailed, StoredObject


class MemoryObjectStore:
    """Keys -> (body, etag, last modified); `advance(seconds)` moves the server's clock."""

    def __init__(self, bucket: str = "state-bucket") -> None:
        self.bucket = bucket
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
        self.objects: dict[str, tuple[bytes, str, datetime]] = {}
        self.writes = 0
        self._mutex = threading.Lock()

    def advance(self, seconds: float) -> None:
        with self._mutex:
            self.now += timedelta(seconds=seconds)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def get(self, key: str) -> StoredObject | None:
        with self._mutex:
            found = self.objects.get(key)
            if found is None:
                return None
            body, etag, modified = found
            return StoredObject(body=body, etag=etag, last_modified=modified, server_time=self.now)

    def exists(self, key: str) -> bool:
        with self._mutex:
            return key in self.objects

    def put(self, key: str, body: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        with self._mutex:
            current = self.objects.get(key)
            if if_none_match and current is not None:
                raise PreconditionFailed(f"writing {self.url(key)}: it exists")
            if if_match is not None and (current is None or current[1] != if_match):
                raise PreconditionFailed(f"writing {self.url(key)}: its ETag changed")
            self.writes += 1
            etag = '"' + hashlib.md5(body + str(self.writes).encode(), usedforsecurity=False).hexdigest() + '"'
            self.objects[key] = (body, etag, self.now)
            return etag

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        with self._mutex:
            current = self.objects.get(key)
            if if_match is not None and current is not None and current[1] != if_match:
                raise PreconditionFailed(f"deleting {self.url(key)}: its ETag changed")
            self.objects.pop(key, None)

    def keys(self, prefix: str, *, start_after: str | None = None) -> Iterator[str]:
        with self._mutex:
            found = sorted(k for k in self.objects if k.startswith(prefix) and (start_after is None or k > start_after))
        yield from found
