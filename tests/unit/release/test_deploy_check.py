"""`deploy --check`: each host's answer from its task results in check mode (pure)."""

from __future__ import annotations

from orchestrator.fleet.inventory import Host
from orchestrator.release.check import ENV_REPORT_TASK, UNIT_TASK, DeployCheck, host_check
from orchestrator.release.results import CLEANUP_TASK, RELEASE_TASK
from orchestrator.tools.ansible import TaskResult

HOST = Host("dev-app-1", "10.213.10.10", ("app",))
TARGET = "0.2.0-0123456789ab"
BEFORE = "0.1.0-aaaaaaaaaaaa"


def task(name: str, status: str, action: str = "ansible.builtin.file", **result: object) -> TaskResult:
    return TaskResult(host="dev-app-1", task=name, action=action, status=status, result=result)


def test_the_modules_answers_in_check_mode() -> None:
    results = [
        task("Create the service's system user", "ok", "ansible.builtin.user"),
        task(UNIT_TASK, "changed", "ansible.builtin.template"),
        task("Write the service's environment file", "changed", "rust_env_file", censored="no_log", changed=True),
        task(ENV_REPORT_TASK, "ok", "ansible.builtin.debug", msg="/etc/hello/hello.env: HELLO_GREETING, NEW_KEY"),
        task(f"Copy the release binary to the host as {TARGET}", "changed", "ansible.builtin.copy"),
        task(RELEASE_TASK, "changed", "rust_release", release_before=BEFORE, release=TARGET, changed=True,
             would_run_hooks=["before_switch", "after_switch"]),
        task(CLEANUP_TASK, "changed", "rust_release", state="cleanup", removed=["old"]),
    ]
    found = host_check(HOST, results, target=TARGET, probed_release="ignored")
    assert (found.release_before, found.release_after) == (BEFORE, TARGET)
    assert found.unit_changed and found.env_changed
    assert found.env_keys == ["HELLO_GREETING", "NEW_KEY"]
    assert found.hooks == ["before_switch", "after_switch"]
    assert found.other == [] and found.changes


def test_keys_reported_by_the_env_file_module_itself() -> None:
    results = [task("Write the service's environment file", "changed", "rust_env_file", keys_changed=["A"])]
    assert host_check(HOST, results, target=TARGET, probed_release=TARGET).env_keys == ["A"]


def test_nothing_would_change() -> None:
    results = [task(UNIT_TASK, "ok"), task("Write the service's environment file", "ok", "rust_env_file"),
               task(RELEASE_TASK, "ok", "rust_release", release_before=TARGET, release=TARGET, changed=False)]
    found = host_check(HOST, results, target=TARGET, probed_release=TARGET)
    assert not found.changes and found.env_keys == [] and not found.release_changes


def test_a_module_without_check_mode_falls_back_to_the_probed_release() -> None:
    results = [task(RELEASE_TASK, "skipped", "rust_release", skipped=True, msg="does not support check mode")]
    found = host_check(HOST, results, target=TARGET, probed_release=BEFORE)
    assert (found.release_before, found.release_after, found.changes) == (BEFORE, TARGET, True)
    same = host_check(HOST, results, target=TARGET, probed_release=TARGET)
    assert not same.changes


def test_other_changes_and_failures_are_reported() -> None:
    results = [task("Create the data and configuration directories", "changed"),
               task(RELEASE_TASK, "ok", "rust_release", release_before=TARGET, release=TARGET)]
    found = host_check(HOST, results, target=TARGET, probed_release=TARGET, failure="")
    assert found.other == ["Create the data and configuration directories"] and found.changes
    check = DeployCheck(env="dev", release=TARGET, strategy="rolling", hosts=[
        found, host_check(Host("dev-app-2", "10.213.10.11", ("app",)), [], target=TARGET, probed_release=None,
                          failure="unreachable")])
    data = check.as_dict()
    assert data["changes"] is True and data["action"] == "check"
    assert [h.name for h in check.failed] == ["dev-app-2"]
    assert data["hosts"][0]["release_before"] == TARGET and data["hosts"][0]["release"] == TARGET


def test_a_censored_env_file_task_is_read_from_the_roles_report() -> None:
    # no_log hides the module's result, `changed` included: the event says ok
    results = [task("Write the service's environment file", "ok", "rust_env_file",
                    censored="the output has been hidden due to the fact that 'no_log: true' was specified"),
               task(ENV_REPORT_TASK, "ok", "ansible.builtin.debug", msg="/etc/hello/hello.env: NEW_KEY")]
    found = host_check(HOST, results, target=TARGET, probed_release=TARGET)
    assert found.env_changed and found.env_keys == ["NEW_KEY"] and found.changes
