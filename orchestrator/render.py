"""Rendering of per-environment files with jinja2 (StrictUndefined).

`render_environment` writes the environment's Terraform root module under
`.orchestrate/<env>/terraform/`: versions, backend, provider configuration and the call of
the fleet module, with the environment's variables in `terraform.tfvars.json`.
Nothing rendered here ever contains a credential: those come from the environment at run time.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from orchestrator.config import LoadedEnvironment, TerraformAws, TerraformLocal

AWS_ENDPOINT_ENV = "ORCHESTRATE_AWS_ENDPOINT"

_jinja = jinja2.Environment(
    loader=jinja2.PackageLoader("orchestrator", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # noqa: S701 - HCL and YAML, not HTML
)
_jinja.filters["tojson"] = lambda value: json.dumps(value)


@dataclass(frozen=True)
class RenderResult:
    """What `render_environment` wrote."""

    env: str
    terraform_dir: Path
    files: list[Path]


def render_template(name: str, **context: Any) -> str:
    """Render package template `name` with StrictUndefined."""
    return _jinja.get_template(name).render(**context)


def module_source(loaded: LoadedEnvironment, terraform_dir: Path) -> str:
    """Relative path from the rendered root to terraform/modules/<module>."""
    module_dir = loaded.project_dir / "terraform" / "modules" / loaded.env.terraform.module
    return os.path.relpath(module_dir, terraform_dir)


def terraform_variables(loaded: LoadedEnvironment) -> dict[str, Any]:
    """The module's inputs: the environment's vars plus what the orchestrator supplies."""
    env = loaded.env
    variables: dict[str, Any] = env.terraform.vars.model_dump()
    if isinstance(env.terraform, TerraformLocal):
        variables["state_dir"] = str(loaded.state_dir / "hosts")
        variables["python"] = sys.executable
        variables["project_dir"] = str(loaded.project_dir)
    return variables


def render_environment(loaded: LoadedEnvironment) -> RenderResult:
    """Write the Terraform root of `loaded` under .orchestrate/<env>/terraform/."""
    env = loaded.env
    terraform_dir = loaded.state_dir / "terraform"
    terraform_dir.mkdir(parents=True, exist_ok=True)
    variables = terraform_variables(loaded)
    context: dict[str, Any] = {
        "env": env,
        "module": env.terraform.module,
        "source": module_source(loaded, terraform_dir),
        "variables": sorted(variables),
        "aws_endpoint": os.environ.get(AWS_ENDPOINT_ENV, ""),
        "backend": env.terraform.backend,
        "is_aws": isinstance(env.terraform, TerraformAws),
    }
    files = {
        "main.tf": render_template("terraform/main.tf.j2", **context),
        "terraform.tfvars.json": json.dumps(variables, indent=2, sort_keys=True) + "\n",
    }
    written = []
    for name, text in files.items():
        path = terraform_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return RenderResult(env=env.name, terraform_dir=terraform_dir, files=written)
