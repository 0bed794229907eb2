"""A bounded HTTP load generator: real traffic for traffic gates, tests and benchmarks.

Every run is bounded twice, by a request count and by a duration, and stops by itself at the
first bound reached (or earlier when `stop()` is called). Targets are checked before the first
request: only loopback addresses and host addresses on the project's own bridge are allowed
(the network rule: traffic goes only to hosts the project created itself).

    spec = LoadSpec(url="http://10.214.3.13/", requests=2000, duration=30, concurrency=4, rate=100)
    with LoadGenerator(spec, network=fleet_network) as load:
        ...                       # switch traffic meanwhile
    report = load.report          # status codes, latencies, which server answered
"""

from __future__ import annotations

import ipaddress
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.errors import UsageError

#: hard ceilings whatever a caller asks for
MAX_REQUESTS = 1_000_000
MAX_DURATION = 3600.0
MAX_CONCURRENCY = 64


class AddressCheck(Protocol):
    """Something that accepts an address of the project's own network or raises (FleetNetwork)."""

    def assert_own_address(self, address: str) -> str: ...


@dataclass(frozen=True)
class LoadSpec:
    """One bounded load run against one URL."""

    url: str
    requests: int = 1000
    """Stop after this many requests (answered or failed)."""
    duration: float = 10.0
    """Stop after this many seconds."""
    concurrency: int = 4
    rate: float | None = None
    """Requests per second over all workers (None: as fast as the workers go)."""
    timeout: float = 5.0
    served_by_header: str = "X-Served-By"
    """Response header naming the server that answered (counted per value)."""

    def __post_init__(self) -> None:
        if not 1 <= self.requests <= MAX_REQUESTS:
            raise UsageError(f"requests: {self.requests} must be between 1 and {MAX_REQUESTS}")
        if not 0 < self.duration <= MAX_DURATION:
            raise UsageError(f"duration: {self.duration} must be above 0 and at most {MAX_DURATION} s")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise UsageError(f"concurrency: {self.concurrency} must be between 1 and {MAX_CONCURRENCY}")
        if self.rate is not None and self.rate <= 0:
            raise UsageError(f"rate: {self.rate} must be above 0")
        if not 0 < self.timeout <= 60:
            raise UsageError(f"timeout: {self.timeout} must be above 0 and at most 60 s")


@dataclass(frozen=True)
class Sample:
    """One request: when it started (seconds since the run started), status (0: no answer)."""

    started: float
    status: int
    latency: float
    served_by: str = ""
    error: str = ""

    @property
    def failed(self) -> bool:
        return not 200 <= self.status < 400


@dataclass
class LoadReport:
    """What a run saw."""

    url: str
    samples: list[Sample] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def total(self) -> int:
        return len(self.samples)

    @property
    def failed(self) -> int:
        """Requests without a 2xx/3xx answer (5xx, 4xx, connection errors, timeouts)."""
        return sum(1 for s in self.samples if s.failed)

    @property
    def statuses(self) -> Counter[int]:
        return Counter(s.status for s in self.samples)

    @property
    def served_by(self) -> Counter[str]:
        return Counter(s.served_by for s in self.samples if s.served_by)

    def served_by_after(self, moment: float) -> Counter[str]:
        """Servers that answered requests started after `moment` (seconds since the start)."""
        return Counter(s.served_by for s in self.samples if s.served_by and s.started >= moment)

    def failed_between(self, start: float, end: float) -> int:
        return sum(1 for s in self.samples if s.failed and start <= s.started < end)

    def latency_quantile(self, q: float) -> float:
        """Latency quantile in seconds over answered requests (0.0 without any)."""
        values = sorted(s.latency for s in self.samples if s.status)
        if not values:
            return 0.0
        return values[min(len(values) - 1, int(q * len(values)))]

    def errors(self) -> Counter[str]:
        return Counter(s.error for s in self.samples if s.error)

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url, "requests": self.total, "failed": self.failed, "elapsed": round(self.elapsed, 3),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "served_by": dict(sorted(self.served_by.items())),
            "latency_p50": round(self.latency_quantile(0.5), 4),
            "latency_p99": round(self.latency_quantile(0.99), 4),
            "errors": dict(self.errors()),
        }


def check_target(url: str, network: AddressCheck | None = None) -> tuple[str, int, str]:
    """(host, port, path) of `url` when its host is loopback or on the project's bridge.

    Raises UsageError for any other target (names are refused too: they could resolve anywhere).
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or not parsed.hostname:
        raise UsageError(f"{url!r}: expected an http://ADDRESS[:PORT]/PATH URL")
    host = parsed.hostname
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise UsageError(f"refusing {url}: {host!r} is not an IP address") from None
    if not ip.is_loopback:
        if network is None:
            raise UsageError(f"refusing {url}: only loopback targets are allowed without the project's network")
        try:
            network.assert_own_address(host)
        except Exception as exc:  # HostError and anything an equivalent check raises
            raise UsageError(f"refusing {url}: {exc}") from None
    path = parsed.path or "/"
    if parsed.query:
        path += "?" + parsed.query
    return host, parsed.port or 80, path


class LoadGenerator:
    """Runs a LoadSpec in background threads; use as a context manager or start()/join()."""

    def __init__(self, spec: LoadSpec, *, network: AddressCheck | None = None) -> None:
        self.spec = spec
        self.host, self.port, self.path = check_target(spec.url, network)
        self.report = LoadReport(url=spec.url)
        self._lock = threading.Lock()
        self._issued = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0

    # -- control -------------------------------------------------------------------------------

    def start(self) -> LoadGenerator:
        self._started = time.monotonic()
        self._threads = [threading.Thread(target=self._worker, name=f"loadgen-{i}", daemon=True)
                         for i in range(self.spec.concurrency)]
        for thread in self._threads:
            thread.start()
        return self

    def now(self) -> float:
        """Seconds since the run started (the time base of Sample.started)."""
        return time.monotonic() - self._started

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> LoadReport:
        for thread in self._threads:
            # the duration bound plus one request timeout is the longest a worker can take
            thread.join(self.spec.duration + self.spec.timeout + 5)
        self.report.elapsed = self.now()
        with self._lock:
            self.report.samples.sort(key=lambda s: s.started)
        return self.report

    def run(self) -> LoadReport:
        """Run to the first bound and return the report."""
        return self.start().join()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.join()

    # -- workers -------------------------------------------------------------------------------

    def _next_slot(self) -> float | None:
        """When this worker may send its next request (run time), or None when a bound is reached."""
        with self._lock:
            if self._stop.is_set() or self._issued >= self.spec.requests or self.now() >= self.spec.duration:
                return None
            index = self._issued
            self._issued += 1
        return index / self.spec.rate if self.spec.rate else 0.0

    def _worker(self) -> None:
        while True:
            slot = self._next_slot()
            if slot is None:
                return
            wait = slot - self.now()
            if wait > 0 and self._stop.wait(wait):
                return
            if self.now() >= self.spec.duration:
                return
            self._record(self._one())

    def _one(self) -> Sample:
        import http.client  # here: a command that generates no load does not pay for its import

        started = self.now()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.spec.timeout)
        try:
            conn.request("GET", self.path, headers={"Connection": "close"})
            response = conn.getresponse()
            response.read()
            served_by = response.getheader(self.spec.served_by_header, "") or ""
            return Sample(started=started, status=response.status, latency=self.now() - started,
                          served_by=served_by)
        except (OSError, http.client.HTTPException) as exc:
            return Sample(started=started, status=0, latency=self.now() - started,
                          error=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            conn.close()

    def _record(self, sample: Sample) -> None:
        with self._lock:
            self.report.samples.append(sample)
