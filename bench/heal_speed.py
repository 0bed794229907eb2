"""Seconds from killing the service on a host to /healthz answering 200 again, healed by the loop.

    .venv/bin/python bench/heal_speed.py [--rounds 3] [--goal 15]

Boots a throwaway dev-like fleet (3 app hosts + 1 monitoring host, own bridge and 10.214.X.0/24),
deploys the example service (`orchestrate deploy`), the monitoring stack (`orchestrate monitoring
deploy`) and runs `orchestrate heal serve`. Each round kills the unit on the next app host with
systemd's own Restart= turned off (`systemctl kill -s KILL`), then polls /healthz every 0.1 s
until it answers 200: Prometheus fires ServiceDown, Alertmanager calls the heal webhook, the
restart playbook runs. The dev config is used as shipped except healing.max_remediations, raised
to the number of rounds so the circuit breaker does not stop the benchmark. Runs as root.
Prints each round, the median and the verdict; writes bench/results/heal_speed.json.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from orchestrator.config.loader import Project
from orchestrator.fleet.inventory import ConnectionSettings, Host, build_inventory, write_inventory
from orchestrator.fleet.local.image import ImageStore
from orchestrator.fleet.local.keys import ensure_ssh_key
from orchestrator.fleet.local.network import delete_bridge_if_unused
from orchestrator.fleet.local.terraform import fleet_for
from orchestrator.tools.process import run_command

REPO = Path(__file__).resolve().parent.parent
ORCHESTRATE = str(Path(sys.executable).parent / "orchestrate")
EXAMPLE = REPO / "examples" / "hello-service"
BINARY = EXAMPLE / "target" / "release" / "hello-service"
RESULTS = REPO / "bench" / "results" / "heal_speed.json"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_subnet() -> str:
    routed = []
    for line in run_command(["ip", "-4", "-o", "route", "show"]).stdout.splitlines():
        first = line.split()[0]
        if first != "default":
            routed.append(ipaddress.IPv4Network(first, strict=False))
    candidates = list(range(100, 250))
    random.shuffle(candidates)
    for third in candidates:
        net = ipaddress.IPv4Network(f"10.214.{third}.0/24")
        if not any(net.overlaps(r) for r in routed):
            return str(net)
    raise SystemExit("no free 10.214.X.0/24")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def status_of(url: str, timeout: float = 1.0) -> int | None:
    try:
        with OPENER.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


#: systemd's own Restart= off for the rest of the host's boot, so only the healing loop can bring it back
NO_RESTART = ("mkdir -p /run/systemd/system/hello.service.d && "
              "printf '[Service]\\nRestart=no\\n' > /run/systemd/system/hello.service.d/no-restart.conf && "
              "systemctl daemon-reload")


def seconds_until_back(url: str, killed: float, limit: float = 120.0) -> float | None:
    """Seconds from `killed` (time.monotonic()) until `url` answered something else than 200 and
    then 200 again; None when that did not happen within `limit` seconds."""
    down = False
    while time.monotonic() - killed < limit:
        if status_of(url) != 200:
            down = True
        elif down:
            return time.monotonic() - killed
        time.sleep(0.1)
    return None


def make_project(base: Path, tag: str, heal_port: int, rounds: int) -> Path:
    project = base / "project"
    for part in ("inventories", "terraform", "roles", "playbooks"):
        shutil.copytree(REPO / part, project / part, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*"))
    env_file = project / "inventories" / "dev" / "environment.yml"
    data = yaml.safe_load(env_file.read_text())
    data["terraform"]["vars"].update(host_prefix=tag, bridge=tag, subnet=free_subnet(), app_count=3,
                                     monitoring_count=1, lb_count=0)
    data["healing"].update(listen=f"127.0.0.1:{heal_port}", max_remediations=max(rounds, 1) + 1)
    env_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return project


def cli(project: Path, *args: str) -> dict[str, Any]:
    env = dict(os.environ)
    password = project / "inventories" / "dev" / ".vault-password-dev"
    if password.exists():
        env["ORCHESTRATE_VAULT_PASSWORD_FILE"] = str(password)
    proc = subprocess.run([ORCHESTRATE, "--project-dir", str(project), *args, "--json"], capture_output=True,
                          text=True, timeout=900, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"orchestrate {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return dict(json.loads(proc.stdout)) if proc.stdout.strip() else {}


def ssh(project: Path, known_hosts: Path, address: str, command: str) -> str:
    key = project / ".orchestrate" / "ssh" / "id_ed25519"
    return run_command(["ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
                        f"root@{address}", command], timeout=60).stdout


def wait_quiet(monitor: str, timeout: float = 120) -> None:
    """Until Prometheus sees every target up and no alert is firing or pending."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with OPENER.open(f"http://{monitor}:9090/api/v1/query?query=min(up)", timeout=3) as response:
                up = json.loads(response.read())["data"]["result"]
            with OPENER.open(f"http://{monitor}:9090/api/v1/query?query=ALERTS", timeout=3) as response:
                alerts = json.loads(response.read())["data"]["result"]
            if up and up[0]["value"][1] == "1" and not alerts:
                return
        except (OSError, urllib.error.URLError, KeyError, ValueError):
            pass
        time.sleep(1)
    raise SystemExit("Prometheus did not see a quiet fleet within 120 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="kills, one app host after the other")
    parser.add_argument("--goal", type=float, default=15.0, help="seconds from kill to healthy (median)")
    args = parser.parse_args()
    if not BINARY.exists():
        raise SystemExit(f"{BINARY} is not built: run `make example` first")

    ImageStore().ensure()  # not timed: cached after the first run
    tag = "hs" + secrets.token_hex(3)
    heal_port = free_port()
    timings: list[float] = []
    with tempfile.TemporaryDirectory(prefix="heal-speed-") as tmp:
        project = make_project(Path(tmp), tag, heal_port, args.rounds)
        loaded = Project(project).load("dev")
        fleet, specs = fleet_for(loaded)
        serve: subprocess.Popen[str] | None = None
        try:
            fleet.ensure_all(specs, timeout=120)
            known_hosts = loaded.state_dir / "known_hosts"
            connection = ConnectionSettings(user="root", private_key=ensure_ssh_key(project), known_hosts=known_hosts)
            hosts = [Host(s.name, s.address, s.groups, s.address) for s in specs]
            write_inventory(loaded.state_dir / "inventory.yml", build_inventory("dev", hosts, connection))
            cli(project, "deploy", "dev", "--release", str(BINARY))
            cli(project, "monitoring", "deploy", "dev")
            serve = subprocess.Popen([ORCHESTRATE, "--project-dir", str(project), "heal", "serve", "dev", "--json"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            apps = [s for s in specs if "app" in s.groups]
            monitor = next(s for s in specs if "monitoring" in s.groups)
            for index in range(args.rounds):
                victim = apps[index % len(apps)]
                wait_quiet(monitor.address)
                ssh(project, known_hosts, victim.address, NO_RESTART)
                url = f"http://{victim.address}:{loaded.env.service.port}{loaded.env.service.health.path}"
                killed = time.monotonic()
                ssh(project, known_hosts, victim.address, "systemctl kill -s KILL hello.service")
                elapsed = seconds_until_back(url, killed)
                if elapsed is None:
                    raise SystemExit(f"round {index + 1}: {victim.name} did not come back within 120 s")
                timings.append(elapsed)
                print(f"round {index + 1}: {victim.name} killed -> healthy in {elapsed:.2f} s", flush=True)
        finally:
            if serve is not None and serve.poll() is None:
                os.killpg(serve.pid, signal.SIGTERM)
                serve.wait(timeout=60)
            fleet.destroy_all()
            delete_bridge_if_unused(tag)
    median = statistics.median(timings)
    verdict = "met" if median < args.goal else "not met"
    print(f"kill -> healthy: median {median:.2f} s over {len(timings)} rounds "
          f"(min {min(timings):.2f}, max {max(timings):.2f}); goal under {args.goal:g} s: {verdict}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rounds": timings, "median": median, "goal": args.goal, "verdict": verdict},
                                  indent=2) + "\n")
    return 0 if verdict == "met" else 1


if __name__ == "__main__":
    sys.exit(main())
