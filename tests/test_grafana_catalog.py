"""The catalog dashboard's SQL is real: each panel of infra/grafana/mer-catalog-dashboard.json runs, as Grafana's
data source would run it (a LOGIN member of the read-only ``mer_analyst`` role, the time-range macro expanded over
the dashboard's default range), against a PostgreSQL catalog made by the project's own migrations and roles script,
and returns what the panel promises for a small catalog written here.

PostgreSQL: the session's server (tests/fixtures_services.py: the given one, or a throwaway cluster; never skipped
under CI). Roles are cluster-wide: the group roles are dropped afterwards only if this module created them.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import errors, sql

pytest_plugins = ["fixtures_services"]

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "infra" / "grafana" / "mer-catalog-dashboard.json"
ROLES_SQL = REPO / "infra" / "catalog" / "roles.sql"
GROUP_ROLES = ("mer_analyst", "mer_writer")

NOW = datetime.now(timezone.utc).replace(microsecond=0)
DAY = timedelta(days=1)
# (run id, model version, started) — run 0 lies outside the dashboard's default time range (30 days).
RUNS = [(0, "v0", NOW - 60 * DAY), (1, "v1", NOW - 2 * DAY), (2, "v2", NOW - DAY)]
# (item, model version, run, quadrant, partial): v2 re-tags a and b and adds c; z has only its old v0 label.
LABELS = [
    ("z", "v0", 0, "Q2", False),
    ("a", "v1", 1, "Q1", False), ("b", "v1", 1, "Q3", True),
    ("a", "v2", 2, "Q1", False), ("b", "v2", 2, "Q2", False), ("c", "v2", 2, "Q4", True),
]
# (item, run, stage, reason, superseded by run): d fails at reading in both runs (the first failure is superseded
# by the second), e fails in feature extraction in run 2.
FAILURES = [
    ("d", 1, "read", "empty file", 2),
    ("d", 2, "read", "empty file", None),
    ("e", 2, "features", "only 1 of 3 windows", None),
]

# What each panel must return for that catalog: (columns checked, rows in the panel's order).
EXPECTED: dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]] = {
    "Labels per quadrant per run": (
        ("run", "Q1", "Q2", "Q3", "Q4"), [("#1 v1", 1, 0, 1, 0), ("#2 v2", 1, 1, 0, 1)]),
    "Share of partial labels, by model version": (
        ("model_version", "partial_share"), [("v0", 0.0), ("v1", 0.5), ("v2", 1 / 3)]),
    "Failures per run, by stage": (
        ("time", "metric", "failures"), [(RUNS[1][2], "read", 1), (RUNS[2][2], "features", 1),
                                         (RUNS[2][2], "read", 1)]),
    "Open failures by stage and reason": (
        ("stage", "reason", "items"), [("features", "only 1 of 3 windows", 1), ("read", "empty file", 1)]),
    "Items per model version": (
        ("model_version", "items_labelled", "items_current"), [("v0", 1, 1), ("v1", 2, 0), ("v2", 3, 3)]),
}


def panel_queries() -> dict[str, str]:
    """``{panel title: SQL}`` of every SQL target of the catalog dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return {p["title"]: t["rawSql"] for p in dashboard["panels"] for t in p.get("targets", []) if "rawSql" in t}


def grafana_sql(query: str) -> str:
    """The query as Grafana sends it over the dashboard's default time range ("now-30d" to "now")."""
    time = json.loads(DASHBOARD.read_text())["time"]
    assert time["to"] == "now"
    days = int(re.fullmatch(r"now-(\d+)d", time["from"]).group(1))
    start, end = (NOW - days * DAY).isoformat(), NOW.isoformat()
    expanded = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN '{start}' AND '{end}'", query)
    assert "$" not in expanded, f"a Grafana macro or variable the test does not expand: {expanded}"
    return expanded


@dataclass(frozen=True)
class Catalog:
    owner: str  # libpq URLs
    analyst: str


def libpq_url(admin_url: str, *, database: str, user: str | None = None) -> str:
    url = sa.make_url(admin_url).set(database=database)
    if user is not None:
        url = url.set(username=user, password=None)
    return url.render_as_string(hide_password=False)


def write_small_catalog(conn: psycopg.Connection) -> None:
    """The runs, items, labels and failures above, written as the catalog's owner."""
    for run_id, version, started in RUNS:
        conn.execute("INSERT INTO runs (id, model_version, started_at, finished_at, status) "
                     "VALUES (%s, %s, %s, %s, 'succeeded')", [run_id, version, started, started + timedelta(hours=1)])
    for key in sorted({label[0] for label in LABELS}):
        conn.execute("INSERT INTO items (key, object_version, duration_s, modalities, first_seen, last_seen) "
                     "VALUES (%s, '1', 30.0, 'midi,audio', %s, %s)", [key, NOW - 60 * DAY, NOW])
    for key, version, run_id, quadrant, partial in LABELS:
        probs = [0.7 if f"Q{i}" == quadrant else 0.1 for i in range(1, 5)]
        columns = ["item_key", "model_version", "run_id", "object_version", "quadrant", "p_q1", "p_q2", "p_q3",
                   "p_q4", "arousal_prob", "valence_prob", "branches_used", "n_windows", "timeline", "tagged_at",
                   "partial"]
        values = [key, version, run_id, "1", quadrant, *probs, probs[0] + probs[1], probs[0] + probs[3],
                  "symbolic,harmony,tone", 1, "[]", RUNS[run_id][2] + timedelta(minutes=5), partial]
        conn.execute(sql.SQL("INSERT INTO labels ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", ").join(sql.Placeholder() * len(values))),
            values)
    for i, (key, run_id, stage, reason, superseded) in enumerate(FAILURES):
        conn.execute("INSERT INTO failures (item_key, run_id, object_version, stage, reason, at, superseded_by_run) "
                     "VALUES (%s, %s, '1', %s, %s, %s, %s)",
                     [key, run_id, stage, reason, RUNS[run_id][2] + timedelta(minutes=10 + i), superseded])


@pytest.fixture(scope="module")
def catalog(postgres_admin_url: str) -> Iterator[Catalog]:
    """A database with the catalog's schema (the project's migrations), its roles (infra/catalog/roles.sql), a
    LOGIN member of mer_analyst as Grafana's data source has, and the small catalog above."""
    from mer.catalog import upgrade_catalog

    suffix = uuid.uuid4().hex[:10]
    database, analyst = f"mer_grafana_{suffix}", f"mer_t{suffix}_grafana"

    def admin() -> psycopg.Connection:
        return psycopg.connect(postgres_admin_url, autocommit=True, connect_timeout=5)

    with admin() as conn:
        preexisting = {name for (name,) in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [list(GROUP_ROLES)])}
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    owner = libpq_url(postgres_admin_url, database=database)
    try:
        upgrade_catalog(sa.make_url(owner).set(drivername="postgresql+psycopg").render_as_string(hide_password=False))
        with psycopg.connect(owner, connect_timeout=5) as conn:
            conn.execute(ROLES_SQL.read_text())  # no parameters: sent whole, as psql -f would
        with admin() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE mer_analyst").format(sql.Identifier(analyst)))
        with psycopg.connect(owner, connect_timeout=5) as conn:
            write_small_catalog(conn)
        yield Catalog(owner=owner, analyst=libpq_url(postgres_admin_url, database=database, user=analyst))
    finally:
        with admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            for role in (analyst, *sorted(set(GROUP_ROLES) - preexisting)):
                try:
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
                except errors.DependentObjectsStillReferenced:
                    pass  # granted in another database meanwhile (a concurrent run): leave it


def plain(value: Any) -> Any:
    """Rows compared as Python values: NUMERIC as float rounded (AVG gives NUMERIC), the rest as is."""
    return round(float(value), 6) if isinstance(value, (Decimal, float)) else value


def test_every_panel_has_its_expected_result() -> None:
    assert set(panel_queries()) == set(EXPECTED)


@pytest.mark.parametrize("title", list(EXPECTED))
def test_panel_sql_runs_as_the_analyst_and_returns_what_it_shows(catalog: Catalog, title: str) -> None:
    with psycopg.connect(catalog.analyst, autocommit=True, connect_timeout=5) as conn:
        cursor = conn.execute(grafana_sql(panel_queries()[title]))
        names = [column.name for column in cursor.description]
        rows = cursor.fetchall()
    columns, expected = EXPECTED[title]
    got = [tuple(plain(row[names.index(column)]) for column in columns) for row in rows]
    assert got == [tuple(plain(value) for value in row) for row in expected]


def test_the_analyst_login_reads_but_cannot_write(catalog: Catalog) -> None:
    # What Grafana's data source logs in as: a member of mer_analyst, so a panel's SQL cannot change the catalog.
    with psycopg.connect(catalog.analyst, autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT count(*) FROM labels").fetchone() == (len(LABELS),)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DELETE FROM failures")
