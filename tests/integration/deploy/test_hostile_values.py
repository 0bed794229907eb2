"""Hostile values on real hosts (issue 16, "What it must show").

One fleet of two app hosts, shared by the tests of this module in file order:

1. environment values and vault secrets made of Jinja, `${`, quotes, control characters and long
   strings arrive in the running service's environment (`/proc/PID/environ` on each host) byte for
   byte, and the payloads that would create a marker file on the controller create none;
2. a host whose `current` link names a Jinja payload makes a deploy fail with a clear error (the
   reported id is not a release id), and nothing runs on the controller.
"""

from __future__ import annotations

import base64
import secrets
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config.secrets import encrypt_text, read_password_file
from orchestrator.fleet.local.terraform import fleet_for
from orchestrator.tools.cargo import find_cargo
from orchestrator.tools.process import run_command

FleetEnv = Any
pytestmark = [pytest.mark.integration, pytest.mark.hosts, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "hello-service"
TOKEN = secrets.token_hex(4)
#: where a payload that ran on the controller would leave its marker
MARKER_DIR = Path("/tmp") / f"orch-hostile-{TOKEN}"


def _payload(name: str) -> str:
    return f"{{{{ lookup('pipe', 'touch {MARKER_DIR}/{name}') }}}}"


CONFIG = {
    "HELLO_GREETING": _payload("config"),
    "ORCH_JINJA": "{% for x in [1] %}{{ x }}{% endfor %}{# c #}{{ lookup('env', 'HOME') }}",
    "ORCH_SHELL": "say \"hi\" 'there' \\ \\n $HOME ${HOME} $(id) `id` 100% %n ;",
    "ORCH_TEXT": "é ✓ 𝄞 \t tab \x1b[1m bold \x7f del",
    "ORCH_YAML": "yes",
    "ORCH_EMPTY": "",
    "ORCH_LONG": "{{" * 20000,
}
SECRETS = {
    "HELLO_SECRET": "Xy{#9k#}Q2{{ x }}$HOME",
    "ORCH_SECRET_PAYLOAD": _payload("secret"),
}
OVERRIDES = {
    "service": {"health": {"timeout": "5s", "interval": "100ms"}, "config": CONFIG},
    "rollout": {"batch_size": 1},
}


@pytest.fixture(scope="module")
def fleet(module_unbooted_project: Any) -> FleetEnv:
    made = module_unbooted_project(app_count=2, overrides=OVERRIDES)
    env_dir = made.project_dir / "inventories" / made.env_name
    password = read_password_file(env_dir / f".vault-password-{made.env_name}")
    (env_dir / "secrets.yml").write_text(encrypt_text(yaml.safe_dump(SECRETS), password))
    local, specs = fleet_for(made.loaded)
    made.hosts = specs
    local.ensure_all(specs)
    made.write_inventory()
    MARKER_DIR.mkdir(mode=0o700)
    yield made
    shutil.rmtree(MARKER_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The example service (0.1.0) and the same bytes labelled 0.2.0 (another release id)."""
    base = tmp_path_factory.mktemp("hostile-builds")
    project = base / "v1"
    project.mkdir()
    for name in ("Cargo.toml", "Cargo.lock", "src"):
        source = EXAMPLE / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, project / name)
    run_command([str(find_cargo()), "build", "--release", "--offline", "--manifest-path",
                 str(project / "Cargo.toml")], cwd=project, timeout=1200)
    v1 = project / "target" / "release" / "hello-service"
    v2 = base / "v2" / "target" / "release" / "hello-service"
    v2.parent.mkdir(parents=True)
    (base / "v2" / "Cargo.toml").write_text('[package]\nname = "hello-service"\nversion = "0.2.0"\n')
    shutil.copy2(v1, v2)
    return {"v1": v1, "v2": v2}


def service_environ(fleet: FleetEnv, host: Any) -> dict[bytes, bytes]:
    """The environment of the service's main process on `host`, as bytes."""
    out = fleet.ssh(host, "pid=$(systemctl show -p MainPID --value hello.service); "
                          "test \"$pid\" -gt 0 && base64 -w0 /proc/$pid/environ").stdout
    raw = base64.b64decode(out.strip())
    return dict(item.split(b"=", 1) for item in raw.split(b"\0") if item)


def markers() -> list[Path]:
    return sorted(MARKER_DIR.iterdir())


def test_values_and_secrets_reach_the_service_environment_byte_for_byte(
        fleet: FleetEnv, builds: dict[str, Path]) -> None:
    code, data, err = fleet.orchestrate("deploy", "--release", str(builds["v1"]), "--skip-backup")
    assert code == 0, err
    assert data["state"] == "deployed"
    for host in fleet.group("app"):
        environ = service_environ(fleet, host)
        for name, value in {**CONFIG, **SECRETS}.items():
            assert environ.get(name.encode()) == value.encode(), f"{host.name}: {name}"
    assert markers() == []


def test_a_host_whose_current_link_names_a_jinja_payload_fails_the_deploy_clearly(
        fleet: FleetEnv, builds: dict[str, Path]) -> None:
    first, second = fleet.group("app")
    # no '/' in a directory name: the payload creates its marker in the controller's home (or cwd)
    marker = f"orch-hostile-{TOKEN}-link"
    payload = f"{{{{ lookup('pipe', 'cd; touch {marker}') }}}}"
    current = fleet.ssh(first, "readlink /opt/hello/current").stdout.strip().rsplit("/", 1)[-1]
    fleet.ssh(first, f"cd /opt/hello && mv releases/{current} releases/{shlex.quote(payload)} && "
                     f"ln -sfn releases/{shlex.quote(payload)} current.new && mv -T current.new current")
    # the second host then fails its gate, so the run decides which hosts to put back
    fleet.ssh(second, "mkdir -p /etc/systemd/system/hello.service.d && printf '[Service]\\nExecStartPre=/bin/false\\n'"
                      " > /etc/systemd/system/hello.service.d/zz-fail.conf && systemctl daemon-reload")
    try:
        code, _, err = fleet.orchestrate("deploy", "--release", str(builds["v2"]), "--skip-backup")
    finally:
        fleet.ssh(second, "rm -f /etc/systemd/system/hello.service.d/zz-fail.conf && systemctl daemon-reload")
    assert code == 1, err
    assert f"{first.name} reported its release before the run as {payload!r}, which is not a release id" in err
    assert "Traceback" not in err
    places = [Path.home(), fleet.project_dir, Path.cwd(), Path("/tmp"), fleet.state_dir / "runs"]
    assert [p for p in places if (p / marker).exists()] == []
    assert not list(fleet.state_dir.rglob(marker))
    assert markers() == []
