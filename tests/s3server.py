"""A real S3 endpoint for tests: moto's server mode on 127.0.0.1, spoken to over HTTP by boto3.

Ray workers and subprocesses reach it like any S3-compatible store, via ``endpoint_url``.

:func:`s3rver_server` runs another one, the npm package s3rver (Node.js, installed on demand), for
``tests/benchmarks/bench_scale.py``: it keeps objects as files and pages a listing by walking its folders in key
order from the continuation key, where moto scans and sorts the whole bucket for every page.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


S3RVER_VERSION = "3.7.1"
# Runs s3rver through its library (not its CLI) so that it can accept the fake credentials above: out of the box it
# knows only the access key "S3RVER" (it checks that a request's key exists; SigV4 signatures it does not verify).
# Port 0: the system picks a free one, which the script prints once the server listens. s3rver encrypts its
# ListObjectsV2 continuation tokens with DES, which OpenSSL 3 (Node >= 17) keeps in its legacy provider: node runs
# with --openssl-legacy-provider, and the script checks that DES is there (rather than answer 500 to the first
# listing of more than a page).
_S3RVER_SCRIPT = """
try {
  require('crypto').createCipheriv('des', Buffer.alloc(8), Buffer.alloc(8));
} catch (error) {
  console.error('s3rver needs DES (its continuation tokens), which this Node.js OpenSSL lacks: ' + error.message);
  process.exit(1);
}
const [prefix, directory] = process.argv.slice(1);
const S3rver = require(prefix + '/node_modules/s3rver');
const { DUMMY_ACCOUNT } = require(prefix + '/node_modules/s3rver/lib/models/account');
DUMMY_ACCOUNT.createKeyPair(process.env.AWS_ACCESS_KEY_ID, process.env.AWS_SECRET_ACCESS_KEY);
new S3rver({ address: '127.0.0.1', port: 0, directory, silent: true }).run().then(
  ({ port }) => console.log(JSON.stringify({ port })),
  error => { console.error(error); process.exit(1); });
"""


def install_s3rver(prefix: str | os.PathLike[str]) -> Path:
    """``npm install --prefix PREFIX s3rver@S3RVER_VERSION`` unless that version is there; returns ``prefix``."""
    prefix = Path(prefix).resolve()
    package = prefix / "node_modules" / "s3rver" / "package.json"
    if package.exists() and json.loads(package.read_text()).get("version") == S3RVER_VERSION:
        return prefix
    missing = [name for name in ("node", "npm") if shutil.which(name) is None]
    if missing:
        raise RuntimeError(f"s3rver needs Node.js: {' and '.join(missing)} not found on PATH "
                           f"(install Node.js >= 17 with npm, e.g. apt-get install nodejs npm)")
    prefix.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                           f"s3rver@{S3RVER_VERSION}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"npm install s3rver@{S3RVER_VERSION} into {prefix} failed:\n{done.stderr[-4000:]}")
    return prefix


@contextmanager
def s3rver_server(prefix: str | os.PathLike[str], directory: str | os.PathLike[str], *,
                  timeout: float = 30.0) -> Iterator[str]:
    """Run s3rver (installed under ``prefix`` by :func:`install_s3rver`) on 127.0.0.1 on a free port, its buckets
    kept as folders under ``directory`` (which outlives it); yields its endpoint URL (``http://127.0.0.1:PORT``).

    It accepts the access key in ``AWS_ACCESS_KEY_ID`` at start (inside :func:`fake_aws_env`: the fake one). Not an
    S3 of every feature: no bucket versioning (501 NotImplemented) and no ``If-Match`` on GET (ignored).
    """
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("s3rver needs Node.js: node not found on PATH")
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        raise RuntimeError("s3rver_server needs AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY set (use fake_aws_env())")
    Path(directory).mkdir(parents=True, exist_ok=True)
    # stderr to a file, not a pipe: a pipe nobody reads could fill up and stall the server.
    with tempfile.TemporaryFile("w+") as errors:
        command = [node, "--openssl-legacy-provider", "-e", _S3RVER_SCRIPT, str(Path(prefix).resolve()),
                   str(Path(directory).resolve())]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            line = process.stdout.readline()  # the port, once listening; "" if it died first
            if not line:
                process.wait(timeout)
                errors.seek(0)
                raise RuntimeError(f"s3rver did not start (exit {process.returncode}):\n{errors.read()[-4000:]}")
            endpoint = f"http://127.0.0.1:{json.loads(line)['port']}"
            deadline = time.monotonic() + timeout
            while True:  # it listens; wait until it answers HTTP too
                try:
                    urllib.request.urlopen(endpoint, timeout=5).close()
                    break
                except urllib.error.HTTPError:
                    break  # an S3 error (403 without credentials) is an answer
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise RuntimeError(f"s3rver at {endpoint} does not answer") from None
                    time.sleep(0.1)
            yield endpoint
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
