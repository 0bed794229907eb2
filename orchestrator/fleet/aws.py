"""boto3 helpers: the Terraform state bucket, and clients that honour the endpoint override.

Credentials come only from the standard AWS environment variables or profiles; nothing here
writes them anywhere. `ORCHESTRATE_AWS_ENDPOINT` points every client at an emulator (moto).
boto3 is imported lazily: `orchestrate plan` does not need it and should not pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.config.loader import LoadedEnvironment
from orchestrator.config.schema import TerraformAws
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.tools.s3 import aws_client
from orchestrator.tools.s3 import aws_endpoint as aws_endpoint  # re-exported

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class AwsError(OrchestratorError):
    """An AWS API call failed (credentials, permissions, a bucket owned by someone else)."""


def client(service: str, region: str) -> Any:
    """A boto3 client for `service` in `region`, pointed at the endpoint override if any."""
    return aws_client(service, region)


@dataclass(frozen=True)
class BootstrapResult:
    """The state bucket after `bootstrap_state_bucket`."""

    env: str
    bucket: str
    region: str
    created: bool
    versioning: str
    encryption: str


def bootstrap_state_bucket(loaded: LoadedEnvironment) -> BootstrapResult:
    """Create the environment's S3 state bucket with versioning and SSE; idempotent.

    An existing bucket of ours is brought to the same settings (versioning on, AES256 default
    encryption, public access blocked); a bucket name taken by another account is an error.
    """
    terraform = loaded.env.terraform
    if not isinstance(terraform, TerraformAws):
        raise UsageError(
            f"environment {loaded.name!r} has target {loaded.env.target!r}: its Terraform state is local, "
            "there is no state bucket to bootstrap (bootstrap is for aws environments)"
        )
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, region = terraform.backend.bucket, terraform.backend.region
    s3: S3Client = client("s3", region)
    created = False
    try:
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"403", "AccessDenied", "Forbidden"}:
                raise AwsError(f"state bucket {bucket!r} exists but is not accessible with these credentials "
                               "(owned by another account?)") from None
            if code not in {"404", "NoSuchBucket", "NotFound"}:
                raise
            if region == "us-east-1":
                s3.create_bucket(Bucket=bucket)
            else:
                s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})  # type: ignore[typeddict-item]
            created = True
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]
            },
        )
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True, "IgnorePublicAcls": True,
                "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
            },
        )
        versioning = s3.get_bucket_versioning(Bucket=bucket).get("Status", "")
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise AwsError(f"bootstrap of state bucket {bucket!r} in {region} failed: "
                       f"{error.get('Code', '')}: {error.get('Message', exc)}") from None
    except BotoCoreError as exc:
        raise AwsError(f"bootstrap of state bucket {bucket!r} in {region} failed: {exc}",
                       hint="credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE") from None
    algorithm = rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] if rules else ""
    return BootstrapResult(env=loaded.name, bucket=bucket, region=region, created=created,
                           versioning=str(versioning), encryption=str(algorithm))


#: EC2 instance states as `orchestrate hosts` reports them (docs/contracts.md: running, stopped, missing)
_HOST_STATES = {"pending": "running", "running": "running", "stopping": "stopped", "stopped": "stopped",
                "shutting-down": "missing", "terminated": "missing"}


def instance_states(loaded: LoadedEnvironment) -> dict[str, str]:
    """State of each EC2 instance of the environment's fleet, by its Name tag.

    running (pending too), stopped (stopping too); an instance that is terminated or not found
    is absent from the result (`missing` to the caller).
    """
    terraform = loaded.env.terraform
    if not isinstance(terraform, TerraformAws):
        raise UsageError(f"environment {loaded.name!r} is not an aws environment")
    from botocore.exceptions import BotoCoreError, ClientError

    ec2 = client("ec2", terraform.vars.region)
    found: dict[str, str] = {}
    try:
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "tag:orchestrate:fleet", "Values": [terraform.vars.name]}])
        for page in pages:
            for reservation in page.get("Reservations", []):
                for instance in reservation.get("Instances", []):
                    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
                    state = _HOST_STATES.get(instance.get("State", {}).get("Name", ""), "missing")
                    name = tags.get("Name")
                    # a terminated instance keeps its Name for a while; a live one of that name wins
                    if name and state != "missing" and found.get(name) != "running":
                        found[name] = state
    except (BotoCoreError, ClientError) as exc:
        raise AwsError(f"describing the EC2 instances of {loaded.name} failed: {exc}") from None
    return found
