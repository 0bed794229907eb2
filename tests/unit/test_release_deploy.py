"""Pure logic of deploy/rollback/status and of the ansible-runner adapter (no hosts, no ansible run)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config.loader import Project
from orchestrator.errors import UsageError
from orchestrator.release.hosts import _conclude, role_vars, setup_fingerprint, strategy_vars
from orchestrator.release.results import (
    CLEANUP_TASK,
    NO_PREVIOUS,
    RELEASE_TASK,
    ReleaseRunError,
    outcomes,
    previous_to_restore,
    to_restore,
)
from orchestrator.tools.ansible import (
    AnsibleSettings,
    EventCollector,
    Failure,
    HostEvent,
    PlaybookResult,
    TaskResult,
    _recorded_env,
    ansible_cfg_text,
    local_temp_dir,
    remove_orphans,
    runner_env,
    secret_vars_file,
)


def _event(kind: str, host: str, task: str, res: dict[str, Any], action: str = "rust_release") -> dict[str, Any]:
    return {"event": kind, "event_data": {"host": host, "task": task, "task_action": action, "res": res}}


def test_role_vars_come_from_the_environment_and_hold_no_secret(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    found = role_vars(loaded, project_copy / "ev")
    assert found["rust_service_name"] == "hello"
    assert found["rust_service_port"] == 8080
    assert found["rust_service_health_timeout"] == 10
    assert found["rust_service_health_interval"] == pytest.approx(0.2)
    assert found["rust_service_data_dir"] == "/var/lib/hello"
    assert found["rust_service_config"]["HELLO_GREETING"] == "hello from dev"
    assert found["rust_service_evidence_dir"] == str(project_copy / "ev")
    assert "rust_service_secret_env" not in found


def test_the_setup_fingerprint_follows_the_setups_inputs_and_the_role(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    inputs = role_vars(loaded, None)
    before = setup_fingerprint(loaded, inputs)
    assert len(before) == 64 and int(before, 16) >= 0
    # where the evidence goes (a new folder per run) and the order of the inputs are no input
    assert setup_fingerprint(loaded, {**role_vars(loaded, project_copy / "ev")}) == before
    assert setup_fingerprint(loaded, dict(reversed(list(inputs.items())))) == before
    # what the unit, the user or the directories are made of is
    assert setup_fingerprint(loaded, {**inputs, "rust_service_args": ["--port", "{port}"]}) != before
    assert setup_fingerprint(loaded, {**inputs, "rust_service_data_dir": "/srv/hello"}) != before
    assert setup_fingerprint(loaded, {**inputs, "rust_service_signing_public_keys": []}) != before
    # and so is the role itself: a template, a task file
    template = project_copy / "roles" / "rust_service" / "templates" / "service.j2"
    template.write_text(template.read_text() + "# changed\n")
    assert setup_fingerprint(loaded, inputs) != before


def test_canary_takes_the_first_hosts_and_rolling_none(project_copy: Path) -> None:
    loaded = Project(project_copy).load("staging")
    hosts = [f"h{i}" for i in range(1, 6)]
    canary = strategy_vars(loaded, "canary", hosts)
    assert canary["deploy_canary"] == ["h1"]
    assert canary["deploy_batch"] == 2
    assert canary["deploy_max_fail_percentage"] == 0
    assert strategy_vars(loaded, "rolling", hosts)["deploy_canary"] == []
    with pytest.raises(UsageError):
        strategy_vars(loaded, "canary", ["only"])


def test_outcomes_and_the_hosts_to_put_back() -> None:
    results = [
        TaskResult("a", "gate", "rust_release", "changed",
                   {"release_before": "v1-aaaaaaaaaaaa", "release": "v2-bbbbbbbbbbbb", "switched": True,
                    "changed": True, "healthy": True}),
        TaskResult("b", "gate", "rust_release", "failed",
                   {"release_before": "v1-aaaaaaaaaaaa", "release": "v1-aaaaaaaaaaaa", "switched": False,
                    "rolled_back": True, "healthy": True, "msg": "gate failed"}),
        TaskResult("c", "gate", "rust_release", "ok",
                   {"release_before": "v2-bbbbbbbbbbbb", "release": "v2-bbbbbbbbbbbb", "switched": False,
                    "healthy": True}),
        TaskResult("c", "status", "rust_release", "skipped", {}),
    ]
    found = {h.name: h for h in outcomes(results, {"a": "10.0.0.1"})}
    assert found["a"].switched and found["a"].address == "10.0.0.1"
    assert found["b"].failed and found["b"].rolled_back and found["b"].message == "gate failed"
    assert found["c"].release == "v2-bbbbbbbbbbbb", "a skipped call must not hide the real one"
    # only a host that moved to the new release in this run goes back; c was on it already
    assert to_restore(list(found.values()), "v2-bbbbbbbbbbbb") == {"a": "v1-aaaaaaaaaaaa"}


GOOD = {"release_before": "v1-aaaaaaaaaaaa", "previous_before": None, "release": "v2-bbbbbbbbbbbb",
        "switched": True, "changed": True, "healthy": True}


def test_the_cleanup_after_the_rollout_never_decides_a_host_outcome() -> None:
    results = [
        TaskResult("a", RELEASE_TASK, "rust_release", "changed", GOOD),
        # unreachable during the cleanup play: no module result at all
        TaskResult("a", CLEANUP_TASK, "rust_release", "unreachable", {"msg": "ssh: connection timed out"}),
        TaskResult("b", RELEASE_TASK, "rust_release", "changed", {**GOOD, "previous_before": "v0-cccccccccccc"}),
        TaskResult("b", CLEANUP_TASK, "rust_release", "ok", {"state": "cleanup", "removed": ["v0-x"]}),
    ]
    found = {h.name: h for h in outcomes(results, {})}
    assert found["a"].switched and not found["a"].failed
    assert found["b"].switched and found["b"].previous_before == "v0-cccccccccccc"
    # a restore gives each host its previous of before the run back, or none
    assert previous_to_restore(list(found.values()), {"a": "v1", "b": "v1"}) == {"a": NO_PREVIOUS,
                                                                                "b": "v0-cccccccccccc"}


def test_a_run_whose_only_failure_is_the_cleanup_is_deployed_with_a_note(project_copy: Path) -> None:
    loaded = Project(project_copy).load("dev")
    result = PlaybookResult(
        run_id="r1", run_dir=project_copy, playbook="deploy.yml", rc=4, status="failed", duration=1.0,
        results=[TaskResult("a", RELEASE_TASK, "rust_release", "changed", GOOD),
                 TaskResult("a", CLEANUP_TASK, "rust_release", "unreachable", {"msg": "timed out"})],
        failures=[Failure("a", CLEANUP_TASK, "timed out")])
    run = _conclude(loaded, "deploy", result, "v2-bbbbbbbbbbbb", [], tuned=True, evidence_dir=project_copy / "ev")
    assert run.state == "deployed" and run.restore is None and run.restored_hosts == {}
    assert run.notes == ["old releases not removed on a: timed out"]
    # any other failure is a failed run (here no host switched, so there is nothing to restore)
    copy_failed = PlaybookResult(
        run_id="r2", run_dir=project_copy, playbook="deploy.yml", rc=2, status="failed", duration=1.0,
        failures=[Failure("b", "Copy the release binary to the host", "No space left on device"),
                  Failure("a", CLEANUP_TASK, "timed out")])
    with pytest.raises(ReleaseRunError, match="No space left on device"):
        _conclude(loaded, "deploy", copy_failed, "v2-bbbbbbbbbbbb", [], tuned=True,
                  evidence_dir=project_copy / "ev")


def test_the_collector_counts_reports_failures_and_hides_no_log_content() -> None:
    seen: list[HostEvent] = []
    collector = EventCollector(seen.append)
    collector(_event("runner_on_ok", "a", "env file", {"censored": "hidden", "changed": True}, "template"))
    collector(_event("runner_on_failed", "b", "gate", {"msg": "release failed  its\n gate"}))
    collector(_event("runner_on_unreachable", "c", "user", {"msg": "ssh: no route"}, "user"))
    collector(_event("runner_on_skipped", "a", "status", {}))
    collector({"event": "playbook_on_stats",
               "event_data": {"ok": {"a": 3}, "changed": {"a": 1}, "failures": {"b": 1}, "dark": {"c": 1}}})
    assert [e.status for e in seen] == ["changed", "failed", "unreachable", "skipped"]
    assert collector.failures[0].message == "release failed its gate"
    assert collector.failures[1].host == "c"
    assert collector.hosts["a"].changed == 1 and collector.hosts["b"].failed == 1
    assert collector.hosts["c"].unreachable == 1
    assert seen[0].message == "" and "hidden" not in repr(collector.failures)


def test_the_artifacts_keep_results_and_drop_task_start_events_per_host() -> None:
    seen: list[HostEvent] = []
    collector = EventCollector(seen.append)
    # a host starting a task: its result event says when it started, so it is not written
    assert collector(_event("runner_on_start", "a", "env file", {})) is False
    assert collector(_event("runner_on_ok", "a", "env file", {"changed": False})) is True
    assert collector({"event": "playbook_on_task_start", "event_data": {"task": "env file"}}) is True
    assert collector({"event": "playbook_on_stats", "event_data": {"ok": {"a": 1}}}) is True
    assert [(e.host, e.status) for e in seen] == [("a", "ok")]


def test_a_cancel_waits_while_a_release_task_runs_and_not_between_tasks() -> None:
    collector = EventCollector()
    assert not collector.holding

    def task(action: str) -> None:
        collector({"event": "playbook_on_task_start", "event_data": {"task": action, "task_action": action}})

    task("copy")
    assert not collector.holding
    task("rust_release")  # a host may be between two releases until the next task starts
    collector(_event("runner_on_ok", "a", "switch", {"changed": True}))
    assert collector.holding, "one host answered; the others of the batch may still be switching"
    task("file")
    assert not collector.holding
    task("rust_release")
    collector({"event": "playbook_on_play_start", "event_data": {}})
    assert not collector.holding
    task("rust_release")
    collector({"event": "playbook_on_stats", "event_data": {}})
    assert not collector.holding


def test_tuned_settings_differ_from_stock_where_speed_is_won(tmp_path: Path) -> None:
    tuned = ansible_cfg_text(AnsibleSettings.tuned(), roles_path=tmp_path / "roles")
    stock = ansible_cfg_text(AnsibleSettings.stock(), roles_path=tmp_path / "roles")
    assert "forks = 20" in tuned and "pipelining = True" in tuned and "gathering = explicit" in tuned
    assert "ControlPersist=60s" in tuned and "control_path_dir = /tmp/orch-cp-" in tuned
    assert "forks = 5" in stock and "pipelining = False" in stock and "gathering = implicit" in stock
    assert f"roles_path = {tmp_path / 'roles'}" in stock
    plain = ansible_cfg_text(AnsibleSettings.tuned(mitogen=False), roles_path=tmp_path / "roles")
    assert "strategy" not in plain, "a plain-Ansible path must stay available"
    accelerated = AnsibleSettings.tuned(mitogen=True)
    if accelerated.strategy_plugins is not None:  # mitogen is a dependency, but may be absent
        text = ansible_cfg_text(accelerated, roles_path=tmp_path / "roles")
        assert "strategy = mitogen_linear" in text
        assert Path(accelerated.strategy_plugins, "mitogen_linear.py").is_file()
    assert AnsibleSettings.stock().strategy_plugins is None
    env = runner_env(AnsibleSettings.tuned(), tmp_path / "ansible.cfg")
    assert env["ANSIBLE_CONFIG"] == str(tmp_path / "ansible.cfg")
    assert env["ANSIBLE_HOST_KEY_CHECKING"] == "True"
    assert "ANSIBLE_LOCAL_TEMP" not in env
    stock_env = runner_env(AnsibleSettings.stock(), tmp_path / "c", tmp_path / "t")
    assert stock_env["ANSIBLE_LOCAL_TEMP"] == stock_env["TMPDIR"] == str(tmp_path / "t")


def test_ansibles_local_temp_is_memory_backed_and_removed_after_the_run() -> None:
    with local_temp_dir() as path:
        assert path.is_dir() and path.name.startswith("orch-ansible-")
        # mitogen binds a unix socket below TMPDIR: its path must stay well under 108 bytes
        assert len(str(path / "mitogen_unix_abcdefgh" / "mitogen_unix_abcdefgh.sock")) < 100
        if Path("/dev/shm").is_dir():
            assert path.parent == Path("/dev/shm")
        (path / "AnsiballZ_payload.py").write_text("module arguments")
    assert not path.exists()


def test_secret_vars_live_in_a_private_file_only_during_the_run() -> None:
    with secret_vars_file({"rust_service_secret_env": {"HELLO_SECRET": "s3cr3t"}}) as path:
        assert path is not None
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # as ansible-playbook reads `-e @FILE`: the value is there, and it is never a template
        from ansible.parsing.dataloader import DataLoader
        from ansible.template import is_trusted_as_template

        loaded = DataLoader().load_from_file(str(path), trusted_as_template=True)
        value = loaded["rust_service_secret_env"]["HELLO_SECRET"]
        assert value == "s3cr3t" and not is_trusted_as_template(value)
        # named after this process, so that a later run can remove it if this one is killed
        assert path.name.startswith(f"orch-secrets-{os.getpid()}-")
        if Path("/dev/shm").is_dir():
            assert path.parent == Path("/dev/shm")
    assert not path.exists()
    with secret_vars_file({}) as nothing:
        assert nothing is None


def test_the_secrets_file_goes_when_the_playbook_starts() -> None:
    gone: list[str] = []
    collector = EventCollector(on_start=lambda: gone.append("unlinked"))
    collector({"event": "verbose", "stdout": "[WARNING]: an inventory warning, before the vars are read"})
    assert gone == []
    collector({"event": "playbook_on_start", "event_data": {}})
    collector({"event": "playbook_on_play_start", "event_data": {}})
    assert gone == ["unlinked"]


def test_files_of_runs_whose_process_died_are_removed(tmp_path: Path) -> None:
    dead = 4_000_000  # above the kernel's pid_max: never alive
    stale_secret = tmp_path / f"orch-secrets-{dead}-abc.json"
    stale_secret.write_text("{}")
    stale_temp = tmp_path / f"orch-ansible-{dead}-xyz"
    (stale_temp / "sub").mkdir(parents=True)
    live = tmp_path / f"orch-ansible-{os.getpid()}-def"
    live.mkdir()
    unrelated = tmp_path / "orch-other-123-x"
    unrelated.mkdir()
    assert sorted(remove_orphans(tmp_path)) == sorted([stale_secret, stale_temp])
    assert not stale_secret.exists() and not stale_temp.exists()
    assert live.is_dir() and unrelated.is_dir()


def test_the_command_record_keeps_only_ansible_settings_of_the_environment() -> None:
    env = {"AWS_SECRET_ACCESS_KEY": "k", "ANSIBLE_CONFIG": "/c", "RUNNER_OMIT_EVENTS": "False", "PATH": "/bin"}
    assert _recorded_env(env) == {"ANSIBLE_CONFIG": "/c", "RUNNER_OMIT_EVENTS": "False"}


def _cli(project: Path, *args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from orchestrator.cli import cli

    result = CliRunner().invoke(cli, ["--project-dir", str(project), *args])
    return result.exit_code, result.output


def test_a_protected_environment_needs_yes_without_a_terminal(project_copy: Path) -> None:
    code, output = _cli(project_copy, "deploy", "prod", "--release", str(project_copy))
    assert code == 2
    assert "protected" in output and "--yes" in output


def test_deploy_without_an_inventory_touches_nothing(project_copy: Path, tmp_path: Path) -> None:
    binary = tmp_path / "svc"
    binary.write_bytes(b"x")
    binary.chmod(0o755)
    code, output = _cli(project_copy, "deploy", "dev", "--release", str(binary))
    assert code == 2
    assert "no inventory" in output
    assert not (project_copy / ".orchestrate" / "dev" / "artifacts").exists()


def test_rollback_refuses_something_that_is_not_a_release_id(project_copy: Path) -> None:
    code, output = _cli(project_copy, "rollback", "dev", "--to", "../../etc")
    assert code == 2
    assert "not a release id" in output


# --- interrupts ---------------------------------------------------------------------------------


def test_signals_during_a_playbook_are_noted_and_the_previous_handlers_come_back() -> None:
    import signal

    from orchestrator.tools.ansible import cancel_on_signals

    before = signal.getsignal(signal.SIGINT)
    with cancel_on_signals() as signalled:
        assert signalled() is None
        os.kill(os.getpid(), signal.SIGINT)  # noted, not raised: ansible-runner cancels the run
        assert signalled() == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_deploy_with_no_host_switched_is_an_interrupt_not_a_failure(project_copy: Path) -> None:
    from orchestrator.errors import ExitStatus, Interrupted, OrchestratorError

    loaded = Project(project_copy).load("dev")
    result = PlaybookResult(run_id="r", run_dir=project_copy, playbook="deploy.yml", rc=254, status="canceled",
                            duration=1.0, interrupted_by="SIGINT")
    with pytest.raises(Interrupted) as raised:
        _conclude(loaded, "deploy", result, "0.2.0-0123456789ab", [], tuned=True, evidence_dir=project_copy / "ev")
    assert not isinstance(raised.value, OrchestratorError)  # nothing that handles errors swallows it
    assert raised.value.exit_status == ExitStatus.INTERRUPTED
    assert str(raised.value) == "deploy of 0.2.0-0123456789ab stopped by SIGINT; no host had switched"


# --- connect timeout per target, unreachable hosts ------------------------------------------------


def test_the_connect_timeout_is_short_on_a_local_bridge_and_longer_across_a_network(project_copy: Path) -> None:
    from orchestrator.fleet.playbooks import env_playbook_run

    local = env_playbook_run(Project(project_copy).load("dev"), "status.yml", {})
    cloud = env_playbook_run(Project(project_copy).load("prod"), "status.yml", {})
    assert local.connect_timeout == 2
    assert 10 <= cloud.connect_timeout <= 15

    plain = ansible_cfg_text(AnsibleSettings.tuned(mitogen=False), roles_path=project_copy, connect_timeout=2)
    assert "timeout = 2\n" in plain
    # ssh takes the first value of an option: ours comes before the ConnectTimeout Ansible adds
    assert "-o ConnectTimeout=2 -o ServerAliveInterval=2" in plain
    accelerated = AnsibleSettings.tuned(mitogen=True)
    if accelerated.strategy_plugins is not None:
        text = ansible_cfg_text(accelerated, roles_path=project_copy, connect_timeout=2)
        # mitogen's timeout bounds the whole bootstrap; reaching sshd is bounded by ssh itself
        assert "timeout = 15\n" in text and "-o ConnectTimeout=2 " in text
    stock = ansible_cfg_text(AnsibleSettings.stock(), roles_path=project_copy, connect_timeout=10)
    assert "timeout = 10\n" in stock and "ssh_args" not in stock


def test_the_unreachable_hint_names_the_hosts_and_what_to_run(project_copy: Path) -> None:
    from orchestrator.fleet.playbooks import unreachable_hint

    local = unreachable_hint(Project(project_copy).load("dev"), ["dev-app-2"])
    assert "dev-app-2 did not answer SSH within 2 s" in local
    assert "`orchestrate provision dev` boots it again" in local and "`orchestrate up dev`" in local
    cloud = unreachable_hint(Project(project_copy).load("prod"), ["prod-app-1", "prod-app-3"])
    assert "prod-app-1, prod-app-3" in cloud
    assert "`orchestrate hosts prod`" in cloud and "`orchestrate up prod`" in cloud


def test_an_unreachable_host_is_told_apart_from_a_failed_task() -> None:
    collector = EventCollector()
    collector(_event("runner_on_failed", "b", "gate", {"msg": "gate failed"}))
    collector(_event("runner_on_unreachable", "c", "user", {"msg": "ssh: connect timed out"}, "user"))
    result = PlaybookResult(run_id="r", run_dir=Path("/nonexistent"), playbook="deploy.yml", rc=2, status="failed",
                            duration=1.0, failures=collector.failures)
    assert result.unreachable_hosts() == ["c"]
    assert [f["host"] for f in result.as_dict()["failures"] if f.get("unreachable")] == ["c"]
