"""Journal entries: parsing `journalctl -o json`, merging hosts by time, the follow buffer (pure)."""

from __future__ import annotations

import json

from orchestrator.logs.entries import LogEntry, ReorderBuffer, last, merge, parse_journal, parse_journal_line


def line(stamp: int, message: object, **extra: object) -> str:
    return json.dumps({"__REALTIME_TIMESTAMP": str(stamp), "MESSAGE": message, "__CURSOR": f"c{stamp}",
                       "PRIORITY": "6", "_PID": "58", "_SYSTEMD_UNIT": "hello.service",
                       "SYSLOG_IDENTIFIER": "hello", **extra})


def test_an_entry_with_host_time_and_message() -> None:
    entry = parse_journal_line("dev-app-1", line(1796236830643513, "GET /healthz 200"))
    assert entry is not None
    data = entry.as_dict()
    assert data["host"] == "dev-app-1"
    assert data["time"] == "2026-12-02T18:40:30.643513Z"
    assert data["message"] == "GET /healthz 200"
    assert (data["unit"], data["priority"], data["pid"]) == ("hello.service", "info", 58)


def test_binary_messages_and_repeated_fields() -> None:
    entry = parse_journal_line("h", line(1, list(b"caf\xc3\xa9 \xff")))
    assert entry is not None and entry.message == "café \ufffd"
    entry = parse_journal_line("h", line(1, ["first", "second"]))
    assert entry is not None and entry.message == "first second"


def test_what_is_not_an_entry_is_skipped() -> None:
    text = "\n".join(["-- No entries --", "", '{"MESSAGE": "no timestamp"}', line(5, "kept"), '{"trunc'])
    assert [e.message for e in parse_journal("h", text)] == ["kept"]


def test_merge_orders_several_hosts_by_time_and_keeps_every_entry() -> None:
    a = [LogEntry("a", t, f"a{t}") for t in (1, 4, 6)]
    b = [LogEntry("b", t, f"b{t}") for t in (2, 3, 7)]
    c = [LogEntry("c", t, f"c{t}") for t in (9, 5)]  # out of order on its host (clock stepped back)
    merged = list(merge([a, b, c]))
    assert [e.timestamp_us for e in merged] == [1, 2, 3, 4, 5, 6, 7, 9]
    assert sorted(e.message for e in merged) == sorted(e.message for e in a + b + c)


def test_last_keeps_the_newest() -> None:
    entries = [LogEntry("a", t, str(t)) for t in range(10)]
    assert [e.timestamp_us for e in last(entries, 3)] == [7, 8, 9]
    assert last(entries, 0) == []
    assert len(last(entries, None)) == 10


def test_the_follow_buffer_releases_in_time_order_after_the_delay() -> None:
    buffer = ReorderBuffer(delay=0.3)
    buffer.add(LogEntry("b", 200, "later"), arrived=10.0)
    buffer.add(LogEntry("a", 100, "earlier, arrived second"), arrived=10.1)
    assert buffer.release(10.2) == []
    assert [e.message for e in buffer.release(10.45)] == ["earlier, arrived second", "later"]
    buffer.add(LogEntry("a", 300, "x"), arrived=11.0)
    assert [e.message for e in buffer.release(11.0, everything=True)] == ["x"]
    assert len(buffer) == 0
