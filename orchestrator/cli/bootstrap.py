"""`orchestrate bootstrap ENV`: create the S3 state bucket of an aws environment."""

from __future__ import annotations

import click

from orchestrator.cli._common import AppContext, env_argument, verb
from orchestrator.fleet.aws import bootstrap_state_bucket


@click.command("bootstrap")
@env_argument
@verb
def command(app: AppContext, env_name: str) -> None:
    """Create ENV's Terraform state bucket (versioning, AES256 encryption, no public access).

    Idempotent: an existing bucket is brought to these settings. Only for aws environments
    (local ones keep their state on disk: exit 2).
    """
    result = bootstrap_state_bucket(app.load(env_name))
    data = {"env": result.env, "bucket": result.bucket, "region": result.region, "created": result.created,
            "versioning": result.versioning, "encryption": result.encryption}
    verb_text = "created" if result.created else "already existed; settings ensured"
    app.emit(data, lambda: app.stdout_print(
        f"state bucket {result.bucket} ({result.region}) {verb_text}: versioning {result.versioning}, "
        f"encryption {result.encryption}"))
