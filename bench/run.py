"""The headline figures, measured side by side in one run: one table, also written as JSON.

    .venv/bin/python bench/run.py [--only NAME[,NAME]] [--quick] [--json FILE]

`make bench` runs it with no options. Figures (NAME), in the order of a full run, with their goals:

  inventory        render the inventory of 10,000 hosts from `terraform output -json`-shaped data
                   (orchestrator's hosts_from_outputs + build_inventory + write_inventory): < 1 s
  boot             boot 20 local hosts from the cached image until systemd runs and sshd answers
                   on every one (bench/boot_hosts.py): < 5 s
  deploy-overhead  `orchestrate deploy --skip-backup` through the playbook (ORCHESTRATE_DIRECT=0: a
                   release change otherwise runs no playbook) against raw `ansible-playbook` run with
                   the argv an orchestrate run recorded (same inventory, playbook, extra vars,
                   ansible.cfg), 5 and 20 hosts, interleaved pairs, every run a release change: < 5 %
  up               first `orchestrate up` of 3 hosts, then ten in a row on the unchanged fleet: all
                   no-ops (the decision is deterministic), every one < 1 s
  status           `orchestrate status ENV --json` of 3 app hosts (the whole command, Python's start included)
                   against a plain parallel ssh + curl of the same data: < 1 s
  rollback         failed health gate -> previous release healthy on all 5 hosts: < 3 s; `orchestrate
                   rollback` (the whole command, 5 hosts) interleaved with an Ansistrano-style rollback
                   playbook with stock Ansible (bench/playbooks/ansistrano_rollback.yml) on the same
                   hosts: < 1.0 s and <= 0.15x
  heal             service killed -> healthy again through monitoring + heal webhook, dev's settings as
                   shipped (3 app + 1 monitoring host, one kill per app host): median < 3 s
  traffic          under load through HAProxy (bench/traffic.py): the blue-green switch back (about 1 s,
                   no request lost) and the failed requests while a bad canary is rolled back (at the
                   first step)
  gates            the release gates of the example service, warm (`orchestrate check dev --release
                   examples/hello-service` after one untimed run: cargo fmt, clippy, test, terraform fmt
                   and validate, checkov, ansible-lint, promtool): < 20 s
  plan-overhead    `orchestrate plan prod` against raw `terraform plan` on moto (plan_overhead.py): < 3 %
  deploy           `orchestrate deploy --skip-backup` (a release change) to 5, 20 and 50 hosts, tuned against
                   stock Ansible settings: tuned <= stock / 2, 50 hosts < 60 s; and the peak
                   memory of the orchestrate process during the tuned 50-host deploy (no goal)
  floor            floor-5, floor-20: the release change done by plain parallel ssh (copy, verify the
                   sha256, switch, restart, probe; bench/floor.py), interleaved with `orchestrate deploy`
                   on the same fleet (each deploy a release id of its own, so the binary is shipped
                   every time): deploy <= 3x the floor at 5 hosts, <= 2.5x at 20
  scale            `orchestrate deploy` (a release change) to 10, 20, 50 and 100 hosts: seconds per host,
                   the fitted seconds per additional host, the controller's peak memory at 100: 50 < 20 s
  memory           only the peak memory (when `deploy` is not selected: one tuned 50-host deploy)

--quick is a smoke run with small fleets and single repetitions (its figures are not the ones
the goals speak of). Before each figure the run waits (up to 2 min) for the load average to fall
below half the CPUs, so that one figure's teardown does not bill the next. Every fleet is a
throwaway copy of the project with its own bridge and a reserved subnet (tests/integration/
tests/support/fleet.py). Runs as root. Progress goes to stderr; the table to stdout; the JSON
(date, machine, load average at the start, every figure) to bench/results/summary.json unless
--json says otherwise. It is rewritten after every figure, so
an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import common
from common import Builds, Fleets, deploy_cli, expect_state, log, mib, run_orchestrate

from tests.support.cli import cli_env, spawn_orchestrate
from tests.support.net import free_port

REPO = common.REPO
DEFAULT_JSON = REPO / "bench" / "results" / "summary.json"


@dataclass
class Row:
    """One line of the table."""

    name: str
    figure: str
    value: str
    goal: str
    verdict: str
    """met, not met, not measured, or n/a (no goal)."""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    quick: bool
    builds: Callable[[], Builds]

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


# --- inventory for 10,000 hosts -------------------------------------------------------------------


def fig_inventory(settings: Settings) -> list[Row]:
    from orchestrator.config.loader import Project
    from orchestrator.files import load_yaml
    from orchestrator.fleet.provision import write_inventory_from_outputs

    count, runs = 10_000, settings.pick(5, 2)
    hosts = []
    for i in range(count):
        address = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        groups = ["app"] if i % 10 else ["app", "monitoring"]
        hosts.append({"name": f"app-{i:05d}", "address": address, "private_address": address, "groups": groups})
    text = json.dumps({
        "hosts": {"sensitive": False, "type": ["list", ["object", {}]], "value": hosts},
        "ssh_user": {"sensitive": False, "type": "string", "value": "root"},
    })
    with tempfile.TemporaryDirectory(prefix="bench-inventory-") as tmp:
        shutil.copytree(REPO / "inventories", Path(tmp) / "inventories")
        loaded = Project(Path(tmp)).load("dev")
        times, cpu = [], []
        for _ in range(runs):
            started, cpu_started = time.perf_counter(), time.process_time()
            # what Terraform.output() does with `terraform output -json`, then provisioning's writer
            outputs = {name: (body or {}).get("value") for name, body in json.loads(text).items()}
            path, written = write_inventory_from_outputs(loaded, outputs)
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
        inventory = load_yaml(path.read_text())
        in_file = len(inventory["all"]["children"]["app"]["hosts"])
        size = path.stat().st_size
    if len(written) != count or in_file != count:
        raise RuntimeError(f"inventory has {in_file} app hosts, expected {count}")
    median, cpu_median = statistics.median(times), statistics.median(cpu)
    return [Row("inventory", "inventory of 10,000 hosts from terraform outputs",
                f"{median:.2f} s ({cpu_median:.2f} s CPU)", "< 1 s", verdict(median < 1.0),
                {"seconds": median, "cpu_seconds": cpu_median, "runs": times, "cpu_runs": cpu, "hosts": count,
                 "bytes": size})]


# --- booting local hosts ----------------------------------------------------------------------------


def fig_boot(settings: Settings) -> list[Row]:
    import boot_hosts

    count, runs = settings.pick(20, 3), settings.pick(3, 1)
    found = [boot_hosts.measure(count) for _ in range(runs)]
    if any(int(f["running"]) != count for f in found):
        raise RuntimeError(f"not every host came up: {[f['running'] for f in found]} of {count}")
    median = statistics.median(float(f["ready_s"]) for f in found)
    return [Row("boot", f"boot {count} local hosts from the cached image (all ready)",
                f"{median:.2f} s (median of {runs})", "< 5 s", verdict(median < 5.0),
                {"hosts": count, "ready_s": [f["ready_s"] for f in found], "median_s": median,
                 "host_cpu_s": [f["host_cpu_s"] for f in found], "destroy_s": [f["destroy_s"] for f in found]})]


# --- orchestrate plan against terraform plan --------------------------------------------------------


def fig_plan_overhead(settings: Settings) -> list[Row]:
    runs = settings.pick(5, 1)
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "plan_overhead.py"), "--runs", str(runs)],
                          stdout=subprocess.PIPE, text=True, check=False, timeout=1800)
    out = proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(f"plan_overhead.py exited {proc.returncode}: {out[-800:]}")
    raw = re.search(r"^terraform plan \(raw\)\s+([\d.]+)", out, re.M)
    ours = re.search(r"^orchestrate plan prod\s+([\d.]+)", out, re.M)
    overhead = re.search(r"^overhead: ([+-][\d.]+)%.*?paired differences ([+-][\d.]+) s \(([+-][\d.]+)%\)",
                         out, re.M)
    if not (raw and ours and overhead):
        raise RuntimeError(f"unexpected output of plan_overhead.py: {out[-800:]}")
    percent = float(overhead.group(1))
    data = {"terraform_plan_s": float(raw.group(1)), "orchestrate_plan_s": float(ours.group(1)),
            "overhead_percent": percent, "paired_diff_s": float(overhead.group(2)),
            "paired_percent": float(overhead.group(3)), "runs": runs}
    return [Row("plan-overhead", "wrapper overhead: orchestrate plan vs terraform plan (moto)",
                f"{percent:+.1f}% ({data['orchestrate_plan_s']:.2f} s vs {data['terraform_plan_s']:.2f} s)",
                "< 3%", verdict(percent < 3.0), data)]


# --- orchestrate deploy against ansible-playbook ------------------------------------------------------


def _recorded_command(fleet: common.FleetEnv, run_id: str) -> dict[str, Any]:
    record = fleet.state_dir / "runs" / run_id / "artifacts" / run_id / "command"
    data = json.loads(record.read_text())
    if not isinstance(data, dict) or not data.get("command"):
        raise RuntimeError(f"{record}: no command recorded")
    return data


def fig_deploy_overhead(settings: Settings) -> list[Row]:
    sizes: list[int] = settings.pick([5, 20], [2])
    # the 5-host runs vary by about a second from one to the next: more pairs for a stable median
    pairs: dict[int, int] = settings.pick({5: 9, 20: 3}, {2: 1})
    return [_deploy_overhead(settings, size, pairs[size]) for size in sizes]


def _deploy_overhead(settings: Settings, size: int, pairs: int) -> Row:
    from orchestrator.config.secrets import SECRETS_VAR, load_secrets

    b = settings.builds()
    # the wrapper's own cost over the playbook it runs: a release change would skip Ansible
    # altogether (orchestrator/release/direct.py), so these deploys go through the playbook
    playbook = {"ORCHESTRATE_DIRECT": "0"}
    with Fleets(f"deploy-overhead{size}") as fleets:
        fleet = fleets.boot(app_count=size)
        expect_state(deploy_cli(fleet, b.v1, env=playbook), "deployed")  # first contact, not timed
        second = expect_state(deploy_cli(fleet, b.v2, env=playbook), "deployed")
        record = _recorded_command(fleet, second.json()["run_id"])
        secrets = load_secrets(fleet.loaded, None, environ=cli_env(fleet.project_dir))
        shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="bench-secrets-", dir=shm) as handle:
            os.chmod(handle.name, 0o600)
            json.dump({SECRETS_VAR: secrets} if secrets else {}, handle)
            handle.flush()
            argv = common.rewrite_secret_args(list(record["command"]), Path(handle.name) if secrets else None)
            argv[0] = str(common.VENV_BIN / "ansible-playbook")
            env = common.raw_playbook_env(record.get("env") or {})
            ours: list[float] = []
            raw: list[float] = []
            for index in range(pairs):
                # each run switches the fleet to the other release, so both do the same work
                ours.append(expect_state(deploy_cli(fleet, b.v1, env=playbook), "deployed").seconds)
                started = time.perf_counter()
                proc = subprocess.run(argv, cwd=record.get("cwd") or fleet.project_dir, env=env, check=False,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
                raw.append(time.perf_counter() - started)
                if proc.returncode != 0:
                    raise RuntimeError(f"raw ansible-playbook exited {proc.returncode}: {proc.stdout[-1500:]}")
                log(f"deploy-overhead {size} hosts, pair {index + 1}/{pairs}: orchestrate deploy {ours[-1]:.2f} s, "
                    f"ansible-playbook {raw[-1]:.2f} s")
            # the raw run really switched the hosts: deploying v1 again is a change, not a no-op
            expect_state(deploy_cli(fleet, b.v1, env=playbook), "deployed")
    our_median, raw_median = statistics.median(ours), statistics.median(raw)
    percent = (our_median - raw_median) / raw_median * 100
    paired = statistics.median(o - r for o, r in zip(ours, raw, strict=True))
    data = {"hosts": size, "pairs": pairs, "orchestrate_deploy_s": ours, "ansible_playbook_s": raw,
            "orchestrate_median_s": our_median, "ansible_median_s": raw_median, "overhead_percent": percent,
            "paired_diff_s": paired}
    return Row(f"deploy-overhead-{size}", f"wrapper overhead: orchestrate deploy through the playbook "
               f"(ORCHESTRATE_DIRECT=0) vs ansible-playbook, {size} hosts",
               f"{percent:+.1f}% ({our_median:.2f} s vs {raw_median:.2f} s; {paired:+.2f} s per run)", "< 5%",
               verdict(percent < 5.0), data)


# --- first up against no-op up ----------------------------------------------------------------------------


def fig_up(settings: Settings) -> list[Row]:
    """The first `up` of 3 hosts, then ten more in a row on the unchanged fleet: every one must be a
    no-op (the decision is deterministic), each under 1 s."""
    b = settings.builds()
    size, noops = settings.pick(3, 2), settings.pick(10, 3)
    with Fleets("up") as fleets:
        fleet = fleets.prepare(app_count=size, monitoring_count=0)
        argv = ["up", fleet.env_name, "--yes", "--release", str(b.v1), "--json"]
        first = run_orchestrate(fleet.project_dir, *argv).check()
        log(f"up: first run {first.seconds:.1f} s")
        again = []
        for index in range(noops):
            again.append(run_orchestrate(fleet.project_dir, *argv).check())
            log(f"up: run {index + 2}: {again[-1].seconds:.2f} s, noop={again[-1].json().get('noop')}")
    flags = [a.json().get("noop") for a in again]
    if first.json().get("noop") is not False or not all(flag is True for flag in flags):
        raise RuntimeError(f"expected a full first up and {noops} no-ops; got noop={first.json().get('noop')} "
                           f"then {flags}")
    seconds = [a.seconds for a in again]
    median, worst = statistics.median(seconds), max(seconds)
    ratio = median / first.seconds
    data = {"hosts": size, "first_s": first.seconds, "noop_s": seconds, "noop_median_s": median,
            "noop_max_s": worst, "ratio": ratio, "noops_in_a_row": len(flags),
            "first_steps": first.json().get("steps"),
            "noop_status_hosts": len((again[-1].json().get("status") or {}).get("hosts") or [])}
    return [Row("up", f"no-op up ({noops} in a row, all no-ops) vs first up, {size} hosts",
                f"{median:.2f} s median, {worst:.2f} s max vs {first.seconds:.1f} s ({ratio:.2f}x)",
                "every no-op < 1 s", verdict(worst < 1.0), data)]


# --- status: direct probes against plain parallel ssh + curl ---------------------------------------------


def plain_status(fleet: common.FleetEnv, command: str, port: int, path: str) -> float:
    """The same data by hand: one plain `ssh HOST COMMAND` and one `curl` per app host, all at once."""
    argv = []
    for host in fleet.group("app"):
        argv.append(fleet.ssh_argv(host, command))
        address = fleet.network.assert_own_address(host.address)
        argv.append(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                     f"http://{address}:{port}{path}"])
    started = time.perf_counter()
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for a in argv]
    outputs = [p.communicate(timeout=30)[0] for p in procs]
    elapsed = time.perf_counter() - started
    if any(p.returncode != 0 for p in procs) or not all(outputs):
        raise RuntimeError(f"plain ssh+curl failed: {[p.returncode for p in procs]}")
    return elapsed


def fig_status(settings: Settings) -> list[Row]:
    from orchestrator.release.hosts import DeployRequest, deploy
    from orchestrator.release.probe import ServiceLayout, status_command

    b = settings.builds()
    size, runs = 3, settings.pick(10, 3)
    with Fleets("status") as fleets:
        fleet = fleets.boot(app_count=size)
        deploy(fleet.loaded, DeployRequest(release_path=b.v1))
        layout = ServiceLayout.of(fleet.loaded)
        command = status_command(layout)
        cli, probe, plain = [], [], []
        for _ in range(runs):  # interleaved, so that a busy moment bills both
            outcome = run_orchestrate(fleet.project_dir, "status", fleet.env_name, "--json").check()
            hosts = outcome.json().get("hosts") or []
            if len(hosts) != size or not all(h.get("healthy") for h in hosts):
                raise RuntimeError(f"status did not report {size} healthy hosts: {outcome.stdout[-500:]}")
            cli.append(outcome.seconds)
            plain.append(plain_status(fleet, command, layout.port, layout.health_path))
        from orchestrator.release.probe import fleet_status

        for _ in range(runs):
            probe.append(fleet_status(fleet.loaded).duration)
    median, base, inner = statistics.median(cli), statistics.median(plain), statistics.median(probe)
    ratio = median / base if base else float("inf")
    data = {"hosts": size, "runs": runs, "cli_s": cli, "cli_median_s": median, "probe_s": probe,
            "probe_median_s": inner, "plain_ssh_curl_s": plain, "plain_median_s": base, "ratio_to_plain": ratio,
            "load_average": common.load_average()}
    return [Row("status", f"status --json of {size} app hosts (whole command) vs plain parallel ssh+curl",
                f"{median:.2f} s vs {base:.2f} s ({ratio:.1f}x; probes alone {inner:.2f} s, {inner / base:.1f}x)",
                "< 1 s", verdict(median < 1.0), data)]


# --- rollback from a failed health gate -----------------------------------------------------------------


def fig_rollback(settings: Settings) -> list[Row]:
    from orchestrator.release.hosts import DeployRequest, deploy
    from orchestrator.release.results import GateFailedRestored

    b = settings.builds()
    size, repeat, pairs = settings.pick(5, 2), settings.pick(3, 1), settings.pick(5, 1)
    gate_to_healthy: list[float] = []
    explicit: list[float] = []
    stock: list[float] = []
    with Fleets("rollback") as fleets:
        # the same settings as bench/rollback_speed.py: one batch, a 2 s gate probed every 100 ms
        fleet = fleets.boot(app_count=size, overrides={
            "rollout": {"batch_size": "100%"},
            "service": {"health": {"timeout": "2s", "interval": "100ms"}},
        })
        deploy(fleet.loaded, DeployRequest(release_path=b.v1))
        for _ in range(repeat):
            try:
                deploy(fleet.loaded, DeployRequest(release_path=b.broken))
                raise RuntimeError("the broken release passed its health gate")
            except GateFailedRestored as exc:
                stamps = [r.result.get("timings", {}) for r in exc.run.run.results_of("rust_release")
                          if r.status == "failed"]
                if len(stamps) != size:
                    raise RuntimeError(f"{len(stamps)} of {size} hosts failed their gate") from None
                gate_to_healthy.append(max(s["restored"] for s in stamps) - min(s["gate_failed"] for s in stamps))
                log(f"rollback: gate failed -> {size} hosts healthy on the previous release in "
                    f"{gate_to_healthy[-1]:.2f} s")
        deploy(fleet.loaded, DeployRequest(release_path=b.v2))
        ansistrano = _ansistrano_rollback(fleet)
        # interleaved pairs: each run swaps current and previous on every host, so both tools do
        # the same switch (v2 -> v1 or back), restart and health check
        for index in range(pairs):
            outcome = run_orchestrate(fleet.project_dir, "rollback", fleet.env_name, "--json").check()
            if outcome.json().get("state") != "deployed":
                raise RuntimeError(f"orchestrate rollback: state {outcome.json().get('state')!r}")
            explicit.append(outcome.seconds)
            stock.append(ansistrano())
            log(f"rollback pair {index + 1}/{pairs}: orchestrate rollback {explicit[-1]:.2f} s, "
                f"Ansistrano-style playbook {stock[-1]:.2f} s")
    median = statistics.median(gate_to_healthy)
    ours, theirs = statistics.median(explicit), statistics.median(stock)
    ratio = ours / theirs
    data = {"hosts": size, "gate_to_healthy_s": gate_to_healthy, "median_s": median,
            "explicit_rollback_s": explicit, "explicit_rollback_median_s": ours,
            "ansistrano_rollback_s": stock, "ansistrano_rollback_median_s": theirs, "ratio": ratio}
    return [
        Row("rollback-gate", f"rollback: failed gate -> previous release healthy, {size} hosts",
            f"{median:.2f} s (median of {len(gate_to_healthy)})", "< 3 s", verdict(median < 3.0), data),
        Row("rollback", f"`orchestrate rollback` (whole command), {size} hosts, vs an Ansistrano-style rollback "
            "playbook (stock Ansible) on the same hosts",
            f"{ours:.2f} s vs {theirs:.2f} s ({ratio:.2f}x)", "< 1.0 s and <= 0.15x",
            verdict(ours < 1.0 and ratio <= 0.15), data),
    ]


def _ansistrano_rollback(fleet: common.FleetEnv) -> Callable[[], float]:
    """A timed run of bench/playbooks/ansistrano_rollback.yml on `fleet`'s app hosts: plain
    `ansible-playbook` with stock settings (the ansible.cfg orchestrate writes for --stock-ansible)."""
    from orchestrator.tools.ansible import AnsibleSettings, ansible_cfg_text

    service = fleet.loaded.env.service
    cfg = fleet.state_dir / "bench-stock-ansible.cfg"
    cfg.write_text(ansible_cfg_text(AnsibleSettings.stock(), roles_path=fleet.project_dir / "roles", connect_timeout=2))
    argv = [str(common.VENV_BIN / "ansible-playbook"), "-i", str(fleet.loaded.paths.inventory),
            str(common.REPO / "bench" / "playbooks" / "ansistrano_rollback.yml"),
            "-e", json.dumps({"service": service.name, "port": service.port, "health_path": service.health.path})]
    env = common.raw_playbook_env({"ANSIBLE_CONFIG": str(cfg)})

    def run() -> float:
        started = time.perf_counter()
        proc = subprocess.run(argv, cwd=fleet.project_dir, env=env, check=False, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=600)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"the Ansistrano-style rollback exited {proc.returncode}: {proc.stdout[-1500:]}")
        return seconds

    return run


# --- self-heal ---------------------------------------------------------------------------------------


def fig_heal(settings: Settings) -> list[Row]:
    import heal_speed

    b = settings.builds()
    rounds = settings.pick(3, 1)
    port = free_port()
    timings: list[float] = []
    with Fleets("heal") as fleets:
        # as bench/heal_speed.py: dev as shipped (3 app + 1 monitoring host), the breaker raised
        fleet = fleets.boot(app_count=3, monitoring_count=1, overrides={
            "healing": {"listen": f"127.0.0.1:{port}", "max_remediations": rounds + 1}})
        project = fleet.project_dir
        heal_speed.cli(project, "deploy", "dev", "--release", str(b.v1))
        heal_speed.cli(project, "monitoring", "deploy", "dev")
        serve = spawn_orchestrate(project, "heal", "serve", "dev", "--json", stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            service = fleet.loaded.env.service
            apps, monitor = fleet.group("app"), fleet.group("monitoring")[0]
            for index in range(rounds):
                victim = apps[index % len(apps)]
                heal_speed.wait_quiet(fleet.network.assert_own_address(monitor.address))
                fleet.ssh(victim, heal_speed.NO_RESTART)
                url = f"http://{fleet.network.assert_own_address(victim.address)}:{service.port}{service.health.path}"
                killed = time.monotonic()
                fleet.ssh(victim, f"systemctl kill -s KILL {service.name}.service")
                elapsed = heal_speed.seconds_until_back(url, killed)
                if elapsed is None:
                    raise RuntimeError(f"round {index + 1}: {victim.name} did not come back within 120 s")
                timings.append(elapsed)
                log(f"heal round {index + 1}/{rounds}: {victim.name} killed -> healthy in {timings[-1]:.2f} s")
        finally:
            if serve.poll() is None:
                os.killpg(serve.pid, signal.SIGTERM)
                try:
                    serve.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(serve.pid, signal.SIGKILL)
                    serve.wait(timeout=30)
    median = statistics.median(timings)
    return [Row("heal", "self-heal: service killed -> healthy (3 app + 1 monitoring)",
                f"{median:.2f} s (median of {len(timings)}; {min(timings):.2f}-{max(timings):.2f} s)", "< 3 s",
                verdict(median < 3.0),
                {"rounds_s": timings, "median_s": median})]


# --- traffic: blue-green switch back, canary rollback under load -----------------------------------------


def fig_traffic(settings: Settings) -> list[Row]:
    repeat = settings.pick(3, 1)
    with tempfile.TemporaryDirectory(prefix="bench-traffic-") as tmp:
        out = Path(tmp) / "traffic.json"
        proc = subprocess.run([sys.executable, str(REPO / "bench" / "traffic.py"), "--repeat", str(repeat),
                               "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              check=False, timeout=1800)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"traffic.py exited {proc.returncode}: {proc.stdout[-800:]}")
        data = json.loads(out.read_text())
    switch = data["switch_back_s_median"]
    lost = data["blue_green_lost_requests"]
    return [
        Row("blue-green", f"blue-green switch back under {data['rate_rps']:.0f} req/s (weight change)",
            f"{switch:.3f} s (whole call {data['switch_back_call_s_median']:.2f} s, `orchestrate rollback` "
            f"{data['switch_back_cli_s']:.1f} s); {lost} of {data['blue_green_requests']} requests lost",
            "about 1 s, no request lost", verdict(switch <= 1.0 and lost == 0), data),
        Row("canary-rollback", "canary by weight, 30%-failing release: failed requests until rolled back",
            f"{data['canary_failed_requests']} of {data['canary_requests']} failed; rolled back at "
            f"{data['canary_rollback_step']}% ({data['canary_gate']['source']})",
            "rolled back at the first step", verdict(data["canary_rollback_step"] == 10), data),
    ]


# --- deploy at scale, tuned against stock, and the peak memory ------------------------------------------


def _memory_row(outcome: common.RunOutcome, size: int) -> Row:
    data = {"hosts": size, "orchestrate_vmhwm_mib": mib(outcome.peak_rss_kib),
            "largest_process_mib": mib(outcome.max_rss_wait4_kib),
            "process_tree_peak_mib": mib(outcome.peak_tree_rss_kib),
            "samples": outcome.samples, "deploy_s": outcome.seconds}
    return Row("memory", f"peak memory of orchestrate during a {size}-host deploy (tuned)",
               f"{mib(outcome.peak_rss_kib):.0f} MiB (with ansible-playbook and workers: "
               f"{mib(outcome.peak_tree_rss_kib):.0f} MiB)", "no goal (reported)", "n/a", data)


def fig_deploy(settings: Settings, *, with_timings: bool = True) -> list[Row]:
    b = settings.builds()
    sizes: list[int] = settings.pick([5, 20, 50], [2, 3])
    repeats = settings.pick({5: 3, 20: 2, 50: 1}, {2: 1, 3: 1})
    memory_size = sizes[-1]
    if not with_timings:
        sizes, repeats = [memory_size], {memory_size: 0}
    rows: list[Row] = []
    binaries = [b.v1, b.v2]
    for size in sizes:
        try:
            with Fleets(f"deploy{size}") as fleets:
                started = time.monotonic()
                fleet = fleets.boot(app_count=size)
                log(f"deploy: {size} hosts booted in {time.monotonic() - started:.1f} s")
                # first contact (host keys, user, unit, the first release) is not what is measured
                expect_state(deploy_cli(fleet, binaries[0]), "deployed")
                current = 0
                times: dict[str, list[float]] = {"tuned": [], "stock": []}
                memory: common.RunOutcome | None = None
                for index in range(repeats[size]):
                    # alternate which one goes first, so drifting load hits both alike
                    for mode in (("tuned", "stock") if index % 2 == 0 else ("stock", "tuned")):
                        current = 1 - current
                        outcome = expect_state(deploy_cli(fleet, binaries[current], stock=mode == "stock",
                                                          sample_memory=size == memory_size and mode == "tuned"),
                                               "deployed")
                        times[mode].append(outcome.seconds)
                        if size == memory_size and mode == "tuned" and memory is None:
                            memory = outcome
                        log(f"deploy: {size} hosts {mode}: {outcome.seconds:.1f} s")
                if size == memory_size and memory is None:
                    memory = expect_state(deploy_cli(fleet, binaries[1 - current], sample_memory=True), "deployed")
        except Exception as exc:  # one size failing must not cost the others
            log(f"deploy: {size} hosts failed: {exc}")
            rows.append(Row(f"deploy-{size}", f"deploy {size} hosts: tuned vs stock", f"failed: {exc}"[:200],
                            _deploy_goal(size), "not measured"))
            continue
        if with_timings:
            tuned, stock = statistics.median(times["tuned"]), statistics.median(times["stock"])
            ratio = tuned / stock
            ok = ratio <= 0.5 and (size != 50 or tuned < 60.0)
            rows.append(Row(
                f"deploy-{size}", f"deploy {size} hosts (release change): tuned vs stock",
                f"{tuned:.1f} s vs {stock:.1f} s ({ratio:.2f}x)", _deploy_goal(size), verdict(ok),
                {"hosts": size, "tuned_s": times["tuned"], "stock_s": times["stock"], "tuned_median_s": tuned,
                 "stock_median_s": stock, "ratio": ratio}))
        if memory is not None:
            rows.append(_memory_row(memory, size))
    return rows


def _deploy_goal(size: int) -> str:
    return "tuned <= 1/2 stock" + ("; tuned < 60 s" if size == 50 else "")


def fig_memory(settings: Settings) -> list[Row]:
    return fig_deploy(settings, with_timings=False)


# --- the floor: the same release change by plain parallel ssh, and deploy time against fleet size -----


def fig_floor(settings: Settings) -> list[Row]:
    """floor-5, floor-20: the plain parallel-ssh release change (bench/floor.py) interleaved with
    `orchestrate deploy` (tuned, a release change) on the same fleet; the deploy as a multiple of it."""
    import floor

    b = settings.builds()
    sizes: list[int] = settings.pick([5, 20], [2])
    pairs = settings.pick({5: 3, 20: 2}, {2: 1})
    goals = {5: 3.0, 20: 2.5}
    rows: list[Row] = []
    versions = [(b.v1, "0.1.0"), (b.v2, "0.2.0")]
    for size in sizes:
        with Fleets(f"floor{size}") as fleets:
            fleet = fleets.boot(app_count=size)
            expect_state(deploy_cli(fleet, b.v1), "deployed")  # first contact, not timed
            current = 0
            deploys: list[float] = []
            floors: list[float] = []
            for index in range(pairs[size]):
                current = 1 - current
                # a release id of its own every time: the deploy ships the binary, as the floor does
                binary, version = versions[current]
                deploys.append(expect_state(deploy_cli(fleet, binary, version=f"{version}+deploy{index + 1}"),
                                            "deployed").seconds)
                current = 1 - current
                binary, version = versions[current]
                floors.append(floor.release_change(fleet, binary, version, f"floor{index + 1}"))
                log(f"floor {size} hosts, pair {index + 1}/{pairs[size]}: orchestrate deploy {deploys[-1]:.2f} s, "
                    f"plain ssh {floors[-1]:.2f} s")
        deploy_median, floor_median = statistics.median(deploys), statistics.median(floors)
        ratio = deploy_median / floor_median
        goal = goals.get(size, 3.0)
        rows.append(Row(
            f"floor-{size}", f"floor: plain parallel-ssh release change, {size} hosts (and the deploy as a multiple)",
            f"{floor_median:.2f} s; orchestrate deploy {deploy_median:.2f} s = {ratio:.1f}x",
            f"deploy <= {goal:g}x floor", verdict(ratio <= goal),
            {"hosts": size, "pairs": pairs[size], "floor_s": floors, "floor_median_s": floor_median,
             "deploy_s": deploys, "deploy_median_s": deploy_median, "ratio": ratio}))
    return rows


def fig_scale(settings: Settings) -> list[Row]:
    """`orchestrate deploy` (tuned, a release change) to 10, 20, 50 and 100 hosts: seconds per host,
    the fitted cost of one more host, and the peak memory of the controller at the largest size."""
    b = settings.builds()
    sizes: list[int] = settings.pick([10, 20, 50, 100], [2, 3])
    seconds: dict[int, float] = {}
    memory: common.RunOutcome | None = None
    for size in sizes:
        with Fleets(f"scale{size}") as fleets:
            started = time.monotonic()
            fleet = fleets.boot(app_count=size)
            log(f"scale: {size} hosts booted in {time.monotonic() - started:.1f} s")
            expect_state(deploy_cli(fleet, b.v1), "deployed")  # first contact, not timed
            outcome = expect_state(deploy_cli(fleet, b.v2, sample_memory=size == sizes[-1]), "deployed")
            seconds[size] = outcome.seconds
            if size == sizes[-1]:
                memory = outcome
            log(f"scale: {size} hosts deployed in {outcome.seconds:.1f} s ({outcome.seconds / size:.2f} s per host)")
    slope, intercept = statistics.linear_regression([float(size) for size in seconds], list(seconds.values()))
    largest = sizes[-1]
    per_host = {size: seconds[size] / size for size in sizes}
    data: dict[str, Any] = {"deploy_s": seconds, "seconds_per_host": per_host, "slope_s_per_host": slope,
                            "intercept_s": intercept}
    fifty = seconds.get(50)
    rows = [Row("scale", f"deploy (release change) to {', '.join(map(str, sizes))} hosts: seconds per host",
                ", ".join(f"{size}: {seconds[size]:.1f} s ({per_host[size]:.2f}/host)" for size in sizes)
                + f"; fitted {slope:.2f} s per additional host",
                "50 hosts < 20 s", verdict(fifty < 20.0) if fifty is not None else "n/a",
                data)]
    if memory is not None:
        rows.append(Row("scale-memory", f"peak memory of the controller during a {largest}-host deploy",
                        f"{mib(memory.peak_rss_kib):.0f} MiB orchestrate; {mib(memory.peak_tree_rss_kib):.0f} MiB "
                        "for its whole process tree (the ssh sessions, or ansible-playbook and its workers)",
                        "no goal (reported)", "n/a",
                        {"hosts": largest, "orchestrate_vmhwm_mib": mib(memory.peak_rss_kib),
                         "process_tree_peak_mib": mib(memory.peak_tree_rss_kib), "samples": memory.samples}))
    return rows


# --- the release gates ---------------------------------------------------------------------------------


def fig_gates(settings: Settings) -> list[Row]:
    """`orchestrate check` of the example crate, warm (cargo's artifacts built): as a release change
    meets it (checkov's, ansible-lint's and promtool's clean results remembered) and with nothing
    remembered (an empty results cache each run: every gate runs in full)."""
    from tests.support.builds import copy_example

    runs = settings.pick(3, 1)
    with Fleets("gates") as fleets, tempfile.TemporaryDirectory(prefix="bench-gates-") as tmp:
        fleet = fleets.prepare(app_count=1, monitoring_count=1)
        crate = copy_example(Path(tmp) / "hello-service", "0.1.0", fix_tests=False)
        argv = ["check", fleet.env_name, "--release", str(crate), "--json"]
        warm = run_orchestrate(fleet.project_dir, *argv).check()  # builds the crate's test and clippy artifacts
        log(f"gates: first (cold) run {warm.seconds:.1f} s")
        outcomes, full = [], []
        for index in range(runs):
            outcomes.append(run_orchestrate(fleet.project_dir, *argv).check())
            empty = {"XDG_CACHE_HOME": str(Path(tmp) / f"cache-{index}")}
            full.append(run_orchestrate(fleet.project_dir, *argv, env=empty).check())
            log(f"gates: warm run {outcomes[-1].seconds:.1f} s, nothing remembered {full[-1].seconds:.1f} s")
    median, full_median = statistics.median(o.seconds for o in outcomes), statistics.median(o.seconds for o in full)
    per_gate: dict[str, dict[str, float]] = {}
    for label, last in (("remembered", outcomes[-1].json()), ("full", full[-1].json())):
        per_gate[label] = {g["name"]: g["seconds"] for g in last.get("gates", [])}
        if not last.get("ok") or len(per_gate[label]) != 8:
            raise RuntimeError(f"expected 8 passing gates, got {last.get('gates')}")
    slowest = sorted(per_gate["full"].items(), key=lambda item: -item[1])[:3]
    data = {"runs_s": [o.seconds for o in outcomes], "full_runs_s": [o.seconds for o in full], "cold_s": warm.seconds,
            "median_s": median, "full_median_s": full_median, "per_gate_s": per_gate["remembered"],
            "full_per_gate_s": per_gate["full"],
            "versions": {g["name"]: g["version"] for g in full[-1].json()["gates"]}}
    return [Row("gates", "release gates of the example service (`orchestrate check`), warm",
                f"{median:.1f} s with clean results remembered, {full_median:.1f} s with none (median of {runs}; "
                "slowest then: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in slowest) + ")",
                "< 20 s", verdict(median < 20.0), data)]


# --- the run ------------------------------------------------------------------------------------------

#: in the order of a full run
FIGURES: dict[str, Callable[[Settings], list[Row]]] = {
    "inventory": fig_inventory,
    "boot": fig_boot,
    "deploy-overhead": fig_deploy_overhead,
    "up": fig_up,
    "status": fig_status,
    "rollback": fig_rollback,
    "heal": fig_heal,
    "traffic": fig_traffic,
    "gates": fig_gates,
    "plan-overhead": fig_plan_overhead,
    "deploy": fig_deploy,
    "floor": fig_floor,
    "scale": fig_scale,
    "memory": fig_memory,
}


def settle(limit: float = 120.0) -> float:
    """Wait until the 1-minute load average is below half the CPUs (at most `limit` s); the wait."""
    started = time.monotonic()
    threshold = (os.cpu_count() or 1) * 0.5
    while os.getloadavg()[0] > threshold and time.monotonic() - started < limit:
        time.sleep(2)
    return time.monotonic() - started


def print_table(rows: list[Row]) -> None:
    headers = ("figure", "value", "goal", "verdict")
    widths = [max(len(h), *(len(getattr(r, k)) for r in rows)) if rows else len(h)
              for h, k in zip(headers, ("figure", "value", "goal", "verdict"), strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*headers).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line.format(row.figure, row.value, row.goal, row.verdict).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", metavar="NAME[,NAME]",
                        help="figures to measure (default: all): " + ", ".join(FIGURES))
    parser.add_argument("--quick", action="store_true", help="small fleets, one repetition: a smoke run")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="FILE",
                        help=f"where the summary goes (default: {DEFAULT_JSON.relative_to(REPO)})")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()] or [n for n in FIGURES if n != "memory"]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        parser.error(f"unknown figure {', '.join(unknown)}; valid: {', '.join(FIGURES)}")
    if "deploy" in names and "memory" in names:
        names.remove("memory")  # the deploy figure measures it on its largest fleet
    if os.geteuid() != 0:
        parser.error("local hosts need root (systemd-nspawn, overlay mounts, bridges)")

    cache: dict[str, Builds] = {}

    def get_builds() -> Builds:
        if "builds" not in cache:
            cache["builds"] = common.builds()
        return cache["builds"]

    settings = Settings(quick=args.quick, builds=get_builds)
    summary: dict[str, Any] = {
        "date": common.utc_now(), "machine": common.machine_info(), "quick": args.quick, "figures": [],
        "missing": [], "duration_s": None,
    }
    started = time.monotonic()
    rows: list[Row] = []
    for index, name in enumerate(names):
        if index:
            settle()  # the previous figure's teardown (hosts, terraform, moto) must not bill this one
        log(f"measuring {name} (load average {', '.join(map(str, common.load_average()))}) ...")
        load_before = common.load_average()
        figure_started = time.monotonic()
        try:
            produced = FIGURES[name](settings)
        except (Exception, SystemExit) as exc:  # a figure that fails is reported, the others still run
            # (heal_speed's helpers end with SystemExit, as scripts do)
            log(f"{name} failed: {type(exc).__name__}: {exc}")
            produced = [Row(name, name, f"failed: {exc}"[:200], "-", "not measured")]
        for row in produced:
            row.data.setdefault("load_average_before", load_before)
            row.data.setdefault("figure_wall_s", round(time.monotonic() - figure_started, 1))
        rows.extend(produced)
        summary["figures"] = [asdict(r) for r in rows]
        summary["missing"] = [r.name for r in rows if r.verdict == "not measured"]
        summary["duration_s"] = round(time.monotonic() - started, 1)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        log(f"{name} done in {time.monotonic() - figure_started:.0f} s")

    machine = summary["machine"]
    print(f"\norchestrate benchmarks {'(quick smoke run) ' if args.quick else ''}{summary['date']} on "
          f"{machine['arch']}, {machine['nproc']} CPUs, {machine['memory_gib']} GiB, {machine['os']}; "
          f"load average at start {', '.join(map(str, machine['load_average_start']))}")
    print_table(rows)
    print(f"\ntook {summary['duration_s'] / 60:.1f} min; written to {args.json}")
    return 1 if any(r.verdict == "not measured" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
