#!/usr/bin/python
"""Back up, verify and restore a service's data, release pointer and config in one call.

Doing the whole per-host job in one module call (instead of a task per step) matters here:
on this kind of fleet every module call costs a host 0.14-0.23 s of CPU, and a backup runs
before every deploy.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_backup
short_description: Back up, verify and restore a service's data dir, release id and config
description:
  - C(state=backup) writes C(BACKUPS_DIR/ID/) with C(data.tar.gz) (the data dir), C(release-id)
    (the target of the C(current) symlink, C(none) when absent), C(config.env) (a copy of the
    EnvironmentFile, mode 0600) and C(MANIFEST.sha256), then keeps the newest C(keep) backups.
  - C(state=verify) checks every file listed in C(MANIFEST.sha256) and that no file is missing.
  - C(state=restore) verifies first and touches nothing when a checksum differs; then it stops
    the unit, swaps the data dir, switches C(current) to the backed-up release when that release
    directory still exists, restores the config when present, starts the unit and waits until it
    is active and the health URL answers 200.
options:
  state:
    description: What to do.
    type: str
    choices: [backup, verify, restore]
    required: true
  service:
    description: Service name (unit C(NAME.service), C(/opt/NAME)).
    type: str
    required: true
  backup_id:
    description: Backup id such as C(20261123T181500Z).
    type: str
    required: true
  backups_dir:
    description: Directory holding one sub-directory per backup.
    type: path
    required: true
  data_dir:
    description: The service's data directory.
    type: path
    required: true
  app_dir:
    description: Directory with C(releases/) and the C(current) symlink.
    type: path
    required: true
  env_file:
    description: The service's EnvironmentFile.
    type: path
    required: true
  keep:
    description: Backups to keep on the host (state=backup).
    type: int
    default: 5
  source_dir:
    description: Where the backup to verify or restore is (default C(BACKUPS_DIR/ID)).
    type: path
  small_files:
    description:
      - Name -> text of small files (release-id, MANIFEST.sha256) to write into C(source_dir)
        before verifying: how the controller's copy sends them along with the uploaded archive.
    type: dict
  remove_source:
    description: Remove C(source_dir) after a successful restore (an uploaded staging copy).
    type: bool
    default: false
  health_url:
    description: URL that must answer 200 after the restore.
    type: str
  health_timeout:
    description: Seconds the restored service may take to become healthy.
    type: float
    default: 10
  health_interval:
    description: Seconds between health probes.
    type: float
    default: 0.25
author: orchestrate
"""

RETURN = r"""
backup_dir: {description: Directory of the backup on the host, type: str, returned: always}
release_id: {description: Release id recorded in (or restored from) the backup, type: str, returned: success}
files: {description: name -> {sha256, size} of the backup's files, type: dict, returned: success}
removed: {description: Backup ids removed by retention, type: list, returned: state=backup}
release_switched: {description: Whether C(current) was switched, type: bool, returned: state=restore}
previous_release: {description: Release id before the restore, type: str, returned: state=restore}
"""

import copy
import hashlib
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request

try:
    from ansible.module_utils.basic import AnsibleModule
except ImportError:
    # run without Ansible by `orchestrate` (orchestrator/release/backup.py: backup_directly), which calls
    # run_direct() for state=backup
    AnsibleModule = None

MANIFEST = "MANIFEST.sha256"
ARCHIVE = "data.tar.gz"
RELEASE_FILE = "release-id"
CONFIG_FILE = "config.env"
BACKUP_ID_RE = re.compile(r"^\d{8}T\d{6}Z$")
RELEASE_ID_RE = re.compile(r"^[A-Za-z0-9._+-]+$")
CHUNK = 1 << 20


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path):
    """{name: sha256} from a `sha256sum`-format manifest."""
    entries = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split(None, 1)
            if len(parts) != 2 or not re.match(r"^[0-9a-f]{64}$", parts[0]):
                raise ValueError("%s:%d: not a sha256sum line" % (MANIFEST, number))
            entries[parts[1].lstrip("*").strip()] = parts[0]
    return entries


def verify_dir(directory):
    """Problems found checking `directory` against its manifest ([] when intact)."""
    manifest_path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(manifest_path):
        return ["%s is missing" % MANIFEST]
    try:
        entries = read_manifest(manifest_path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return ["%s is unreadable: %s" % (MANIFEST, exc)]
    if ARCHIVE not in entries:
        return ["%s does not list %s" % (MANIFEST, ARCHIVE)]
    problems = ["%s is not listed in %s" % (name, MANIFEST)
                for name in sorted(os.listdir(directory))
                if name != MANIFEST and name not in entries and os.path.isfile(os.path.join(directory, name))]
    for name in sorted(entries):
        path = os.path.join(directory, name)
        if "/" in name or name in (".", ".."):
            problems.append("%s lists an unexpected path %r" % (MANIFEST, name))
        elif not os.path.isfile(path):
            problems.append("%s is missing" % name)
        else:
            actual = sha256_file(path)
            if actual != entries[name]:
                problems.append("%s: sha256 differs from the manifest (manifest %s, actual %s)"
                                % (name, entries[name][:12], actual[:12]))
    return problems


def current_release(app_dir):
    link = os.path.join(app_dir, "current")
    if not os.path.islink(link):
        return "none"
    return os.path.basename(os.readlink(link).rstrip("/")) or "none"


def write_archive(data_dir, path):
    # Archive member names are relative ("./..."), owners and modes are kept so a restore
    # gives the service back files it can write.
    with tarfile.open(path, "w:gz", compresslevel=6) as archive:
        if os.path.isdir(data_dir):
            archive.add(data_dir, arcname=".", recursive=True)


def apply_retention(backups_dir, keep, protect):
    ids = sorted(name for name in os.listdir(backups_dir)
                 if BACKUP_ID_RE.match(name) and os.path.isdir(os.path.join(backups_dir, name)))
    expired = [name for name in ids[:max(len(ids) - keep, 0)] if name != protect]
    for name in expired:
        shutil.rmtree(os.path.join(backups_dir, name))
    return expired


def describe_files(directory):
    files = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            files[name] = {"sha256": sha256_file(path), "size": os.path.getsize(path)}
    return files


def do_backup(module, p):
    backups_dir = p["backups_dir"]
    final = os.path.join(backups_dir, p["backup_id"])
    if os.path.exists(final):
        module.fail_json(msg="backup %s already exists on this host" % p["backup_id"], backup_dir=final)
    os.makedirs(backups_dir, mode=0o700, exist_ok=True)
    os.chmod(backups_dir, 0o700)
    partial = os.path.join(backups_dir, ".%s.partial" % p["backup_id"])
    shutil.rmtree(partial, ignore_errors=True)
    os.mkdir(partial, 0o700)
    try:
        write_archive(p["data_dir"], os.path.join(partial, ARCHIVE))
        release_id = current_release(p["app_dir"])
        with open(os.path.join(partial, RELEASE_FILE), "w", encoding="utf-8") as handle:
            handle.write(release_id + "\n")
        if os.path.isfile(p["env_file"]):
            # The config holds secrets: it stays on the host, readable by root only.
            target = os.path.join(partial, CONFIG_FILE)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out, open(p["env_file"], "rb") as src:
                shutil.copyfileobj(src, out)
        lines = ["%s  %s\n" % (sha256_file(os.path.join(partial, name)), name)
                 for name in sorted(os.listdir(partial))]
        with open(os.path.join(partial, MANIFEST), "w", encoding="utf-8") as handle:
            handle.writelines(lines)
        os.rename(partial, final)
    except Exception:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    removed = apply_retention(backups_dir, p["keep"], p["backup_id"])
    module.exit_json(changed=True, backup_dir=final, release_id=release_id,
                     files=describe_files(final), removed=removed)


def fail_verification(module, p, source, problems):
    module.fail_json(
        msg="backup %s is corrupt, refusing to restore (nothing was changed): %s"
        % (p["backup_id"], "; ".join(problems)),
        backup_dir=source, problems=problems,
    )


#: mode bits a restored file never keeps (tarfile's `data` filter clears them too)
UNSAFE_MODE_BITS = 0o7022


def _inside(path, root):
    return path == root or path.startswith(root + os.sep)


def _archive_parts(name, what):
    """The path components of archive name `name` ("./a/b" -> ["a", "b"]), or ValueError when it is
    absolute or climbs out with "..": the checks of tarfile's `data` filter for names."""
    if name.startswith("/") or os.path.isabs(name):
        raise ValueError("archive member %r: %s is an absolute path" % (name, what))
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError("archive member %r: %s contains '..'" % (name, what))
    return parts


def _real_path(root, parts, name):
    """root/parts as it is on disk, refusing any component that is a symlink: nothing is ever
    written (or hard-linked) through a link, whatever an earlier member made it point to."""
    current = root
    for part in parts:
        current = os.path.join(current, part)
        if os.path.islink(current):
            raise ValueError("archive member %r goes through the symlink %s" % (name, current[len(root) + 1:]))
    return current


def checked_member(member, root):
    """`member` as it may be extracted into `root` (an absolute, real directory) now, or ValueError.

    tarfile's `data` filter semantics, implemented here because the hosts' Python (Debian 12:
    3.11.2) has no `filter=` (added in 3.11.4), and stricter where a symlink chain could fool a
    check made before extraction (`b -> .`, then `b/c -> ..`, then `c/x`): each member is checked
    against the directory as the members before it left it, and

    - no absolute name and no ".." in a name;
    - nothing written through a symlink: no component of a member's path may be a symlink, and a
      member may not replace anything already extracted (except a directory listed again);
    - a symlink's target, resolved from its directory without following any link, stays inside;
    - a hard link names an earlier regular file of the archive (same rules as a name);
    - no devices, FIFOs or other special files;
    - setuid, setgid, sticky and group/other write bits are cleared.
    """
    name = member.name
    parts = _archive_parts(name, "its name")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise ValueError("archive member %r is a device, FIFO or other special file" % name)
    target = _real_path(root, parts, name)
    if os.path.lexists(target) and not (member.isdir() and os.path.isdir(target)):
        raise ValueError("archive member %r would replace %s, which an earlier member made" % (name, target))
    if member.issym():
        if os.path.isabs(member.linkname):
            raise ValueError("archive member %r links to the absolute path %r" % (name, member.linkname))
        resolved = os.path.normpath(os.path.join(os.path.dirname(target), member.linkname))
        if not _inside(resolved, root):
            raise ValueError("archive member %r links outside the data dir (%r)" % (name, member.linkname))
    if member.islnk():
        source = _real_path(root, _archive_parts(member.linkname, "its link target"), name)
        if not os.path.isfile(source):
            raise ValueError("archive member %r hard-links %r, which is not a file extracted before it"
                             % (name, member.linkname))
    checked = copy.copy(member)
    if member.isfile() or member.isdir():
        checked.mode = member.mode & ~UNSAFE_MODE_BITS
    return checked


def extract_checked(archive, destination):
    """Extract every member of `archive` into `destination`, each checked by `checked_member` just
    before it is extracted; ValueError at the first refused one (the caller removes `destination`)."""
    root = os.path.realpath(destination)

    def members():
        for member in archive:
            yield checked_member(member, root)

    # Owners and modes are kept (the service must be able to write its data back), so tarfile's
    # own filters, where they exist, are told not to interfere: the checks above replace them.
    kwargs = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    archive.extractall(root, members=members(), **kwargs)  # noqa: S202 - each member checked above


def systemctl(module, *args):
    return module.run_command(["systemctl", *args])


def switch_current(app_dir, release_id):
    link = os.path.join(app_dir, "current")
    tmp = os.path.join(app_dir, ".current.restore")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.join("releases", release_id), tmp)
    os.replace(tmp, link)


def health_gate(module, p, unit):
    """(ok, evidence): the unit is active and the health URL answers 200 within the timeout."""
    deadline = time.monotonic() + p["health_timeout"]
    evidence = ""
    while True:
        rc, out, _err = systemctl(module, "is-active", unit)
        state = out.strip()
        if rc == 0 and state == "active":
            if not p["health_url"]:
                return True, "unit active"
            try:
                with urllib.request.urlopen(p["health_url"], timeout=2) as response:  # noqa: S310
                    body = response.read(512).decode("utf-8", "replace")
                    if response.status == 200:
                        return True, "HTTP 200"
                    evidence = "HTTP %d: %s" % (response.status, body.strip())
            except urllib.error.HTTPError as exc:
                evidence = "HTTP %d" % exc.code
            except (OSError, ValueError) as exc:
                evidence = "GET %s: %s" % (p["health_url"], exc)
        else:
            evidence = "unit %s is %s" % (unit, state or "unknown")
        if time.monotonic() >= deadline:
            return False, evidence
        time.sleep(p["health_interval"])


def do_restore(module, p, source):
    problems = verify_dir(source)
    if problems:
        fail_verification(module, p, source, problems)
    release_id = "none"
    if os.path.isfile(os.path.join(source, RELEASE_FILE)):
        with open(os.path.join(source, RELEASE_FILE), encoding="utf-8") as handle:
            release_id = handle.read().strip() or "none"
    unit = "%s.service" % p["service"]
    data_dir = p["data_dir"].rstrip("/")
    staging = "%s.restore-%s" % (data_dir, p["backup_id"])
    old = "%s.pre-restore-%s" % (data_dir, p["backup_id"])
    # Unpack next to the data dir while the service still runs: the downtime is then only
    # the stop, two renames and the start, and a bad archive fails before anything stops.
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    os.makedirs(staging, mode=0o700)
    try:
        with tarfile.open(os.path.join(source, ARCHIVE), "r:gz") as archive:
            # An archive without even "." was taken from a host without a data dir: restoring
            # it means no data dir, not an empty one owned by root.
            data_dir_existed = bool(archive.getmembers())
            extract_checked(archive, staging)
    except (OSError, tarfile.TarError, ValueError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        module.fail_json(msg="backup %s: cannot unpack %s (nothing was changed): %s"
                         % (p["backup_id"], ARCHIVE, exc))
    previous = current_release(p["app_dir"])
    switch = (RELEASE_ID_RE.match(release_id) is not None and release_id != "none"
              and os.path.isdir(os.path.join(p["app_dir"], "releases", release_id)))
    rc, _out, err = systemctl(module, "stop", unit)
    if rc != 0:
        shutil.rmtree(staging, ignore_errors=True)
        module.fail_json(msg="systemctl stop %s failed: %s" % (unit, err.strip()))
    if os.path.lexists(data_dir):
        os.rename(data_dir, old)
    if data_dir_existed:
        os.rename(staging, data_dir)
    else:
        shutil.rmtree(staging, ignore_errors=True)
    if switch and previous != release_id:
        switch_current(p["app_dir"], release_id)
    config_restored = False
    config_src = os.path.join(source, CONFIG_FILE)
    if os.path.isfile(config_src):
        tmp = p["env_file"] + ".restore"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out, open(config_src, "rb") as src:
            shutil.copyfileobj(src, out)
        if os.path.exists(p["env_file"]):
            st = os.stat(p["env_file"])
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, p["env_file"])
        config_restored = True
    rc, _out, err = systemctl(module, "start", unit)
    healthy, evidence = health_gate(module, p, unit) if rc == 0 else (False, err.strip())
    result = {
        "changed": True, "backup_dir": source, "release_id": release_id, "previous_release": previous,
        "release_switched": switch and previous != release_id, "config_restored": config_restored,
        "health": evidence,
    }
    if not healthy:
        # The previous data dir is kept beside the restored one for inspection.
        module.fail_json(msg="restored backup %s but %s did not become healthy: %s (previous data kept in %s)"
                         % (p["backup_id"], unit, evidence, old), **result)
    shutil.rmtree(old, ignore_errors=True)
    if p["remove_source"]:
        shutil.rmtree(source, ignore_errors=True)
    module.exit_json(**result)


def write_small_files(module, directory, files):
    for name, text in files.items():
        if name not in (RELEASE_FILE, MANIFEST):
            module.fail_json(msg="small_files: %r is not one of %s, %s" % (name, RELEASE_FILE, MANIFEST))
        if not os.path.isdir(directory):
            module.fail_json(msg="%s does not exist: upload the archive first" % directory)
        with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(os.path.join(directory, name), 0o600)


ARGUMENT_SPEC = {
    "state": {"type": "str", "required": True, "choices": ["backup", "verify", "restore"]},
    "service": {"type": "str", "required": True},
    "backup_id": {"type": "str", "required": True},
    "backups_dir": {"type": "path", "required": True},
    "data_dir": {"type": "path", "required": True},
    "app_dir": {"type": "path", "required": True},
    "env_file": {"type": "path", "required": True},
    "keep": {"type": "int", "default": 5},
    "source_dir": {"type": "path"},
    "small_files": {"type": "dict"},
    "remove_source": {"type": "bool", "default": False},
    "health_url": {"type": "str"},
    "health_timeout": {"type": "float", "default": 10},
    "health_interval": {"type": "float", "default": 0.25},
}


def run(module):
    """The module's work for `module.params`; ends with module.exit_json or module.fail_json."""
    p = module.params
    if not BACKUP_ID_RE.match(p["backup_id"]):
        module.fail_json(msg="backup_id %r is not like 20261123T181500Z" % p["backup_id"])
    if p["keep"] < 1:
        module.fail_json(msg="keep must be at least 1")
    source = p["source_dir"] or os.path.join(p["backups_dir"], p["backup_id"])
    if p["state"] == "backup":
        do_backup(module, p)
    if p["small_files"] and p["state"] == "verify":
        write_small_files(module, source, p["small_files"])
    if not os.path.isdir(source):
        module.fail_json(msg="backup %s not found on this host (%s)" % (p["backup_id"], source), backup_dir=source)
    if p["state"] == "verify":
        problems = verify_dir(source)
        if problems:
            fail_verification(module, p, source, problems)
        module.exit_json(changed=False, backup_dir=source, files=describe_files(source))
    do_restore(module, p, source)


def main():
    run(AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=False))


class ModuleExit(Exception):
    """How a run without Ansible ends: the result the module would have returned."""

    def __init__(self, result):
        super().__init__(result.get("msg", ""))
        self.result = result


class DirectModule:
    """What the backup needs of AnsibleModule, for a run without Ansible: params and the two endings."""

    check_mode = False

    def __init__(self, params):
        self.params = params

    def exit_json(self, **result):
        raise ModuleExit(result)

    def fail_json(self, msg, **result):
        raise ModuleExit({**result, "failed": True, "msg": msg})


#: what a run without Ansible does (a restore stops and starts the unit: it stays a playbook's)
DIRECT_STATES = ("backup",)

_DIRECT_TYPES = {"str": str, "path": str, "int": int, "float": (int, float), "bool": bool, "dict": dict}


def run_direct(given, check_mode=False):
    """One call of the module without Ansible (state=backup): its result as a dict, `failed` set
    when it failed. The parameters are checked against ARGUMENT_SPEC (no unknown option, each of
    its type, the required ones given), defaults filled in."""
    unknown = sorted(set(given) - set(ARGUMENT_SPEC))
    params = {}
    problems = ["unsupported parameters: %s" % ", ".join(unknown)] if unknown else []
    for name, spec in ARGUMENT_SPEC.items():
        value = given.get(name, spec.get("default"))
        kind = _DIRECT_TYPES[spec["type"]]
        if value is None:
            if spec.get("required"):
                problems.append("missing required parameter: %s" % name)
        elif not isinstance(value, kind) or (isinstance(value, bool) and spec["type"] != "bool"):
            problems.append("%s: expected %s" % (name, spec["type"]))
        elif spec.get("choices") and value not in spec["choices"]:
            problems.append("%s: must be one of %s" % (name, ", ".join(spec["choices"])))
        params[name] = os.path.expanduser(value) if spec["type"] == "path" and isinstance(value, str) else value
    if not problems and params["state"] not in DIRECT_STATES:
        problems.append("state=%s runs through Ansible only" % params["state"])
    if check_mode:
        problems.append("check mode is not supported")
    if problems:
        return {"failed": True, "changed": False, "msg": "; ".join(problems)}
    try:
        run(DirectModule(params))
    except ModuleExit as ended:
        return ended.result
    return {"failed": True, "changed": False, "msg": "release_backup ended without a result"}


if __name__ == "__main__":
    main()
