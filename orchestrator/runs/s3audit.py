"""The audit log of an environment whose records live in S3: append-only and hash-chained, like the
local one (orchestrator.runs.audit), shared by every controller.

One object per entry, `PREFIX/audit/<12-digit sequence number>.json`, holding the entry, the hash
of the entry before it and its own hash (the same chain as the local log). An entry is appended
with `If-None-Match: *` on the next number: when two controllers append at once, one of them
finds the number taken, reads that entry and links to it instead, so the chain stays one line.
`PREFIX/audit/HEAD` names the newest entry; it only spares appenders a long listing (a stale
HEAD costs a few reads) and lets `verify` notice entries removed from the end up to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from orchestrator.runs.audit import _GENESIS, _HASHED, AuditEntry, AuditError, _digest
from orchestrator.runs.identity import ProcessIdentity, isoformat, parse_time, utcnow
from orchestrator.runs.records import RunRecord
from orchestrator.tools.s3 import ObjectStore, PreconditionFailed

#: appends tried before giving up (each lost race moves one entry on)
MAX_ATTEMPTS = 50

FETCH_WORKERS = 8


class S3AuditLog:
    """The shared audit log: `record()` appends, `entries()` reads newest first, `verify()` checks."""

    def __init__(self, store: ObjectStore, prefix: str, *, env: str, identity: ProcessIdentity | None = None) -> None:
        self.store = store
        self.prefix = f"{prefix}audit/"
        self.env = env
        self.identity = identity or ProcessIdentity.current()
        self.path = store.url(self.prefix)

    def close(self) -> None:
        """Nothing to close (kept for the interface of the local log)."""

    def __enter__(self) -> S3AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _key(self, seq: int) -> str:
        return f"{self.prefix}{seq:012d}.json"

    def _read(self, seq: int) -> dict[str, Any] | None:
        found = self.store.get(self._key(seq))
        return None if found is None else dict(json.loads(found.body))

    def _head(self) -> tuple[int, str]:
        """(sequence number, hash) of the newest entry HEAD names, or (0, genesis)."""
        found = self.store.get(f"{self.prefix}HEAD")
        if found is None:
            return 0, _GENESIS
        data = json.loads(found.body)
        return int(data["seq"]), str(data["hash"])

    def record(
        self,
        *,
        command: str,
        outcome: str,
        run_id: str | None = None,
        release: str | None = None,
        plan_sha256: str | None = None,
        duration: float | None = None,
        details: Mapping[str, Any] | None = None,
        at: datetime | None = None,
        identity: ProcessIdentity | None = None,
    ) -> AuditEntry:
        """Append one entry (stored in S3 before this returns) and return it."""
        if not command or not outcome:
            raise AuditError("an audit entry needs a command and an outcome")
        who = identity or self.identity
        values: dict[str, Any] = {
            "at": isoformat(at or utcnow()), "env": self.env, "user": who.user, "host": who.host,
            "pid": who.pid, "command": command, "outcome": outcome, "run_id": run_id, "release": release,
            "plan_sha256": plan_sha256, "duration": duration,
            "details": json.dumps(dict(details or {}), sort_keys=True, default=str),
        }
        seq, prev = self._head()
        for _ in range(MAX_ATTEMPTS):
            newer = self._read(seq + 1)
            if newer is not None:  # HEAD lags, or someone appended since: follow the chain
                seq, prev = seq + 1, str(newer["hash"])
                continue
            digest = _digest(prev, values)
            body = {**values, "seq": seq + 1, "prev_hash": prev, "hash": digest}
            try:
                self.store.put(self._key(seq + 1), json.dumps(body, sort_keys=True).encode(), if_none_match=True)
            except PreconditionFailed:
                taken = self._read(seq + 1)
                if taken is None or taken.get("hash") != digest:  # not a retry of our own write
                    continue
            seq += 1
            self.store.put(f"{self.prefix}HEAD", json.dumps({"seq": seq, "hash": digest}).encode())
            return _entry(body)
        raise AuditError(f"could not append to {self.path}: {MAX_ATTEMPTS} other entries were appended meanwhile")

    def record_run(self, run: RunRecord, *, details: Mapping[str, Any] | None = None) -> AuditEntry:
        """Append the entry for a finished run (as orchestrator.runs.audit.AuditLog.record_run)."""
        extra: dict[str, Any] = {"argv": run.argv, "exit_code": run.exit_code, "attempts": run.attempts}
        if run.error:
            extra["error"] = run.error
        extra.update(details or {})
        return self.record(command=run.command, outcome=run.state, run_id=run.id, release=run.release,
                           plan_sha256=run.plan_sha256, duration=run.duration, details=extra, identity=run.owner)

    def _sequence(self) -> list[int]:
        return [int(key[len(self.prefix):-len(".json")]) for key in self.store.keys(self.prefix)
                if key.endswith(".json")]

    def _all(self, seqs: list[int]) -> Iterator[dict[str, Any]]:
        with ThreadPoolExecutor(max_workers=FETCH_WORKERS) as pool:
            for found in pool.map(self._read, seqs):
                if found is not None:
                    yield found

    def entries(self, limit: int | None = 50, *, since: datetime | str | None = None, command: str | None = None,
                outcome: str | None = None) -> list[AuditEntry]:
        """Entries newest first, optionally only those at or after `since` / of one command/outcome."""
        moment = isoformat(parse_time(since) if isinstance(since, str) else since) if since is not None else None
        found: list[AuditEntry] = []
        seqs = sorted(self._sequence(), reverse=True)
        for start in range(0, len(seqs), FETCH_WORKERS * 4):
            for body in self._all(seqs[start:start + FETCH_WORKERS * 4]):
                if moment is not None and body["at"] < moment:
                    return found
                if (command is None or body["command"] == command) and (outcome is None or body["outcome"] == outcome):
                    found.append(_entry(body))
                    if limit is not None and len(found) >= limit:
                        return found
        return found

    def verify(self) -> int:
        """Check the chain from the first entry (and that nothing before HEAD is missing); return
        how many entries are intact. AuditError naming the first entry that does not match."""
        seqs = sorted(self._sequence())
        head, head_hash = self._head()
        prev, count = _GENESIS, 0
        for expected, body in enumerate(self._all(seqs), start=1):
            values = {k: body[k] for k in _HASHED}
            if body.get("seq") != expected or body["prev_hash"] != prev or _digest(prev, values) != body["hash"]:
                raise AuditError(f"{self._key(expected)}: audit entry {expected} ({body.get('at')}, "
                                 f"{body.get('command')}) does not match its recorded hash or place: the log was "
                                 "modified outside orchestrate")
            prev = body["hash"]
            count = expected
        if head > count:
            raise AuditError(f"{self.path}HEAD names entry {head}, but the log ends at entry {count}: "
                             "entries were removed outside orchestrate")
        at_head = self._read(head) if head else None
        if at_head is not None and at_head["hash"] != head_hash:
            raise AuditError(f"{self.path}HEAD names entry {head} with another hash: the log was rewritten "
                             "outside orchestrate")
        return count


def _entry(body: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(id=int(body["seq"]), at=body["at"], env=body["env"], user=body["user"], host=body["host"],
                      pid=int(body["pid"]), command=body["command"], outcome=body["outcome"], run_id=body["run_id"],
                      release=body["release"], plan_sha256=body["plan_sha256"], duration=body["duration"],
                      details=json.loads(body["details"]), hash=body["hash"])
