"""Ansible itself receives every value the tool hands it as data (real ansible-playbook, no hosts).

A value that reads `{{ lookup('pipe', 'touch MARKER') }}` is given to a playbook as an extra var, as
a secret and as a host-reported release fed back (rollback_targets); each must reach a module's
argument as those characters, and MARKER must not exist afterwards. The same values handed over
the way ansible-runner passes a dict of extra vars (JSON on the command line) do run the command:
that is what the adapter's `-e @FILE` with an `!unsafe` root prevents.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.tools.ansible import PlaybookRun, run_playbook
from tests.support.project import local_playbook_project

pytestmark = pytest.mark.integration

PLAYBOOK = """
- name: Write what the module arguments received
  hosts: all
  gather_facts: false
  tasks:
    - name: Write an extra var
      ansible.builtin.copy:
        content: "{{ payload }}"
        dest: "{{ out_dir }}/extra.txt"
        mode: '0600'
    - name: Write a host's release fed back
      ansible.builtin.copy:
        content: "{{ (rollback_targets | default({}))[inventory_hostname] | default('') }}"
        dest: "{{ out_dir }}/fed_back.txt"
        mode: '0600'
    - name: Write a secret
      ansible.builtin.copy:
        content: "{{ (rust_service_secret_env | default({})).HELLO_SECRET | default('') }}"
        dest: "{{ out_dir }}/secret.txt"
        mode: '0600'
    - name: Write a nested value and its key
      ansible.builtin.copy:
        content: "{{ nested | to_json }}"
        dest: "{{ out_dir }}/nested.json"
        mode: '0600'
"""


def _project(tmp_path: Path) -> tuple[Path, Path, Path]:
    (tmp_path / "out").mkdir()
    return local_playbook_project(tmp_path, "values.yml", PLAYBOOK)


def _values(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any], list[Path]]:
    markers = [tmp_path / f"marker-{name}" for name in ("extra", "fed-back", "secret", "key", "nested")]
    extra = {
        "out_dir": str(tmp_path / "out"),
        "payload": f"{{{{ lookup('pipe', 'touch {markers[0]}') }}}}",
        "rollback_targets": {"localhost": f"{{{{ lookup('pipe', 'touch {markers[1]}') }}}}"},
        "nested": {f"k{{{{ lookup('pipe', 'touch {markers[3]}') }}}}": [
            f"{{% set x = lookup('pipe', 'touch {markers[4]}') %}}{{# c #}}", "yes", ""]},
    }
    secrets = {"rust_service_secret_env": {
        "HELLO_SECRET": f"Xy{{#9k#}}Q2{{{{ x }}}}$HOME{{{{ lookup('pipe', 'touch {markers[2]}') }}}}"}}
    return extra, secrets, markers


def test_extra_vars_secrets_and_reported_values_reach_module_arguments_verbatim(tmp_path: Path) -> None:
    project, playbook, inventory = _project(tmp_path)
    extra, secrets, markers = _values(tmp_path)
    result = run_playbook(PlaybookRun(playbook=playbook, inventory=inventory, project_dir=project,
                                      runs_dir=tmp_path / "runs", extra_vars=extra, secret_vars=secrets, timeout=300))
    assert result.ok, result.summary_line() or result.status
    out = tmp_path / "out"
    assert (out / "extra.txt").read_text() == extra["payload"]
    assert (out / "fed_back.txt").read_text() == extra["rollback_targets"]["localhost"]
    assert (out / "secret.txt").read_text() == secrets["rust_service_secret_env"]["HELLO_SECRET"]
    assert json.loads((out / "nested.json").read_text()) == extra["nested"]
    assert [m for m in markers if m.exists()] == []
    # the command record holds the vars files' paths, not the values
    record = next((tmp_path / "runs").glob("*/artifacts/*/command")).read_text()
    assert "lookup" not in record and "extravars.yml" in record


def test_the_same_values_as_json_extra_vars_would_run_on_the_controller(tmp_path: Path) -> None:
    """The control: without the adapter's vars files the payload runs (so the test above can fail)."""
    import ansible_runner

    project, playbook, inventory = _project(tmp_path)
    extra, _, markers = _values(tmp_path)
    (tmp_path / "runs").mkdir()
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1"}
    runner = ansible_runner.run(private_data_dir=str(tmp_path / "runs"), project_dir=str(project),
                                playbook=str(playbook), inventory=str(inventory), extravars=extra, envvars=env,
                                quiet=True, suppress_env_files=True, timeout=300,
                                # without a cancel callback ansible-runner installs SIGINT/SIGTERM
                                # handlers it never removes: later tests in this process would lose Ctrl-C
                                cancel_callback=lambda: False)
    assert runner.rc is not None
    assert markers[0].exists()
