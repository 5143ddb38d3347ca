"""A real S3-compatible server for tests: moto's server mode on a free port, every interface (so a
worker node in its own network namespace reaches it at the head's IP), a bucket made, and the
environment that pyarrow (ours and Ray Tune's) reads to find and sign in to it."""

from __future__ import annotations

import contextlib
import socket

BUCKET = "raydigits-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_env(host: str, port: int) -> dict:
    return {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@contextlib.contextmanager
def s3_server():
    """Yields (port, env for 127.0.0.1, boto3 client); the server stops on exit."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="0.0.0.0", port=port, verbose=False)
    server.start()
    env = s3_env("127.0.0.1", port)
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    try:
        yield port, env, client
    finally:
        server.stop()


def keys(client, prefix: str) -> list[str]:
    """Every object key under `prefix` in the test bucket."""
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out
