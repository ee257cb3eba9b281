"""Fixtures for the real services the tests run against: S3 (moto server over HTTP), PostgreSQL and SQLite catalogs,
and a stand-in Pushgateway.

Register once in ``tests/conftest.py`` (``pytest_plugins = ["fixtures_services"]``); test modules may also list it
in their own ``pytest_plugins`` — pytest loads a plugin once.

PostgreSQL is never silently missing. When the session starts (before any test module is imported) it looks at
``MER_TEST_POSTGRES_URL``, a libpq URL of a maintenance database (default
``postgresql://postgres@127.0.0.1:5432/postgres``):

- a server answers there: the session uses it;
- nothing listens there: the session starts a throwaway cluster of its own (``initdb`` into a temporary folder,
  127.0.0.1 on a free port, trust authentication, its unix socket in that folder), points ``MER_TEST_POSTGRES_URL``
  at it for the rest of the session, and stops and deletes it at the end;
- neither (no server programs, say, or a server that refuses us): PostgreSQL tests skip, with the reason — except
  under ``CI``, where they fail. Under ``CI``, a test that skips for any reason naming PostgreSQL fails instead.

``pytest`` prints which of these it is in its header (``postgresql: ...``).
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import pytest

try:
    from s3server import fake_aws_env, moto_s3_server
except ImportError:  # tests/ imported as a package
    from tests.s3server import fake_aws_env, moto_s3_server


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


@pytest.fixture
def s3_versioned_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket with versioning enabled: an overwrite keeps the old version, readable by its VersionId."""
    import boto3

    name = f"mer-test-v-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


# --- PostgreSQL ---------------------------------------------------------------------------------------------------------

POSTGRES_URL_ENV = "MER_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def running_in_ci() -> bool:
    """True under CI (``CI`` set, as CI services do, to anything but empty, 0, false or no): no service may be missing."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def postgres_bindir() -> Path | None:
    """The folder of PostgreSQL's server programs (``initdb``, ``pg_ctl``), or None when there are none.

    Debian keeps them off ``PATH``, in ``/usr/lib/postgresql/<major>/bin``: the newest major wins; else ``pg_ctl``
    on ``PATH`` (other systems).
    """
    def major(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.parent.name))

    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=major)
    if debian:
        return debian[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).resolve().parent if on_path else None


def _shown(url: str) -> str:
    """The URL with any password masked, for messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _listening(url: str) -> bool:
    """Whether anything accepts connections where the libpq URL points: its TCP host and port, or the server's
    socket file when the host is a folder. Says nothing about whether PostgreSQL would let us in."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    host = str(params.get("host") or "/var/run/postgresql").split(",")[0]
    port = int(str(params.get("port") or 5432).split(",")[0])
    if host.startswith("/"):
        return Path(host, f".s.PGSQL.{port}").is_socket()
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ThrowawayPostgres:
    """A PostgreSQL cluster of the test session's own: ``initdb`` into a temporary folder, trust authentication,
    listening on 127.0.0.1 on a free port and on a unix socket in that folder; durability off (fsync), since it is
    deleted at the end.

    PostgreSQL refuses to run as root, so when the tests run as root (as CI does) the cluster belongs to, and runs
    as, the OS user ``postgres`` (which Debian's postgresql package creates).
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self._account = self._os_account()
        # As root, under /tmp: the postgres user must be able to reach the folder, and TMPDIR may be root's own.
        self.folder = Path(tempfile.mkdtemp(prefix="mer-test-pg-", dir="/tmp" if self._account else None))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = _free_port()
        if self._account:
            os.chown(self.folder, self._account.pw_uid, self._account.pw_gid)

    @property
    def admin_url(self) -> str:
        """libpq URL of the cluster's maintenance database, as its superuser ``postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Create the cluster and start its server; waits until it accepts connections."""
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop the server (open connections are closed) and delete the cluster."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *args: object) -> None:
        as_account: dict[str, Any] = {}
        if self._account:
            as_account = {"user": self._account.pw_uid, "group": self._account.pw_gid, "extra_groups": [],
                          "env": {**os.environ, "HOME": self._account.pw_dir, "USER": "postgres"}}
        result = subprocess.run([str(self.bindir / program), *map(str, args)], cwd=self.folder, capture_output=True,
                                text=True, timeout=120, **as_account)
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} exited with {result.returncode}: "
                               f"{(result.stderr or result.stdout).strip()[-2000:]}\n{log}".strip())

    @staticmethod
    def _os_account() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("the tests run as root, which PostgreSQL refuses, and there is no OS user 'postgres' "
                               "to run it as (Debian's postgresql package creates one)") from None


@dataclass
class PostgresServer:
    """The PostgreSQL server of the test session, decided once when it starts (see the module's docstring)."""

    admin_url: str | None  # libpq URL of the maintenance database; None when there is no server
    about: str  # where it is, for the report header; or why there is none
    throwaway: ThrowawayPostgres | None = None

    @classmethod
    def provide(cls, url: str) -> PostgresServer:
        """The server at ``url`` if one listens there, else a throwaway cluster, else none (with the reason)."""
        import psycopg

        if _listening(url):
            try:
                psycopg.connect(url, connect_timeout=5).close()
            except psycopg.Error as error:
                return cls(None, f"PostgreSQL at {_shown(url)} answers but refuses the tests: {error}")
            return cls(url, f"{_shown(url)} (the server given by {POSTGRES_URL_ENV} or its default)")
        bindir = postgres_bindir()
        if bindir is None:
            return cls(None, f"PostgreSQL: nothing listens at {_shown(url)} and there are no PostgreSQL server programs "
                             "(initdb, pg_ctl) to start one: install Debian's postgresql (bash infra/dev-setup.sh does)")
        try:
            cluster = ThrowawayPostgres(bindir)
        except (OSError, RuntimeError) as error:
            return cls(None, f"PostgreSQL: nothing listens at {_shown(url)} and no cluster could be started: {error}")
        try:
            cluster.start()
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            cluster.stop()
            return cls(None, f"PostgreSQL: nothing listens at {_shown(url)} and no cluster could be started: {error}")
        return cls(cluster.admin_url, f"throwaway cluster on 127.0.0.1:{cluster.port} ({bindir.parent.name}, "
                                      f"{cluster.folder}), since nothing listens at {_shown(url)}", cluster)


_SERVER = pytest.StashKey[PostgresServer]()
_SAVED_URL = pytest.StashKey["str | None"]()


def pytest_configure(config: pytest.Config) -> None:
    # Decided before collection: a test module may read MER_TEST_POSTGRES_URL when it is imported.
    if config.option.help or config.option.version or config.option.collectonly:
        return
    server = PostgresServer.provide(os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL))
    config.stash[_SERVER] = server
    if server.throwaway is not None:
        config.stash[_SAVED_URL] = os.environ.get(POSTGRES_URL_ENV)
        os.environ[POSTGRES_URL_ENV] = server.admin_url


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_SERVER, None)
    if server is not None and server.throwaway is not None:
        server.throwaway.stop()
        saved = config.stash[_SAVED_URL]
        if saved is None:
            os.environ.pop(POSTGRES_URL_ENV, None)
        else:
            os.environ[POSTGRES_URL_ENV] = saved


def pytest_report_header(config: pytest.Config) -> str | None:
    server = config.stash.get(_SERVER, None)
    return None if server is None else f"postgresql: {server.about}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[pytest.TestReport]:
    # Under CI no PostgreSQL test may skip, whichever fixture or test skipped it: the skip becomes a failure.
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and running_in_ci():
        # A skip's longrepr is (file, line, "Skipped: <reason>").
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "postgresql" in reason.lower():
            report.outcome = "failed"
            report.longrepr = f"PostgreSQL tests may not skip under CI; this one did: {reason}"
    return report


@pytest.fixture(scope="session")
def postgres_admin_url(pytestconfig: pytest.Config) -> str:
    """libpq URL of the session's PostgreSQL maintenance database, as a superuser (see the module's docstring).

    No server: the test fails under CI and skips, with the reason, elsewhere.
    """
    server = pytestconfig.stash.get(_SERVER, None)
    if server is None:  # a run that skipped pytest_configure's work (--collect-only) and runs a test anyway
        server = pytestconfig.stash[_SERVER] = PostgresServer.provide(
            os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL))
    if server.admin_url is None:
        if running_in_ci():
            pytest.fail(server.about, pytrace=False)
        pytest.skip(server.about)
    return server.admin_url


@pytest.fixture(scope="session")
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """SQLAlchemy URL of a fresh database ``mer_test_<random>`` on the test server, dropped after the session."""
    import psycopg
    import sqlalchemy as sa

    name = f"mer_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = sa.make_url(postgres_admin_url).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(postgres_admin_url, autocommit=True, connect_timeout=5) as admin:
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


# --- Pushgateway ------------------------------------------------------------------------------------------------------


class Push(NamedTuple):
    """One request a client made to the stand-in Pushgateway."""

    method: str  # POST (push-add), PUT (replace the group) or DELETE
    path: str  # /metrics/job/<job>[/<label>/<value>...]
    body: str  # the exposition text pushed


@dataclass
class FakePushgateway:
    """A stand-in Pushgateway on 127.0.0.1 that accepts every push and keeps it, in order, in ``pushes``."""

    url: str  # http://127.0.0.1:PORT
    pushes: list[Push]

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the form ``--pushgateway`` / ``MER_PUSHGATEWAY`` take."""
        return self.url.removeprefix("http://")


class _PushHandler(BaseHTTPRequestHandler):
    # Keeps pushes on its own server (self.server.pushes), never on the class: nothing is shared between tests.
    def _accept(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        self.server.pushes.append(Push(self.command, self.path, body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    do_POST = do_PUT = do_DELETE = _accept

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def pushgateway() -> Iterator[FakePushgateway]:
    """A fresh stand-in Pushgateway for this test; its ``pushes`` start empty."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PushHandler)
    server.pushes = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakePushgateway(f"http://127.0.0.1:{server.server_port}", server.pushes)  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
