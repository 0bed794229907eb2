"""Property test of the environment lock: random interleavings of acquire, release, crash, renew
and lease expiry across simulated holders on two hosts never grant the lock to two holders at once.

Holders on host "alpha" share the real flock file; holders on host "beta" use their own flock
file (another machine's kernel) and share only the holder record, as two hosts sharing the
project directory would. Time is a fake clock, renewals are explicit.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from orchestrator.runs.audit import AuditLog
from orchestrator.runs.identity import ProcessIdentity
from orchestrator.runs.lock import EnvironmentLock, EnvironmentLocked

HOSTS = ["alpha", "alpha", "beta", "beta"]
LEASE = 30.0
slots = st.integers(min_value=0, max_value=len(HOSTS) - 1)


class LockMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        shm = Path("/dev/shm")
        self.tmp = Path(tempfile.mkdtemp(prefix="lock-prop-", dir=shm if shm.is_dir() else None))
        self.state_dir = self.tmp / "dev"
        self.state_dir.mkdir()
        self.now = 1_800_000_000.0
        self.audit = AuditLog(self.state_dir)
        me = ProcessIdentity.current()
        self.locks = [
            EnvironmentLock(
                self.state_dir,
                command=f"holder {i}",
                identity=ProcessIdentity(me.user, host, me.pid, me.pid_start),
                clock=lambda: self.now,
                lease=LEASE,
                heartbeat=None,
                audit=self.audit,
                lock_path=self.state_dir / ("lock" if host == "alpha" else "lock-beta"),
            )
            for i, host in enumerate(HOSTS)
        ]
        self.held = [False] * len(HOSTS)
        self.record: tuple[int, float] | None = None  # (owner slot, lease expiry)
        self.takeovers = 0

    def teardown(self) -> None:
        for lock in self.locks:
            lock._abandon()
        self.audit.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _may_acquire(self, i: int) -> bool:
        if any(self.held[j] and HOSTS[j] == HOSTS[i] for j in range(len(HOSTS)) if j != i):
            return False  # the flock of this host is taken
        if self.record is None:
            return True
        owner, expires = self.record
        return HOSTS[owner] == HOSTS[i] or self.now >= expires

    @precondition(lambda self: not all(self.held))
    @rule(i=slots)
    def acquire(self, i: int) -> None:
        if self.held[i]:
            return
        expected = self._may_acquire(i)
        previous = self.record[0] if self.record is not None else None
        try:
            takeover = self.locks[i].acquire(wait=0)
        except EnvironmentLocked:
            assert not expected, f"slot {i} refused although the lock was free for it"
            return
        assert expected, f"slot {i} granted while another holder was entitled: {self.record} {self.held}"
        assert (takeover is not None) == (previous is not None)
        if previous is not None:
            assert takeover is not None and takeover.previous.command == f"holder {previous}"
            self.takeovers += 1
            event("takeover: lease expired on another host" if HOSTS[previous] != HOSTS[i]
                  else "takeover: flock released on this host")
        self.held[i] = True
        self.record = (i, self.now + LEASE)

    @rule(i=slots)
    def release(self, i: int) -> None:
        if not self.held[i]:
            return
        self.locks[i].release()
        self.held[i] = False
        if self.record is not None and self.record[0] == i:
            self.record = None

    @rule(i=slots)
    def crash(self, i: int) -> None:
        if not self.held[i]:
            return
        self.locks[i]._abandon()
        self.held[i] = False

    @rule(i=slots)
    def renew(self, i: int) -> None:
        if not self.held[i]:
            return
        owns = self.record is not None and self.record[0] == i
        assert self.locks[i].renew() == owns
        if owns:
            self.record = (i, self.now + LEASE)

    @rule(seconds=st.sampled_from([10.0, 29.0, 31.0, 31.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def never_two_holders(self) -> None:
        holding = [i for i, lock in enumerate(self.locks) if self.held[i] and lock.holds()]
        assert len(holding) <= 1
        if self.record is None:
            assert holding == []
        else:
            owner = self.record[0]
            assert holding in ([owner], []) and (holding == [owner]) == self.held[owner]
        # one flock per host: never two live holders on one host
        for host in set(HOSTS):
            assert sum(1 for i, h in enumerate(HOSTS) if h == host and self.held[i]) <= 1
        # every takeover is in the audit log
        assert len(self.audit.entries(limit=None, command="lock takeover")) == self.takeovers


LockMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLockProperties = LockMachine.TestCase
