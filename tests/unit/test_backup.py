"""Pure logic of orchestrator.release.backup: ids, manifests, retention, the controller's copies."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.config.loader import LoadedEnvironment, Project
from orchestrator.errors import ExitStatus, UsageError
from orchestrator.release import backup as bk


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_copy(directory: Path, files: dict[str, bytes], listed: dict[str, bytes] | None = None) -> Path:
    """A backup dir holding `files` and a manifest of `listed` (default: the same files)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    manifest = {name: sha(data) for name, data in (listed if listed is not None else files).items()}
    (directory / bk.MANIFEST).write_text(bk.render_manifest(manifest))
    return directory


def tar_gz(*members: tuple[str, bytes | str]) -> bytes:
    """A gzip'd tar of (name, file content) or (name, "-> target") symlink members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content.removeprefix("-> ")
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


GOOD = {bk.ARCHIVE: tar_gz(("./counter", b"41\n" * 100)), bk.RELEASE_FILE: b"1.0.0-0123456789ab\n"}


@pytest.fixture
def loaded(project_copy: Path) -> LoadedEnvironment:
    return Project(project_copy).load("dev")


def test_new_backup_id_is_utc_second_resolution() -> None:
    moment = datetime(2026, 11, 23, 18, 15, 0, tzinfo=UTC)
    assert bk.new_backup_id(moment) == "20261123T181500Z"
    assert bk.BACKUP_ID_RE.match(bk.new_backup_id())


@pytest.mark.parametrize("bad", ["latest", "2026-11-23", "20261123T1815Z", "../20261123T181500Z"])
def test_check_backup_id_rejects_malformed_ids(bad: str) -> None:
    with pytest.raises(UsageError) as info:
        bk.check_backup_id(bad)
    assert info.value.exit_status == ExitStatus.BAD_INPUT
    assert "20261123T181500Z" in info.value.message


def test_parse_manifest_reads_sha256sum_format() -> None:
    text = f"{'a' * 64}  data.tar.gz\n{'b' * 64} *release-id\n\n"
    assert bk.parse_manifest(text) == {"data.tar.gz": "a" * 64, "release-id": "b" * 64}


@pytest.mark.parametrize("line", ["nothex  data.tar.gz", f"{'a' * 64}", f"{'a' * 64}  ../etc/passwd"])
def test_parse_manifest_names_the_bad_line(line: str) -> None:
    with pytest.raises(ValueError, match=r"MANIFEST.sha256:2"):
        bk.parse_manifest(f"{'c' * 64}  ok\n{line}\n")


def test_intact_copy_has_no_problems(tmp_path: Path) -> None:
    assert bk.manifest_problems(make_copy(tmp_path / "h", GOOD), required=bk.CONTROLLER_FILES) == []


def test_one_flipped_byte_is_found_and_the_file_named(tmp_path: Path) -> None:
    directory = make_copy(tmp_path / "h", GOOD)
    data = bytearray((directory / bk.ARCHIVE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (directory / bk.ARCHIVE).write_bytes(bytes(data))
    problems = bk.manifest_problems(directory)
    assert len(problems) == 1
    assert problems[0].startswith("data.tar.gz: sha256 differs from the manifest")
    assert sha(GOOD[bk.ARCHIVE])[:12] in problems[0]


def test_missing_unlisted_and_unrequired_files_are_problems(tmp_path: Path) -> None:
    directory = make_copy(tmp_path / "h", {bk.RELEASE_FILE: b"x\n", "extra": b"?"},
                          listed={bk.RELEASE_FILE: b"x\n", "gone": b""})
    problems = bk.manifest_problems(directory, required=bk.CONTROLLER_FILES)
    assert "MANIFEST.sha256 does not list data.tar.gz" in problems
    assert "extra is not listed in MANIFEST.sha256" in problems
    assert "gone is missing" in problems


def test_missing_manifest_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / bk.ARCHIVE).write_bytes(b"x")
    assert bk.manifest_problems(tmp_path) == ["MANIFEST.sha256 is missing"]


def test_select_expired_keeps_the_newest() -> None:
    ids = ["20261101T000000Z", "20261103T000000Z", "20261102T000000Z", "20261105T000000Z", "20261104T000000Z"]
    assert bk.select_expired(ids, 2) == ["20261101T000000Z", "20261102T000000Z", "20261103T000000Z"]
    assert bk.select_expired(ids, 5) == []
    assert bk.select_expired(ids, 10) == []


def test_select_expired_never_selects_protected_or_foreign_names() -> None:
    ids = ["20261101T000000Z", "20261102T000000Z", "20261103T000000Z", "notes", ".20261100T000000Z.partial"]
    assert bk.select_expired(ids, 1, protect=["20261101T000000Z"]) == ["20261102T000000Z"]
    with pytest.raises(ValueError):
        bk.select_expired(ids, 0)


def test_controller_retention_is_per_host(loaded: LoadedEnvironment) -> None:
    root = bk.backups_dir(loaded)
    # host a has 4 backups, host b only the two newest: keeping 2 removes a's two oldest only.
    for day in (1, 2, 3, 4):
        make_copy(root / f"2026110{day}T000000Z" / "a", GOOD)
    for day in (3, 4):
        make_copy(root / f"2026110{day}T000000Z" / "b", GOOD)
    removed = bk.apply_controller_retention(loaded, keep=2)
    assert removed == ["20261101T000000Z/a", "20261102T000000Z/a"]
    assert sorted(p.name for p in root.iterdir()) == ["20261103T000000Z", "20261104T000000Z"]
    assert (root / "20261103T000000Z" / "b").is_dir()


def test_list_backups_newest_first_with_sizes(loaded: LoadedEnvironment) -> None:
    root = bk.backups_dir(loaded)
    make_copy(root / "20261101T000000Z" / "dev-app-1", GOOD)
    make_copy(root / "20261102T000000Z" / "dev-app-1", GOOD)
    make_copy(root / "20261102T000000Z" / "dev-app-2", GOOD)
    (root / "20261102T000000Z" / bk.INDEX).write_text(json.dumps({"complete": True}))
    listed = bk.list_backups(loaded)
    assert [b.id for b in listed] == ["20261102T000000Z", "20261101T000000Z"]
    assert listed[0].complete and not listed[1].complete
    assert listed[0].size == 2 * len(GOOD[bk.ARCHIVE])
    assert {h.release_id for h in listed[0].hosts} == {"1.0.0-0123456789ab"}
    assert listed[0].created == "2026-11-02T00:00:00+00:00"


def test_verify_controller_copy_names_host_and_file(loaded: LoadedEnvironment) -> None:
    root = bk.backups_dir(loaded) / "20261101T000000Z"
    make_copy(root / "dev-app-1", GOOD)
    bad = make_copy(root / "dev-app-2", GOOD)
    (bad / bk.RELEASE_FILE).write_bytes(b"2.0.0-0123456789ab\n")
    bk.verify_controller_copy(loaded, "20261101T000000Z", ["dev-app-1"])
    with pytest.raises(bk.CorruptBackup) as info:
        bk.verify_controller_copy(loaded, "20261101T000000Z", ["dev-app-1", "dev-app-2"])
    assert info.value.exit_status == ExitStatus.FAILED
    assert "dev-app-2: release-id: sha256 differs" in info.value.message
    assert "nothing was changed" in info.value.message
    with pytest.raises(bk.BackupError, match="no copy for host dev-app-3"):
        bk.verify_controller_copy(loaded, "20261101T000000Z", ["dev-app-3"])


def test_verify_controller_copy_refuses_an_archive_that_writes_outside(loaded: LoadedEnvironment) -> None:
    root = bk.backups_dir(loaded) / "20261101T000000Z"
    chain = tar_gz(("./b", "-> ."), ("./b/c", "-> .."), ("./c/escaped", b"x"))
    make_copy(root / "dev-app-1", {**GOOD, bk.ARCHIVE: chain})  # the manifest matches: not corrupt
    with pytest.raises(bk.BackupError) as info:
        bk.verify_controller_copy(loaded, "20261101T000000Z", ["dev-app-1"])
    assert not isinstance(info.value, bk.CorruptBackup)
    assert "dev-app-1" in info.value.message and "would write outside the data dir" in info.value.message
    assert "'./b/c' goes through the symlink 'b'" in info.value.message


def write_inventory(loaded: LoadedEnvironment, hosts: list[str]) -> None:
    path = loaded.paths.inventory
    path.parent.mkdir(parents=True, exist_ok=True)
    app = {name: {"ansible_host": f"10.213.10.{i + 10}"} for i, name in enumerate(hosts)}
    path.write_text(json.dumps({"all": {"children": {"app": {"hosts": app}, "monitoring": {"hosts": {}}}}}))


def test_create_backup_indexes_checks_and_applies_retention(loaded: LoadedEnvironment) -> None:
    hosts = ["dev-app-1", "dev-app-2"]
    write_inventory(loaded, hosts)
    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_runner(env: LoadedEnvironment, playbook: str, extra: dict[str, Any], on_line: Any) -> None:
        # stands in for the playbook's fetch: what the role writes on the controller
        calls.append((playbook, extra))
        for host in hosts:
            make_copy(Path(extra["release_backup_controller_dir"]) / extra["release_backup_id"] / host, GOOD)

    old = bk.backups_dir(loaded) / "20200101T000000Z"
    for host in hosts:
        make_copy(old / host, GOOD)
    result = bk.create_backup(loaded, keep=1, backup_id="20261123T181500Z", runner=fake_runner)
    assert calls[0][0] == "backup.yml"
    assert calls[0][1]["release_backup_service"] == "hello"
    assert calls[0][1]["release_backup_data_dir"] == "/var/lib/hello"
    assert calls[0][1]["release_backup_keep"] == 1
    assert [h.host for h in result.hosts] == hosts
    assert result.removed == ("20200101T000000Z/dev-app-1", "20200101T000000Z/dev-app-2")
    assert not old.exists()
    index = json.loads((bk.backups_dir(loaded) / "20261123T181500Z" / bk.INDEX).read_text())
    assert index["complete"] is True and len(index["hosts"]) == 2
    assert result.as_dict()["size"] == 2 * len(GOOD[bk.ARCHIVE])


def test_create_backup_fails_when_a_host_copy_is_missing(loaded: LoadedEnvironment) -> None:
    write_inventory(loaded, ["dev-app-1", "dev-app-2"])

    def half_runner(env: LoadedEnvironment, playbook: str, extra: dict[str, Any], on_line: Any) -> None:
        make_copy(Path(extra["release_backup_controller_dir"]) / extra["release_backup_id"] / "dev-app-1", GOOD)

    with pytest.raises(bk.BackupError, match="no controller copy from dev-app-2"):
        bk.create_backup(loaded, backup_id="20261123T181500Z", runner=half_runner)
    assert not (bk.backups_dir(loaded) / "20261123T181500Z" / bk.INDEX).exists()


def test_backup_without_inventory_is_a_usage_error(loaded: LoadedEnvironment) -> None:
    with pytest.raises(UsageError, match="dev has no inventory yet"):
        bk.create_backup(loaded)


def test_restore_from_controller_refuses_a_corrupt_copy_before_running(loaded: LoadedEnvironment) -> None:
    write_inventory(loaded, ["dev-app-1"])
    directory = make_copy(bk.backups_dir(loaded) / "20261101T000000Z" / "dev-app-1", GOOD)
    (directory / bk.ARCHIVE).write_bytes(b"X" + GOOD[bk.ARCHIVE][1:])
    ran: list[str] = []
    with pytest.raises(bk.CorruptBackup, match=r"data\.tar\.gz: sha256 differs"):
        bk.restore_backup(loaded, "20261101T000000Z", source="controller",
                          runner=lambda *args: ran.append(args[1]))
    assert ran == []


def test_failure_message_groups_hosts_by_message() -> None:
    line = bk.failure_message({"a": "m1", "b": "m1", "c": "m2"}, "restore of X")
    assert line == "restore of X failed on a, b: m1 | c: m2"


def _sessions_answering(monkeypatch: pytest.MonkeyPatch, answers: dict[str, dict[str, Any]],
                        interrupted_by: str | None = None) -> list[dict[str, Any]]:
    """release.direct.run_sessions standing in for the hosts: each host's module answer; the calls made."""
    from orchestrator.release import direct
    from orchestrator.tools.ansible import HostSummary, PlaybookResult, TaskResult

    made: list[dict[str, Any]] = []

    def sessions(loaded: LoadedEnvironment, batches: Any, calls_of: Any, **kwargs: Any) -> PlaybookResult:
        hosts = [h for batch in batches for h in batch]
        made.append({"calls": [calls_of(h) for h in hosts], **kwargs})
        result = PlaybookResult(run_id="r", run_dir=Path("."), playbook="backup.yml", rc=0, status="successful",
                                duration=0.1, interrupted_by=interrupted_by)
        for host in hosts:
            result.hosts[host.name] = HostSummary(ok=1, changed=1)
            result.results.append(TaskResult(host=host.name, task=bk.BACKUP_TASK, action="release_backup",
                                             status="changed", result=answers[host.name]))
        if interrupted_by:
            result.rc, result.status = 130, "canceled"
        return result

    monkeypatch.setattr(direct, "run_sessions", sessions)
    return made


def test_a_direct_backup_sends_the_roles_parameters_and_stops_at_a_signal(loaded: LoadedEnvironment,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.tools.ansible import PlaybookInterrupted

    write_inventory(loaded, ["dev-app-1"])
    made = _sessions_answering(monkeypatch, {"dev-app-1": {"changed": True}}, interrupted_by="SIGINT")
    fetched: list[Any] = []
    monkeypatch.setattr(bk, "_fetch_archives", lambda *args: fetched.append(args) or {})
    with pytest.raises(PlaybookInterrupted):
        bk.create_backup(loaded, backup_id="20261123T181500Z", keep=2)
    ((call,),) = made[0]["calls"]
    assert (call.module, call.task) == ("release_backup", bk.BACKUP_TASK)
    assert call.params == {"state": "backup", "service": "hello", "backup_id": "20261123T181500Z",
                           "backups_dir": "/var/backups/hello", "data_dir": "/var/lib/hello", "app_dir": "/opt/hello",
                           "env_file": "/etc/hello/hello.env", "keep": 2}
    assert [m.name for m in made[0]["modules"]] == ["release_backup"]
    assert fetched == []  # nothing downloaded after the signal


def test_a_direct_backup_refuses_an_answer_it_would_have_to_write_as_is(loaded: LoadedEnvironment,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    write_inventory(loaded, ["dev-app-1"])
    digest = {"sha256": "a" * 64, "size": 1}
    planted = {"changed": True, "release_id": "0.1.0\n../../evil",
               "files": {"data.tar.gz": digest, "release-id": digest}}
    _sessions_answering(monkeypatch, {"dev-app-1": planted})
    with pytest.raises(bk.BackupError, match=r"dev-app-1.*no usable release id") as info:
        bk.create_backup(loaded, backup_id="20261123T181500Z")
    assert "\n" not in info.value.message  # the planted newline is shown escaped, on one line
    assert not (bk.backups_dir(loaded) / "20261123T181500Z" / "dev-app-1").exists()  # no partial copy left
