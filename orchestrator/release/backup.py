"""Backups of the app hosts: take, list, verify, restore, and keep the newest N.

On each app host a backup is `/var/backups/<service>/<id>/` holding `data.tar.gz` (the data
dir), `release-id` (target of the `current` symlink, `none` when absent), `config.env` (the
EnvironmentFile: it holds secrets, so it stays on the host, mode 0600) and `MANIFEST.sha256`.
The controller keeps `.orchestrate/<env>/backups/<id>/<host>/` with the archive, release-id and
a manifest of just those two, plus `<id>/backup.json` (hosts, release ids, sizes) once every
host is copied. The host side is one module call per host (roles/release_backup): in a session
of its own on the tuned path (`backup_directly`, no Ansible), else through playbooks/backup.yml.

A restore verifies every host's copy (and, from the controller, the controller's copy first)
before any host is touched: a corrupt backup is refused naming the file whose sha256 differs.
"""

from __future__ import annotations

import json
import posixpath
import re
import shutil
import tarfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.types import parse_duration
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.files import atomic_write, sha256_file
from orchestrator.fleet.inventory import Host, app_hosts
from orchestrator.fleet.playbooks import run_env_playbook, unreachable_hint
from orchestrator.tools.ansible import Failure, HostEvent, HostSummary, PlaybookInterrupted, PlaybookResult

BACKUP_ID_RE = re.compile(r"^\d{8}T\d{6}Z\Z")  # \Z: a trailing newline is not an id
BACKUP_ID_FORMAT = "%Y%m%dT%H%M%SZ"
MANIFEST = "MANIFEST.sha256"
ARCHIVE = "data.tar.gz"
RELEASE_FILE = "release-id"
INDEX = "backup.json"
DEFAULT_KEEP = 5
#: files the controller holds per host (config.env never leaves the host)
CONTROLLER_FILES = (ARCHIVE, RELEASE_FILE)
#: the one playbook run a backup or restore may take (archiving a large data dir included)
PLAYBOOK_TIMEOUT = 1800

Source = Literal["host", "controller"]
EventSink = Callable[[HostEvent], None]


class BackupError(OrchestratorError):
    """A backup or restore run failed (exit 1); the message names the host and the reason."""


class CorruptBackup(BackupError):
    """A backup's files do not match its manifest; nothing was changed (exit 1)."""


# --- pure logic --------------------------------------------------------------------------


def new_backup_id(now: datetime | None = None) -> str:
    """A backup id such as 20261123T181500Z (UTC, second resolution)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime(BACKUP_ID_FORMAT)


def check_backup_id(backup_id: str) -> str:
    """`backup_id` if well formed, else a UsageError showing the expected form."""
    if not BACKUP_ID_RE.match(backup_id):
        raise UsageError(f"{backup_id!r} is not a backup id such as 20261123T181500Z (see `orchestrate backups ENV`)")
    return backup_id


def parse_manifest(text: str, name: str = MANIFEST) -> dict[str, str]:
    """{file name: sha256} from `sha256sum`-format text; ValueError naming the bad line."""
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, file_name = line.partition(" ")
        file_name = file_name.strip().lstrip("*")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or not file_name:
            raise ValueError(f"{name}:{number}: expected '<sha256>  <file>'")
        if "/" in file_name or file_name in {".", ".."}:
            raise ValueError(f"{name}:{number}: {file_name!r} is not a file of the backup dir")
        entries[file_name] = digest
    return entries


def render_manifest(digests: Mapping[str, str]) -> str:
    """`sha256sum`-format text for {file name: sha256}, sorted by name."""
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))



def manifest_problems(directory: Path, required: Iterable[str] = (ARCHIVE,)) -> list[str]:
    """Every way `directory` differs from its manifest ([] when intact).

    A file whose sha256 differs, a listed file that is missing, an unlisted file, or a
    required file the manifest does not list are all problems.
    """
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return [f"{MANIFEST} is missing"]
    try:
        entries = parse_manifest(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return [f"{MANIFEST} is unreadable: {exc}"]
    problems = [f"{MANIFEST} does not list {name}" for name in required if name not in entries]
    problems += [
        f"{path.name} is not listed in {MANIFEST}"
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MANIFEST and path.name not in entries
    ]
    for name, expected in sorted(entries.items()):
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        actual = sha256_file(path)
        if actual != expected:
            problems.append(
                f"{name}: sha256 differs from the manifest (manifest {expected[:12]}, actual {actual[:12]})"
            )
    return problems


def _member_parts(name: str) -> list[str] | None:
    """The components of an archive name, or None when it is absolute or contains `..`."""
    if name.startswith("/"):
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    return None if ".." in parts else parts


def archive_problems(archive: Path) -> list[str]:
    """Why `archive` (a backup's data.tar.gz) must not be extracted as root ([] when it may).

    The rules of the host-side restore (roles/release_backup, tarfile's `data` filter semantics)
    checked from the archive alone, before a controller copy is sent anywhere: no absolute name
    and no `..`; no member below a symlink member or listed twice (a chain such as `b -> .`,
    `b/c -> ..`, `c/x` writes outside); symlink targets relative and inside, resolved without
    following links; hard links only to earlier files; no devices or FIFOs.
    """
    problems: list[str] = []
    seen: dict[str, tarfile.TarInfo] = {}
    links: set[str] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
    except (OSError, tarfile.TarError) as exc:
        return [f"{archive.name} cannot be read as a gzip'd tar: {exc}"]
    for member in members:
        name = member.name
        parts = _member_parts(name)
        if parts is None:
            problems.append(f"{name!r} is absolute or contains '..'")
            continue
        path = "/".join(parts)
        through = next(("/".join(parts[:i]) for i in range(1, len(parts) + 1) if "/".join(parts[:i]) in links), None)
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            problems.append(f"{name!r} is a device, FIFO or other special file")
        elif through is not None:
            problems.append(f"{name!r} goes through the symlink {through!r}")
        elif path in seen and not (member.isdir() and seen[path].isdir()):
            problems.append(f"{name!r} is listed twice")
        elif member.issym():
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), member.linkname))
            if member.linkname.startswith("/") or resolved == ".." or resolved.startswith("../"):
                problems.append(f"{name!r} links outside the data dir ({member.linkname!r})")
            links.add(path)
        elif member.islnk():
            source = _member_parts(member.linkname)
            if source is None or not (("/".join(source)) in seen and seen["/".join(source)].isfile()):
                problems.append(f"{name!r} hard-links {member.linkname!r}, which is not a file before it")
        seen[path] = member
    return problems


def select_expired(backup_ids: Iterable[str], keep: int, protect: Iterable[str] = ()) -> list[str]:
    """Ids beyond the newest `keep` (oldest first); ids in `protect` are never selected.

    Only well-formed ids count; ids sort chronologically because of their fixed format.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    ids = sorted({i for i in backup_ids if BACKUP_ID_RE.match(i)})
    protected = set(protect)
    return [i for i in ids[: max(len(ids) - keep, 0)] if i not in protected]


# --- the controller's copies -------------------------------------------------------------


@dataclass(frozen=True)
class HostBackup:
    """One host's part of a backup as the controller holds it."""

    host: str
    release_id: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "release_id": self.release_id, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class BackupInfo:
    """A backup on the controller."""

    id: str
    created: str
    hosts: tuple[HostBackup, ...]
    complete: bool
    path: Path

    @property
    def size(self) -> int:
        return sum(h.size for h in self.hosts)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created, "complete": self.complete, "size": self.size,
                "hosts": [h.as_dict() for h in self.hosts]}


def backups_dir(loaded: LoadedEnvironment) -> Path:
    """`.orchestrate/<env>/backups/` of the environment."""
    return loaded.paths.backups


def _created_from_id(backup_id: str) -> str:
    return datetime.strptime(backup_id, BACKUP_ID_FORMAT).replace(tzinfo=UTC).isoformat()


def _host_backup(directory: Path) -> HostBackup | None:
    archive = directory / ARCHIVE
    if not archive.is_file():
        return None
    release_file = directory / RELEASE_FILE
    release = release_file.read_text(encoding="utf-8").strip() if release_file.is_file() else "none"
    manifest = directory / MANIFEST
    try:
        digest = parse_manifest(manifest.read_text(encoding="utf-8")).get(ARCHIVE, "") if manifest.is_file() else ""
    except (OSError, ValueError):
        digest = ""
    return HostBackup(host=directory.name, release_id=release or "none", size=archive.stat().st_size, sha256=digest)


def read_backup(loaded: LoadedEnvironment, backup_id: str) -> BackupInfo | None:
    """The controller's copy of `backup_id`, or None when there is none."""
    directory = backups_dir(loaded) / backup_id
    if not BACKUP_ID_RE.match(backup_id) or not directory.is_dir():
        return None
    hosts = [hb for sub in sorted(directory.iterdir()) if sub.is_dir() and (hb := _host_backup(sub)) is not None]
    index = directory / INDEX
    complete = False
    if index.is_file():
        try:
            complete = bool(json.loads(index.read_text(encoding="utf-8")).get("complete"))
        except (OSError, ValueError):
            complete = False
    return BackupInfo(id=backup_id, created=_created_from_id(backup_id), hosts=tuple(hosts),
                      complete=complete, path=directory)


def list_backups(loaded: LoadedEnvironment) -> list[BackupInfo]:
    """Backups on the controller, newest first."""
    root = backups_dir(loaded)
    if not root.is_dir():
        return []
    found = (read_backup(loaded, p.name) for p in root.iterdir() if p.is_dir() and BACKUP_ID_RE.match(p.name))
    return sorted((b for b in found if b is not None), key=lambda b: b.id, reverse=True)


def apply_controller_retention(loaded: LoadedEnvironment, keep: int, protect: Sequence[str] = ()) -> list[str]:
    """Keep the newest `keep` backups per host on the controller; returns the `<id>/<host>` removed."""
    root = backups_dir(loaded)
    if not root.is_dir():
        return []
    per_host: dict[str, list[str]] = {}
    for id_dir in root.iterdir():
        if id_dir.is_dir() and BACKUP_ID_RE.match(id_dir.name):
            for host_dir in id_dir.iterdir():
                if host_dir.is_dir():
                    per_host.setdefault(host_dir.name, []).append(id_dir.name)
    removed: list[str] = []
    for host, ids in sorted(per_host.items()):
        for backup_id in select_expired(ids, keep, protect):
            shutil.rmtree(root / backup_id / host)
            removed.append(f"{backup_id}/{host}")
    for id_dir in root.iterdir():
        if id_dir.is_dir() and BACKUP_ID_RE.match(id_dir.name) and not any(p.is_dir() for p in id_dir.iterdir()):
            shutil.rmtree(id_dir)
    return removed


def verify_controller_copy(loaded: LoadedEnvironment, backup_id: str, hosts: Sequence[str]) -> None:
    """Check the controller's copy of `backup_id` for `hosts`; CorruptBackup names host and file."""
    directory = backups_dir(loaded) / backup_id
    if not directory.is_dir():
        raise UsageError(f"backup {backup_id} is not on the controller ({directory}); see `orchestrate backups "
                         f"{loaded.name}`")
    for host in hosts:
        host_dir = directory / host
        if not host_dir.is_dir():
            raise BackupError(f"backup {backup_id} has no copy for host {host} on the controller (nothing was changed)")
        problems = manifest_problems(host_dir, required=CONTROLLER_FILES)
        if problems:
            raise CorruptBackup(
                f"backup {backup_id} is corrupt on the controller, refusing to restore (nothing was changed): "
                f"{host}: {'; '.join(problems)}"
            )
        unsafe = archive_problems(host_dir / ARCHIVE)
        if unsafe:
            raise BackupError(
                f"backup {backup_id}: {host}'s {ARCHIVE} on the controller would write outside the data dir, "
                f"refusing to restore (nothing was changed): {'; '.join(unsafe)}"
            )


# --- runs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    """Outcome of `create_backup`."""

    env: str
    id: str
    hosts: tuple[HostBackup, ...]
    removed: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "id": self.id, "hosts": [h.as_dict() for h in self.hosts],
                "size": sum(h.size for h in self.hosts), "removed": list(self.removed)}


@dataclass(frozen=True)
class RestoreResult:
    """Outcome of `restore_backup`."""

    env: str
    id: str
    source: Source
    hosts: tuple[str, ...]
    release_ids: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"env": self.env, "id": self.id, "source": self.source, "restored": True,
                "hosts": [{"host": h, "release_id": self.release_ids.get(h, "")} for h in self.hosts]}



def role_vars(loaded: LoadedEnvironment, backup_id: str, *, keep: int = DEFAULT_KEEP,
              source: Source = "host") -> dict[str, Any]:
    """Extra vars of playbooks/backup.yml and restore.yml for this environment (no secrets)."""
    service = loaded.env.service
    return {
        "release_backup_service": service.name,
        "release_backup_id": backup_id,
        "release_backup_keep": keep,
        "release_backup_source": source,
        "release_backup_data_dir": service.effective_data_dir,
        "release_backup_controller_dir": str(backups_dir(loaded).resolve()),
        "release_backup_port": service.port,
        "release_backup_health_path": service.health.path,
        "release_backup_health_timeout": parse_duration(service.health.timeout),
        "release_backup_health_interval": parse_duration(service.health.interval),
    }


PlaybookRunner = Callable[[LoadedEnvironment, str, dict[str, Any], EventSink | None], None]
"""Runs playbooks/<name> for the environment with extra vars; raises BackupError naming hosts."""


def create_backup(
    loaded: LoadedEnvironment,
    *,
    keep: int = DEFAULT_KEEP,
    backup_id: str | None = None,
    on_event: EventSink | None = None,
    runner: PlaybookRunner | None = None,
    tuned: bool = True,
) -> BackupResult:
    """Back up every app host and copy the backups to the controller; keep the newest `keep`.

    Deploys call this first. Raises BackupError when any host could not be backed up. On the
    tuned path (orchestrator.release.direct.direct_enabled) without Ansible: `backup_directly`.
    """
    if keep < 1:
        raise UsageError(f"--keep {keep}: keep at least 1 backup")
    hosts = [h.name for h in app_hosts(loaded)]
    backup_id = check_backup_id(backup_id or new_backup_id())
    target = backups_dir(loaded) / backup_id
    if target.exists():
        raise UsageError(f"backup {backup_id} already exists on the controller ({target})")
    target.mkdir(parents=True, mode=0o700)
    backups_dir(loaded).chmod(0o700)
    if runner is None:
        from orchestrator.release.direct import direct_enabled

        runner = run_playbook if not direct_enabled(tuned) else backup_directly
    runner(loaded, "backup.yml", role_vars(loaded, backup_id, keep=keep), on_event)
    info = read_backup(loaded, backup_id)
    copied = {h.host: h for h in (info.hosts if info else ())}
    missing = [h for h in hosts if h not in copied]
    if missing:
        raise BackupError(f"backup {backup_id}: no controller copy from {', '.join(missing)}")
    for host in hosts:
        problems = manifest_problems(target / host, required=CONTROLLER_FILES)
        if problems:
            raise CorruptBackup(f"backup {backup_id}: the copy from {host} does not match its manifest: "
                                f"{'; '.join(problems)}")
    result_hosts = tuple(copied[h] for h in hosts)
    index = {"id": backup_id, "env": loaded.name, "created": _created_from_id(backup_id), "complete": True,
             "service": loaded.env.service.name, "hosts": [h.as_dict() for h in result_hosts]}
    (target / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    removed = apply_controller_retention(loaded, keep, protect=[backup_id])
    return BackupResult(env=loaded.name, id=backup_id, hosts=result_hosts, removed=tuple(removed))


def restore_backup(
    loaded: LoadedEnvironment,
    backup_id: str,
    *,
    source: Source = "host",
    on_event: EventSink | None = None,
    runner: PlaybookRunner | None = None,
) -> RestoreResult:
    """Restore `backup_id` on every app host, verified first; health-gated.

    `source="host"` restores each host's own copy (with its config.env); `"controller"` uploads
    the controller's copy (data and release only). CorruptBackup (nothing changed) when any copy
    differs from its manifest.
    """
    check_backup_id(backup_id)
    hosts = [h.name for h in app_hosts(loaded)]
    if source == "controller":
        verify_controller_copy(loaded, backup_id, hosts)
    (runner or run_playbook)(loaded, "restore.yml", role_vars(loaded, backup_id, source=source), on_event)
    info = read_backup(loaded, backup_id)
    releases = {h.host: h.release_id for h in info.hosts} if info else {}
    return RestoreResult(env=loaded.name, id=backup_id, source=source, hosts=tuple(hosts), release_ids=releases)


# --- running the playbooks ---------------------------------------------------------------


def failure_message(failures: Mapping[str, str], what: str) -> str:
    """One line naming the failed hosts; identical messages are said once for all their hosts."""
    by_message: dict[str, list[str]] = {}
    for host, message in sorted(failures.items()):
        by_message.setdefault(message, []).append(host)
    parts = [f"{', '.join(hosts)}: {message}" for message, hosts in by_message.items()]
    return f"{what} failed on " + " | ".join(parts)


def run_playbook(loaded: LoadedEnvironment, playbook: str, extra_vars: dict[str, Any],
                 on_event: EventSink | None = None) -> None:
    """Run playbooks/<playbook> against the environment's inventory (tools.ansible, tuned settings).

    Raises CorruptBackup when a host refused a backup whose manifest does not match, else
    BackupError; either names each failed host and what its module said.
    """
    _raise_failures(run_env_playbook(loaded, playbook, extra_vars, on_event=on_event, timeout=PLAYBOOK_TIMEOUT),
                    loaded, playbook, extra_vars)


def _raise_failures(result: PlaybookResult, loaded: LoadedEnvironment, playbook: str,
                    extra_vars: Mapping[str, Any]) -> None:
    if result.ok:
        return
    failures = {h: f.message for h in result.failed_hosts() if (f := result.last_failure(h)) is not None}
    what = f"{playbook.removesuffix('.yml')} of {extra_vars.get('release_backup_id', '')}".strip()
    if not failures:
        raise BackupError(f"{what} failed: ansible-playbook ended {result.status} (rc {result.rc}); "
                          f"see {result.run_dir}")
    cls = CorruptBackup if any("is corrupt" in m for m in failures.values()) else BackupError
    unreachable = result.unreachable_hosts()
    raise cls(failure_message(failures, what), hint=unreachable_hint(loaded, unreachable) if unreachable else None)


# --- a backup without Ansible ----------------------------------------------------------------------

#: the task of roles/release_backup the host's call reports under, and the fetch's
BACKUP_TASK = "Write the backup and its manifest, apply retention"
FETCH_TASK = "Fetch the data archive"

_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
_RELEASE_ANSWER = re.compile(r"^[A-Za-z0-9._+-]+\Z")


def host_params(extra_vars: Mapping[str, Any]) -> dict[str, Any]:
    """release_backup's parameters for state=backup, as roles/release_backup passes them from
    `role_vars` and the role's defaults (pure)."""
    service = str(extra_vars["release_backup_service"])
    return {"state": "backup", "service": service, "backup_id": str(extra_vars["release_backup_id"]),
            "backups_dir": f"/var/backups/{service}", "data_dir": str(extra_vars["release_backup_data_dir"]),
            "app_dir": f"/opt/{service}", "env_file": f"/etc/{service}/{service}.env",
            "keep": int(extra_vars["release_backup_keep"])}


def backup_directly(loaded: LoadedEnvironment, playbook: str, extra_vars: dict[str, Any],
                    on_event: EventSink | None = None) -> None:
    """playbooks/backup.yml without Ansible, raising as `run_playbook` does.

    Per app host one SSH session runs roles/release_backup's module (state=backup: archive, release
    id, config, manifest, retention on the host) as the role's task does (orchestrator.release.direct),
    then a second streams the archive into the controller's copy, never held in memory, where its
    sha256 is checked against the module's answer. release-id and the controller's manifest are
    written from that answer, as the role's fetch tasks write them; the caller then checks the copy
    against the manifest (`create_backup`).
    """
    from orchestrator.release.direct import Call, Module, run_sessions

    assert playbook == "backup.yml", playbook
    params = host_params(extra_vars)
    module = loaded.project_dir / "roles" / "release_backup" / "library" / "release_backup.py"
    hosts = app_hosts(loaded)
    result = run_sessions(loaded, [hosts] if hosts else [], lambda host: [Call(BACKUP_TASK, "release_backup", params)],
                          run_id=f"backup-{params['backup_id']}", label=playbook, on_event=on_event,
                          modules=[Module("release_backup", module.read_text(encoding="utf-8"))])
    if result.interrupted_by is not None:  # a signal: no downloads; stopped as a playbook run is
        raise PlaybookInterrupted(result)
    backed_up = {r.host: r.result for r in result.results if r.status in ("ok", "changed")}
    target = Path(str(extra_vars["release_backup_controller_dir"])) / params["backup_id"]
    fetched = _fetch_archives(loaded, [h for h in hosts if h.name in backed_up], backed_up, params, target)
    for host, problem in sorted(fetched.items()):
        if problem:
            result.failures.append(Failure(host=host, task=FETCH_TASK, message=problem))
            result.hosts.setdefault(host, HostSummary()).failed += 1
            result.rc, result.status = 2, "failed"
        if on_event is not None:
            on_event(HostEvent(host=host, task=FETCH_TASK, status="failed" if problem else "changed",
                               message=problem))
    _raise_failures(result, loaded, playbook, extra_vars)


def _fetch_archives(loaded: LoadedEnvironment, hosts: Sequence[Host], answers: Mapping[str, Mapping[str, Any]],
                    params: Mapping[str, Any], target: Path) -> dict[str, str]:
    """Copy each host's archive to `target/<host>/` with release-id and the manifest; host -> the
    problem ("" when its copy is complete)."""
    from concurrent.futures import ThreadPoolExecutor

    from orchestrator.fleet.remote import MAX_PARALLEL, connection, run_on_host
    from orchestrator.tools.ssh import SshOptions, remote_argv

    conn = connection(loaded)
    remote = f"{params['backups_dir']}/{params['backup_id']}/{ARCHIVE}"

    def fetch(host: Host) -> str:
        problem = copy(host)
        if problem:
            shutil.rmtree(target / host.name, ignore_errors=True)  # no partial copy is left to restore from
        return problem

    def copy(host: Host) -> str:
        answer = answers[host.name]
        files = answer.get("files")
        files = files if isinstance(files, Mapping) else {}
        digests = {name: str((files.get(name) or {}).get("sha256") or "") for name in (ARCHIVE, RELEASE_FILE)}
        release = str(answer.get("release_id") or "")
        if not _RELEASE_ANSWER.match(release) or not all(_SHA256.match(d) for d in digests.values()):
            return f"the host answered no usable release id and checksums: {json.dumps(answer)[:300]}"
        directory = target / host.name
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        archive = directory / ARCHIVE
        ran = run_on_host(conn, host, remote_argv([*conn.become, "cat", "--", remote]), timeout=PLAYBOOK_TIMEOUT,
                          options=SshOptions.shared(), stdout_to=archive)
        if not ran.ok:
            said = ran.error or " ".join(ran.stderr.split())[-300:] or f"exit {ran.exit_code}"
            return f"could not copy {remote}: {said}"
        if sha256_file(archive) != digests[ARCHIVE]:
            return f"{remote} arrived with another sha256 than the host's manifest gives"
        atomic_write(directory / RELEASE_FILE, f"{release}\n", mode=0o600)
        atomic_write(directory / MANIFEST, f"{digests[ARCHIVE]}  {ARCHIVE}\n{digests[RELEASE_FILE]}  {RELEASE_FILE}\n",
                     mode=0o600)
        return ""

    if not hosts:
        return {}
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(hosts))) as pool:
        return dict(zip((h.name for h in hosts), pool.map(fetch, hosts), strict=True))

