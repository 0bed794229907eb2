"""How a playbook run is driven (orchestrator/tools/runner_pipe.py), with real ansible-playbook and
no hosts (a local connection): results arrive live on the calling thread while the run goes on, a
signal stops the run between tasks and never inside one, the signal handlers of the process are the
ones it had, a timeout kills the run, and the artifacts are ansible-runner's.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from orchestrator.tools.ansible import HostEvent, PlaybookInterrupted, PlaybookRun, run_playbook
from tests.support.project import local_playbook_project

pytestmark = pytest.mark.integration

PLAYBOOK = """
- name: Three tasks that take a while
  hosts: all
  gather_facts: false
  tasks:
    - name: First
      ansible.builtin.command: sleep {first}
    - name: Second
      ansible.builtin.command: sleep {rest}
    - name: Third
      ansible.builtin.command: sleep {rest}
"""


def _run(tmp_path: Path, first: float = 0, rest: float = 0, timeout: int = 300) -> PlaybookRun:
    project, playbook, inventory = local_playbook_project(tmp_path, "pb.yml", PLAYBOOK.format(first=first, rest=rest))
    return PlaybookRun(playbook=playbook, inventory=inventory, project_dir=project, runs_dir=tmp_path / "runs",
                       timeout=timeout)


def test_results_arrive_live_on_the_calling_thread_and_the_artifacts_are_written(tmp_path: Path) -> None:
    run = _run(tmp_path, rest=1)
    seen: list[tuple[float, str, str, bool]] = []
    started = time.monotonic()

    def on_event(event: HostEvent) -> None:
        seen.append((time.monotonic() - started, event.task, event.status,
                     threading.current_thread() is threading.main_thread()))

    os.environ["ORCHESTRATE_TEST_NOT_RECORDED"] = "hush"
    try:
        result = run_playbook(run, on_event=on_event)
    finally:
        del os.environ["ORCHESTRATE_TEST_NOT_RECORDED"]
    ended = time.monotonic() - started
    assert result.ok and result.rc == 0 and result.status == "successful"
    assert [(task, status) for _, task, status, _ in seen] == [("First", "changed"), ("Second", "changed"),
                                                               ("Third", "changed")]
    assert all(main for *_, main in seen)
    # the first result came a second or more before the last one and the end of the run: live
    assert seen[-1][0] - seen[0][0] >= 1.5 and ended - seen[0][0] >= 1.5
    artifacts = run.runs_dir / run.run_id / "artifacts" / run.run_id
    assert (artifacts / "rc").read_text() == "0" and (artifacts / "status").read_text() == "successful"
    assert "PLAY RECAP" in (artifacts / "stdout").read_text()
    events = [json.loads(p.read_text()) for p in (artifacts / "job_events").glob("*.json")]
    assert {"playbook_on_start", "playbook_on_stats"} <= {e.get("event") for e in events}
    assert sum(e.get("event") == "runner_on_ok" for e in events) == 3
    assert not list((artifacts / "job_events").glob("*partial*"))
    record = json.loads((artifacts / "command").read_text())
    assert record["command"][0].endswith("ansible-playbook")
    assert "ANSIBLE_CONFIG" in record["env"] and "ORCHESTRATE_TEST_NOT_RECORDED" not in record["env"]
    assert all((artifacts / name).stat().st_mode & 0o077 == 0 for name in ("command", "stdout", "rc", "status"))


@pytest.mark.parametrize("prestart", [False, True], ids=["program", "prestarted"])
def test_a_signal_stops_the_run_after_the_running_task_and_the_handlers_stay_the_processs(
        tmp_path: Path, prestart: bool) -> None:
    from orchestrator.tools import ansible_prestart

    run = _run(tmp_path, first=0, rest=30)
    if prestart:
        ansible_prestart.prestart()
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    def interrupt_after_first(event: HostEvent) -> None:
        if event.task == "First":  # as a Ctrl-C would: the second task is about to start
            os.kill(os.getpid(), signal.SIGINT)

    started = time.monotonic()
    with pytest.raises(PlaybookInterrupted) as raised:
        run_playbook(run, on_event=interrupt_after_first)
    took = time.monotonic() - started
    stopped = raised.value.run
    assert stopped.interrupted_by == "SIGINT" and stopped.status == "canceled"
    # Second (30 s) was killed: no task holds a signal back but the release switch
    assert took < 15, took
    assert [(r.task, r.status) for r in stopped.results] == [("First", "changed")]
    artifacts = run.runs_dir / run.run_id / "artifacts" / run.run_id
    assert (artifacts / "status").read_text() == "canceled"
    assert json.loads((artifacts / "command").read_text())["started"] == ("prestarted" if prestart else "program")
    # ansible-runner's own handlers were never installed: a later Ctrl-C is the process's again
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


def test_the_run_is_killed_at_its_timeout(tmp_path: Path) -> None:
    run = _run(tmp_path, first=60, timeout=3)
    started = time.monotonic()
    result = run_playbook(run)
    assert time.monotonic() - started < 20
    assert result.status == "timeout" and not result.ok
    assert result.results == []


SEES = """
- name: What the controller process sees
  hosts: all
  gather_facts: false
  tasks:
    - name: Look
      ansible.builtin.command: sh -c 'umask; pwd; printf "%s\\n" "$ORCHESTRATE_TEST_MARK" "$ANSIBLE_CONFIG" "$TMPDIR"'
      register: looked
    - name: Secret
      ansible.builtin.command: echo hush-hush
      no_log: true
"""


def _sees(tmp_path: Path, prestart: bool) -> tuple[list[str], dict[str, object], list[dict[str, object]]]:
    from orchestrator.tools import ansible_prestart

    project, playbook, inventory = local_playbook_project(tmp_path, "sees.yml", SEES)
    run = PlaybookRun(playbook=playbook, inventory=inventory, project_dir=project, runs_dir=tmp_path / "runs")
    if prestart:
        ansible_prestart.prestart()  # as `orchestrate deploy` does first thing, before the run's settings exist
    os.environ["ORCHESTRATE_TEST_MARK"] = "set after the start"
    old_umask = os.umask(0o027)
    try:
        result = run_playbook(run)
    finally:
        os.umask(old_umask)
        del os.environ["ORCHESTRATE_TEST_MARK"]
        assert ansible_prestart.take() is None  # the run took it (or there was none)
    assert result.ok, result.failures
    looked = next(r for r in result.results if r.task == "Look")
    artifacts = run.runs_dir / run.run_id / "artifacts" / run.run_id
    record = json.loads((artifacts / "command").read_text())
    events = [json.loads(p.read_text()) for p in (artifacts / "job_events").glob("*.json")]
    return str(looked.result["stdout"]).splitlines(), record, events


def test_a_prestarted_ansible_playbook_runs_as_the_program_would(tmp_path: Path) -> None:
    program, record, _ = _sees(tmp_path / "program", prestart=False)
    prestarted, prestarted_record, events = _sees(tmp_path / "prestarted", prestart=True)
    assert record["started"] == "program" and prestarted_record["started"] == "prestarted"
    # the run's umask, working directory and environment, not the ones of the moment it was started
    umask, cwd, mark, config, tmpdir = prestarted
    assert umask == "0027" and mark == "set after the start"
    assert cwd == str(tmp_path / "prestarted" / "project")
    assert config.endswith("/ansible.cfg") and config.startswith(str(tmp_path / "prestarted" / "runs"))
    assert tmpdir.startswith("/dev/shm/") or tmpdir.startswith("/tmp")
    assert [line.replace("/program/", "/prestarted/") for line in program[:3]] == prestarted[:3]
    # what no_log hides stays hidden in the events
    secret = [e for e in events if (e.get("event_data") or {}).get("task") == "Secret"
              and e["event"] == "runner_on_ok"]
    assert len(secret) == 1 and "hush-hush" not in json.dumps(events)
    assert secret[0]["event_data"]["res"] == {"censored": "the output has been hidden due to the fact that "
                                                           "'no_log: true' was specified for this result"}
