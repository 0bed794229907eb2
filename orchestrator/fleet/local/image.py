"""The local hosts' image: a debootstrap rootfs of Debian bookworm built from a recipe, packed once
into a cached tarball and unpacked once per recipe; old recipes' images are pruned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.errors import CommandError, HostError
from orchestrator.files import file_lock, sha256_file
from orchestrator.tools.process import run_command

if TYPE_CHECKING:
    pass
from orchestrator.fleet.local.registry import registry_entries

#: Packages of the host image, in addition to debootstrap's minbase. Later parts add theirs
#: here; the recipe hash (and so the cache key) follows the list.
RECIPE: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "iproute2",
    "sudo",
    "ca-certificates",
    "curl",
    "prometheus",
    "prometheus-alertmanager",
    # debootstrap skips Recommends; the monitoring rules tell "host down" from "service down"
    # by the node exporter on every host.
    "prometheus-node-exporter",
    # Prometheus probes every service's health path through it (ServiceDown, HealthFailing):
    # nothing is asked of the service's own metrics.
    "prometheus-blackbox-exporter",
    "haproxy",
    # central logs: systemd-journal-upload on every host, systemd-journal-remote on the monitoring
    # host (both in this one package in bookworm)
    "systemd-journal-remote",
)


SUITE = "bookworm"


VARIANT = "minbase"


#: Bump when `prepare_rootfs` changes what it writes: it keys the cache like the package list.
PREP_VERSION = 4


#: Units that slow a container's boot or make no sense in one.
MASKED_UNITS: tuple[str, ...] = (
    "systemd-networkd-wait-online.service",
    "getty.target",
    "console-getty.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-pstore.service",
    "systemd-network-generator.service",
    "systemd-remount-fs.service",
    "dev-hugepages.mount",
    # Boot CPU is what limits twenty hosts on two cores. Nothing here needs login sessions
    # (pam_systemd is optional and fails fast without logind), a persistent journal, utmp
    # records or sysusers (the image's users exist already).
    "systemd-logind.service",
    "systemd-journal-flush.service",
    "systemd-sysusers.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
)


#: Generators with nothing to find in a container (disks, kernel command line, consoles):
#: each is an exec on every boot.
MASKED_GENERATORS: tuple[str, ...] = (
    "systemd-cryptsetup-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-veritysetup-generator",
    "systemd-getty-generator",
    "systemd-debug-generator",
    "systemd-run-generator",
    "systemd-system-update-generator",
    "systemd-rc-local-generator",
)


#: Services installed by the recipe that start only when a role enables them.
DISABLED_UNITS: tuple[str, ...] = (
    "prometheus.service",
    "prometheus-alertmanager.service",
    "prometheus-node-exporter.service",
    "prometheus-blackbox-exporter.service",
    "haproxy.service",
    "systemd-journal-remote.socket",
    "systemd-journal-remote.service",
    "systemd-journal-upload.service",
)


DEFAULT_CACHE_DIR = Path("/var/cache/orchestrate/images")


DEFAULT_IMAGE_ROOT = Path("/var/lib/orchestrate/images")


SOURCES_FILE = Path("/etc/apt/sources.list.d/debian.sources")


SOURCES_LIST = Path("/etc/apt/sources.list")


DEFAULT_MIRROR = "http://deb.debian.org/debian"


SSHD_DROPIN = """\
# Installed by orchestrate: key-only root login for the controller, one host key per host.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/ssh_host_ed25519_key
UseDNS no
"""


HOSTKEY_UNIT = """\
[Unit]
Description=Generate SSH host keys missing from this host
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
"""


@dataclass(frozen=True)
class ImageRecipe:
    """What the host image is made of; its hash names the cached tarball."""

    packages: tuple[str, ...] = RECIPE
    suite: str = SUITE
    variant: str = VARIANT
    prep_version: int = PREP_VERSION

    @property
    def hash(self) -> str:
        """16 hex of the sha256 of the recipe (package order does not matter)."""
        canonical = json.dumps(
            {
                "packages": sorted(set(self.packages)),
                "suite": self.suite,
                "variant": self.variant,
                "prep": self.prep_version,
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def mirror_from_sources(text: str, suite: str = SUITE) -> str | None:
    """First URI of a deb822 `.sources` stanza that carries `suite` (not its -security/-updates)."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.lstrip().startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if suite in fields.get("suites", "").split() and fields.get("uris"):
            return fields["uris"].split()[0]
    return None


def mirror_from_list(text: str, suite: str = SUITE) -> str | None:
    """First URI of a one-line `deb URI SUITE ...` entry in a sources.list."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb":
            rest = [p for p in parts[1:] if not p.startswith("[")]
            if len(rest) >= 2 and rest[1] == suite:
                return rest[0]
    return None


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (the only network the image build needs)."""
    for path, parse in ((SOURCES_FILE, mirror_from_sources), (SOURCES_LIST, mirror_from_list)):
        if path.exists():
            found = parse(path.read_text())
            if found:
                return found
    return DEFAULT_MIRROR


def debootstrap_argv(recipe: ImageRecipe, target: Path, mirror: str) -> list[str]:
    """argv of the debootstrap run that builds the image's rootfs."""
    return [
        "debootstrap",
        f"--variant={recipe.variant}",
        f"--include={','.join(recipe.packages)}",
        recipe.suite,
        str(target),
        mirror,
    ]


@dataclass(frozen=True)
class ImageStore:
    """Where images are cached (tarballs) and unpacked (rootfs dirs)."""

    cache_dir: Path = DEFAULT_CACHE_DIR
    root_dir: Path = DEFAULT_IMAGE_ROOT

    def tarball(self, recipe: ImageRecipe) -> Path:
        return self.cache_dir / f"{recipe.hash}.tar"

    def sidecar(self, recipe: ImageRecipe) -> Path:
        return self.cache_dir / f"{recipe.hash}.tar.sha256"

    def rootfs(self, recipe: ImageRecipe) -> Path:
        return self.root_dir / recipe.hash / "rootfs"

    def marker(self, recipe: ImageRecipe) -> Path:
        return self.root_dir / recipe.hash / "complete"

    def lock_path(self, recipe: ImageRecipe) -> Path:
        return self.root_dir / f"{recipe.hash}.lock"

    def cache_valid(self, recipe: ImageRecipe) -> bool:
        """True when the tarball exists and matches the sha256 sidecar (written last)."""
        tarball, sidecar = self.tarball(recipe), self.sidecar(recipe)
        if not tarball.is_file() or not sidecar.is_file():
            return False
        recorded = sidecar.read_text().split()
        return bool(recorded) and recorded[0] == sha256_file(tarball)

    def unpacked(self, recipe: ImageRecipe) -> bool:
        return self.marker(recipe).is_file() and self.rootfs(recipe).is_dir()

    def ensure(self, recipe: ImageRecipe | None = None, *, mirror: str | None = None,
               on_progress: Callable[[str], None] | None = None) -> Path:
        """The unpacked rootfs of `recipe`, building and caching it first when needed.

        Safe to call from several processes at once: building and unpacking happen under an
        exclusive lock, and a cache whose tarball does not match its sidecar is rebuilt.
        `on_progress` hears each phase (debootstrap's own `I:` lines while it builds).
        """
        recipe = recipe or ImageRecipe()
        if self.unpacked(recipe):
            return self.rootfs(recipe)
        say = on_progress or (lambda phase: None)
        say("waiting for the image lock")
        with file_lock(self.lock_path(recipe)):
            if self.unpacked(recipe):
                return self.rootfs(recipe)
            if not self.cache_valid(recipe):
                # the progress callback only when there is one (a stand-in _build may not take it)
                self._build(recipe, mirror or debian_mirror(), *([say] if on_progress is not None else []))
            say("unpacking the cached image")
            self._unpack(recipe)
        return self.rootfs(recipe)

    def _build(self, recipe: ImageRecipe, mirror: str, say: Callable[[str], None] = lambda phase: None) -> None:
        build_dir = self.root_dir / recipe.hash / "build"
        shutil.rmtree(build_dir, ignore_errors=True)
        build_dir.mkdir(parents=True)
        try:
            say(f"debootstrap {recipe.suite} from {mirror}")
            run_command(debootstrap_argv(recipe, build_dir, mirror), timeout=1800,
                        on_stdout=lambda line: say(line[3:]) if line.startswith("I: ") else None)
            say("preparing the root file system")
            prepare_rootfs(build_dir)
            say("packing the image")
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tarball, sidecar = self.tarball(recipe), self.sidecar(recipe)
            sidecar.unlink(missing_ok=True)
            partial = tarball.with_suffix(".tar.partial")
            run_command(
                ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", build_dir, "-cf", partial, "."],
                timeout=600,
            )
            partial.replace(tarball)
            # The sidecar is written last: a tarball without a matching sidecar is never trusted.
            sidecar.write_text(f"{sha256_file(tarball)}  {tarball.name}\n")
        except CommandError as exc:
            raise HostError(f"building the host image failed: {exc.message}\n{exc.output_tail}") from exc
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)

    def _unpack(self, recipe: ImageRecipe) -> None:
        rootfs, marker = self.rootfs(recipe), self.marker(recipe)
        marker.unlink(missing_ok=True)
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir(parents=True)
        try:
            run_command(
                ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", rootfs, "-xpf",
                 self.tarball(recipe)],
                timeout=600,
            )
        except CommandError as exc:
            raise HostError(f"unpacking the host image failed: {exc.message}\n{exc.output_tail}") from exc
        marker.write_text(f"{recipe.hash}\n")


def prepare_rootfs(root: Path) -> None:
    """Make a fresh debootstrap rootfs boot fast and stay quiet as an nspawn host."""
    systemctl = ["systemctl", f"--root={root}", "--quiet"]
    run_command([*systemctl, "enable", "systemd-networkd.service"])
    run_command([*systemctl, "mask", *MASKED_UNITS])
    generators = root / "etc/systemd/system-generators"
    generators.mkdir(parents=True, exist_ok=True)
    for name in MASKED_GENERATORS:
        (generators / name).unlink(missing_ok=True)
        (generators / name).symlink_to("/dev/null")  # the documented way to mask a generator
    (root / "etc/default/locale").write_text("LANG=C.UTF-8\n")
    present = [u for u in DISABLED_UNITS if (root / "lib/systemd/system" / u).exists()]
    if present:
        run_command([*systemctl, "disable", *present])
    sshd_dir = root / "etc/ssh/sshd_config.d"
    sshd_dir.mkdir(parents=True, exist_ok=True)
    (sshd_dir / "orchestrate.conf").write_text(SSHD_DROPIN)
    # Host keys are per host: written into each host's upper dir before its first boot,
    # with this unit as the fallback for a host whose upper dir lacks them.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/systemd/system/orchestrate-ssh-hostkeys.service").write_text(HOSTKEY_UNIT)
    # `sshd -t` before every start doubles sshd's start-up cost; reload still tests the config.
    ssh_dropin = root / "etc/systemd/system/ssh.service.d"
    ssh_dropin.mkdir(parents=True, exist_ok=True)
    (ssh_dropin / "orchestrate.conf").write_text("[Service]\nExecStartPre=\n")
    run_command([*systemctl, "enable", "orchestrate-ssh-hostkeys.service"])
    (root / "etc/machine-id").write_text("")
    (root / "etc/hostname").unlink(missing_ok=True)
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def prune_images(store: ImageStore | None = None, keep: ImageRecipe | None = None) -> list[str]:
    """Remove cached and unpacked images other than `keep`'s that no registered host uses.

    A host's image is its overlay's lowerdir: images referenced by a registered host's record
    or by a mounted overlay stay. Returns the removed image hashes.
    """
    store = store or ImageStore()
    keep_hash = (keep or ImageRecipe()).hash
    in_use = {keep_hash}
    for entry in registry_entries():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            lowerdir = json.loads((Path(entry["host_dir"]) / "host.json").read_text())["lowerdir"]
            in_use.add(Path(lowerdir).parent.name)
    with open("/proc/mounts") as mounts:
        for match in re.finditer(r"lowerdir=([^,\s]+)", mounts.read()):
            in_use.add(Path(match.group(1)).parent.name)
    candidates = {p.name for p in store.root_dir.iterdir() if p.is_dir()} if store.root_dir.is_dir() else set()
    if store.cache_dir.is_dir():
        candidates |= {p.name.split(".")[0] for p in store.cache_dir.glob("*.tar*")}
    removed = []
    for digest in sorted(candidates - in_use):
        recipe_lock = store.root_dir / f"{digest}.lock"
        with file_lock(recipe_lock):
            shutil.rmtree(store.root_dir / digest, ignore_errors=True)
            for path in store.cache_dir.glob(f"{digest}.tar*"):
                path.unlink(missing_ok=True)
        recipe_lock.unlink(missing_ok=True)
        removed.append(digest)
    return removed
