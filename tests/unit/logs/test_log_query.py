"""`orchestrate logs` options as a journal query: --since, -n, --unit, --grep, -f (pure)."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime

import pytest

from orchestrator.errors import UsageError
from orchestrator.fleet.inventory import Host
from orchestrator.logs.entries import LogEntry
from orchestrator.logs.query import LogQuery, check_unit, journalctl_argv, parse_since
from orchestrator.logs.sources import _FollowState, default_unit

NOW = datetime(2026, 12, 2, 18, 0, 0, tzinfo=UTC)


def test_since_as_a_duration_an_epoch_or_a_time() -> None:
    assert parse_since("10m", NOW) == NOW.timestamp() - 600
    assert parse_since("1h30m", NOW) == NOW.timestamp() - 5400
    assert parse_since("@1796236830.5", NOW) == 1796236830.5
    assert parse_since("2026-12-02T17:00:00", NOW) == NOW.timestamp() - 3600
    assert parse_since("2026-12-02T18:00:00+01:00", NOW) == NOW.timestamp() - 3600
    with pytest.raises(UsageError, match="10m or 1h30m"):
        parse_since("yesterday", NOW)


def test_argv_of_a_read() -> None:
    argv = journalctl_argv(LogQuery(since=1796236830.25, grep="GET /"), unit="hello.service")
    assert argv[0] == "journalctl" and "-o" in argv and argv[argv.index("-o") + 1] == "json"
    assert argv[argv.index("-u") + 1] == "hello.service"
    assert "--since=@1796236830.250000" in argv
    assert argv[argv.index("--grep") + 1] == "GET /"
    assert "-n" not in argv  # --since without -n: everything since
    assert "--follow" not in argv
    # the pattern stays one word on the remote shell
    assert shlex.split(shlex.join(argv))[argv.index("--grep") + 1] == "GET /"


def test_default_line_counts() -> None:
    assert journalctl_argv(LogQuery(), unit=None)[-2:] == ["-n", "100"]
    follow = journalctl_argv(LogQuery(follow=True), unit=None)
    assert follow[-3:] == ["-n", "10", "--follow"]
    assert "-u" not in follow
    assert journalctl_argv(LogQuery(lines=5, since=1.0), unit=None)[-2:] == ["-n", "5"]


def test_sudo_for_a_login_that_is_not_root() -> None:
    assert journalctl_argv(LogQuery(), unit=None, sudo=True)[:3] == ["sudo", "-n", "journalctl"]


def test_units_are_checked_and_default_by_group() -> None:
    assert check_unit("haproxy.service") == "haproxy.service"
    with pytest.raises(UsageError):
        check_unit("x; rm -rf /")
    assert default_unit(Host("a", "1", ("app",)), "hello.service") == "hello.service"
    assert default_unit(Host("l", "2", ("lb",)), "hello.service") is None


def test_a_reconnected_follow_skips_what_it_delivered() -> None:
    state = _FollowState()
    first = [LogEntry("a", 10, "x", cursor="c1"), LogEntry("a", 20, "y", cursor="c2"),
             LogEntry("a", 20, "z", cursor="c3")]
    assert [state.fresh(e) for e in first] == [True, True, True]
    # asked again --since the last time: the entries at that time come back, then new ones
    again = [LogEntry("a", 20, "y", cursor="c2"), LogEntry("a", 20, "z", cursor="c3"),
             LogEntry("a", 20, "w", cursor="c4"), LogEntry("a", 30, "v", cursor="c5"),
             LogEntry("a", 15, "old", cursor="c0")]
    assert [state.fresh(e) for e in again] == [False, False, True, True, False]
