"""Fixtures for the real services the tests run against: S3 (moto server over HTTP) and PostgreSQL / SQLite catalogs.

Register once in ``tests/conftest.py`` (``pytest_plugins = ["fixtures_services"]``); test modules may also list it
in their own ``pytest_plugins`` — pytest loads a plugin once.

PostgreSQL: 127.0.0.1:5432, user postgres (override with ``MER_TEST_POSTGRES_URL``, a libpq URL of the maintenance
database). Tests skip only when that server is unreachable.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from s3server import fake_aws_env, moto_s3_server
except ImportError:  # tests/ imported as a package
    from tests.s3server import fake_aws_env, moto_s3_server

POSTGRES_ADMIN_URL = os.environ.get("MER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


# --- S3 ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def aws_env() -> Iterator[dict[str, str]]:
    """Fake AWS credentials in the environment for the whole session (as a real deployment's credential chain)."""
    with fake_aws_env() as env:
        yield env


@pytest.fixture(scope="session")
def s3_endpoint(aws_env: dict[str, str]) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a moto S3 server shared by the session."""
    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the moto server (unique name per test)."""
    import boto3

    name = f"mer-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


# --- PostgreSQL ---------------------------------------------------------------------------------------------------------


def _admin_connect():
    import psycopg

    return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh database ``mer_test_<random>`` on the test server, dropped after the session."""
    import psycopg
    import sqlalchemy as sa

    try:
        admin = _admin_connect()
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL unreachable at {POSTGRES_ADMIN_URL}: {error}")
    name = f"mer_test_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = sa.make_url(POSTGRES_ADMIN_URL).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with _admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def clean_postgres_url(postgres_url: str) -> str:
    """The session's PostgreSQL database, emptied (schema ``public`` recreated) for this test."""
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
    finally:
        engine.dispose()
    return postgres_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a SQLite catalog file in the test's temporary folder (not created yet)."""
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest) -> str:
    """An empty catalog database: each test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("clean_postgres_url")
