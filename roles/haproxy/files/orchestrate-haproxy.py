#!/usr/bin/python3
"""Set HAProxy server weights through the admin socket, persist them, and report statistics.

Installed on load-balancer hosts by the haproxy role; orchestrate runs it over SSH:

    orchestrate-haproxy state  --backend B                  JSON: weights, status, counters per server
    orchestrate-haproxy set    --backend B s1=100,s2=0      runtime weights, then written to the config
    orchestrate-haproxy expect --backend B s1=100,s2=0      exit 0 when the running servers match

`set` changes the running weights first (no reload: no connection is touched), then rewrites the
`weight` of those servers in the configuration file (validated with `haproxy -c` before it
replaces the file), so that a later reload keeps the traffic split.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import socket
import subprocess
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


def persist(config: str, backend: str, weights: dict[str, int]) -> None:
    with open(config, encoding="utf-8") as handle:
        text = handle.read()
    for name, weight in weights.items():
        pattern = re.compile(rf"^(\s*server\s+{re.escape(name)}\s.*?\bweight\s+)\d+", re.M)
        text, count = pattern.subn(rf"\g<1>{weight}", text)
        if count != 1:
            raise SystemExit(f"{config}: no single `server {name} ... weight N` line")
    fd, tmp = tempfile.mkstemp(prefix=".haproxy.cfg.", dir=os.path.dirname(config))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        check = subprocess.run(["haproxy", "-c", "-q", "-f", tmp], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise SystemExit(f"the configuration with the new weights does not validate: {check.stderr.strip()}")
        os.replace(tmp, config)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="/run/haproxy/admin.sock")
    parser.add_argument("--config", default="/etc/haproxy/haproxy.cfg")
    parser.add_argument("action", choices=("state", "set", "expect"))
    parser.add_argument("--backend", required=True)
    parser.add_argument("weights", nargs="?", default="")
    args = parser.parse_intermixed_args()
    if args.action == "state":
        json.dump({"backend": args.backend, "servers": state(args.socket, args.backend)}, sys.stdout)
        return 0
    wanted = parse_pairs(args.weights)
    if args.action == "expect":
        found = state(args.socket, args.backend)
        current = {name: entry.get("weight") for name, entry in found.items()}
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
    persist(args.config, args.backend, wanted)
    json.dump({"backend": args.backend, "servers": state(args.socket, args.backend)}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
