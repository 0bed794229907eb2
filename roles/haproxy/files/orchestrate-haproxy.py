#!/usr/bin/python3
"""Set HAProxy server weights through the admin socket, keep them in HAProxy's server-state
file, and report statistics.

Installed on load-balancer hosts by the haproxy role; orchestrate runs it over SSH:

    orchestrate-haproxy state      --backend B              JSON: weights, status, counters per server
    orchestrate-haproxy set        --backend B s1=100,s2=0  runtime weights, then the server state saved
    orchestrate-haproxy expect     --backend B s1=100,s2=0  exit 0 when the running servers are these,
                                                            configured with these (initial) weights
    orchestrate-haproxy save-state                          `show servers state` into the state file

The traffic split lives in HAProxy's runtime state, never in its configuration (which gives every
server the same initial weight). The configuration loads the server-state file at start-up
(`server-state-file`, `load-server-state-from-file global`), and the file is written after every
`set` and, through the haproxy unit's drop-in, before every reload and stop: a reload or restart
keeps the weights as they were.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import socket
import sys
import tempfile

COUNTERS = ("lbtot", "stot", "hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other",
            "rtime", "ttime", "scur", "econ", "eresp", "wretr", "wredis", "chkfail")


def ask(path: str, command: str, timeout: float = 5.0) -> str:
    """Send one line of `;`-separated commands to the admin socket; return the whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def parse_pairs(text: str) -> dict[str, int]:
    pairs = {}
    for item in filter(None, text.split(",")):
        name, _, weight = item.partition("=")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or not weight.isdigit() or int(weight) > 256:
            raise SystemExit(f"bad server weight {item!r}: expected NAME=0..256")
        pairs[name] = int(weight)
    return pairs


def state(sock: str, backend: str) -> dict[str, dict[str, object]]:
    text = ask(sock, "show stat")
    rows = list(csv.DictReader(io.StringIO(text.lstrip("# "))))
    servers: dict[str, dict[str, object]] = {}
    for row in rows:
        if row.get("pxname") != backend or row.get("svname") in ("FRONTEND", "BACKEND"):
            continue
        entry: dict[str, object] = {"status": row.get("status", "")}
        for key in COUNTERS:
            value = row.get(key) or "0"
            entry[key] = int(value) if value.isdigit() else 0
        servers[row["svname"]] = entry
    if servers:
        answer = ask(sock, ";".join(f"get weight {backend}/{name}" for name in servers))
        weights = re.findall(r"^(\d+) \(initial (\d+)\)", answer, re.M)
        if len(weights) == len(servers):
            for (name, entry), (current, initial) in zip(servers.items(), weights):
                entry["weight"] = int(current)
                entry["initial_weight"] = int(initial)
    return servers


def save_state(sock: str, path: str) -> None:
    """Write `show servers state` (every backend) to `path`, atomically: what the next start loads."""
    text = ask(sock, "show servers state")
    if not text.lstrip().startswith("1"):  # the file format's version line
        raise SystemExit(f"haproxy answered no server state: {text.strip()[:200]}")
    fd, tmp = tempfile.mkstemp(prefix=".server-state.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="/run/haproxy/admin.sock")
    parser.add_argument("--state-file", default="/var/lib/haproxy/server-state")
    parser.add_argument("action", choices=("state", "set", "expect", "save-state"))
    parser.add_argument("--backend")
    parser.add_argument("weights", nargs="?", default="")
    args = parser.parse_intermixed_args()
    if args.action == "save-state":
        save_state(args.socket, args.state_file)
        return 0
    if not args.backend:
        parser.error(f"{args.action} needs --backend")
    if args.action == "state":
        json.dump({"backend": args.backend, "servers": state(args.socket, args.backend)}, sys.stdout)
        return 0
    wanted = parse_pairs(args.weights)
    if args.action == "expect":
        # the configuration's weights are the initial ones; the running weights come from the
        # server-state file and are not the configuration's business
        found = state(args.socket, args.backend)
        current = {name: entry.get("initial_weight") for name, entry in found.items()}
        if current != wanted:
            print(f"running {current}, expected {wanted}", file=sys.stderr)
            return 1
        return 0
    known = state(args.socket, args.backend)
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise SystemExit(f"backend {args.backend} has no server {', '.join(unknown)}")
    answer = ask(args.socket, ";".join(f"set weight {args.backend}/{n} {w}" for n, w in wanted.items()))
    if answer.strip():
        raise SystemExit(f"haproxy refused the weights: {answer.strip()}")
    save_state(args.socket, args.state_file)
    json.dump({"backend": args.backend, "servers": state(args.socket, args.backend)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
