"""`up` resumed late in a run: what the passed-over steps found comes from the journal.

The fleet is a stand-in here (orchestrator.release.probe.fleet_status is replaced): these tests are about what
the pipeline compares the fleet with, not about asking hosts (tests/integration/up does that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.config.loader import LoadedEnvironment, Project
from orchestrator.pipeline.up import END, STEPS, UpRequest, VerifyFailed, up
from orchestrator.release import probe as probe_module
from orchestrator.release.results import FleetStatus, HostStatus
from orchestrator.runs.journal import Journal

RELEASE = "0.2.0-aaaaaaaaaaaa"
OTHER = "0.1.0-bbbbbbbbbbbb"


@pytest.fixture
def loaded(project_copy: Path) -> LoadedEnvironment:
    return Project(project_copy).load("dev")


def interrupted_run(loaded: LoadedEnvironment, done: tuple[str, ...]) -> str:
    """A journalled `up` of RELEASE whose steps `done` completed before its process died."""
    with Journal.open(loaded.state_dir, env=loaded.name) as journal:
        run = journal.start_run("up", ["up", "dev", "--release", "/srv/hello"], steps=STEPS)
        for name in done:
            with run.step(name) as handle:
                if name == "build":
                    handle.detail.update(release=RELEASE, binary="/srv/staged/hello")
                    run.set_release(RELEASE)
                if name == "render":
                    handle.detail["fingerprint"] = "f" * 64
        run.interrupt("killed")
        return run.id


def fleet_on(monkeypatch: pytest.MonkeyPatch, *releases: str) -> list[str]:
    """Make `status` report one healthy host per release; returns the calls made."""
    calls: list[str] = []

    def status(loaded: LoadedEnvironment) -> FleetStatus:
        calls.append(loaded.name)
        hosts = [HostStatus(name=f"dev-app-{i}", address=f"10.0.0.{i}", release=r, previous_release=None,
                            unit="active", healthy=True) for i, r in enumerate(releases, start=1)]
        return FleetStatus(env=loaded.name, hosts=hosts, duration=0.1)

    monkeypatch.setattr(probe_module, "fleet_status", status)
    return calls


def resume(loaded: LoadedEnvironment, run_id: str) -> Any:
    request = UpRequest(argv=["up", "dev", "--release", "/srv/hello"], release_path=Path("/srv/hello"),
                        resume=run_id, lock_wait=0)
    return up(loaded, request)


def run_state(loaded: LoadedEnvironment, run_id: str) -> str:
    with Journal.open(loaded.state_dir, env=loaded.name) as journal:
        found = journal.get(run_id)
        assert found is not None
        return found.state


def test_resume_at_verify_checks_the_runs_release(loaded: LoadedEnvironment, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = interrupted_run(loaded, STEPS[:-1])
    # one host was switched by hand to another (healthy) release after the crash
    fleet_on(monkeypatch, RELEASE, OTHER)
    with pytest.raises(VerifyFailed, match=f"expected {RELEASE}"):
        resume(loaded, run_id)
    assert run_state(loaded, run_id) == "failed"


def test_resume_at_verify_on_one_other_release_fails_too(loaded: LoadedEnvironment,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # the whole fleet healthy on one release, but not this run's: still not this run's outcome
    run_id = interrupted_run(loaded, STEPS[:-1])
    fleet_on(monkeypatch, OTHER, OTHER)
    with pytest.raises(VerifyFailed, match=f"the fleet is on {OTHER}, expected {RELEASE}"):
        resume(loaded, run_id)


def test_resume_at_verify_completes_on_the_runs_release(loaded: LoadedEnvironment,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = interrupted_run(loaded, STEPS[:-1])
    calls = fleet_on(monkeypatch, RELEASE, RELEASE)
    result = resume(loaded, run_id)
    assert (result.resumed_at, result.release, result.noop) == ("verify", RELEASE, False)
    assert calls == ["dev"]
    assert run_state(loaded, run_id) == "completed"


def test_resume_after_the_last_step_only_completes(loaded: LoadedEnvironment, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = interrupted_run(loaded, STEPS)
    calls = fleet_on(monkeypatch, OTHER)
    result = resume(loaded, run_id)
    assert (result.resumed_at, result.release) == (END, RELEASE)
    assert calls == []  # no step ran again, not even the no-op check
    assert run_state(loaded, run_id) == "completed"


def test_a_run_recorded_before_the_gates_step_is_not_resumed(loaded: LoadedEnvironment) -> None:
    from orchestrator.runs.journal import NotResumable, ResumeRefusal

    old_steps = tuple(s for s in STEPS if s != "gates")
    assert len(old_steps) == len(STEPS) - 1  # this version has a gates step after render
    with Journal.open(loaded.state_dir, env=loaded.name) as journal:
        run = journal.start_run("up", ["up", "dev", "--release", "/srv/hello"], steps=old_steps)
        with run.step("build") as handle:
            handle.detail.update(release=RELEASE, binary="/srv/staged/hello")
        run.interrupt("killed")
    with pytest.raises(NotResumable, match=r"this version runs \[.*'gates'") as refused:
        resume(loaded, run.id)
    assert refused.value.reason == ResumeRefusal.STEPS_CHANGED
    assert refused.value.exit_status == 2
    assert run_state(loaded, run.id) == "interrupted"  # left as it was: a new run starts over
