"""Scheduled rollouts: the cron line that runs `orchestrate up` unattended.

The line runs `up` with `--json` (machine-readable result in the log), a bounded
`--lock-wait` (a scheduled run queues behind an operator's run instead of failing, but does
not pile up forever) and appends to a per-environment log. Runs from cron have no terminal,
so they never prompt; a protected environment only gets a line when `--yes` is asked for
explicitly, and the line then carries it. Cron starts commands with an almost empty environment:
an environment with a vault-encrypted secrets.yml gets the *path* of its vault password file
written into the line as `ORCHESTRATE_VAULT_PASSWORD_FILE=...` (never the password), and no line
without one.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.rules import control_characters
from orchestrator.config.schema import Schedule
from orchestrator.config.secrets import PASSWORD_FILE_ENV, secrets_path
from orchestrator.errors import UsageError
from orchestrator.ids import shown

CRON_DIR = Path("/etc/cron.d")
#: how long a scheduled run waits for the environment lock before giving up (exit 75)
DEFAULT_LOCK_WAIT = 1800


@dataclass(frozen=True)
class CronEntry:
    """One /etc/cron.d entry for an environment."""

    env: str
    expression: str
    argv: list[str]
    log_path: Path
    file_name: str
    path_env: str
    environment: dict[str, str] = field(default_factory=dict)
    """Assignments the command starts with (`NAME=value ...`): cron passes almost no environment."""

    @property
    def command(self) -> str:
        assignments = "".join(f"{name}={shlex.quote(value)} " for name, value in sorted(self.environment.items()))
        return f"{assignments}{shlex.join(self.argv)} >> {shlex.quote(str(self.log_path))} 2>&1"

    @property
    def line(self) -> str:
        """The crontab line (system crontab format: with the user field).

        cron turns an unescaped `%` of the command into a newline (crontab(5)): a path or
        value with one is escaped as `\\%`, which cron hands to the shell as `%`. A newline or
        any other control character would start another entry (shlex.quote keeps them): the
        line is refused instead (UsageError).
        """
        line = f"{self.expression} root {self.command.replace('%', chr(92) + '%')}"
        return one_line(line, "the cron line")

    def file_text(self) -> str:
        """The whole /etc/cron.d file: environment, then the line."""
        return (
            f"# orchestrate scheduled rollout for environment {one_line(self.env, 'the environment name')}; "
            "managed by `orchestrate schedule`\n"
            "SHELL=/bin/sh\n"
            f"PATH={one_line(self.path_env, 'PATH')}\n"
            f"{self.line}\n"
        )


def one_line(text: str, what: str) -> str:
    """`text` when it holds no control character (newline, carriage return, NUL, ...), else a
    UsageError: in /etc/cron.d such a character ends the entry and starts another, run as root."""
    bad = control_characters(text)
    if bad:
        raise UsageError(f"{what} would hold control characters ({', '.join(bad)}): {shown(text)}; nothing "
                         "was written")
    return text


def cron_file_name(project_dir: Path, env: str) -> str:
    """A cron.d file name unique per project and environment (run-parts naming rules)."""
    digest = hashlib.sha256(str(project_dir.resolve()).encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"orchestrate-{digest}-{env}")


def password_file_option(given: Path | None, environ: Mapping[str, str]) -> tuple[Path | None, str]:
    """The vault password file for the line and where it came from (for error messages).

    `--vault-password-file` wins; otherwise the ORCHESTRATE_VAULT_PASSWORD_FILE of the calling
    environment, when set.
    """
    if given is not None:
        return given, "--vault-password-file"
    value = environ.get(PASSWORD_FILE_ENV, "")
    return (Path(value), PASSWORD_FILE_ENV) if value else (None, "--vault-password-file")


def check_password_file(path: Path, source: str = "--vault-password-file") -> Path:
    """`path` as an absolute path, after checking that it is a readable file (cron has another cwd)."""
    named = f"{source}={path}" if source == PASSWORD_FILE_ENV else f"{source} {path}"
    absolute = path.expanduser().absolute()
    if not absolute.is_file():
        what = "a directory" if absolute.is_dir() else "no such file"
        raise UsageError(f"{named}: {what}; it must name the file that holds the vault password")
    try:
        with absolute.open("rb"):
            pass
    except OSError as exc:
        raise UsageError(f"{named}: cannot read it: {exc.strerror or exc}") from None
    return absolute


def build_entry(
    loaded: LoadedEnvironment,
    *,
    expression: str | None = None,
    release: str | None = None,
    yes: bool = False,
    lock_wait: int = DEFAULT_LOCK_WAIT,
    executable: Path | None = None,
    vault_password_file: Path | None = None,
    vault_password_source: str = "--vault-password-file",  # noqa: S107 - where the path came from
) -> CronEntry:
    """The cron entry for `loaded`; expression and release default to the env's `schedule`.

    `vault_password_file` (named by `vault_password_source` in errors) goes into the line as
    ORCHESTRATE_VAULT_PASSWORD_FILE; an environment with a secrets.yml is refused without one,
    because its scheduled `up` could not decrypt it.
    """
    env = loaded.env
    configured = env.schedule
    expr = expression or (configured.cron if configured else None)
    if not expr:
        raise UsageError(f"no --cron given and {env.name} has no schedule.cron in {loaded.path.name}")
    try:
        expr = Schedule(cron=expr).cron  # the same rules as schedule.cron in the environment file
    except ValidationError as exc:
        reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise UsageError(f"--cron: {reason}") from None
    if env.protected and not yes:
        raise UsageError(
            f"{env.name} is protected: unattended runs need an explicit --yes (it is written into the cron line)"
        )
    environment: dict[str, str] = {}
    if vault_password_file is not None:
        environment[PASSWORD_FILE_ENV] = str(check_password_file(vault_password_file, vault_password_source))
    elif secrets_path(loaded).exists():
        raise UsageError(
            f"{env.name} has inventories/{env.name}/{secrets_path(loaded).name}: a scheduled run needs its vault "
            f"password file; pass --vault-password-file FILE (or set {PASSWORD_FILE_ENV})"
        )
    exe = executable or Path(sys.executable).parent / "orchestrate"
    project = loaded.project_dir.resolve()
    argv = [str(exe), "--project-dir", str(project), "up", env.name, "--json", "--lock-wait", str(lock_wait)]
    release_path = release or (configured.release if configured else "")
    if release is not None:
        one_line(release, "--release")
    one_line(str(loaded.project_dir.resolve()), "the project directory")
    if release_path:
        path = Path(release_path)
        argv += ["--release", str(path if path.is_absolute() else project / path)]
    if yes:
        argv.append("--yes")
    cargo_bin = Path.home() / ".cargo" / "bin"
    path_env = ":".join([str(exe.parent), str(cargo_bin), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin",
                         "/usr/bin", "/sbin", "/bin"])
    entry = CronEntry(
        env=env.name,
        expression=expr,
        argv=argv,
        log_path=loaded.paths.cron_log,
        file_name=cron_file_name(project, env.name),
        path_env=path_env,
        environment=environment,
    )
    entry.file_text()  # a control character anywhere is refused now, before anything is shown or written
    return entry


def install(entry: CronEntry, cron_dir: Path = CRON_DIR) -> Path:
    """Write the entry to cron_dir/<file_name> atomically (mode 0644, as cron requires)."""
    cron_dir.mkdir(parents=True, exist_ok=True)
    target = cron_dir / entry.file_name
    tmp = cron_dir / f".{entry.file_name}.tmp"
    tmp.write_text(entry.file_text())
    tmp.chmod(0o644)
    tmp.replace(target)
    entry.log_path.parent.mkdir(parents=True, exist_ok=True)
    return target


def uninstall(entry: CronEntry, cron_dir: Path = CRON_DIR) -> bool:
    """Remove the entry's file; True when there was one."""
    return uninstall_file(cron_dir / entry.file_name)


def installed_file(loaded: LoadedEnvironment, cron_dir: Path = CRON_DIR) -> Path:
    """Where the line of `loaded` is installed (removal needs no cron expression nor password file)."""
    return cron_dir / cron_file_name(loaded.project_dir, loaded.name)


def uninstall_file(target: Path) -> bool:
    """Remove an installed cron file; True when there was one."""
    if target.exists():
        target.unlink()
        return True
    return False
