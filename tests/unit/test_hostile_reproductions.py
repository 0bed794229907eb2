"""The reproductions of issue 16's findings 1-5 and 10, each a test that fails without its fix.

1. a release id a host reports (its `current` link) went back to Ansible as a template;
2. environment values and vault secrets were templated by Ansible on the controller;
3. a newline in schedule.release wrote a second, root cron entry;
4. a Cargo.toml version with `/../` staged the binary outside .orchestrate/;
5. service.user root, data_dir /etc, newlines in health.path and names, `${` in rendered HCL;
10. a file that is not UTF-8 was reported without a line number.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import cli
from orchestrator.config.loader import Project
from orchestrator.config.types import check_args
from orchestrator.errors import UsageError
from orchestrator.fleet.render import render_environment
from orchestrator.ids import is_release_id, is_run_id
from orchestrator.pipeline.schedule import build_entry
from orchestrator.release import hosts as release_hosts
from orchestrator.release.artifact import prepare_release
from orchestrator.release.results import RELEASE_TASK, ReleaseRunError, outcomes
from orchestrator.runs.identity import new_run_id
from orchestrator.tools.ansible import PlaybookResult, TaskResult, extra_vars_cmdline, unsafe_yaml
from tests.unit.test_hostile_input import assert_reaches_ansible_as_data

PAYLOAD = "{{ lookup('pipe', 'touch /tmp/orch-issue16-marker') }}"


def _set(project: Path, env: str, update: dict[str, Any]) -> None:
    path = project / "inventories" / env / "environment.yml"
    data = yaml.safe_load(path.read_text())

    def merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value

    merge(data, update)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _validate(project: Path, env: str = "dev", *args: str) -> Any:
    return CliRunner().invoke(cli, ["--project-dir", str(project), "validate", env, *args])


# --- 1. what a host reports ---------------------------------------------------------------------


def test_1_a_release_a_host_reports_that_is_not_a_release_id_is_never_passed_on(
        project_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """app-1 switched (its `current` named a Jinja payload before); app-2 failed its gate. The fleet
    restore must not hand app-1's report to Ansible, and the deploy says why it failed."""
    loaded = Project(project_copy).load("dev")
    reported = f"releases/{PAYLOAD}".rsplit("/", 1)[1]
    result = PlaybookResult(
        run_id="r1", run_dir=project_copy, playbook="deploy.yml", rc=2, status="failed", duration=1.0,
        results=[
            TaskResult("app-1", RELEASE_TASK, "rust_release", "changed",
                       {"release_before": reported, "release": "0.2.0-bbbbbbbbbbbb", "switched": True,
                        "changed": True, "healthy": True}),
            TaskResult("app-2", RELEASE_TASK, "rust_release", "failed",
                       {"release_before": "0.1.0-aaaaaaaaaaaa", "release": "0.1.0-aaaaaaaaaaaa", "switched": False,
                        "rolled_back": True, "healthy": True, "msg": "gate failed"}),
        ])
    handed_to_ansible: list[dict[str, Any]] = []
    monkeypatch.setattr(release_hosts, "_run", lambda _loaded, _playbook, extra, **_: handed_to_ansible.append(
        dict(extra)) or result)
    with pytest.raises(ReleaseRunError) as info:
        release_hosts._conclude(loaded, "deploy", result, "0.2.0-bbbbbbbbbbbb", [], tuned=True,
                                evidence_dir=project_copy / "ev")
    assert f"app-1 reported its release before the run as {reported!r}, which is not a release id" in str(info.value)
    assert PAYLOAD not in repr(handed_to_ansible)
    found = {h.name: h for h in info.value.run.hosts}
    assert found["app-1"].failed and found["app-1"].release_before is None


@pytest.mark.parametrize("reported", [PAYLOAD, "0.1.0-aaaaaaaaaaaa\n", "../../etc-aaaaaaaaaaaa", "", None])
def test_1_only_whole_release_ids_are_taken_from_a_host(reported: Any) -> None:
    found = outcomes([TaskResult("h", RELEASE_TASK, "rust_release", "ok",
                                 {"release_before": reported, "release": "0.1.0-aaaaaaaaaaaa"})], {})[0]
    assert found.release == "0.1.0-aaaaaaaaaaaa"
    assert found.release_before is None
    assert found.failed == bool(reported)


def test_1_status_takes_only_release_ids_from_hosts() -> None:
    from orchestrator.fleet.inventory import Host
    from orchestrator.fleet.remote import HostRun
    from orchestrator.release.probe import host_status

    def probe(host: str, current: str, previous: str, releases: str) -> HostRun:
        # what `status_command` prints on a host whose links and release dirs are as given
        out = f"current={current}\nprevious={previous}\nunit=active\nreleases={releases}\n"
        return HostRun(host, "10.0.0.1", 0, out, "", 0.1)

    app1 = host_status(Host("app-1", "10.0.0.1", ("app",)),
                       probe("app-1", f"releases/{PAYLOAD}", "releases/0.1.0-aaaaaaaaaaaa",
                             f"0.1.0-aaaaaaaaaaaa {PAYLOAD}"), True, "")
    assert app1.release is None and not app1.healthy
    assert app1.releases == ["0.1.0-aaaaaaaaaaaa"]
    assert "app-1 reported its release as" in app1.error and "not a release id" in app1.error
    # a stray directory among the releases is left out, the host stays healthy
    app2 = host_status(Host("app-2", "10.0.0.2", ("app",)),
                       probe("app-2", "releases/0.2.0-bbbbbbbbbbbb", "", "0.2.0-bbbbbbbbbbbb old"), True, "")
    assert app2.healthy and app2.release == "0.2.0-bbbbbbbbbbbb" and app2.releases == ["0.2.0-bbbbbbbbbbbb"]
    assert "'old'" in app2.error


def test_ids_are_matched_as_whole_strings() -> None:
    assert is_release_id("0.1.0-aaaaaaaaaaaa") and not is_release_id("0.1.0-aaaaaaaaaaaa\n")
    assert is_run_id(new_run_id()) and not is_run_id(new_run_id() + "\n")
    from orchestrator.release.backup import BACKUP_ID_RE

    assert BACKUP_ID_RE.match("20261123T181500Z") and not BACKUP_ID_RE.match("20261123T181500Z\n")


@pytest.mark.parametrize(("argv", "message"), [
    (["rollback", "dev", "--to", "0.1.0-aaaaaaaaaaaa\n"], "--to '0.1.0-aaaaaaaaaaaa\\n' is not a release id"),
    (["resume", "20261123T181500-abcd\n"], "RUN_ID '20261123T181500-abcd\\n' is not a run id"),
    (["runs", "dev", "20261123T181500-abcd/../x"], "RUN_ID '20261123T181500-abcd/../x' is not a run id"),
    (["up", "dev", "--resume", "{{ x }}"], "--resume '{{ x }}' is not a run id"),
])
def test_ids_on_the_command_line_are_checked_whole(project_copy: Path, argv: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["--project-dir", str(project_copy), *argv])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not (project_copy / ".orchestrate").exists()


# --- 2. values and secrets are data --------------------------------------------------------------------


def test_2_environment_values_and_secrets_reach_ansible_as_data_never_templates(project_copy: Path) -> None:
    _set(project_copy, "dev", {"service": {"config": {"HELLO_GREETING": PAYLOAD, "X": "{% if 1 %}{# c #}"}}})
    loaded = Project(project_copy).load("dev")
    variables = release_hosts.role_vars(loaded, None)
    assert variables["rust_service_config"]["HELLO_GREETING"] == PAYLOAD
    assert_reaches_ansible_as_data(variables)
    assert_reaches_ansible_as_data({"rust_service_secret_env": {"HELLO_SECRET": "Xy{#9k#}Q2{{ x }}$HOME"}})


@pytest.mark.parametrize("value", ["yes", "no", "on", "", "null", "~", "0x10", "007", "1e3", "2001-12-14", "-"])
def test_strings_that_look_like_other_yaml_scalars_stay_strings(value: str) -> None:
    # Ansible resolves a scalar tagged `!unsafe` as if unquoted: the tag must not be on the strings
    assert_reaches_ansible_as_data({"s": value, "l": [value], "m": {value or "k": value}})


def test_the_vars_files_are_passed_as_files_never_on_the_command_line(tmp_path: Path) -> None:
    text = unsafe_yaml({"a": PAYLOAD, "n": 5, "b": True, "p": tmp_path})
    assert text.startswith("!unsafe\n") and PAYLOAD in text
    assert extra_vars_cmdline([tmp_path / "x y.yml", Path("/dev/shm/s.yml")]) == \
        f"-e '@{tmp_path}/x y.yml' -e @/dev/shm/s.yml"
    with pytest.raises(TypeError, match="extra var o: cannot pass a object"):
        unsafe_yaml({"o": object()})


# --- 3. cron ------------------------------------------------------------------------------------------


def test_3_a_newline_in_schedule_release_writes_no_cron_entry(project_copy: Path, tmp_path: Path) -> None:
    _set(project_copy, "staging", {"schedule": {"cron": "0 3 * * *",
                                               "release": "examples/hello-service\n* * * * * root touch /tmp/x"}})
    cron_dir = tmp_path / "cron.d"
    result = CliRunner().invoke(cli, ["--project-dir", str(project_copy), "schedule", "staging", "--install",
                                      "--cron-dir", str(cron_dir)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: inventories/staging/environment.yml:")
    assert "schedule.release:" in result.stderr and "control characters (\\n)" in result.stderr
    assert not cron_dir.exists()


@pytest.mark.parametrize("release", ["x\n* * * * * root id", "x\ry", "x\x00y"])
def test_3_the_cron_line_never_holds_a_control_character(project_copy: Path, release: str) -> None:
    loaded = Project(project_copy).load("staging")
    with pytest.raises(UsageError, match="--release would hold control characters"):
        build_entry(loaded, release=release)


@pytest.mark.parametrize("expression", ["99 99 * * *", "foo bar baz qux quux", "0 0 L * *", "0 0 * * mon#2",
                                        "0 0 ? * *", "1 2 3 4 5 6", "* * * *", "@every", "0 3 * * 1-5\n"])
def test_3_cron_expressions_cron_would_not_run_are_refused(project_copy: Path, expression: str) -> None:
    loaded = Project(project_copy).load("staging")
    with pytest.raises(UsageError, match="--cron: "):
        build_entry(loaded, expression=expression)


@pytest.mark.parametrize("expression", ["0 3 * * 1-5", "*/5 * * * *", "0 0 1 jan,JUL *", "30 4 1-10/2 * sun",
                                        "@daily", "0 0 * * 7"])
def test_3_cron_expressions_cron_runs_are_kept(project_copy: Path, expression: str) -> None:
    assert build_entry(Project(project_copy).load("staging"), expression=expression).expression == expression


# --- 4. release versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0.0/../../../../escaped", PAYLOAD, "1.0.0\n", "..", ""])
def test_4_a_version_that_cannot_be_part_of_an_id_is_refused_before_staging(
        project_copy: Path, tmp_path: Path, version: str) -> None:
    crate = tmp_path / "crate"
    binary = crate / "target" / "release" / "hello-service"
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"#!/bin/sh\n")
    binary.chmod(0o755)
    # a TOML basic string takes JSON's escapes
    (crate / "Cargo.toml").write_text(f'[package]\nname = "x"\nversion = {json.dumps(version)}\n')
    loaded = Project(project_copy).load("dev")
    before = set(tmp_path.rglob("*")) | set(project_copy.rglob("*"))
    if version == "":  # no version: the default, a normal release
        assert is_release_id(prepare_release(loaded, binary).id)
        return
    with pytest.raises(UsageError, match="cannot be part of a release id"):
        prepare_release(loaded, binary)
    assert set(tmp_path.rglob("*")) | set(project_copy.rglob("*")) == before


# --- 5. validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("update", "field"), [
    ({"service": {"user": "root"}}, "service.user"),
    ({"service": {"user": "systemd-network"}}, "service.user"),
    ({"service": {"user": "Hello"}}, "service.user"),
    ({"service": {"name": "daemon", "user": ""}}, "service.user"),
    ({"service": {"data_dir": "/etc"}}, "service.data_dir"),
    ({"service": {"data_dir": "/srv"}}, "service.data_dir"),
    ({"service": {"data_dir": "/var/lib/dpkg"}}, "service.data_dir"),
    ({"service": {"data_dir": "/var/lib/hello/./x"}}, "service.data_dir"),
    ({"service": {"data_dir": "/var/lib/with space"}}, "service.data_dir"),
    ({"service": {"health": {"path": "/healthz\n"}}}, "service.health.path"),
    ({"service": {"health": {"path": "/h z"}}}, "service.health.path"),
    ({"service": {"name": "hello\n"}}, "service.name"),
    ({"name": "dev\n"}, "name"),
    ({"terraform": {"vars": {"host_prefix": "dev\n"}}}, "terraform.vars.host_prefix"),
    ({"service": {"config": {"GREETING\n": "x"}}}, "service.config"),
    ({"service": {"config": {"GREETING": "a\nb"}}}, "service.config.GREETING"),
    ({"healing": {"listen": "127.0.0.1:9095\n"}}, "healing.listen"),
    ({"monitoring": {"retention": "7d\n#"}}, "monitoring.retention"),
])
def test_5_what_cannot_be_written_safely_is_refused_with_its_line(project_copy: Path, update: dict[str, Any],
                                                                  field: str) -> None:
    _set(project_copy, "dev", update)
    result = _validate(project_copy)
    assert result.exit_code == 2, result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: inventories/dev/environment.yml:")
    assert f": {field}: " in first
    assert "Traceback" not in result.output
    assert not (project_copy / ".orchestrate").exists()


@pytest.mark.parametrize("update", [
    {"service": {"user": "hello-svc", "data_dir": "/srv/hello"}},
    {"service": {"data_dir": "/opt/hello-data"}},
    {"service": {"health": {"path": "/api/v1/health_check.json"}}},
    {"service": {"config": {"GREETING": "tab\tand \x1b[1m and ${X} and {{ y }}"}}},
])
def test_5_what_can_be_written_safely_is_kept(project_copy: Path, update: dict[str, Any]) -> None:
    _set(project_copy, "dev", update)
    assert _validate(project_copy).exit_code == 0


def test_5_interpolation_in_rendered_hcl_is_escaped(project_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATE_AWS_ENDPOINT", "http://127.0.0.1:4566/${x}")
    _set(project_copy, "prod", {"terraform": {"backend": {"key": "prod/${path.module}/%{ if true }x%{ endif }"},
                                              "vars": {"tags": {"team": "orch-${var.x}"}}}})
    result = render_environment(Project(project_copy).load("prod"))
    main = (result.terraform_dir / "main.tf").read_text()
    assert 'key          = "prod/$${path.module}/%%{ if true }x%%{ endif }"\n' in main
    assert '"http://127.0.0.1:4566/$${x}"' in main and "/${x}" not in main.replace("$${x}", "")
    # a JSON variables file is literal: the value goes there as it is
    assert '"team": "orch-${var.x}"' in (result.terraform_dir / "terraform.tfvars.json").read_text()


@pytest.mark.parametrize("region", ["eu-west-1${x}", "eu-west-1\n", "EU"])
def test_5_regions_are_region_names(project_copy: Path, region: str) -> None:
    _set(project_copy, "prod", {"terraform": {"backend": {"region": region}}})
    result = _validate(project_copy, "prod")
    assert result.exit_code == 2 and "terraform.backend.region: " in result.stderr


@pytest.mark.parametrize(("argv", "problem"), [
    (["--port", "{port}", "{{ x }}", "${1:-x}", "{}", 8080], None),
    (["{prot}"], "[0]: unknown placeholder {prot}; valid: {config_dir}, {data_dir}, {name}, {port}, {release_dir}"),
    (["ok", "{{x}}"], "[1]: unknown placeholder {x}"),
    (["a\nb"], "[0]: control characters are not allowed (\\n)"),
    ([True], "[0]: expected a string, got bool"),
    ("--port 80", "expected a list of strings, got str"),
])
def test_service_arguments_are_checked_as_the_role_reads_them(argv: Any, problem: str | None) -> None:
    found = check_args(argv)
    assert found is None if problem is None else (found or "").startswith(problem)


# --- 10. not UTF-8 -----------------------------------------------------------------------------------------


def test_10_a_file_that_is_not_utf8_is_reported_with_its_line(project_copy: Path) -> None:
    path = project_copy / "inventories" / "dev" / "environment.yml"
    lines = path.read_bytes().split(b"\n")
    index = next(i for i, line in enumerate(lines) if b"HELLO_GREETING" in line)
    lines[index] = b"    HELLO_GREETING: caf\xe9"
    path.write_bytes(b"\n".join(lines))
    result = _validate(project_copy)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        f"error: inventories/dev/environment.yml:{index + 1}: not UTF-8 text: byte 0xe9 at column 24 "
        "(invalid continuation byte)")
    assert os.listdir(project_copy / "inventories" / "dev")  # still there, nothing else written
    assert not (project_copy / ".orchestrate").exists()
