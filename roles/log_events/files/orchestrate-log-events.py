#!/usr/bin/python3
"""Count the log lines the alert rules watch in this host's journal, for the node exporter.

Follows the journal (`journalctl --follow --output=json`) and counts two kinds of lines:

    panic          a process wrote `panicked at` (Rust: "thread 'main' (PID) panicked at src/...")
    restart_limit  systemd gave up on a unit: "UNIT: Start request repeated too quickly."

and writes them for the node exporter's textfile collector (`orchestrate_log_events.prom`):

    orchestrate_log_events_total{kind="panic"} 3
    orchestrate_log_event_info{kind="panic",unit="hello.service",line="thread 'main' (812) panicked at ..."} 1
    orchestrate_log_event_last_timestamp_seconds{kind="panic"} 1796236902.36

Both counters exist from the start (at 0), so Prometheus sees the first event as an increase.
A panic's message follows on the next line of the same process; it is appended to the quoted line.
The journal cursor and the counts are kept in the state directory, so a restart of this program
neither loses nor counts twice the lines written meanwhile.

Standard library only: it runs with the host's python3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

KINDS = ("panic", "restart_limit")
PANIC = "panicked at"
RESTART_LIMIT = "Start request repeated too quickly."
#: longest log line quoted in a label (Prometheus labels have no limit, alerts and UIs do)
MAX_LINE = 400
#: a panic's message is appended when the same process logs it within this many seconds
CONTINUATION_S = 2.0
TEXTFILE = "orchestrate_log_events.prom"
STATE_FILE = "state.json"
#: how often the cursor is saved when no event happened
SAVE_EVERY_S = 30.0


def text_of(value):
    """A journal field as text (the JSON export gives non-UTF-8 values as byte arrays)."""
    if isinstance(value, list):
        return bytes(v for v in value if isinstance(v, int) and 0 <= v < 256).decode("utf-8", "replace")
    return "" if value is None else str(value)


def classify(entry):
    """(kind, unit) when `entry` is a line the rules watch, else None."""
    message = text_of(entry.get("MESSAGE"))
    from_systemd = text_of(entry.get("_PID")) == "1"
    # systemd quotes command lines and descriptions (`Failed to start ...`): only the process panics
    if PANIC in message and not from_systemd:
        unit = text_of(entry.get("_SYSTEMD_UNIT")) or text_of(entry.get("SYSLOG_IDENTIFIER"))
        return "panic", unit
    # only systemd itself (PID 1, a field journald sets, not the logging process) speaks for a unit
    if message.endswith(RESTART_LIMIT) and from_systemd and entry.get("UNIT"):
        return "restart_limit", text_of(entry.get("UNIT"))
    return None


def escape(value):
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Counter:
    """The counts, the latest line of each kind and the journal cursor."""

    def __init__(self, state=None):
        state = state or {}
        self.counts = {kind: int((state.get("counts") or {}).get(kind, 0)) for kind in KINDS}
        self.last = {k: v for k, v in (state.get("last") or {}).items() if k in KINDS}
        self.cursor = state.get("cursor")
        self._pending = None  # (kind, pid, time) of a panic whose message may follow

    def feed(self, entry):
        """Take one journal entry; True when the exported text changed."""
        self.cursor = entry.get("__CURSOR", self.cursor)
        when = int(text_of(entry.get("__REALTIME_TIMESTAMP")) or 0) / 1e6
        pid = text_of(entry.get("_PID"))
        found = classify(entry)
        if found is None:
            pending, self._pending = self._pending, None
            if pending is not None and pending[1] == pid and when - pending[2] <= CONTINUATION_S:
                kind = pending[0]
                message = text_of(entry.get("MESSAGE")).strip()
                if message:
                    line = f"{self.last[kind]['line']} {message}"
                    self.last[kind]["line"] = line[:MAX_LINE]
                    return True
            return False
        kind, unit = found
        self.counts[kind] += 1
        line = text_of(entry.get("MESSAGE")).strip()[:MAX_LINE]
        self.last[kind] = {"unit": unit, "line": line, "time": when}
        self._pending = (kind, pid, when) if kind == "panic" else None
        return True

    def render(self):
        """The textfile collector's file."""
        out = [
            "# HELP orchestrate_log_events_total Lines of this host's journal that the log alerts watch, by kind.",
            "# TYPE orchestrate_log_events_total counter",
        ]
        out += [f'orchestrate_log_events_total{{kind="{kind}"}} {self.counts[kind]}' for kind in KINDS]
        out += [
            "# HELP orchestrate_log_event_info The latest line of each kind and its unit (value always 1).",
            "# TYPE orchestrate_log_event_info gauge",
        ]
        for kind in KINDS:
            last = self.last.get(kind)
            if last:
                out.append(f'orchestrate_log_event_info{{kind="{kind}",unit="{escape(last["unit"])}",'
                           f'line="{escape(last["line"])}"}} 1')
        out += [
            "# HELP orchestrate_log_event_last_timestamp_seconds When the latest line of each kind was logged.",
            "# TYPE orchestrate_log_event_last_timestamp_seconds gauge",
        ]
        for kind in KINDS:
            last = self.last.get(kind)
            if last:
                out.append(f'orchestrate_log_event_last_timestamp_seconds{{kind="{kind}"}} {last["time"]:.3f}')
        return "\n".join(out) + "\n"

    def state(self):
        return {"counts": self.counts, "last": self.last, "cursor": self.cursor}


def write_atomically(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load_state(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def journalctl_argv(cursor):
    """Follow the journal after `cursor`, or from its end on the first start."""
    argv = ["journalctl", "--follow", "--output=json", "--no-pager"]
    return argv + ([f"--after-cursor={cursor}"] if cursor else ["--lines=0"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--textfile-dir", required=True, help="the node exporter's textfile directory")
    parser.add_argument("--state-dir", required=True, help="where the cursor and the counts are kept")
    args = parser.parse_args(argv)
    textfile = os.path.join(args.textfile_dir, TEXTFILE)
    state_path = os.path.join(args.state_dir, STATE_FILE)
    counter = Counter(load_state(state_path))
    write_atomically(textfile, counter.render())
    follow = subprocess.Popen(journalctl_argv(counter.cursor), stdout=subprocess.PIPE, text=True,
                              errors="replace")
    saved = time.monotonic()
    for raw in follow.stdout:
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        changed = counter.feed(entry)
        if changed:
            write_atomically(textfile, counter.render())
        if changed or time.monotonic() - saved > SAVE_EVERY_S:
            write_atomically(state_path, json.dumps(counter.state()))
            saved = time.monotonic()
    # journalctl ended (it should not): exit non-zero so that systemd starts this again
    return follow.wait() or 1


if __name__ == "__main__":
    sys.exit(main())
