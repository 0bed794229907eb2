"""A scratch copy of the environment's rendered Terraform root with a local backend, initialised
once per verify run, so that checking never touches the environment's real state or backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from orchestrator.fleet.render import module_source, render_environment
from orchestrator.tools.terraform import Terraform
from orchestrator.verify.core import VerifyContext, _Workspace


def _module_dir(ctx: VerifyContext) -> Path:
    return ctx.project_dir / "terraform" / "modules" / ctx.env.env.terraform.module


def _workspace(ctx: VerifyContext) -> _Workspace:
    """Render the root, copy it into .orchestrate/ENV/verify/terraform with a local backend, init."""
    if ctx._workspace is not None:
        return ctx._workspace
    loaded = ctx.env
    rendered = render_environment(loaded)
    directory = loaded.paths.verify / "terraform"
    directory.mkdir(parents=True, exist_ok=True)
    module_dir = _module_dir(ctx)
    for path in rendered.files:
        text = path.read_text()
        if path.suffix == ".tf":
            # The copy sits elsewhere: point the module source at the module from here.
            text = text.replace(json.dumps(module_source(loaded, rendered.terraform_dir)),
                                json.dumps(os.path.relpath(module_dir, directory)))
        target = directory / path.name
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
    (directory / BACKEND_OVERRIDE).write_text(
        "# Written by orchestrate verify: the scratch copy never touches the environment's backend.\n"
        'terraform {\n  backend "local" {\n    path = "verify.tfstate"\n  }\n}\n')
    terraform = Terraform(directory, env_name=loaded.name, state_dir=loaded.paths.verify,
                          module_dirs=[module_dir], lock_file=rendered.lock_file)
    terraform.init()
    workspace = _Workspace(directory, terraform, module_dir)
    ctx._workspace = workspace
    return workspace


#: terraform files the verify workspace writes next to the copied root
BACKEND_OVERRIDE = "zz_verify_backend_override.tf"
