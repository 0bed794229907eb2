#!/usr/bin/python3
"""Switch, health-gate and roll back a release of a systemd service in one module call.

The cost of a deploy is per module call per host, so the whole release path runs here:
verify the staged binary's sha256, switch `current` atomically, restart the unit, probe its
health, and on failure switch back, restart the previous release and probe it again.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rust_release
short_description: Health-gated switch, rollback and status of a release directory layout
description:
  - Manages C(BASE/releases/<id>/<service>), C(BASE/current) and C(BASE/previous) symlinks for a
    systemd service whose C(ExecStart) runs C(BASE/current/<service>).
  - C(state=present) verifies the binary of I(release_id) against I(sha256), records the release
    that was current as C(previous), switches C(current) atomically (symlink to a temporary name,
    then rename over), restarts the unit and probes its health (unit active and HTTP 200 on
    I(health_path) within I(health_timeout)). On failure it switches back, restarts and probes the
    previous release and fails with the evidence (health response, journal tail, unit status).
  - C(state=rollback) does the same towards the previous release or the named I(release_id);
    nothing is copied.
  - C(state=status) only reads (current, previous, unit state, one health probe).
  - C(state=cleanup) removes release directories beyond I(keep_releases), never the current or
    previous one; a deploy runs it once every host passed its gate (C(present) removes nothing).
  - When the requested release is already current and healthy, nothing changes.
options:
  state:
    description: What to do.
    type: str
    choices: [present, rollback, status, cleanup]
    default: present
  service:
    description: Name of the service, its unit and its binary.
    type: str
    required: true
  base_dir:
    description: Directory holding releases/, current and previous. Defaults to /opt/<service>.
    type: path
  release_id:
    description: Release to switch to (required for present; for rollback, default the previous one).
    type: str
  sha256:
    description: Expected sha256 of the binary (present only).
    type: str
  version:
    description: Version recorded in the release's RELEASE file.
    type: str
    default: "0.0.0"
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
    description: Seconds between two probes.
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
release: {description: Release current after this call, type: str}
previous_release: {description: Release the previous symlink names after this call, type: str}
switched: {description: Whether current now names another release than before, type: bool}
rolled_back: {description: The new release failed its gate and the one before was restored, type: bool}
restored_healthy: {description: After a rollback, whether the restored release passed its gate, type: bool}
unit: {description: systemctl is-active of the unit after the call, type: str}
healthy: {description: Whether the unit is active and the health path answered 200, type: bool}
evidence: {description: "health, journal and status text captured when a gate failed", type: dict}
removed: {description: Release directories removed by cleanup, type: list}
timings: {description: "epoch seconds of gate_failed and restored (for the rollback benchmark)", type: dict}
"""

import hashlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request

from ansible.module_utils.basic import AnsibleModule

RELEASES = "releases"
CURRENT = "current"
PREVIOUS = "previous"
#: previous_id meaning "no previous release" (the link is removed)
NO_PREVIOUS = "-"
RELEASE_FILE = "RELEASE"


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


def write_release_file(base, release_id, version, sha256):
    """Record id, version, sha256 and deployed_at; deployed_at is refreshed on every switch to it."""
    path = os.path.join(base, RELEASES, release_id, RELEASE_FILE)
    data = {"id": release_id, "version": version, "sha256": sha256, "deployed_at": time.time()}
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def releases_to_remove(releases, keep, protected):
    """Oldest releases beyond `keep`, never one in `protected` (current, previous, target)."""
    if keep <= 0 or len(releases) <= keep:
        return []
    excess = len(releases) - keep
    removable = [r for r in releases if r not in protected]
    return removable[:excess]


# --- systemd and health ----------------------------------------------------------------------


def remove_old_releases(base, keep, result):
    """Remove release directories beyond `keep` (never the current or the previous one)."""
    protected = {r for r in (link_target(base, CURRENT), link_target(base, PREVIOUS)) if r}
    for release in releases_to_remove(list_releases(base), keep, protected):
        shutil.rmtree(os.path.join(base, RELEASES, release), ignore_errors=True)
        result["removed"].append(release)
        result["changed"] = True


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


def probe_once(port, path, timeout):
    """(status or None, body or error text) of GET http://127.0.0.1:port/path."""
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed scheme
            return response.status, response.read(4096).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        body = exc.read(4096).decode("utf-8", "replace") if exc.fp is not None else ""
        return exc.code, body
    except (OSError, urllib.error.URLError) as exc:
        return None, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"


def wait_healthy(service, port, path, timeout, interval):
    """Poll until the unit is active and GET path is 200, or `timeout` passes.

    Returns (healthy, last probe as text).
    """
    deadline = time.monotonic() + timeout
    last = "no probe ran"
    while True:
        state = unit_state(service)
        if state == "active":
            status, body = probe_once(port, path, max(0.2, min(2.0, deadline - time.monotonic())))
            last = f"GET http://127.0.0.1:{port}{path} -> {status if status is not None else 'no response'}\n{body}"
            if status == 200:
                return True, last
        else:
            last = f"unit {service}.service is {state}\n"
        if time.monotonic() >= deadline:
            return False, last
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


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

    def restart(self):
        rc, out = run(["systemctl", "restart", f"{self.service}.service"], timeout=90)
        return rc == 0, out

    def wait(self):
        return wait_healthy(self.service, self.port, self.path, self.timeout, self.interval)

    def probe_now(self):
        if unit_state(self.service) != "active":
            return False
        return probe_once(self.port, self.path, 2.0)[0] == 200


def ensure_enabled(service):
    """Enable the unit so that it starts on boot; returns whether that changed anything."""
    if run(["systemctl", "is-enabled", f"{service}.service"])[1].strip() == "enabled":
        return False
    run(["systemctl", "enable", f"{service}.service"])
    return True


def switch_and_gate(module, base, gate, target, before, result):
    """Switch current to `target`, restart, probe; on failure restore `before`. Fills `result`."""
    switch_link(base, CURRENT, target)
    ensure_enabled(gate.service)
    restarted, restart_output = gate.restart()
    healthy, health_text = gate.wait() if restarted else (False, f"systemctl restart failed:\n{restart_output}")
    if healthy:
        if before and before != target:
            switch_link(base, PREVIOUS, before)
        result.update(changed=True, switched=before != target, release=target, healthy=True)
        return True
    result["timings"]["gate_failed"] = time.time()
    result["evidence"] = evidence(gate.service, health_text)
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
            run(["systemctl", "stop", f"{gate.service}.service"])
            remove_link(base, CURRENT)
        result.update(release=before, healthy=False)
    return False


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "rollback", "status", "cleanup"], "default": "present"},
            "service": {"type": "str", "required": True},
            "base_dir": {"type": "path"},
            "release_id": {"type": "str"},
            "sha256": {"type": "str"},
            "version": {"type": "str", "default": "0.0.0"},
            "port": {"type": "int", "default": 8080},
            "health_path": {"type": "str", "default": "/healthz"},
            "health_timeout": {"type": "float", "default": 10.0},
            "health_interval": {"type": "float", "default": 0.25},
            "restart": {"type": "bool", "default": False},
            "keep_releases": {"type": "int", "default": 0},
            "previous_id": {"type": "str", "default": ""},
        },
        required_if=[("state", "present", ["release_id", "sha256"])],
        supports_check_mode=False,
    )
    params = module.params
    service = params["service"]
    base = params["base_dir"] or f"/opt/{service}"
    gate = Gate(params)
    before = link_target(base, CURRENT)
    previous_before = link_target(base, PREVIOUS)
    result = {
        "state": params["state"],
        "changed": False, "release_before": before, "previous_before": previous_before, "release": before,
        "switched": False,
        "rolled_back": False, "restored_healthy": None, "healthy": None, "evidence": {}, "removed": [],
        "timings": {"started": time.time()},
    }

    if params["state"] == "status":
        result.update(previous_release=link_target(base, PREVIOUS), unit=unit_state(service),
                      healthy=gate.probe_now(), releases=list_releases(base))
        module.exit_json(**result)

    if params["state"] == "cleanup":
        # After the whole rollout passed its gates (deploy.yml's last play): a rollout that fails
        # on a later host puts this one back on its old current *and* previous, so nothing may
        # be removed before then.
        remove_old_releases(base, params["keep_releases"], result)
        result.update(previous_release=link_target(base, PREVIOUS), unit=unit_state(service))
        module.exit_json(**result)

    if params["state"] == "present":
        target = params["release_id"]
        binary = os.path.join(base, RELEASES, target, service)
        if not os.path.isfile(binary):
            module.fail_json(msg=f"release {target} is not on the host ({binary} missing)", **result)
        actual = sha256_of(binary)
        if actual != params["sha256"].lower():
            module.fail_json(msg=f"{binary}: sha256 {actual} does not match the release's {params['sha256']}",
                             **result)
    else:
        target = params["release_id"] or link_target(base, PREVIOUS)
        if not target:
            module.fail_json(msg=f"no previous release recorded in {base}/previous; name one with release_id",
                             **result)
        binary = os.path.join(base, RELEASES, target, service)
        if not os.path.isfile(binary):
            available = ", ".join(list_releases(base)) or "none"
            module.fail_json(msg=f"release {target} is not on the host (available: {available})", **result)

    if before == target and not params["restart"] and gate.probe_now():
        # Already current and healthy: the idempotent no-op.
        result.update(healthy=True)
    elif before == target:
        # Current but not healthy (or its configuration changed): restart it in place, gated.
        ok = switch_and_gate(module, base, gate, target, before, result)
        if not ok:
            result.update(previous_release=link_target(base, PREVIOUS), unit=unit_state(service))
            module.fail_json(msg=f"release {target} is current but failed its health gate", **result)
    else:
        if params["state"] == "present":
            # deployed_at orders releases for cleanup: a redeployed old release counts as new again
            write_release_file(base, target, params["version"], params["sha256"])
        ok = switch_and_gate(module, base, gate, target, before, result)
        if not ok:
            result.update(previous_release=link_target(base, PREVIOUS), unit=unit_state(service))
            restored = "restored and healthy" if result["restored_healthy"] else (
                "restored but NOT healthy" if result["rolled_back"] else "nothing to restore; unit stopped")
            module.fail_json(msg=f"release {target} failed its health gate; {before or 'no release'} {restored}",
                             **result)

    restore_previous = params["previous_id"]
    if params["state"] == "rollback" and restore_previous and restore_previous != target:
        # Undoing a failed rollout: the host gets back its `previous` of before the rollout too,
        # not the release that just failed (which a later `rollback` would otherwise switch to);
        # "-": it had none.
        if restore_previous != NO_PREVIOUS and os.path.isfile(os.path.join(base, RELEASES, restore_previous, service)):
            if link_target(base, PREVIOUS) != restore_previous:
                switch_link(base, PREVIOUS, restore_previous)
                result["changed"] = True
        elif link_target(base, PREVIOUS) is not None:
            remove_link(base, PREVIOUS)
            result["changed"] = True
    if params["state"] == "rollback":
        remove_old_releases(base, params["keep_releases"], result)
    result.update(previous_release=link_target(base, PREVIOUS), unit=unit_state(service))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
