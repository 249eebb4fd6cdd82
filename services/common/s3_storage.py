"""The artifact store in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2), shared by the
gateways and generator workers of several hosts; the same semantics as the local folder."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from services.common.errors import BackendError, BoigError, NotFound, UpstreamError
from services.common.settings import ArtifactStoreSettings
from services.common.storage import ArtifactRef, checked_key, content_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_TRANSIENT = frozenset({"SlowDown", "Throttling", "RequestTimeout", "InternalError"})
# HTTP Last-Modified, which HeadObject reads, has whole seconds: a blob written at 12:00:00.7
# reads as 12:00:00, so it counts as written up to this much later than it says.
_LAST_MODIFIED_RESOLUTION = timedelta(seconds=1)


class S3ArtifactStore:
    """Blobs at ``<prefix><namespace>/<sha256><suffix>`` in one bucket.

    An S3 PUT is atomic (a reader sees the old object, the new one or none, never half), so
    the local store's write-and-rename has no counterpart here. Storing the same bytes again
    is a PUT again: it refreshes LastModified, the write time retention's ``delete`` reads.
    """

    def __init__(self, client: S3Client, *, bucket: str, prefix: str = "") -> None:
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"prefix {prefix!r} must be empty or end in '/'")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    @classmethod
    def from_settings(cls, settings: ArtifactStoreSettings) -> S3ArtifactStore:
        if settings.artifact_s3_bucket is None:
            raise ValueError("the s3 artifact store needs artifact_s3_bucket")
        timeout = settings.artifact_s3_timeout_seconds
        config = Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"mode": "standard", "max_attempts": 3},
            s3={"addressing_style": settings.artifact_s3_addressing_style},
        )
        # A session of its own: boto3's default session is not safe to create from threads.
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.artifact_s3_endpoint_url,
            region_name=settings.artifact_s3_region,
            config=config,
        )
        return cls(client, bucket=settings.artifact_s3_bucket, prefix=settings.artifact_s3_prefix)

    def put(self, data: bytes, *, namespace: str, suffix: str = "") -> ArtifactRef:
        key, digest = content_key(data, namespace=namespace, suffix=suffix)
        try:
            # The server checks the bytes it got against the digest that is also their key.
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.prefix + key,
                Body=data,
                ChecksumSHA256=base64.b64encode(bytes.fromhex(digest)).decode("ascii"),
            )
        except (BotoCoreError, ClientError) as exc:
            raise _store_error(exc, key) from exc
        return ArtifactRef(key=key, sha256=digest, size=len(data))

    def get(self, key: str) -> bytes:
        object_key = self.prefix + checked_key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=object_key)
            return response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise _store_error(exc, key) from exc

    def exists(self, key: str) -> bool:
        return self._last_modified(key) is not None

    def delete(self, key: str, *, unless_written_since: datetime | None = None) -> bool:
        """Remove a blob; False when it was absent or (re)written at or after the given time.

        As in the local store, a PUT of the same bytes between the check and the delete is
        lost with it; retention leaves an hour between a blob's last write and its delete.
        """
        written = self._last_modified(key)
        if written is None:
            return False
        if (
            unless_written_since is not None
            and written + _LAST_MODIFIED_RESOLUTION > unless_written_since
        ):
            return False
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except (BotoCoreError, ClientError) as exc:
            raise _store_error(exc, key) from exc
        return True

    def _last_modified(self, key: str) -> datetime | None:
        object_key = self.prefix + checked_key(key)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=object_key)
        except (BotoCoreError, ClientError) as exc:
            error = _store_error(exc, key)
            if isinstance(error, NotFound):
                return None
            raise error from exc
        return head["LastModified"]


def _store_error(exc: BotoCoreError | ClientError, key: str) -> BoigError:
    """Our error for a failed S3 call: a missing blob is NotFound; an outage, a timeout or
    throttling (after boto3's retries) is an UpstreamError, which the generator retries; a
    refusal (credentials, no such bucket, access denied) is a BackendError: configuration."""
    if isinstance(exc, NoCredentialsError):
        return BackendError(f"artifact store: no S3 credentials ({exc})")
    if isinstance(exc, BotoCoreError):  # connection refused, timeouts, DNS
        return UpstreamError(f"artifact store unreachable: {exc}")
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    if code in _MISSING:
        return NotFound(f"artifact {key} not found")
    if status >= 500 or code in _TRANSIENT:
        return UpstreamError(f"artifact store failed: {code or status}")
    return BackendError(f"artifact store refused the request: {code or status}")
