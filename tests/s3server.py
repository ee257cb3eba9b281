"""A real S3 endpoint for tests: moto's server mode on 127.0.0.1, spoken to over HTTP by boto3.

Ray workers and subprocesses reach it like any S3-compatible store, via ``endpoint_url``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

# Obviously fake: the tests must never pick up (or need) real AWS credentials.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "mer-test-access-key",
    "AWS_SECRET_ACCESS_KEY": "mer-test-secret-key-do-not-log",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Variables that could point boto3 at real credentials or another endpoint.
_UNSET_AWS_ENV = (
    "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
)


@contextmanager
def fake_aws_env() -> Iterator[dict[str, str]]:
    """Set fake AWS credentials in ``os.environ`` (inherited by Ray workers started inside), restore afterwards."""
    saved = {name: os.environ.get(name) for name in (*FAKE_AWS_ENV, *_UNSET_AWS_ENV)}
    os.environ.update(FAKE_AWS_ENV)
    for name in _UNSET_AWS_ENV:
        os.environ.pop(name, None)
    # Keeps boto3 from reading ~/.aws of whoever runs the tests.
    os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    try:
        yield dict(FAKE_AWS_ENV)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def moto_s3_server() -> Iterator[str]:
    """Run moto's S3 server on 127.0.0.1 on a free port; yields its endpoint URL (``http://127.0.0.1:PORT``)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
