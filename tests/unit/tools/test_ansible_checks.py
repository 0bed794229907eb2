"""ansible-playbook --syntax-check and ansible-lint: argv and the reading of their output."""

from __future__ import annotations

from pathlib import Path

from orchestrator.tools import ansible_checks as ac


def test_syntax_check_argv_needs_no_inventory() -> None:
    argv = ac.syntax_check_argv([Path("playbooks/site.yml"), "playbooks/deploy.yml"])
    assert argv == ["ansible-playbook", "--syntax-check", "-i", "localhost,", "playbooks/site.yml",
                    "playbooks/deploy.yml"]


def test_syntax_errors_keep_the_error_lines() -> None:
    output = "[WARNING]: nothing\nERROR! 'hostz' is not a valid attribute for a Play\n\nThe error appears in x.yml\n"
    assert ac.syntax_errors(output) == ["ERROR! 'hostz' is not a valid attribute for a Play",
                                        "The error appears in x.yml"]


def test_lint_argv_is_offline_pep8_with_the_profile() -> None:
    argv = ac.lint_argv(["playbooks", "roles"], profile="production", executable="/venv/bin/ansible-lint")
    assert argv == ["/venv/bin/ansible-lint", "--profile", "production", "--offline", "--nocolor", "--format", "pep8",
                    "playbooks", "roles"]


def test_lint_output_is_parsed_into_violations() -> None:
    stdout = ("roles/web/tasks/main.yml:12:3: fqcn[action-core]: Use FQCN for builtin module actions (copy).\n"
              "playbooks/site.yml:4: name[missing] All tasks should be named.\n"
              "Read documentation for instructions on how to ignore specific rule violations.\n")
    found = ac.parse_lint_output(stdout)
    assert [(v.file, v.line, v.rule) for v in found] == [("roles/web/tasks/main.yml", 12, "fqcn[action-core]"),
                                                         ("playbooks/site.yml", 4, "name[missing]")]
    assert found[0].message == "Use FQCN for builtin module actions (copy)."
    assert found[1].text == "playbooks/site.yml:4: name[missing] All tasks should be named."
    assert ac.parse_lint_output("Passed: 0 failure(s)") == []
