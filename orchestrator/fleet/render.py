"""Rendering of per-environment files with jinja2 (StrictUndefined).

`render_environment` writes the environment's Terraform root module under
`.orchestrate/<env>/terraform/`: versions, backend, provider configuration and the call of
the fleet module, with the environment's variables in `terraform.tfvars.json`, and the
environment's provider lock file (`inventories/<env>/.terraform.lock.hcl`, kept in the
repository) beside them. A local fleet without a subnet in its env file gets one here
(orchestrator.fleet.local.network.ensure_network); the result carries the environment as rendered.
Nothing rendered here ever contains a credential: those come from the environment at run time.
An aws environment's variables do carry its instances' private SSH host keys (their cloud-init
user data, `user_data`): the variables file is 0600 and the rendered root's directory 0700.
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from orchestrator.config.loader import LoadedEnvironment, missing_subnet
from orchestrator.config.schema import AwsFleetVars, TerraformAws, TerraformLocal
from orchestrator.errors import ConfigError
from orchestrator.fleet.local.network import ensure_network
from orchestrator.tools.s3 import AWS_ENDPOINT_ENV as AWS_ENDPOINT_ENV  # re-exported
from orchestrator.tools.terraform import LOCK_FILE

#: AWS services the aws_fleet module and the S3 backend talk to; all get the endpoint override
AWS_SERVICES = ("ec2", "iam", "s3", "sts")

#: root variables Terraform must never show (plan output, logs)
SENSITIVE_VARIABLES = frozenset({"user_data"})

_jinja = jinja2.Environment(
    loader=jinja2.PackageLoader("orchestrator", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # noqa: S701 - HCL and YAML, not HTML
)
_jinja.filters["tojson"] = lambda value: json.dumps(value)


#: escapes of HCL's quoted strings (hclsyntax spec, "Template Literals"); any other control
#: character is written as \uNNNN
_HCL_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def hcl_string(value: str) -> str:
    """`value` as an HCL quoted string that Terraform reads back as exactly `value`.

    A quoted string in HCL's native syntax is a template: `${` and `%{` start an interpolation or
    a directive, so they are escaped as `$${` and `%%{` (a `$$${` reads back as `$${`), besides
    the backslash escapes. (terraform.tfvars.json needs none of this: values of a JSON variables
    file are literal.)
    """
    text = value.replace("${", "$${").replace("%{", "%%{")
    out = []
    for char in text:
        if char in _HCL_ESCAPES:
            out.append(_HCL_ESCAPES[char])
        elif unicodedata.category(char) == "Cc":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


_jinja.filters["hcl"] = hcl_string


@dataclass(frozen=True)
class RenderResult:
    """What `render_environment` wrote, and the environment it rendered."""

    env: str
    terraform_dir: Path
    files: list[Path]
    loaded: LoadedEnvironment
    """The environment as rendered (a local fleet's bridge and subnet filled in): use it from here on."""
    lock_file: Path | None = None
    """The repository's provider lock file the root got a copy of (None: the environment keeps none)."""


def lock_file_of(loaded: LoadedEnvironment) -> Path:
    """Where the environment's provider lock file is kept: inventories/<env>/.terraform.lock.hcl."""
    return loaded.path.parent / LOCK_FILE


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
        # bridge and subnet are never empty here: render_environment filled in the defaults (kept
        # in .orchestrate/ENV/network.json), the same values fleet.local.terraform.fleet_for boots hosts with.
        if not (variables["bridge"] and variables["subnet"]):
            raise missing_subnet(loaded)
        variables["state_dir"] = str(loaded.paths.hosts)
        variables["python"] = sys.executable
        variables["project_dir"] = str(loaded.project_dir)
    else:
        # The project's key pair (shared with the local fleet): the public half goes to the
        # instances through an aws_key_pair and their user data, the private half never leaves
        # the controller.
        from orchestrator.fleet.local.keys import ensure_ssh_key

        public_key = ensure_ssh_key(loaded.project_dir).with_suffix(".pub").read_text().strip()
        variables["ssh_public_key"] = public_key
        variables.update(aws_host_variables(loaded, public_key))
    return variables


def aws_instance_names(fleet: AwsFleetVars) -> list[str]:
    """The instances terraform/modules/aws_fleet makes, by name (the same order as its locals)."""
    return ([f"{fleet.name}-app-{index}" for index in range(1, fleet.app_count + 1)]
            + [f"{fleet.name}-monitoring"] + [f"{fleet.name}-lb"] * fleet.lb_count)


def aws_host_variables(loaded: LoadedEnvironment, public_key: str) -> dict[str, dict[str, str]]:
    """`user_data` and `host_public_keys` of every instance: the controller's host key of each
    (made once, orchestrator.fleet.hostkeys) and the login user, as cloud-init reads them."""
    from orchestrator.fleet.cloudinit import cloud_config, user_data
    from orchestrator.fleet.hostkeys import ensure_host_keys

    assert isinstance(loaded.env.terraform, TerraformAws)
    fleet = loaded.env.terraform.vars
    keys = ensure_host_keys(loaded.paths.host_keys, aws_instance_names(fleet))
    return {
        "user_data": {name: user_data(cloud_config(host_key=key, login_user=fleet.ssh_user,
                                                   authorized_keys=[public_key], default_user=True))
                      for name, key in keys.items()},
        "host_public_keys": {name: key.public for name, key in keys.items()},
    }


def hcl_type(value: Any, where: str = "") -> str:
    """The Terraform type constraint of a JSON value (string, number, bool, list(...), map(...))."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        items = [hcl_type(item, where) for item in value]
        if not items:
            return "list(any)"
        if len(set(items)) == 1:
            return f"list({items[0]})"
        return "tuple([" + ", ".join(items) + "])"
    if isinstance(value, dict):
        members = {str(k): hcl_type(v, where) for k, v in value.items()}
        if not members:
            return "map(string)"
        if len(set(members.values())) == 1:
            return f"map({next(iter(members.values()))})"
        return "object({" + ", ".join(f"{hcl_string(k)} = {t}" for k, t in members.items()) + "})"
    raise ConfigError(f"cannot pass {type(value).__name__} to terraform", field=where or None)


def render_environment(loaded: LoadedEnvironment) -> RenderResult:
    """Write the Terraform root of `loaded` under .orchestrate/<env>/terraform/.

    Also copies the environment's provider lock file there when the repository keeps one, and
    chooses (and keeps) a local fleet's subnet when the env file leaves it out: go on with
    the returned `RenderResult.loaded`.
    """
    loaded = ensure_network(loaded)
    env = loaded.env
    terraform_dir = loaded.paths.terraform
    terraform_dir.mkdir(parents=True, exist_ok=True)
    # plan files and the variables file hold the variables' values: this user's only
    terraform_dir.chmod(0o700)
    variables = terraform_variables(loaded)
    context: dict[str, Any] = {
        "env": env,
        "module": env.terraform.module,
        "source": module_source(loaded, terraform_dir),
        "variables": [{"name": name, "type": hcl_type(variables[name], name), "sensitive": name in SENSITIVE_VARIABLES}
                      for name in sorted(variables)],
        "variable_width": max((len(name) for name in variables), default=0),
        "aws_services": AWS_SERVICES,
        "aws_service_width": max(len(s) for s in AWS_SERVICES),
        "aws_endpoint": os.environ.get(AWS_ENDPOINT_ENV, ""),
        "backend": env.terraform.backend,
        "is_aws": isinstance(env.terraform, TerraformAws),
    }
    files = {
        "main.tf": render_template("terraform/main.tf.j2", **context),
        "terraform.tfvars.json": json.dumps(variables, indent=2, sort_keys=True) + "\n",
    }
    # Provider versions and checksums come from the repository, never from what init found:
    # terraform init runs with -lockfile=readonly on this copy (tools.terraform.Terraform.lock_file).
    kept_lock = lock_file_of(loaded)
    lock_file = kept_lock if kept_lock.is_file() else None
    if lock_file is not None:
        files[LOCK_FILE] = lock_file.read_text()
    written = []
    for name, text in files.items():
        path = terraform_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        path.chmod(0o600)
        written.append(path)
    return RenderResult(env=env.name, terraform_dir=terraform_dir, files=written, loaded=loaded, lock_file=lock_file)
