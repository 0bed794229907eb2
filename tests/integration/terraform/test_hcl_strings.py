"""Terraform reads back every string the renderer writes exactly as it was (real terraform binary).

In main.tf a quoted string is a template, so the renderer escapes `${`/`%{` (hcl_string); in
terraform.tfvars.json values are literal and go as they are. Both are checked by letting Terraform
evaluate them: hostile strings as outputs of a root module and as variables from a JSON
variables file, then `terraform output -json`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from orchestrator.fleet.render import hcl_string
from orchestrator.tools.process import run_command

pytestmark = [pytest.mark.integration, pytest.mark.skipif(shutil.which("terraform") is None,
                                                          reason="needs terraform")]

HOSTILE = [
    "${path.module}", "%{ if true }yes%{ endif }", "$${", "%%{", "$$${x}", "a${", "}${}%{}", "$", "%", "{{ x }}",
    'quote " and \\ backslash', "line\nbreak\r\ttab", "nul-free \x01\x1b[31m\x7f control", "é ✓ 𝄞 \u2028",
    "\\${x}", "\\\\${x}", "\\u0041 stays", "",
]


def test_terraform_reads_rendered_strings_and_json_variables_back_exactly(tmp_path: Path) -> None:
    outputs = "\n".join(f'output "literal_{i}" {{\n  value = {hcl_string(value)}\n}}\n'
                        f'variable "json_{i}" {{\n  type = string\n}}\n'
                        f'output "json_{i}" {{\n  value = var.json_{i}\n}}\n' for i, value in enumerate(HOSTILE))
    (tmp_path / "main.tf").write_text(outputs)
    (tmp_path / "terraform.tfvars.json").write_text(json.dumps({f"json_{i}": v for i, v in enumerate(HOSTILE)}))
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "TF_CLI_CONFIG_FILE": str(tmp_path / "none.rc")}
    run_command(["terraform", "init", "-input=false"], cwd=tmp_path, env=env, timeout=300)
    run_command(["terraform", "apply", "-auto-approve", "-input=false"], cwd=tmp_path, env=env, timeout=300)
    found = json.loads(run_command(["terraform", "output", "-json"], cwd=tmp_path, env=env, timeout=120).stdout)
    for i, value in enumerate(HOSTILE):
        assert found[f"literal_{i}"]["value"] == value, f"main.tf: {value!r}"
        assert found[f"json_{i}"]["value"] == value, f"tfvars.json: {value!r}"
