"""Download adapter: a release from an `https://`, `http://` or `s3://` URL into a local file.

The file is written beside its destination and renamed into place only once it is complete and
its sha256 is the one expected, so a partial or wrong download is never taken for a release.
HTTP requests ignore proxy variables of the environment only for loopback hosts (a test server);
https verifies the server's certificate against the system's CAs (`SSL_CERT_FILE` names others).
S3 goes through boto3 with the standard AWS credentials and, when given, an endpoint override
(moto in tests).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError

#: URL schemes a release may come from
SCHEMES = ("https", "http", "s3")


#: seconds a download may stall (per socket operation)
DOWNLOAD_TIMEOUT = 60.0


#: largest release accepted (bytes)
MAX_BYTES = 2 * 1024**3


_CHUNK = 1 << 20


class DownloadError(OrchestratorError):
    """A release could not be downloaded, or is not what --sha256 says (nothing was deployed)."""


@dataclass(frozen=True)
class Download:
    """A downloaded file and its sha256."""

    url: str
    path: Path
    sha256: str
    size: int


def is_url(text: str) -> bool:
    """Whether `text` is a URL a release may be downloaded from (https, http or s3)."""
    return urllib.parse.urlsplit(text).scheme in SCHEMES and "://" in text


def url_file_name(url: str) -> str:
    """The last path component of `url` ('' when there is none; pure)."""
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rpartition("/")[2])


def s3_location(url: str) -> tuple[str, str]:
    """(bucket, key) of an s3://BUCKET/KEY URL (pure); DownloadError when either is missing."""
    parts = urllib.parse.urlsplit(url)
    key = urllib.parse.unquote(parts.path.lstrip("/"))
    if parts.scheme != "s3" or not parts.netloc or not key:
        raise DownloadError(f"{url}: expected s3://BUCKET/KEY")
    return parts.netloc, key


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http_chunks(url: str, timeout: float) -> Any:
    import urllib.error  # here: only a download pays for urllib.request's import
    import urllib.request

    # a proxy from the environment must not see a request to the machine itself
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})] if _is_loopback(url) else []
    opener = urllib.request.build_opener(*handlers)
    # the scheme was checked by `download`: only http and https reach this
    request = urllib.request.Request(url, headers={"User-Agent": "orchestrate"})  # noqa: S310
    try:
        return opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: the server answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: cannot download: {reason}") from None


def _s3_body(url: str, endpoint: str | None, region: str | None) -> Any:
    import boto3  # imported late: only s3:// releases need it
    import botocore.exceptions

    bucket, key = s3_location(url)
    client = boto3.client("s3", endpoint_url=endpoint,
                          region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise DownloadError(f"{url}: cannot download from S3: {exc}") from None


def download(url: str, dest: Path, *, expected_sha256: str, s3_endpoint: str | None = None,
              s3_region: str | None = None, timeout: float = DOWNLOAD_TIMEOUT,
              on_progress: Callable[[int], None] | None = None) -> Download:
    """Download `url` to `dest`; raise DownloadError unless its sha256 is `expected_sha256`.

    `dest` exists afterwards only when the digest matched; a mismatch leaves nothing behind.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise DownloadError(f"{url}: only {', '.join(s + '://' for s in SCHEMES)} URLs can be downloaded")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.partial")
    digest = hashlib.sha256()
    size = 0
    source = _s3_body(url, s3_endpoint, s3_region) if scheme == "s3" else _http_chunks(url, timeout)
    try:
        with partial.open("wb") as out:
            while True:
                try:
                    chunk = source.read(_CHUNK)
                except OSError as exc:
                    raise DownloadError(f"{url}: the download broke off after {size} bytes: {exc}") from None
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_BYTES:
                    raise DownloadError(f"{url}: larger than {MAX_BYTES} bytes; not a release")
                digest.update(chunk)
                out.write(chunk)
                if on_progress is not None:
                    on_progress(size)
        actual = digest.hexdigest()
        if actual != expected_sha256.lower():
            raise DownloadError(f"{url}: sha256 {actual} is not the {expected_sha256} given with --sha256; "
                                "release refused, nothing deployed")
        partial.replace(dest)
    finally:
        source.close()
        partial.unlink(missing_ok=True)
    return Download(url=url, path=dest, sha256=actual, size=size)
