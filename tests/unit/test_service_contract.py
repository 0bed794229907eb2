"""The service contract of the environment file (service.binary, args, metrics, hooks;
monitoring.rule_files): defaults, validation with file:line errors, and the role inputs it becomes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config.loader import Project
from orchestrator.config.rules import DEFAULT_ARGS
from orchestrator.config.types import check_args
from orchestrator.errors import ConfigError
from orchestrator.release.artifact import Release
from orchestrator.release.hosts import release_vars, role_vars

LEDGER: dict[str, Any] = {
    "name": "ledger",
    "binary": "ledgerd",
    "args": ["--listen", "0.0.0.0:{port}", "--state", "{data_dir}", "--migrations", "{release_dir}/migrations"],
    "port": 9300,
    "health": {"path": "/ready"},
    "metrics": {"path": "/metrics", "requests": "ledger_http_responses_total", "errors": 'class="5xx"'},
    "hooks": {"before_switch": ["{release_dir}/ledgerd", "migrate", "--state", "{data_dir}"]},
}


def write_service(project: Path, service: dict[str, Any], **sections: Any) -> Path:
    """Replace the service section (and others) of the copied project's dev environment."""
    path = project / "inventories" / "dev" / "environment.yml"
    data = yaml.safe_load(path.read_text())
    data["service"] = service
    data.update(sections)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_defaults_keep_the_example_as_it_was(project_copy: Path) -> None:
    write_service(project_copy, {"name": "hello"})
    service = Project(project_copy).load("dev").env.service
    assert service.effective_binary == "hello"
    assert service.args == list(DEFAULT_ARGS) == ["--port", "{port}", "--data-dir", "{data_dir}"]
    assert service.metrics is None and service.hooks.as_role_input() == {}
    assert Project(project_copy).load("dev").env.monitoring.rule_files == []


def test_a_service_with_its_own_contract_becomes_the_roles_inputs(project_copy: Path, tmp_path: Path) -> None:
    write_service(project_copy, LEDGER)
    loaded = Project(project_copy).load("dev")
    inputs = role_vars(loaded, None)
    assert inputs["rust_service_binary"] == "ledgerd"
    # as written (the extra vars file marks every string unsafe: Ansible never templates them)
    assert inputs["rust_service_args"] == LEDGER["args"]
    assert inputs["rust_service_hooks"] == {"before_switch": LEDGER["hooks"]["before_switch"]}
    assert inputs["rust_service_health_path"] == "/ready" and inputs["rust_service_port"] == 9300
    binary = Release(id="0.1.0-0123456789ab", version="0.1.0", sha256="0" * 64, binary=tmp_path / "ledgerd",
                     source=tmp_path / "ledgerd")
    assert release_vars(binary)["rust_service_release_binary"] == str(tmp_path / "ledgerd")
    assert release_vars(binary)["rust_service_release_archive"] == ""
    bundle = Release(id="0.1.0-0123456789ab", version="0.1.0", sha256="0" * 64, binary=tmp_path / "ledgerd",
                     source=tmp_path / "b.tar.gz", archive=tmp_path / "0.1.0-0123456789ab.tar.gz")
    assert release_vars(bundle)["rust_service_release_binary"] == ""
    assert release_vars(bundle)["rust_service_release_archive"] == str(tmp_path / "0.1.0-0123456789ab.tar.gz")


def test_metrics_false_is_no_metrics(project_copy: Path) -> None:
    write_service(project_copy, {**LEDGER, "metrics": False})
    assert Project(project_copy).load("dev").env.service.metrics is None


@pytest.mark.parametrize(("service", "needle", "message"), [
    ({**LEDGER, "args": ["--listen", "0.0.0.0:{prot}"]}, "{prot}", "service.args.1: unknown placeholder {prot}"),
    ({**LEDGER, "hooks": {"after_switch": ["x", "{release}"]}}, "{release}",
     "service.hooks.after_switch.1: unknown placeholder {release}"),
    ({**LEDGER, "hooks": {"before_switch": ["", "x"]}}, "- ''", "the program is empty"),
    ({**LEDGER, "binary": "bin/ledgerd"}, "bin/ledgerd", "service.binary: 'bin/ledgerd' is not a file name"),
    ({**LEDGER, "metrics": True}, "metrics", "service.metrics: expected a mapping with path, requests and errors"),
    ({**LEDGER, "metrics": {"requests": "ledger total", "errors": 'class="5xx"'}}, "ledger total",
     "is not a Prometheus metric name"),
    ({**LEDGER, "metrics": {"requests": "x_total", "errors": "class=5xx"}}, "class=5xx",
     "is not a list of PromQL label matchers"),
    ({**LEDGER, "metrics": {"requests": "x_total"}}, "metrics:", "service.metrics.errors: required field is missing"),
    ({**LEDGER, "hooks": {"before": ["x"]}}, "before",
     "unknown key 'before' (valid keys: before_switch, after_switch)"),
])
def test_a_bad_contract_is_refused_at_its_line(project_copy: Path, service: dict[str, Any], needle: str,
                                                message: str) -> None:
    path = write_service(project_copy, service)
    with pytest.raises(ConfigError) as caught:
        Project(project_copy).load("dev")
    assert message in caught.value.message
    assert caught.value.line == line_of(path, needle), caught.value.message


def test_rule_files_are_relative_globs(project_copy: Path) -> None:
    path = write_service(project_copy, LEDGER, monitoring={"rule_files": ["rules/*.rules.yml", "../x.rules.yml"]})
    with pytest.raises(ConfigError, match=r"monitoring.rule_files.1: '../x.rules.yml' is not a glob") as caught:
        Project(project_copy).load("dev")
    assert caught.value.line == line_of(path, "../x.rules.yml")


@pytest.mark.parametrize(("argv", "problem"), [
    (["--port", "{port}", "{{ x }}", "{}", "${HOME:-x}", "{port:>5}"], None),
    (["a", 8080, 1.5], None),
    (["{data_dir}/{name}-{config_dir}{release_dir}"], None),
    (["{datadir}"], "[0]: unknown placeholder {datadir}"),
    (["ok", "a\nb"], "[1]: control characters are not allowed"),
    (["ok", True], "[1]: expected a string, got bool"),
    ("--port {port}", "expected a list of strings, got str"),
])
def test_check_args_placeholders_and_literal_braces(argv: Any, problem: str | None) -> None:
    found = check_args(argv)
    assert (found is None) if problem is None else (found is not None and found.startswith(problem)), found


def test_args_and_hooks_reach_ansible_as_data(project_copy: Path) -> None:
    from orchestrator.release.hosts import role_vars
    from orchestrator.tools.ansible import unsafe_yaml

    loaded = Project(project_copy).load("dev")
    variables = role_vars(loaded, None, signers=False)
    assert variables["rust_service_args"] == list(loaded.env.service.args)
    # the vars file Ansible reads tags its root `!unsafe`: every string below it is data
    assert unsafe_yaml(variables).startswith("!unsafe")

