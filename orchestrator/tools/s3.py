"""Adapter over S3 for shared state: objects read with their ETag, written and deleted only on a
condition, so that several controllers can coordinate through one bucket.

    store = ObjectStore(bucket, region)
    found = store.get(key)                      # StoredObject(body, etag, last_modified, server_time) | None
    etag = store.put(key, body, if_none_match=True)   # create only: PreconditionFailed when it exists
    etag = store.put(key, body, if_match=found.etag)  # replace only what was read
    store.delete(key, if_match=etag)

Conditional writes are S3's own (PutObject with `If-None-Match: *` or `If-Match: ETAG`,
DeleteObject with `If-Match`), so the check and the write are one atomic step on the server.
`ORCHESTRATE_AWS_ENDPOINT` points the client at an emulator (moto); credentials come only from
the standard AWS environment variables or profiles. boto3 is imported lazily.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from orchestrator.errors import OrchestratorError

#: every AWS client of the tool (boto3, the Terraform provider and its S3 backend) talks to this
#: endpoint when it is set: an emulator in tests
AWS_ENDPOINT_ENV = "ORCHESTRATE_AWS_ENDPOINT"


class ObjectStoreError(OrchestratorError):
    """An S3 call failed (credentials, permissions, network)."""


class PreconditionFailed(ObjectStoreError):
    """A conditional write or delete found the object other than expected (someone else wrote)."""


@dataclass(frozen=True)
class StoredObject:
    """An object as read: its bytes, its ETag, when S3 stored it and S3's clock at the read."""

    body: bytes
    etag: str
    last_modified: datetime
    server_time: datetime


def aws_endpoint() -> str | None:
    """The endpoint override from ORCHESTRATE_AWS_ENDPOINT, or None for real AWS."""
    return os.environ.get(AWS_ENDPOINT_ENV) or None


def aws_client(service: str, region: str) -> Any:
    """A boto3 client for `service` in `region`, pointed at the endpoint override if any."""
    import boto3

    return boto3.client(service, region_name=region, endpoint_url=aws_endpoint())  # type: ignore[call-overload]


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _server_time(response: dict[str, Any]) -> datetime:
    header = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if header:
        try:
            return parsedate_to_datetime(header).astimezone(UTC)
        except (TypeError, ValueError):
            pass
    return datetime.now(UTC)


class ObjectStore:
    """Objects under one bucket, with conditional writes."""

    def __init__(self, bucket: str, region: str, *, client: Any = None) -> None:
        self.bucket = bucket
        self.region = region
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws_client("s3", self.region)
        return self._client

    def url(self, key: str) -> str:
        """`s3://BUCKET/KEY`, for messages."""
        return f"s3://{self.bucket}/{key}"

    def _fail(self, action: str, key: str, exc: Exception) -> ObjectStoreError:
        code = _code(exc)
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
            return PreconditionFailed(f"{action} {self.url(key)}: the object changed meanwhile ({code})")
        return ObjectStoreError(f"{action} {self.url(key)} failed: {code or type(exc).__name__}: {exc}",
                                hint="credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")

    def get(self, key: str) -> StoredObject | None:
        """The object at `key`, or None when there is none."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"].read()
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._fail("reading", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("reading", key, exc) from None
        return StoredObject(body=body, etag=str(response["ETag"]), last_modified=response["LastModified"],
                            server_time=_server_time(response))

    def exists(self, key: str) -> bool:
        """Whether `key` exists (HEAD)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise self._fail("looking up", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("looking up", key, exc) from None
        return True

    def put(self, key: str, body: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        """Write `body` at `key`; its new ETag. `if_none_match`: only when `key` does not exist;
        `if_match`: only when its ETag is still that. PreconditionFailed otherwise."""
        from botocore.exceptions import BotoCoreError, ClientError

        conditions: dict[str, str] = {}
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        if if_match is not None:
            conditions["IfMatch"] = if_match
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                              ContentType="application/json", **conditions)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("writing", key, exc) from None
        return str(response["ETag"])

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """Delete `key` (only while its ETag is `if_match`, when given: PreconditionFailed otherwise)."""
        from botocore.exceptions import BotoCoreError, ClientError

        conditions = {"IfMatch": if_match} if if_match is not None else {}
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, **conditions)
        except (ClientError, BotoCoreError) as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return
            raise self._fail("deleting", key, exc) from None

    def keys(self, prefix: str, *, start_after: str | None = None) -> Iterator[str]:
        """Keys under `prefix` in ascending order (after `start_after`)."""
        from botocore.exceptions import BotoCoreError, ClientError

        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            params["StartAfter"] = start_after
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(**params):
                for item in page.get("Contents", []):
                    yield str(item["Key"])
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("listing", prefix, exc) from None
