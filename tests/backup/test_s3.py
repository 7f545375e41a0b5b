"""S3-compatible destination: upload, list, download, verify, retention against moto's server.

moto runs in server mode on a free loopback port (a real HTTP endpoint; boto3 speaks to it
as to any S3-compatible store), started and stopped by the module.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import boto3
import pytest

from buttress.backup import (
    RetentionPolicy,
    S3Destination,
    VerifyOptions,
    apply_retention,
    open_destination,
    run_backup,
    verify_backup,
)
from buttress.backup._stream import sha256_file
from buttress.cli import main
from tests.backup.conftest import LABEL, admin_dsn, scratch_left
from tests.conftest import free_port

pytestmark = [pytest.mark.postgres]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    name = f"bk-{free_port()}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name


def test_upload_list_download_verify(
    source_dsn: str, postgres_url: str, endpoint: str, bucket: str, tmp_path: object
) -> None:
    dest = open_destination(f"s3://{bucket}/orders/prod", endpoint_url=endpoint)
    assert isinstance(dest, S3Destination)
    assert dest.list() == []
    entry = run_backup(source_dsn, dest)
    client = boto3.client("s3", endpoint_url=endpoint)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {
        f"orders/prod/{entry.id}/manifest.json",
        f"orders/prod/{entry.id}/{entry.manifest.file}",
    }
    (listed,) = dest.list()
    assert listed.manifest == entry.manifest
    assert listed.verified_at is None
    with dest.fetched(listed) as path:
        assert sha256_file(path) == (entry.manifest.size, entry.manifest.sha256)
    assert not path.exists()  # the download is removed
    options = VerifyOptions(scratch_dsn=admin_dsn(postgres_url), scratch_label=LABEL)
    result = verify_backup(dest, "latest", options)
    assert result.passed, result.report.checks
    assert dest.latest(verified_only=True) is not None
    assert scratch_left(postgres_url) == []
    code = main(["backup", "list", f"s3://{bucket}/orders/prod", "--s3-endpoint", endpoint])
    assert code == 0


def test_retention_and_a_damaged_object(
    source_dsn: str, postgres_url: str, endpoint: str, bucket: str
) -> None:
    dest = S3Destination(f"s3://{bucket}/db", endpoint_url=endpoint)
    first = run_backup(source_dsn, dest)
    second = run_backup(source_dsn, dest)
    client = boto3.client("s3", endpoint_url=endpoint)
    key = f"db/{second.id}/{second.manifest.file}"
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body[:-100])  # truncated in storage
    result = verify_backup(dest, second.id, VerifyOptions(scratch_dsn=admin_dsn(postgres_url)))
    assert not result.passed
    assert result.verification.failed == ("BKP001",)
    now = (second.created_at + dt.timedelta(days=1)).timestamp()
    plan = apply_retention(dest, RetentionPolicy(daily=1, weekly=0, monthly=0), now=now)
    assert [e.id for e in plan.delete] == [first.id]  # same day: the newest is kept
    assert [e.id for e in dest.list()] == [second.id]
    remaining = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="db/")["Contents"]}
    assert not any(first.id in k for k in remaining)
    assert scratch_left(postgres_url) == []
