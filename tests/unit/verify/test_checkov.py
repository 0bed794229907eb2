"""The checkov check's skip list and how checkov's JSON is read (the scanner itself runs in
tests/integration/gates)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.tools.checkov import CheckovFinding, parse_report
from orchestrator.verify.checkov import SKIPS_FILE, load_skips, split

REPO = Path(__file__).resolve().parents[3]


def finding(check_id: str, resource: str) -> CheckovFinding:
    return CheckovFinding(check_id=check_id, name="n", resource=resource, file=Path("/m/main.tf"), lines=(1, 2))


def test_the_projects_skips_each_have_a_reason_and_never_accept_open_ssh() -> None:
    skips = load_skips(REPO)
    assert skips, f"{SKIPS_FILE} is empty"
    assert all(len(s.reason) > 40 for s in skips)
    assert not {"CKV_AWS_24", "CKV_AWS_25"} & {s.check for s in skips}


def test_a_skip_covers_its_resources_only() -> None:
    skips = load_skips(REPO)
    lb_port_80 = finding("CKV_AWS_260", "module.fleet.aws_security_group.lb[0]")
    app_port_80 = finding("CKV_AWS_260", "module.fleet.aws_security_group.app")
    ssh = finding("CKV_AWS_24", "module.fleet.aws_security_group.app")
    accepted, remaining = split([lb_port_80, app_port_80, ssh, ssh], skips)
    assert accepted == [lb_port_80]
    assert remaining == [app_port_80, ssh]  # listed once


@pytest.mark.parametrize(("entry", "message"), [
    ("  - check: CKV_AWS_8\n", "reason: CKV_AWS_8 needs the reason it does not apply"),
    ("  - check: AWS_8\n    reason: because\n", "is not a checkov check id"),
    ("  - check: CKV_AWS_8\n    reason: because\n    scope: all\n", "unknown key 'scope'"),
    ("  - check: CKV_AWS_8\n    reason: because\n    resources: module.x\n", "resources: expected a list"),
])
def test_a_bad_skip_is_refused_naming_file_and_line(tmp_path: Path, entry: str, message: str) -> None:
    path = tmp_path / SKIPS_FILE
    path.parent.mkdir(parents=True)
    path.write_text("# accepted\nskips:\n  - check: CKV2_AWS_12\n    reason: fine\n" + entry)
    with pytest.raises(ConfigError, match=message) as refused:
        load_skips(tmp_path)
    assert str(refused.value).startswith(f"{SKIPS_FILE}:5: skips[1]: ")


def test_checkovs_three_report_shapes(tmp_path: Path) -> None:
    bare = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0, "resource_count": 0,
            "checkov_version": "3.3.30"}
    assert parse_report(json.dumps(bare), tmp_path).failed == []
    one = {"check_type": "terraform", "summary": {"passed": 3, "resource_count": 2, "checkov_version": "3.3.30"},
           "results": {"failed_checks": [{"check_id": "CKV_AWS_24", "check_name": "ssh", "resource": "sg.a",
                                          "file_path": "/../mod/main.tf", "file_line_range": [3, 9]}]}}
    report = parse_report(json.dumps(one), tmp_path / "root")
    assert (report.version, report.resources, report.passed) == ("3.3.30", 2, 3)
    assert report.failed == [CheckovFinding("CKV_AWS_24", "ssh", "sg.a", (tmp_path / "mod" / "main.tf"), (3, 9))]
    assert len(parse_report(json.dumps([one, one]), tmp_path / "root").failed) == 2
    with pytest.raises(ValueError):
        parse_report("[]", tmp_path)
