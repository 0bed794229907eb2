"""The operator's own alert rules: `monitoring.rule_files` of the environment file.

Each entry is a glob relative to `inventories/ENV/`. Every file it matches is a Prometheus rules
file named `NAME.rules.yml` with its promtool unit test `NAME.rules.test.yml` beside it (test
files matched by a glob are not rules). The rules are deployed with the generated ones, as
`rules/operator-NAME.rules.yml` on the monitoring host; an alert may name a remediation in a
`remediation` label, which must be one the heal policy knows (REMEDIATIONS).

Finding the files and reading their remediations is pure file reading; running promtool on them
is orchestrator.monitoring.checks's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.monitoring.rules import REMEDIATIONS

RULES_SUFFIX = ".rules.yml"


TEST_SUFFIX = ".rules.test.yml"


#: prefix of the deployed copies, so that no operator file replaces a generated one
DEPLOYED_PREFIX = "operator-"


@dataclass(frozen=True)
class OperatorRules:
    """One rules file of the operator's, and its test."""

    path: Path
    display: str
    """The path as the operator knows it (relative to the project)."""
    test: Path

    @property
    def deployed_name(self) -> str:
        """Its name in the monitoring host's rules directory."""
        return DEPLOYED_PREFIX + self.path.name


@dataclass(frozen=True)
class OperatorRuleFiles:
    """What `monitoring.rule_files` matched, and what is wrong with it (problems name the files)."""

    files: list[OperatorRules] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(file or pattern, what is wrong)."""


def _display(path: Path, project_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(project_dir.resolve()))
    except ValueError:
        return str(path)


def find_rule_files(loaded: LoadedEnvironment) -> OperatorRuleFiles:
    """The files `monitoring.rule_files` names, in pattern order, each once."""
    base = loaded.path.parent
    found: dict[Path, OperatorRules] = {}
    problems: list[tuple[str, str]] = []
    names: dict[str, str] = {}
    for pattern in loaded.env.monitoring.rule_files:
        where = f"{_display(base, loaded.project_dir)}/{pattern}"
        matched = sorted(base.glob(pattern))
        matched = [p for p in matched if p.is_file() and not p.name.endswith(TEST_SUFFIX)]
        if not matched:
            problems.append((where, "monitoring.rule_files: matches no rules file"))
            continue
        for path in matched:
            display = _display(path, loaded.project_dir)
            if path.resolve() in found:
                continue
            if not path.name.endswith(RULES_SUFFIX):
                problems.append((display, f"a rules file is named NAME{RULES_SUFFIX}, so that its test "
                                          f"NAME{TEST_SUFFIX} can be found beside it"))
                continue
            if path.name in names:
                problems.append((display, f"has the same name as {names[path.name]}; the monitoring host "
                                          "keeps both in one directory"))
                continue
            names[path.name] = display
            test = path.with_name(path.name.removesuffix(RULES_SUFFIX) + TEST_SUFFIX)
            found[path.resolve()] = OperatorRules(path=path, display=display, test=test)
    return OperatorRuleFiles(files=list(found.values()), problems=problems)


def remediation_problems(rules: OperatorRules) -> list[str]:
    """Alerts of `rules` whose `remediation` label the heal policy does not know (unreadable files
    are promtool's to report)."""
    try:
        data = yaml.safe_load(rules.path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    problems = []
    groups = data.get("groups") if isinstance(data, dict) else None
    for group in groups if isinstance(groups, list) else []:
        for rule in (group.get("rules") or []) if isinstance(group, dict) else []:
            if not isinstance(rule, dict) or not isinstance(rule.get("labels"), dict):
                continue
            remediation = rule["labels"].get("remediation")
            if remediation is not None and str(remediation) not in REMEDIATIONS:
                problems.append(f"alert {rule.get('alert') or rule.get('record')!s}: remediation "
                                f"{remediation!r} is not one of {', '.join(REMEDIATIONS)}")
    return problems


def rule_texts(found: OperatorRuleFiles) -> dict[str, str]:
    """{name in the rules directory: text} of the operator's rules files that can be read."""
    texts = {}
    for rules in found.files:
        try:
            texts[rules.deployed_name] = rules.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
    return texts
