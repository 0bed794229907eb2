#!/usr/bin/python3
"""Switch, health-gate and roll back a release of a systemd service in one module call.

The cost of a deploy is per module call per host, so the whole release path runs here: unpack
a bundle, verify the release (its signed manifest, or the binary's sha256), run the hooks,
switch `current` atomically, restart the unit, probe its health, and on failure switch back,
restart the previous release and probe it again.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rust_release
short_description: Health-gated switch, rollback and status of a release directory layout
description:
  - Manages C(BASE/releases/<id>/), C(BASE/current) and C(BASE/previous) symlinks for a systemd
    service whose C(ExecStart) runs C(BASE/current/<binary>).
  - C(state=present) unpacks I(archive) into C(releases/<id>/) when that directory is missing
    (members checked first, unpacked beside it and renamed into place), writes I(manifest) and
    I(signature) into it when given, and verifies the release; then it runs the
    C(before_switch) hook, records the release that was current as C(previous), switches
    C(current) atomically (symlink to a temporary name, then rename over), restarts the unit,
    probes its health (unit active and HTTP 200 on I(health_path) within I(health_timeout)) and
    runs the C(after_switch) hook. On a failed gate or C(after_switch) hook it switches back,
    restarts and probes the previous release and fails with the evidence; a failed
    C(before_switch) hook fails before anything is switched.
  - Verification, before every switch (C(present), C(rollback) and the I(previous_id) target)
    when I(allowed_signers) is set - C(ssh-keygen -Y verify) of C(MANIFEST.sig) over C(MANIFEST),
    the manifest's id equal to the release id, every listed file's sha256 equal, no unlisted
    file (C(MANIFEST), C(MANIFEST.sig) and C(RELEASE) at the top level are not listed). Without
    I(allowed_signers), C(present) checks the sha256 of the binary only. A release that fails is
    not switched to; the module fails naming the file, with evidence C(integrity).
  - C(state=rollback) switches to the previous release or the named I(release_id); nothing is
    copied and no hook runs.
  - C(state=restart) restarts the current release in place behind the health gate (a heal
    remediation); nothing is switched and no hook runs.
  - C(state=status) only reads (current, previous, unit state, one health probe).
  - C(state=cleanup) removes release directories (and their bundles) beyond I(keep_releases),
    never the current or previous one; a deploy runs it once every host passed its gate.
  - When the requested release is already current and healthy, nothing changes and no hook runs.
  - Check mode changes nothing and reports what would change (C(release), C(would_run_hooks)).
options:
  state:
    description: What to do.
    type: str
    choices: [present, rollback, restart, status, cleanup]
    default: present
  service:
    description: Name of the service and its unit.
    type: str
    required: true
  binary:
    description: Executable inside the release directory. Defaults to I(service).
    type: str
  base_dir:
    description: Directory holding releases/, current and previous. Defaults to /opt/<service>.
    type: path
  release_id:
    description: Release to switch to (required for present; for rollback, default the previous one).
    type: str
  sha256:
    description: Expected sha256 of the binary (present only; inside the bundle for a bundle).
    type: str
  version:
    description: Version recorded in the release's RELEASE file.
    type: str
    default: "0.0.0"
  archive:
    description: A .tar.gz bundle on the host, unpacked into C(releases/<id>/) when that is missing (present only).
    type: path
  manifest:
    description: Text of the release's signed MANIFEST, written into the release directory (present only).
    type: str
    default: ""
  signature:
    description: Text of MANIFEST.sig (C(ssh-keygen -Y sign -n orchestrate-release) output).
    type: str
    default: ""
  allowed_signers:
    description: OpenSSH allowed signers file; when set, every switch requires a valid signed manifest.
    type: path
  hooks:
    description:
      - C(before_switch) and C(after_switch) argv lists, run as I(user) in the new release directory,
        with placeholders C({port}) C({data_dir}) C({config_dir}) C({release_dir}) C({name}) expanded.
    type: dict
    default: {}
  hook_timeout:
    description: Seconds a hook may run before it is killed (and counts as failed).
    type: float
    default: 300
  user:
    description: User the hooks run as. Defaults to I(service).
    type: str
  data_dir:
    description: The service's data directory (the C({data_dir}) placeholder). Defaults to /var/lib/<service>.
    type: path
  config_dir:
    description: The service's configuration directory (C({config_dir})). Defaults to /etc/<service>.
    type: path
  env_file:
    description: The service's EnvironmentFile, whose variables the hooks get too. Defaults to config_dir/<service>.env.
    type: path
  port:
    description: Port the service listens on (probed on 127.0.0.1).
    type: int
    default: 8080
  health_path:
    description: HTTP path that answers 200 when the service is healthy.
    type: str
    default: /healthz
  health_timeout:
    description: Seconds a release may take to become healthy.
    type: float
    default: 10
  health_interval:
    description: Seconds between two probes at most (the first ones follow each other sooner, 20 ms apart, the wait doubling).
    type: float
    default: 0.25
  restart:
    description: Restart the unit even when the release is already current (configuration changed).
    type: bool
    default: false
  keep_releases:
    description:
      - Release directories to keep with I(state=cleanup) or I(state=rollback). 0 keeps all.
      - The current and previous ones are never removed.
    type: int
    default: 0
  previous_id:
    description:
      - With I(state=rollback), the release the C(previous) symlink names after a successful switch
        (undoing a failed rollout: the host's previous of before it; C(-) for none). Default the release
        switched away from.
    type: str
    default: ""
author: orchestrate
"""

RETURN = r"""
release_before: {description: Release current before this call (null on a first deploy), type: str}
previous_before: {description: Release the previous symlink named before this call, type: str}
release: {description: "Release current after this call (in check mode: the one it would switch to)", type: str}
previous_release: {description: Release the previous symlink names after this call, type: str}
switched: {description: Whether current now names another release than before, type: bool}
rolled_back: {description: "The new release failed its gate or a hook and the one before serves (again)", type: bool}
restored_healthy: {description: After a rollback, whether the restored release passed its gate, type: bool}
unit: {description: systemctl is-active of the unit after the call, type: str}
healthy: {description: Whether the unit is active and the health path answered 200, type: bool}
evidence: {description: "health, journal, status, hook or integrity text captured when a switch failed", type: dict}
removed: {description: Release directories removed by cleanup, type: list}
timings: {description: "epoch seconds of gate_failed and restored (for the rollback benchmark)", type: dict}
verified: {description: "How the release was verified: manifest (signed), sha256 (the binary) or null", type: str}
unpacked: {description: Whether the bundle was unpacked into the release directory by this call, type: bool}
hooks_run: {description: Names of the hooks that ran (in order), type: list}
would_run_hooks: {description: "In check mode, the hooks a real run would run; [] otherwise", type: list}
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

try:
    from ansible.module_utils.basic import AnsibleModule
    from ansible.module_utils.rust_service_bundle import (
        MANIFEST,
        SIGNATURE,
        BundleError,
        IntegrityError,
        unpack,
        verify_release,
    )
    from ansible.module_utils.rust_service_cmdline import CommandLineError, check_file_name, expand_argv
    from ansible.module_utils.rust_service_envfile import parse as parse_env_file
except ImportError:
    # run without Ansible by `orchestrate` (orchestrator/release/direct.py), which hands the
    # role's module_utils over as top-level modules and calls run_direct()
    AnsibleModule = None
    from rust_service_bundle import MANIFEST, SIGNATURE, BundleError, IntegrityError, unpack, verify_release
    from rust_service_cmdline import CommandLineError, check_file_name, expand_argv
    from rust_service_envfile import parse as parse_env_file

RELEASES = "releases"
BUNDLES = "bundles"
CURRENT = "current"
PREVIOUS = "previous"
#: previous_id meaning "no previous release" (the link is removed)
NO_PREVIOUS = "-"
RELEASE_FILE = "RELEASE"
HOOKS = ("before_switch", "after_switch")
#: characters of a hook's output kept as evidence (its end)
OUTPUT_TAIL = 4000
#: seconds before the second probe of a health gate (the waits double up to health_interval)
FIRST_WAIT = 0.01
HOOK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- layout (pure filesystem logic, unit-tested on tmp dirs) ---------------------------------


def link_target(base, name):
    """Release id a symlink BASE/name points to (releases/<id>), or None."""
    path = os.path.join(base, name)
    if not os.path.islink(path):
        return None
    return os.path.basename(os.path.normpath(os.readlink(path)))


def switch_link(base, name, release_id):
    """Point BASE/name at releases/<release_id> atomically: a temporary symlink renamed over it.

    rename(2) replaces the old link in one step, so a reader (systemd starting ExecStart) sees
    either the old or the new release, never a missing path.
    """
    tmp = os.path.join(base, f".{name}.tmp-{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.join(RELEASES, release_id), tmp)
    os.replace(tmp, os.path.join(base, name))


def remove_link(base, name):
    path = os.path.join(base, name)
    if os.path.islink(path):
        os.unlink(path)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_releases(base):
    """Release ids under BASE/releases, oldest first (by the deployed_at of RELEASE, then mtime)."""
    root = os.path.join(base, RELEASES)
    if not os.path.isdir(root):
        return []
    entries = []
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if not os.path.isdir(path) or name.startswith("."):
            continue
        stamp = os.stat(path).st_mtime
        meta = read_release_file(base, name)
        if isinstance(meta.get("deployed_at"), (int, float)):
            stamp = float(meta["deployed_at"])
        entries.append((stamp, name))
    return [name for _, name in sorted(entries)]


def read_release_file(base, release_id):
    try:
        with open(os.path.join(base, RELEASES, release_id, RELEASE_FILE)) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_file_atomic(base, path, data, mode=0o644):
    """Replace `path` with `data` in one rename; the temporary file lives in BASE, not beside
    `path`, so that a crash never leaves a stray file in a (signed) release directory."""
    fd, tmp = tempfile.mkstemp(dir=base, prefix=".write-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_release_file(base, release_id, version, sha256):
    """Record id, version, sha256 and deployed_at; deployed_at is refreshed on every switch to it."""
    data = {"id": release_id, "version": version, "sha256": sha256, "deployed_at": time.time()}
    write_file_atomic(base, os.path.join(base, RELEASES, release_id, RELEASE_FILE),
                      (json.dumps(data) + "\n").encode())


def write_if_different(base, path, text):
    """Write `text` to `path` unless it already holds exactly that; whether it wrote."""
    data = text.encode("utf-8")
    try:
        with open(path, "rb") as handle:
            if handle.read() == data:
                return False
    except FileNotFoundError:
        pass
    write_file_atomic(base, path, data)
    return True


def releases_to_remove(releases, keep, protected):
    """Oldest releases beyond `keep`, never one in `protected` (current, previous, target)."""
    if keep <= 0 or len(releases) <= keep:
        return []
    excess = len(releases) - keep
    removable = [r for r in releases if r not in protected]
    return removable[:excess]


def stale_entries(base):
    """Leftovers to remove: interrupted unpacks in releases/ and bundles whose release is gone."""
    found = []
    root = os.path.join(base, RELEASES)
    if os.path.isdir(root):
        found += [os.path.join(root, n) for n in os.listdir(root) if n.startswith(".") and ".unpack-" in n]
    bundles = os.path.join(base, BUNDLES)
    if os.path.isdir(bundles):
        found += [os.path.join(bundles, n) for n in os.listdir(bundles) if not os.path.isdir(os.path.join(root, n))]
    return sorted(found)


def remove_old_releases(base, keep, result, check_mode=False):
    """Remove release directories (and their bundles) beyond `keep`, never the current or the
    previous one, and the leftovers of interrupted unpacks."""
    protected = {r for r in (link_target(base, CURRENT), link_target(base, PREVIOUS)) if r}
    for release in releases_to_remove(list_releases(base), keep, protected):
        if not check_mode:
            shutil.rmtree(os.path.join(base, RELEASES, release), ignore_errors=True)
            shutil.rmtree(os.path.join(base, BUNDLES, release), ignore_errors=True)
        result["removed"].append(release)
        result["changed"] = True
    if not check_mode:
        for path in stale_entries(base):
            shutil.rmtree(path, ignore_errors=True)


# --- hooks -----------------------------------------------------------------------------------


def placeholder_values(params, service, release_dir):
    """The placeholders of a hook: {release_dir} is the new release's own directory."""
    return {"port": params["port"], "data_dir": params["data_dir"] or f"/var/lib/{service}",
            "config_dir": params["config_dir"] or f"/etc/{service}", "release_dir": release_dir,
            "name": service}


def hook_argvs(hooks, values):
    """{name: argv} of the configured hooks, expanded; CommandLineError for a bad one."""
    if not isinstance(hooks, dict):
        raise CommandLineError("hooks: expected a mapping with before_switch and/or after_switch")
    unknown = sorted(set(hooks) - set(HOOKS))
    if unknown:
        raise CommandLineError(f"hooks: unknown {', '.join(unknown)}; valid: {', '.join(HOOKS)}")
    found = {}
    for name in HOOKS:
        argv = hooks.get(name)
        if argv in (None, []):
            continue
        expanded = expand_argv(argv, values, f"hooks.{name}")
        if not expanded[0]:
            raise CommandLineError(f"hooks.{name}[0]: the program is empty")
        found[name] = expanded
    return found


def hook_command(user, argv):
    """The argv running `argv` as `user` without a shell (runuser from util-linux)."""
    return ["runuser", "-u", user, "--", *argv] if user else list(argv)


def hook_environment(env_file):
    """A clean environment for the hooks plus the service's own variables (its EnvironmentFile)."""
    env = {"PATH": HOOK_PATH, "LANG": "C.UTF-8"}
    if env_file:
        try:
            with open(env_file, encoding="utf-8", errors="replace") as handle:
                env.update(parse_env_file(handle.read()))
        except FileNotFoundError:
            pass
    return env


def run_hook(name, argv, user, cwd, env, timeout):
    """Run one hook; return {name, argv, rc, timed_out, seconds, output} (output: its tail).

    The hook runs in a session of its own, so that a timeout kills it and everything it started.
    """
    started = time.monotonic()
    outcome = {"name": name, "argv": list(argv), "rc": None, "timed_out": False, "output": ""}
    try:
        proc = subprocess.Popen(hook_command(user, argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        outcome.update(output=f"cannot start: {exc}", seconds=round(time.monotonic() - started, 3))
        return outcome
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        outcome["timed_out"] = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            output, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a descendant left the session and holds the pipe
            proc.kill()
            output = b""
    outcome["rc"] = None if outcome["timed_out"] else proc.returncode
    outcome["output"] = (output or b"").decode("utf-8", "replace")[-OUTPUT_TAIL:]
    outcome["seconds"] = round(time.monotonic() - started, 3)
    return outcome


def hook_failed(outcome):
    return outcome["timed_out"] or outcome["rc"] != 0


def hook_summary(outcome, timeout):
    """`exit 3`, `timed out after 300s` or `did not start`."""
    if outcome["timed_out"]:
        return f"timed out after {timeout:g}s"
    if outcome["rc"] is None:
        return "did not start"
    return f"exit {outcome['rc']}"


def hook_evidence(outcome, timeout):
    """The evidence text of a failed hook: its argv, how it ended and the tail of its output."""
    return (f"hook {outcome['name']}: {json.dumps(outcome['argv'], ensure_ascii=False)}\n"
            f"result: {hook_summary(outcome, timeout)} after {outcome.get('seconds', 0)}s\n"
            f"output (last {OUTPUT_TAIL} characters):\n{outcome['output']}")


# --- systemd and health ----------------------------------------------------------------------


def run(argv, timeout=30):
    """Run argv without a shell; return (rc, combined output)."""
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                              text=True, errors="replace", check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return proc.returncode, proc.stdout


def unit_state(service):
    return run(["systemctl", "is-active", f"{service}.service"])[1].strip() or "unknown"


#: bytes of a health answer's body kept (as evidence)
BODY_LIMIT = 4096


def probe_once(port, path, timeout):
    """(status or None, body or error text) of GET http://127.0.0.1:port/path.

    One HTTP/1.0 request on a connection of its own, read up to its header block and
    Content-Length (or the server's close): a gate needs only the status line, and a client
    library's import would cost more than the probe on a host of many services.
    """
    if not path.startswith("/") or any(not " " < char < "\x7f" for char in path):
        return None, f"health path {path!r} is not an absolute path of printable ASCII"
    request = (f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: orchestrate-gate\r\n"
               "Connection: close\r\n\r\n").encode("ascii")
    answer = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(request)
            while not _answer_complete(answer):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
    except OSError as exc:
        if not answer:
            return None, f"{type(exc).__name__}: {exc}"
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not (parts[1].isdigit() and len(parts[1]) == 3):
        return None, f"not an HTTP answer: {status_line[:200]!r}"
    return int(parts[1]), body[:BODY_LIMIT].decode("utf-8", "replace")


def _answer_complete(answer):
    """Whether `answer` holds the header block and the body up to its Content-Length (at most
    BODY_LIMIT bytes of it): what the gate reads, whether or not the server closes."""
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found:
        return len(answer) > 65536  # headers that large are not a health answer: stop reading
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= min(int(value.strip()), BODY_LIMIT)
    return len(body) >= BODY_LIMIT


def wait_healthy(service, port, path, timeout, interval):
    """Poll until GET path is 200 with the unit active, or `timeout` passes.

    A restarted service usually answers within milliseconds: the first probes follow each other
    FIRST_WAIT apart, the wait doubling up to `interval`. The unit's state is asked once the
    probe answers 200 (a 200 from a unit that is not active is another process on the port) and
    when the gate fails (the evidence says what the unit is).

    Returns (healthy, last probe as text).
    """
    deadline = time.monotonic() + timeout
    wait = min(FIRST_WAIT, interval)
    url = f"http://127.0.0.1:{port}{path}"
    while True:
        status, body = probe_once(port, path, max(0.2, min(2.0, deadline - time.monotonic())))
        last = f"GET {url} -> {status if status is not None else 'no response'}\n{body}"
        state = unit_state(service) if status == 200 else None
        if state == "active":
            return True, last
        if state is not None:
            last = f"unit {service}.service is {state}; {last}"
        if time.monotonic() >= deadline:
            if state is None:
                state = unit_state(service)
                if state != "active":
                    last = f"unit {service}.service is {state}; {last}"
            return False, last
        time.sleep(max(0.0, min(wait, deadline - time.monotonic())))
        wait = min(2 * wait, interval)


def evidence(service, health_text):
    """What an operator needs after a failed gate: the probe, the journal tail, the unit status."""
    journal = run(["journalctl", "-u", f"{service}.service", "-n", "50", "--no-pager"])[1]
    status = run(["systemctl", "status", f"{service}.service", "--no-pager", "--lines=0"])[1]
    return {"health": health_text, "journal": journal, "status": status}


# --- the module --------------------------------------------------------------------------------


class Gate:
    """Restart-and-probe of one service with the module's health settings."""

    def __init__(self, params):
        self.service = params["service"]
        self.port = params["port"]
        self.path = params["health_path"]
        self.timeout = params["health_timeout"]
        self.interval = params["health_interval"]
        #: the unit was seen active by the last gate that passed (and nothing ran since)
        self.seen_active = False

    def unit(self):
        """The unit's state: what the gate that just passed saw, else systemd's answer."""
        return "active" if self.seen_active else unit_state(self.service)

    def restart(self):
        self.seen_active = False
        # a release that crash-looped leaves the unit past its start limit: systemd would refuse
        # this start too ("start request repeated too quickly") and the restore would fail
        run(["systemctl", "reset-failed", f"{self.service}.service"], timeout=30)
        rc, out = run(["systemctl", "restart", f"{self.service}.service"], timeout=90)
        return rc == 0, out

    def wait(self):
        healthy, text = wait_healthy(self.service, self.port, self.path, self.timeout, self.interval)
        self.seen_active = healthy
        return healthy, text

    def probe_now(self):
        return probe_once(self.port, self.path, 2.0)[0] == 200 and unit_state(self.service) == "active"


def ensure_enabled(service):
    """Enable the unit so that it starts on boot; returns whether that changed anything."""
    if run(["systemctl", "is-enabled", f"{service}.service"])[1].strip() == "enabled":
        return False
    run(["systemctl", "enable", f"{service}.service"])
    return True


def switch_and_gate(base, gate, target, before, result, after=None):
    """Switch current to `target`, restart, probe, run `after`; on failure restore `before`.

    `after` (the after_switch hook) returns None on success or the evidence of its failure.
    Fills `result`; returns None on success, else what failed ("health gate" or the hook's
    evidence kind, "after_switch hook").
    """
    switch_link(base, CURRENT, target)
    ensure_enabled(gate.service)
    restarted, restart_output = gate.restart()
    healthy, health_text = gate.wait() if restarted else (False, f"systemctl restart failed:\n{restart_output}")
    failed_step, hook_failure = "health gate", None
    if healthy and after is not None:
        gate.seen_active = False  # the hook may stop or restart it
        hook_failure = after()
        if hook_failure is not None:
            healthy, failed_step = False, "after_switch hook"
    if healthy:
        if before and before != target:
            switch_link(base, PREVIOUS, before)
        result.update(changed=True, switched=before != target, release=target, healthy=True)
        return None
    result["timings"]["gate_failed"] = time.time()
    result["evidence"] = hook_failure if hook_failure is not None else evidence(gate.service, health_text)
    result["changed"] = True
    if before and before != target:
        switch_link(base, CURRENT, before)
        gate.restart()
        restored, restored_text = gate.wait()
        result["timings"]["restored"] = time.time()
        result.update(release=before, rolled_back=True, restored_healthy=restored, healthy=restored)
        if not restored:
            result["evidence"]["restored_health"] = restored_text
    else:
        # Nothing to go back to (first deploy, or the release was already current): stop it rather
        # than leave a failing release running.
        if before is None:
            gate.seen_active = False
            run(["systemctl", "stop", f"{gate.service}.service"])
            remove_link(base, CURRENT)
        result.update(release=before, healthy=False)
    return failed_step


ARGUMENT_SPEC = {
    "state": {"type": "str", "choices": ["present", "rollback", "restart", "status", "cleanup"],
              "default": "present"},
    "service": {"type": "str", "required": True},
    "binary": {"type": "str"},
    "base_dir": {"type": "path"},
    "release_id": {"type": "str"},
    "sha256": {"type": "str"},
    "version": {"type": "str", "default": "0.0.0"},
    "archive": {"type": "path"},
    "manifest": {"type": "str", "default": ""},
    "signature": {"type": "str", "default": ""},
    "allowed_signers": {"type": "path"},
    "hooks": {"type": "dict", "default": {}},
    "hook_timeout": {"type": "float", "default": 300.0},
    "user": {"type": "str"},
    "data_dir": {"type": "path"},
    "config_dir": {"type": "path"},
    "env_file": {"type": "path"},
    "port": {"type": "int", "default": 8080},
    "health_path": {"type": "str", "default": "/healthz"},
    "health_timeout": {"type": "float", "default": 10.0},
    "health_interval": {"type": "float", "default": 0.25},
    "restart": {"type": "bool", "default": False},
    "keep_releases": {"type": "int", "default": 0},
    "previous_id": {"type": "str", "default": ""},
}

_RELEASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")


class Release:
    """One call of the module: its parameters, the host's layout and the result being built."""

    def __init__(self, module):
        self.module = module
        self.params = params = module.params
        self.check_mode = module.check_mode
        self.service = params["service"]
        self.binary = params["binary"] or self.service
        self.base = params["base_dir"] or f"/opt/{self.service}"
        self.user = params["user"] or self.service
        self.gate = Gate(params)
        self.before = link_target(self.base, CURRENT)
        self.result = {
            "state": params["state"],
            "changed": False, "release_before": self.before, "previous_before": link_target(self.base, PREVIOUS),
            "release": self.before, "switched": False,
            "rolled_back": False, "restored_healthy": None, "healthy": None, "evidence": {}, "removed": [],
            "timings": {"started": time.time()},
            "verified": None, "unpacked": False, "hooks_run": [], "would_run_hooks": [],
        }

    # -- endings

    def finish(self):
        self.result.update(previous_release=link_target(self.base, PREVIOUS), unit=self.gate.unit())
        self.module.exit_json(**self.result)

    def fail(self, msg):
        self.result.update(previous_release=link_target(self.base, PREVIOUS), unit=self.gate.unit())
        self.module.fail_json(msg=msg, **self.result)

    def refuse(self, target, exc):
        """Fail without switching: `target` does not match its signed manifest (or its bundle is bad)."""
        healthy = self.gate.probe_now() if self.before else False
        self.result.update(release=self.before, healthy=healthy)
        self.result["evidence"] = {"integrity": "\n".join(getattr(exc, "problems", [str(exc)]))}
        serving = f"{self.before} keeps serving" if self.before else "nothing was switched"
        self.fail(f"release {target} refused: {exc}; {serving}")

    # -- steps

    def release_dir(self, release_id):
        return os.path.join(self.base, RELEASES, release_id)

    def check_inputs(self):
        try:
            check_file_name(self.binary, "binary")
        except CommandLineError as exc:
            self.module.fail_json(msg=str(exc), **self.result)
        for name in ("release_id", "previous_id"):
            value = self.params[name]
            if value and value != NO_PREVIOUS and not _RELEASE_ID.match(value):
                self.module.fail_json(msg=f"{name} {value!r} is not a release id", **self.result)

    def ensure_unpacked(self, target):
        """Unpack the bundle when the release directory is missing; whether the directory exists now."""
        archive = self.params["archive"]
        if os.path.isdir(self.release_dir(target)) or not archive:
            return os.path.isdir(self.release_dir(target))
        if self.check_mode:
            self.result["changed"] = True
            return False
        if not os.path.isfile(archive):
            self.fail(f"release {target}: the bundle {archive} is not on the host")
        try:
            unpack(archive, self.release_dir(target))
        except BundleError as exc:
            self.refuse(target, exc)
        self.result.update(unpacked=True, changed=True)
        return True

    def write_manifest(self, target):
        """Write MANIFEST and MANIFEST.sig into the release directory when given and different."""
        for name, text in ((MANIFEST, self.params["manifest"]), (SIGNATURE, self.params["signature"])):
            if not text:
                continue
            path = os.path.join(self.release_dir(target), name)
            if self.check_mode:
                try:
                    with open(path, "rb") as handle:
                        same = handle.read() == text.encode("utf-8")
                except FileNotFoundError:
                    same = False
                self.result["changed"] = self.result["changed"] or not same
            elif write_if_different(self.base, path, text):
                self.result["changed"] = True

    def verify(self, target, with_params=False, binary_too=True):
        """Verify `target` before switching to it; refuse (fail) when it does not match.

        With signers: the signed manifest (in check mode the one this call would write). Without:
        the binary's sha256 when one was given (present).
        """
        allowed = self.params["allowed_signers"]
        if allowed:
            manifest = signature = None
            if with_params and self.check_mode:
                manifest = self.params["manifest"].encode("utf-8") or None
                signature = self.params["signature"].encode("utf-8") or None
            try:
                if not os.path.isfile(allowed):
                    raise IntegrityError(f"the allowed signers file {allowed} is missing")
                verify_release(self.release_dir(target), target, allowed, manifest, signature)
            except IntegrityError as exc:
                self.refuse(target, exc)
            self.result["verified"] = "manifest"
        if not binary_too:
            return
        binary = os.path.join(self.release_dir(target), self.binary)
        if not os.path.isfile(binary):
            what = "the bundle holds no" if self.params["archive"] else "no"
            self.fail(f"release {target} is not on the host ({what} {binary})")
        expected = (self.params["sha256"] or "").lower() if with_params else ""
        if expected:
            actual = sha256_of(binary)
            if actual != expected:
                self.refuse(target, IntegrityError(f"{binary}: sha256 {actual} does not match the release's "
                                                   f"{expected}"))
            self.result["verified"] = self.result["verified"] or "sha256"

    def hooks(self, target):
        try:
            values = placeholder_values(self.params, self.service, self.release_dir(target))
            return hook_argvs(self.params["hooks"] or {}, values)
        except CommandLineError as exc:
            self.module.fail_json(msg=str(exc), **self.result)

    def run_hook(self, name, argv, target):
        timeout = self.params["hook_timeout"]
        env_file = self.params["env_file"] or os.path.join(self.params["config_dir"] or f"/etc/{self.service}",
                                                           f"{self.service}.env")
        outcome = run_hook(name, argv, self.user, self.release_dir(target), hook_environment(env_file), timeout)
        self.result["hooks_run"].append(name)
        if hook_failed(outcome):
            return outcome, {"hook": hook_evidence(outcome, timeout)}
        return outcome, None

    # -- the states

    def status(self):
        self.result.update(previous_release=link_target(self.base, PREVIOUS), unit=unit_state(self.service),
                           healthy=self.gate.probe_now(), releases=list_releases(self.base))
        self.module.exit_json(**self.result)

    def cleanup(self):
        # After the whole rollout passed its gates (deploy.yml's last play): a rollout that fails
        # on a later host puts this one back on its old current *and* previous, so nothing may
        # be removed before then.
        remove_old_releases(self.base, self.params["keep_releases"], self.result, self.check_mode)
        self.finish()

    def restart(self):
        """Restart the current release in place, gated; fail when it does not come back healthy."""
        target = self.before
        if not target:
            self.fail(f"no release is current in {self.base}: nothing to restart")
        if self.check_mode:
            self.result.update(changed=True)
            self.finish()
        if switch_and_gate(self.base, self.gate, target, target, self.result) is not None:
            self.fail(f"release {target} was restarted but failed its health gate")
        self.finish()

    def switch(self):
        params = self.params
        state = params["state"]
        if state == "present":
            target = params["release_id"]
            hooks = self.hooks(target)
            if not self.ensure_unpacked(target):
                if not self.check_mode:
                    self.fail(f"release {target} is not on the host ({self.release_dir(target)} missing)")
                # not on the host yet (no copy in check mode): a real run would switch to it
                self.result.update(changed=True, release=target,
                                   would_run_hooks=list(hooks) if self.before != target else [])
                self.finish()
            self.write_manifest(target)
            self.verify(target, with_params=True)
        else:
            hooks = {}
            target = params["release_id"] or link_target(self.base, PREVIOUS)
            if not target:
                self.fail(f"no previous release recorded in {self.base}/previous; name one with release_id")
            if not os.path.isfile(os.path.join(self.release_dir(target), self.binary)):
                available = ", ".join(list_releases(self.base)) or "none"
                self.fail(f"release {target} is not on the host (available: {available})")
            self.verify(target)
            restore_previous = params["previous_id"]
            if (restore_previous and restore_previous not in (NO_PREVIOUS, target)
                    and os.path.isdir(self.release_dir(restore_previous)) and params["allowed_signers"]):
                self.verify(restore_previous, binary_too=False)

        before = self.before
        if before == target:
            hooks = {}  # hooks run only on a switch to another release
        if self.check_mode:
            self.check_only(target, hooks)
        if before == target and not params["restart"] and self.gate.probe_now():
            # Already current and healthy: the idempotent no-op.
            self.result.update(healthy=True)
        elif before == target:
            # Current but not healthy (or its configuration changed): restart it in place, gated.
            if switch_and_gate(self.base, self.gate, target, before, self.result) is not None:
                self.fail(f"release {target} is current but failed its health gate")
        else:
            self.switch_to(target, hooks)
        if state == "rollback":
            self.restore_previous(target)
            remove_old_releases(self.base, params["keep_releases"], self.result)
        self.finish()

    def check_only(self, target, hooks):
        """Check mode: what a real run would do, changing nothing."""
        before = self.before
        if before != target:
            self.result.update(changed=True, release=target, would_run_hooks=list(hooks))
        elif self.params["restart"] or not self.gate.probe_now():
            self.result.update(changed=True)
        else:
            self.result.update(healthy=True)
        if self.params["state"] == "rollback":
            wanted = self.params["previous_id"]
            if wanted and wanted != target and link_target(self.base, PREVIOUS) != (
                    None if wanted == NO_PREVIOUS else wanted):
                self.result["changed"] = True
            protected = {target, before, link_target(self.base, PREVIOUS)}
            self.result["removed"] = releases_to_remove(list_releases(self.base), self.params["keep_releases"],
                                                        {r for r in protected if r})
        self.finish()

    def switch_to(self, target, hooks):
        """Switch from the current release to `target` with its hooks; fail like a gate on failure."""
        before = self.before
        if "before_switch" in hooks:
            outcome, failure = self.run_hook("before_switch", hooks["before_switch"], target)
            if failure is not None:
                healthy = self.gate.probe_now() if before else False
                self.result.update(evidence=failure, release=before, rolled_back=before is not None,
                                   restored_healthy=healthy if before else None, healthy=healthy)
                serving = f"{before} keeps serving" if before else "nothing was switched"
                self.fail(f"release {target}: its before_switch hook failed "
                          f"({hook_summary(outcome, self.params['hook_timeout'])}); {serving}")
        if self.params["state"] == "present":
            # deployed_at orders releases for cleanup: a redeployed old release counts as new again
            write_release_file(self.base, target, self.params["version"], self.params["sha256"])
        after = None
        if "after_switch" in hooks:
            def after():
                return self.run_hook("after_switch", hooks["after_switch"], target)[1]
        failed = switch_and_gate(self.base, self.gate, target, before, self.result, after)
        if failed is not None:
            restored = "restored and healthy" if self.result["restored_healthy"] else (
                "restored but NOT healthy" if self.result["rolled_back"] else "nothing to restore; unit stopped")
            what = "failed its health gate" if failed == "health gate" else \
                "passed its health gate but its after_switch hook failed"
            self.fail(f"release {target} {what}; {before or 'no release'} {restored}")

    def restore_previous(self, target):
        # Undoing a failed rollout: the host gets back its `previous` of before the rollout too,
        # not the release that just failed (which a later `rollback` would otherwise switch to);
        # "-": it had none.
        wanted = self.params["previous_id"]
        if not wanted or wanted == target:
            return
        if wanted != NO_PREVIOUS and os.path.isdir(self.release_dir(wanted)):
            if link_target(self.base, PREVIOUS) != wanted:
                switch_link(self.base, PREVIOUS, wanted)
                self.result["changed"] = True
        elif link_target(self.base, PREVIOUS) is not None:
            remove_link(self.base, PREVIOUS)
            self.result["changed"] = True


REQUIRED_IF = [("state", "present", ["release_id", "sha256"])]


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    run_release(module)


def run_release(module):
    release = Release(module)
    release.check_inputs()
    state = module.params["state"]
    if state == "status":
        release.status()
    elif state == "restart":
        release.restart()
    elif state == "cleanup":
        release.cleanup()
    else:
        release.switch()


# --- without Ansible ---------------------------------------------------------------------------


class ModuleExit(Exception):
    """How a direct run ends: the result and whether it failed (raised by exit_json/fail_json)."""

    def __init__(self, result):
        super().__init__(result.get("msg", ""))
        self.result = result


def _typed(name, kind, value):
    """`value` as ARGUMENT_SPEC's type `kind` (ints, floats and bools as JSON gives them)."""
    if value is None:
        return None
    if kind in ("str", "path"):
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected a string")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: expected an integer")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}: expected a number")
        return float(value)
    if kind == "dict":
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected a mapping")
        return value
    raise ValueError(f"{name}: unsupported type {kind}")


def direct_params(given):
    """The module's parameters from `given` (a JSON object) as AnsibleModule would give them:
    every option of ARGUMENT_SPEC, defaults filled in, types checked; ValueError names the first
    problem (an unknown option, a wrong type, a missing required one)."""
    unknown = sorted(set(given) - set(ARGUMENT_SPEC))
    if unknown:
        raise ValueError(f"unsupported parameters: {', '.join(unknown)}")
    params = {}
    for name, spec in ARGUMENT_SPEC.items():
        value = given.get(name, spec.get("default"))
        params[name] = _typed(name, spec["type"], value)
        if spec.get("choices") and params[name] not in spec["choices"]:
            raise ValueError(f"{name}: must be one of {', '.join(spec['choices'])}")
        if spec.get("required") and params[name] is None:
            raise ValueError(f"missing required parameter: {name}")
    for key, wanted, needed in REQUIRED_IF:
        missing = [n for n in needed if params[key] == wanted and not params[n]]
        if missing:
            raise ValueError(f"{key} is {wanted} but all of the following are missing: {', '.join(missing)}")
    return params


class DirectModule:
    """What Release needs of AnsibleModule, for a run without Ansible: params, check_mode and the
    two endings (each raises ModuleExit carrying the result)."""

    def __init__(self, params, check_mode=False):
        self.params = params
        self.check_mode = check_mode

    def exit_json(self, **result):
        raise ModuleExit(result)

    def fail_json(self, msg, **result):
        raise ModuleExit({**result, "failed": True, "msg": msg})


def receive_release(given, stream):
    """Receive a release's executable from `stream` (`given["size"]` bytes) into
    releases/<release_id>/<binary>, root's, mode 0755, unless it is there with its sha256: what
    the role's copy task does, for a run without Ansible. The bytes go to a temporary file in the
    base directory first and are renamed into place only when their sha256 matches."""
    result = {"changed": False, "failed": False}
    try:
        service = given["service"]
        binary = given.get("binary") or service
        check_file_name(binary, "binary")
        release_id = given["release_id"]
        if not _RELEASE_ID.match(release_id):
            raise ValueError(f"release_id {release_id!r} is not a release id")
        expected = given["sha256"].lower()
        size = given["size"]
        base = given.get("base_dir") or f"/opt/{service}"
    except (KeyError, AttributeError, TypeError, ValueError, CommandLineError) as exc:
        return {"changed": False, "failed": True, "msg": f"receive: bad parameters ({exc})"}
    directory = os.path.join(base, RELEASES, release_id)
    dest = os.path.join(directory, binary)
    result["dest"] = dest
    if os.path.isfile(dest) and sha256_of(dest) == expected:
        while size > 0:  # already there (a repeat deploy): whatever was sent is not needed
            chunk = stream.read(min(size, 1 << 20))
            if not chunk:
                break
            size -= len(chunk)
        return result
    if size == 0:
        return {**result, "failed": True, "msg": f"{dest} is not on the host and nothing was sent"}
    fd, tmp = tempfile.mkstemp(dir=base, prefix=".receive-")
    try:
        digest = hashlib.sha256()
        left = size
        with os.fdopen(fd, "wb") as handle:
            while left > 0:
                chunk = stream.read(min(left, 1 << 20))
                if not chunk:
                    break
                digest.update(chunk)
                handle.write(chunk)
                left -= len(chunk)
        if left:
            return {**result, "failed": True, "msg": f"{dest}: the transfer ended {left} bytes short"}
        if digest.hexdigest() != expected:
            return {**result, "failed": True,
                    "msg": f"{dest}: sha256 {digest.hexdigest()} of the bytes received does not match {expected}"}
        os.chmod(tmp, 0o755)
        os.chown(tmp, 0, 0)
        os.makedirs(directory, mode=0o755, exist_ok=True)  # only for bytes that are the release
        os.replace(tmp, dest)
        result["changed"] = True
        return result
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_direct(given, check_mode=False):
    """One call of the module without Ansible: its result as a dict (`failed` set when it failed)."""
    try:
        module = DirectModule(direct_params(given), check_mode)
    except ValueError as exc:
        return {"failed": True, "changed": False, "msg": str(exc)}
    try:
        run_release(module)
    except ModuleExit as ended:
        return ended.result
    return {"failed": True, "changed": False, "msg": "rust_release ended without a result"}


if __name__ == "__main__":
    main()
