"""Adapter over Ansible's static checkers: `ansible-playbook --syntax-check` and `ansible-lint`.

Both programs are taken from PATH or, failing that, from the virtualenv orchestrate runs from.
argv are built and ansible-lint's pep8-format lines are read by pure functions (`syntax_check_argv`,
`lint_argv`, `parse_lint_output`); `syntax_check` and `lint` run them and return typed results
(a failing check is a result, not an exception).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.tools.process import run_command, which

ANSIBLE_PLAYBOOK = "ansible-playbook"
ANSIBLE_LINT = "ansible-lint"

#: seconds the checkers may take
SYNTAX_TIMEOUT = 120.0
LINT_TIMEOUT = 900.0

#: `file:line[:column]: rule[:] message`, ansible-lint's `--format pep8`
_LINT_LINE = re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+)(?::\d+)?: (?P<rule>[\w\[\]\-]+):? (?P<message>.*)$")


def program(name: str) -> str:
    """`name` on PATH or in the venv orchestrate runs from (else the bare name)."""
    found = which(name)
    return str(found) if found is not None else name


# --- pure builders and parsers --------------------------------------------------------------


def syntax_check_argv(playbooks: Sequence[Path | str], *, executable: str = ANSIBLE_PLAYBOOK) -> list[str]:
    """`ansible-playbook --syntax-check -i localhost, PLAYBOOK...` (no inventory needed)."""
    return [executable, "--syntax-check", "-i", "localhost,", *map(str, playbooks)]


def syntax_errors(output: str) -> list[str]:
    """The error lines of `--syntax-check` output (pure)."""
    return [line.strip() for line in output.splitlines() if "ERROR" in line or "error" in line.lower()]


def lint_argv(targets: Sequence[Path | str], *, profile: str, executable: str = ANSIBLE_LINT) -> list[str]:
    """`ansible-lint --profile PROFILE --offline --nocolor --format pep8 TARGET...`."""
    return [executable, "--profile", profile, "--offline", "--nocolor", "--format", "pep8", *map(str, targets)]


@dataclass(frozen=True)
class LintViolation:
    """One violation ansible-lint reported."""

    file: str
    line: int
    rule: str
    message: str
    text: str
    """The line as ansible-lint printed it."""


def parse_lint_output(stdout: str) -> list[LintViolation]:
    """The violations in ansible-lint's pep8-format output (pure; other lines are passed over)."""
    found = []
    for raw in stdout.splitlines():
        text = raw.strip()
        match = _LINT_LINE.match(text)
        if match:
            found.append(LintViolation(match.group("file"), int(match.group("line")), match.group("rule"),
                                       match.group("message"), text))
    return found


# --- runners --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntaxCheck:
    """Outcome of one `--syntax-check` run."""

    returncode: int
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def syntax_check(playbooks: Sequence[Path], *, cwd: Path, env: Mapping[str, str],
                 timeout: float = SYNTAX_TIMEOUT) -> SyntaxCheck:
    """`ansible-playbook --syntax-check` of `playbooks` in one process."""
    result = run_command(syntax_check_argv(playbooks, executable=program(ANSIBLE_PLAYBOOK)), cwd=cwd, env=env,
                         timeout=timeout, check=False)
    errors = syntax_errors(result.stderr + result.stdout) if result.returncode != 0 else []
    return SyntaxCheck(result.returncode, errors)


@dataclass(frozen=True)
class LintResult:
    """Outcome of one ansible-lint run: its exit code, the violations and its failure lines."""

    returncode: int
    violations: list[LintViolation] = field(default_factory=list)
    failure_lines: list[str] = field(default_factory=list)
    """Lines of stderr saying why it failed (`Failed ...`, `ERROR ...`)."""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def lint(targets: Sequence[Path | str], *, profile: str, cwd: Path, env: Mapping[str, str],
         timeout: float = LINT_TIMEOUT) -> LintResult:
    """ansible-lint with `profile` over `targets` (paths relative to `cwd`)."""
    result = run_command(lint_argv(targets, profile=profile, executable=program(ANSIBLE_LINT)), cwd=cwd, env=env,
                         timeout=timeout, check=False)
    failures = [line.strip() for line in result.stderr.splitlines() if "Failed" in line or "ERROR" in line]
    return LintResult(result.returncode, parse_lint_output(result.stdout), failures)
