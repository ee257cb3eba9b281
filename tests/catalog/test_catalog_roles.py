"""The catalog's PostgreSQL roles (infra/catalog/roles.sql), on the real server.

A fresh database gets the catalog schema (``upgrade_catalog``) and the roles; then a LOGIN role in ``mer_writer``
runs a tagging run through the jobs' own ``CatalogWriter``, and a LOGIN role in ``mer_analyst`` reads the labels —
the README's analyst queries and the Grafana dashboard's SQL panels — but cannot change anything.

PostgreSQL: 127.0.0.1:5432, user postgres, trust auth (``MER_TEST_POSTGRES_URL`` overrides, as for the other
catalog tests). Roles are cluster-wide: the group roles are left alone if they existed before the tests (e.g. a
real deployment on the same server) and dropped afterwards otherwise; the LOGIN roles have unique names.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import errors, sql

from mer.catalog import ANALYST_QUERIES, CatalogWriter, FailureRecord, LabelRecord, upgrade_catalog

REPO = Path(__file__).resolve().parents[2]
ROLES_SQL = REPO / "infra" / "catalog" / "roles.sql"
DASHBOARD = REPO / "infra" / "grafana" / "mer-dashboard.json"
ADMIN_URL = os.environ.get("MER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
GROUP_ROLES = ("mer_analyst", "mer_writer")


def libpq_url(*, user: str | None = None, database: str) -> str:
    url = sa.make_url(ADMIN_URL).set(database=database)
    if user is not None:
        url = url.set(username=user, password=None)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def sqlalchemy_url(*, user: str | None = None, database: str) -> str:
    return sa.make_url(libpq_url(user=user, database=database)).set(drivername="postgresql+psycopg").render_as_string(
        hide_password=False
    )


def admin_connection(database: str | None = None) -> psycopg.Connection:
    url = ADMIN_URL if database is None else libpq_url(database=database)
    return psycopg.connect(url, autocommit=True, connect_timeout=5)


def apply_roles(database: str) -> None:
    """What an operator does: run the script, connected to the catalog database as its owner / a superuser."""
    with psycopg.connect(libpq_url(database=database), connect_timeout=5) as conn:
        conn.execute(ROLES_SQL.read_text())  # no parameters: psycopg sends the whole script as one simple query


def existing_roles(names: tuple[str, ...]) -> set[str]:
    with admin_connection() as conn:
        rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [list(names)]).fetchall()
    return {name for (name,) in rows}


@dataclass(frozen=True)
class Catalog:
    database: str
    analyst: str  # LOGIN role, member of mer_analyst
    writer: str  # LOGIN role, member of mer_writer

    def connect(self, user: str | None = None) -> psycopg.Connection:
        return psycopg.connect(libpq_url(user=user, database=self.database), autocommit=True, connect_timeout=5)


@pytest.fixture(scope="module")
def catalog() -> Iterator[Catalog]:
    try:
        admin_connection().close()
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL unreachable at {ADMIN_URL}: {error}")
    suffix = uuid.uuid4().hex[:10]
    database = f"mer_roles_{suffix}"
    analyst, writer = f"mer_t{suffix}_analyst", f"mer_t{suffix}_writer"
    preexisting = existing_roles(GROUP_ROLES)
    with admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        upgrade_catalog(sqlalchemy_url(database=database))
        apply_roles(database)
        with admin_connection() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE mer_analyst").format(sql.Identifier(analyst)))
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE mer_writer").format(sql.Identifier(writer)))
        yield Catalog(database=database, analyst=analyst, writer=writer)
    finally:
        with admin_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            for role in (analyst, writer, *sorted(set(GROUP_ROLES) - preexisting)):
                try:
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
                except errors.DependentObjectsStillReferenced:
                    pass  # granted in another database meanwhile (a concurrent run): leave it


def label(key: str, quadrant: str, probs: tuple[float, float, float, float]) -> LabelRecord:
    return LabelRecord(
        key=key, object_version=f"{key}-v1", modalities=("midi", "audio"), duration_s=42.0, quadrant=quadrant,
        quadrant_probs=probs, va_head_arousal_prob=0.3, va_head_valence_prob=0.2,
        branches_used=("symbolic", "harmony", "tone"), attention=[[[0.2, 0.6, 0.2]] * 3],
        timeline=[{"start_s": 0.0, "quadrant": quadrant, "p_q1": probs[0], "p_q2": probs[1], "p_q3": probs[2],
                   "p_q4": probs[3], "va_head_arousal_prob": 0.3, "va_head_valence_prob": 0.2}],
    )


@pytest.fixture(scope="module")
def tagged(catalog: Catalog) -> int:
    """A finished tagging run written as the writer login, through the jobs' own CatalogWriter (with its default
    schema check at first use). Returns the run id."""
    with CatalogWriter(sqlalchemy_url(user=catalog.writer, database=catalog.database)) as writer:
        run_id = writer.start_run("v-test")
        writer.write_batch(
            run_id,
            labels=[label("nocturne", "Q3", (0.05, 0.05, 0.8, 0.1)), label("etude", "Q1", (0.7, 0.1, 0.1, 0.1))],
            failures=[FailureRecord(key="broken", object_version="1-1", stage="read", reason="empty file",
                                    modalities=("midi",))],
        )
        writer.finish_run(run_id, counts={"listed": 3, "tagged": 2, "skipped": 0, "failed": 1})
    return run_id


# --- the writer ---------------------------------------------------------------------------------------------------------


def test_writer_runs_a_tagging_run(catalog: Catalog, tagged: int) -> None:
    with catalog.connect() as conn:  # checked as the owner, independently of the roles
        labels = conn.execute("SELECT item_key, quadrant, run_id FROM labels ORDER BY item_key").fetchall()
        run = conn.execute("SELECT status, listed, tagged, failed FROM runs WHERE id = %s", [tagged]).fetchone()
        failures = conn.execute("SELECT item_key, stage FROM failures").fetchall()
    assert labels == [("etude", "Q1", tagged), ("nocturne", "Q3", tagged)]
    assert run == ("succeeded", 3, 2, 1)
    assert failures == [("broken", "read")]


def test_writer_can_rewrite_a_label_in_a_later_run(catalog: Catalog, tagged: int) -> None:
    # A re-tag is an upsert (INSERT ... ON CONFLICT DO UPDATE), which needs both privileges.
    with CatalogWriter(sqlalchemy_url(user=catalog.writer, database=catalog.database)) as writer:
        run_id = writer.start_run("v-test")
        writer.write_batch(run_id, labels=[label("etude", "Q1", (0.8, 0.1, 0.05, 0.05))])
        writer.finish_run(run_id, counts={"listed": 3, "tagged": 1, "skipped": 2})
    with catalog.connect() as conn:
        rows = conn.execute("SELECT run_id, p_q1 FROM labels WHERE item_key = 'etude'").fetchall()
    assert rows == [(run_id, pytest.approx(0.8))]


WRITER_FORBIDDEN = {
    "delete labels": "DELETE FROM labels",
    "truncate labels": "TRUNCATE labels",
    "drop a table": "DROP TABLE failures",
    "alter a table": "ALTER TABLE labels ADD COLUMN mood text",
    "create a table": "CREATE TABLE scratch (x int)",
    "change the schema version": "UPDATE mer_alembic_version SET version_num = '0000'",
}


@pytest.mark.parametrize("statement", WRITER_FORBIDDEN.values(), ids=WRITER_FORBIDDEN.keys())
def test_writer_cannot_delete_or_change_the_schema(catalog: Catalog, tagged: int, statement: str) -> None:
    with catalog.connect(catalog.writer) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(statement)


# --- the analyst --------------------------------------------------------------------------------------------------------


def test_analyst_reads_labels(catalog: Catalog, tagged: int) -> None:
    with catalog.connect(catalog.analyst) as conn:
        rows = conn.execute("SELECT item_key, quadrant FROM latest_labels ORDER BY item_key").fetchall()
        saddest = conn.execute(ANALYST_QUERIES["saddest_pieces"]).fetchall()
        for query in ANALYST_QUERIES.values():  # the README's queries all run under the analyst role
            conn.execute(query).fetchall()
    assert rows == [("etude", "Q1"), ("nocturne", "Q3")]
    assert [row[0] for row in saddest] == ["nocturne"]


ANALYST_FORBIDDEN = {
    "insert a run": "INSERT INTO runs (model_version, started_at, status) VALUES ('x', now(), 'running')",
    "insert an item": "INSERT INTO items (key, object_version, modalities, first_seen, last_seen) "
                      "VALUES ('x', 'v', 'midi', now(), now())",
    "update labels": "UPDATE labels SET quadrant = 'Q2'",
    "delete labels": "DELETE FROM labels",
    "delete failures": "DELETE FROM failures",
    "truncate labels": "TRUNCATE labels",
    "drop a view": "DROP VIEW latest_labels",
    "create a table": "CREATE TABLE scratch (x int)",
    "change the schema version": "UPDATE mer_alembic_version SET version_num = '0000'",
}


@pytest.mark.parametrize("statement", ANALYST_FORBIDDEN.values(), ids=ANALYST_FORBIDDEN.keys())
def test_analyst_cannot_write(catalog: Catalog, tagged: int, statement: str) -> None:
    with catalog.connect(catalog.analyst) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied|must be owner"):
            conn.execute(statement)
    with catalog.connect() as conn:
        assert conn.execute("SELECT count(*) FROM labels").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM labels WHERE quadrant = 'Q2'").fetchone() == (0,)


def grafana_sql(query: str) -> str:
    """A dashboard query as Grafana sends it: the time-range macro expanded to a range covering the test data."""
    return re.sub(r"\$__timeFilter\(([^)]+)\)", r"\1 BETWEEN now() - interval '1 day' AND now() + interval '1 day'",
                  query)


def test_dashboard_catalog_panels_run_as_the_analyst(catalog: Catalog, tagged: int) -> None:
    panels = {
        p["title"]: t["rawSql"]
        for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", []) if "rawSql" in t
    }
    assert panels, "the dashboard has no catalog panels"
    with catalog.connect(catalog.analyst) as conn:
        results = {title: conn.execute(grafana_sql(query)).fetchall() for title, query in panels.items()}
    # The per-run panel agrees with the README's per-run query (run by the owner).
    with catalog.connect() as conn:
        expected: dict[str, list[int]] = {}
        for run_id, _, _, quadrant, n in conn.execute(ANALYST_QUERIES["quadrant_counts_per_run"]):
            expected.setdefault(str(run_id), [0, 0, 0, 0])[int(quadrant[1]) - 1] = n
    per_run = {row[0]: list(row[1:]) for row in results["Labels per quadrant per run"]}
    assert per_run == expected and sum(map(sum, per_run.values())) == 2
    assert [row[:2] for row in results["Open failures by stage and reason"]] == [("read", "empty file")]
    assert any(row[0] == tagged and row[4] == "succeeded" for row in results["Recent runs"])


# --- coverage and idempotency of the script -----------------------------------------------------------------------------

PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")


def privileges(catalog: Catalog) -> dict[tuple[str, str], set[str]]:
    """``{(group role, relation): privileges}`` over every relation of the catalog's schema."""
    with catalog.connect() as conn:
        relations = [name for (name,) in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p') ORDER BY 1"
        )]
        return {
            (role, relation): {
                p for p in PRIVILEGES
                if conn.execute("SELECT has_table_privilege(%s, %s, %s)", [role, relation, p]).fetchone()[0]
            }
            for role in GROUP_ROLES for relation in relations
        }


def test_every_catalog_relation_is_covered(catalog: Catalog) -> None:
    # A table or view added by a later migration without a grant in roles.sql fails here.
    granted = privileges(catalog)
    relations = {relation for _, relation in granted}
    assert {"items", "runs", "labels", "failures", "latest_labels", "open_failures", "mer_alembic_version"} <= relations
    with catalog.connect() as conn:
        base_tables = {name for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")} - {"mer_alembic_version"}
    for relation in relations:
        assert granted[("mer_analyst", relation)] == {"SELECT"}, relation
        expected = {"SELECT", "INSERT", "UPDATE"} if relation in base_tables else {"SELECT"}
        assert granted[("mer_writer", relation)] == expected, relation


def test_roles_script_is_idempotent(catalog: Catalog) -> None:
    before = privileges(catalog)
    apply_roles(catalog.database)
    apply_roles(catalog.database)
    assert privileges(catalog) == before


def test_roles_script_refuses_a_database_without_the_catalog() -> None:
    try:
        admin_connection().close()
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL unreachable at {ADMIN_URL}: {error}")
    database = f"mer_roles_empty_{uuid.uuid4().hex[:10]}"
    preexisting = existing_roles(GROUP_ROLES)
    with admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        with pytest.raises(errors.RaiseException, match="no mer catalog"):
            apply_roles(database)
    finally:
        with admin_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            for role in sorted(set(GROUP_ROLES) - preexisting):
                try:
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
                except errors.DependentObjectsStillReferenced:
                    pass
