"""Exception hierarchy and the process exit codes every entry point shares."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Exit codes of the `orchestrate` command (a contract scripts rely on: docs/contracts.md)."""

    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    ROLLED_BACK = 3
    CHANGES = 4
    LOCK_BUSY = 75
    INTERRUPTED = 130


class OrchestratorError(Exception):
    """Base of every error core code raises; the CLI maps it to an exit code."""

    exit_status: ExitStatus = ExitStatus.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(OrchestratorError):
    """Bad input in an environment file or on the command line (exit 2)."""

    exit_status = ExitStatus.BAD_INPUT

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        location = ""
        if path is not None:
            location = f"{path}:{line}: " if line is not None else f"{path}: "
        where = f"{field}: " if field else ""
        super().__init__(f"{location}{where}{message}", hint=hint)
        self.path = path
        self.line = line
        self.field = field


class UsageError(OrchestratorError):
    """A request that cannot be honoured as given (exit 2): unknown env, missing --yes, ..."""

    exit_status = ExitStatus.BAD_INPUT


class CommandError(OrchestratorError):
    """An external program failed; carries its return code, argv and output tail."""

    def __init__(self, message: str, *, argv: list[str], returncode: int | None, output_tail: str) -> None:
        super().__init__(message)
        self.argv = argv
        self.returncode = returncode
        self.output_tail = output_tail


class CommandTimeout(CommandError):
    """An external program ran longer than its timeout and was killed."""


class HostError(OrchestratorError):
    """A local host could not be created, started, reached or removed."""


class TerraformError(OrchestratorError):
    """Terraform reported an error; the message carries its diagnostics verbatim."""


class StateLockError(TerraformError):
    """Terraform could not acquire the state lock: another apply holds it."""

    exit_status = ExitStatus.LOCK_BUSY


class AnsibleError(OrchestratorError):
    """An Ansible run failed; the message names each failed host, task and message."""


class HealthGateFailed(OrchestratorError):
    """A release failed its health gate and the previous release was restored (exit 3)."""

    exit_status = ExitStatus.ROLLED_BACK


class LockBusy(OrchestratorError):
    """The environment lock is held by another run and waiting was not allowed (exit 75)."""

    exit_status = ExitStatus.LOCK_BUSY


class ChangesPending(OrchestratorError):
    """A plan or drift check found changes (exit 4); not a failure of the tool."""

    exit_status = ExitStatus.CHANGES


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the command (exit 130) after what was running put back what it had to.

    A KeyboardInterrupt, not an OrchestratorError: code that handles errors (`except
    OrchestratorError`, `except Exception`) must not carry on after an operator's Ctrl-C. The run
    journal marks the run `interrupted`; `result` is what the interrupted work had done (e.g. the
    hosts of a deploy), shown by the CLI like a failure's result.
    """

    exit_status = ExitStatus.INTERRUPTED

    def __init__(self, message: str, *, result: object | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.result = result

    def __str__(self) -> str:
        return self.message


class ReleaseError(OrchestratorError):
    """The release could not be built, tested or staged (exit 1): nothing was deployed."""
