"""checkov (PyPI), the infrastructure-as-code scanner: the checks a Terraform root fails.

checkov pins dependencies that conflict with ansible-core's and boto3's, so `make deps` installs it
into a venv of its own (`.venv/checkov`) and links its program into `.venv/bin`. It is found on
PATH, beside the running interpreter, or in that venv. It runs offline: no download of Prisma
Cloud's mappings, no update check, modules only from the local paths the root names.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import CommandError
from orchestrator.tools.process import run_command, which

#: a scan of one rendered root takes a few seconds; the bound is for a stuck process
TIMEOUT = 600.0

#: checkov's own network use, switched off (it would try, and wait for, hosts this machine cannot reach)
OFFLINE_ENV = {"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE", "NO_COLOR": "1"}


@dataclass(frozen=True)
class CheckovFinding:
    """One failed check on one resource."""

    check_id: str
    name: str
    resource: str
    file: Path
    """Absolute path of the file that declares the resource."""
    lines: tuple[int, int]


@dataclass(frozen=True)
class CheckovReport:
    """What checkov found in one directory."""

    version: str
    resources: int
    passed: int
    failed: list[CheckovFinding]
    parsing_errors: list[str]


def find_checkov() -> Path:
    """The checkov program: on PATH or beside the interpreter, else in `.venv/checkov` (make deps)."""
    found = which("checkov")
    if found is not None:
        return found
    own_venv = Path(sys.executable).parent.parent / "checkov" / "bin" / "checkov"
    if own_venv.exists():
        return own_venv
    raise CommandError("checkov not found on PATH, beside the interpreter or in .venv/checkov (run `make deps`)",
                       argv=["checkov"], returncode=None, output_tail="")


def scan_argv(checkov: Path, directory: Path) -> list[str]:
    """argv of an offline scan of the Terraform root `directory` (and the local modules it calls), JSON out."""
    return [str(checkov), "--directory", str(directory), "--framework", "terraform",
            "--download-external-modules", "false", "--skip-download", "--output", "json", "--compact",
            "--quiet", "--skip-path", r"\.terraform/"]


def _reports(data: Any) -> list[Mapping[str, Any]]:
    """checkov's JSON is one report per framework (a list when several ran), or a bare summary when no
    file had anything to check."""
    items = data if isinstance(data, list) else [data]
    return [item for item in items if isinstance(item, Mapping)]


def parse_report(stdout: str, directory: Path) -> CheckovReport:
    """The report of `checkov --output json` run on `directory`; ValueError when it is not one."""
    reports = _reports(json.loads(stdout))
    if not reports:
        raise ValueError("checkov printed no report")
    version, resources, passed = "", 0, 0
    failed: list[CheckovFinding] = []
    errors: list[str] = []
    for report in reports:
        summary = report.get("summary", report)
        version = version or str(summary.get("checkov_version") or "")
        resources += int(summary.get("resource_count") or 0)
        passed += int(summary.get("passed") or 0)
        results = report.get("results") or {}
        failed += [_finding(item, directory) for item in results.get("failed_checks") or []]
        errors += [str(e) for e in results.get("parsing_errors") or []]
    return CheckovReport(version=version, resources=resources, passed=passed, failed=failed, parsing_errors=errors)


def _finding(item: Mapping[str, Any], directory: Path) -> CheckovFinding:
    # file paths are relative to the scanned directory, written with a leading "/"
    relative = str(item.get("file_path") or "").lstrip("/")
    lines = item.get("file_line_range") or [0, 0]
    return CheckovFinding(check_id=str(item.get("check_id")), name=str(item.get("check_name") or ""),
                          resource=str(item.get("resource") or ""), file=(directory / relative).resolve(),
                          lines=(int(lines[0]), int(lines[-1])))


def scan(directory: Path, *, timeout: float = TIMEOUT) -> CheckovReport:
    """Scan `directory`; CommandError when checkov is missing, crashes or prints no report.

    checkov exits 1 when a check failed: that is a finding, not an error of the scan.
    """
    argv = scan_argv(find_checkov(), directory)
    result = run_command(argv, cwd=directory, env=OFFLINE_ENV, timeout=timeout, ok_codes=(0, 1))
    try:
        return parse_report(result.stdout, directory)
    except (ValueError, TypeError) as exc:
        raise CommandError(f"checkov printed no JSON report ({exc})", argv=argv, returncode=result.returncode,
                           output_tail=result.stderr[-4000:]) from None

