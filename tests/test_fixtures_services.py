"""The test suite's own services (tests/fixtures_services.py) do what the README promises.

- A throwaway PostgreSQL cluster starts on a free port (as the OS user postgres when the tests run as root),
  serves, and leaves nothing behind when stopped.
- Under CI no PostgreSQL test skips: a missing server fails it, and so does any skip that names PostgreSQL;
  outside CI the same tests skip with the reason.
- The stand-in Pushgateway keeps each test's pushes to itself.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import psycopg
import pytest

try:
    import fixtures_services
except ImportError:  # tests/ imported as a package
    from tests import fixtures_services
ThrowawayPostgres, postgres_bindir = fixtures_services.ThrowawayPostgres, fixtures_services.postgres_bindir

pytest_plugins = ["fixtures_services", "pytester"]


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.fixture
def bindir() -> Path:
    found = postgres_bindir()
    if found is None:
        pytest.fail("no PostgreSQL server programs (initdb, pg_ctl): run bash infra/dev-setup.sh", pytrace=False)
    return found


def test_a_throwaway_cluster_serves_and_leaves_nothing_behind(bindir: Path) -> None:
    cluster = ThrowawayPostgres(bindir)
    try:
        cluster.start()
        with psycopg.connect(cluster.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute("CREATE DATABASE scratch")
            user, data_directory = conn.execute(
                "SELECT current_user, current_setting('data_directory')").fetchone()
        assert user == "postgres" and Path(data_directory).resolve() == cluster.data.resolve()
        # PostgreSQL refuses root: as root, the cluster's files belong to the OS user postgres.
        owner = cluster.data.stat().st_uid
        assert owner != 0 if os.geteuid() == 0 else owner == os.geteuid()
    finally:
        cluster.stop()
    assert not cluster.folder.exists()
    assert not listening(cluster.port)


SKIPPING_TESTS = """
import pytest

pytest_plugins = ["fixtures_services"]

def test_needs_postgres(postgres_admin_url):
    pass

def test_skips_itself():
    pytest.skip("PostgreSQL unreachable at postgresql://nowhere")

def test_skips_for_another_reason():
    pytest.skip("needs a GPU")
"""


@pytest.fixture
def no_postgres(monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester) -> pytest.Pytester:
    """An inner pytest session where nothing listens at the test URL and no cluster can be started."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    monkeypatch.setenv("MER_TEST_POSTGRES_URL", f"postgresql://postgres@127.0.0.1:{dead_port}/postgres")
    monkeypatch.setattr(fixtures_services, "postgres_bindir", lambda: None)
    pytester.makepyfile(test_inner=SKIPPING_TESTS)
    return pytester


def test_under_ci_a_missing_postgresql_fails_every_postgresql_test(no_postgres: pytest.Pytester,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    result = no_postgres.runpytest("-rEfs")
    result.assert_outcomes(errors=1, failed=1, skipped=1)  # the fixture fails in setup: an error, as pytest counts
    result.stdout.fnmatch_lines_random(["ERROR*test_needs_postgres*no PostgreSQL server programs*",
                                        "FAILED*test_skips_itself*may not skip under CI*",
                                        "SKIPPED*needs a GPU"])


def test_outside_ci_a_missing_postgresql_skips_with_the_reason(no_postgres: pytest.Pytester,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = no_postgres.runpytest("-rs")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(["SKIPPED*nothing listens at postgresql://postgres@127.0.0.1:*"
                                 "no PostgreSQL server programs*infra/dev-setup.sh*"])


def test_each_pushgateway_keeps_its_own_pushes(pushgateway: fixtures_services.FakePushgateway) -> None:
    from prometheus_client import CollectorRegistry, Counter, pushadd_to_gateway

    assert pushgateway.pushes == []
    registry = CollectorRegistry()
    Counter("mer_items_tagged_total", "Items tagged.", registry=registry).inc(3)
    pushadd_to_gateway(pushgateway.address, job="mer_tag", registry=registry)
    [push] = pushgateway.pushes
    assert (push.method, push.path) == ("POST", "/metrics/job/mer_tag")
    assert "mer_items_tagged_total 3.0" in push.body
