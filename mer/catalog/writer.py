"""Writes a tagging run into the catalog: the run's row, then batches of labels and failures, each batch one
idempotent transaction (:class:`CatalogWriter`).

Idempotency: :meth:`CatalogWriter.write_batch` upserts everything in one transaction, so a job killed at any point
and run again (as a new run) leaves every item once, labelled by whichever run wrote it last.

What is true of the store now: :meth:`CatalogWriter.see_items` refreshes every listed item (``last_seen``, its
object version and modalities; ``deleted_at`` cleared), and :meth:`CatalogWriter.mark_missing`, after a *complete*
listing, marks the items it did not find as deleted and closes the listing rejects it no longer found. A run
stamps :meth:`CatalogWriter.heartbeat` while it lives; :meth:`CatalogWriter.start_run` closes as ``failed`` the
runs whose heartbeat stopped.
"""
from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from mer.catalog.records import FailureRecord, LabelRecord, ListedItem
from mer.catalog.schema import (INFERENCE_KINDS, RUN_COUNTS, RUN_STATUSES, catalog_url, create_catalog_engine,
                                failures_table, items_table, labels_table, runs_table, upgrade_catalog)

DEAD_AFTER = timedelta(minutes=5)
"""A run still ``running`` whose heartbeat is older than this was killed; the next run closes it as ``failed``.
Ten heartbeats of the tagger's default period (``TagConfig.heartbeat_seconds``): a slow catalog write or a
paused driver does not make a live run look dead."""

HOLD_BATCH_ENV = "MER_TEST_HOLD_BATCH"
"""Test hook, never set in production: ``MER_TEST_HOLD_BATCH=<folder>`` makes every :meth:`CatalogWriter.write_batch`
wait inside its transaction, after its statements and before its commit, for as long as ``<folder>/holding-<pid>``
(the batch's keys, one a line) exists: a test deletes the file to let the batch commit, or SIGKILLs the process
there to prove a batch is all or nothing."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _chunks(values: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    # Bounded IN lists: SQLite caps bound parameters per statement.
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _hold_batch(folder: Path, keys: Sequence[str]) -> None:
    """The :data:`HOLD_BATCH_ENV` test hook: announce the batch, then wait (still inside its transaction) until the
    test deletes the announcement. Written aside and renamed, so the test never reads half a list of keys."""
    marker = folder / f"holding-{os.getpid()}"
    partial = marker.with_name(f".{marker.name}")
    partial.write_text("".join(f"{key}\n" for key in sorted(set(keys))))
    partial.replace(marker)
    while marker.exists():
        time.sleep(0.05)


class CatalogWriter:
    """Writes a tagging run into the catalog.

    ``url`` is a SQLAlchemy URL or a path to a SQLite file. With ``upgrade=True`` (default) the schema is created or
    upgraded on first use. Picklable: the engine is rebuilt lazily in each process. Call :meth:`close` (or use it as
    a context manager) to release connections.
    """

    def __init__(self, url: str | os.PathLike[str], *, upgrade: bool = True) -> None:
        self.url = catalog_url(url)
        self.upgrade = upgrade
        self._engine: Engine | None = None

    def __repr__(self) -> str:
        # Never show a password that may be in the URL.
        return f"CatalogWriter({sa.make_url(self.url).render_as_string(hide_password=True)!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Once this writer has upgraded the schema, copies sent to workers need not (and must not race to) do it.
        return {"url": self.url, "upgrade": self.upgrade and self._engine is None, "_engine": None}

    def __enter__(self) -> CatalogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = create_catalog_engine(self.url)
            if self.upgrade:
                upgrade_catalog(engine)
            self._engine = engine
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _insert(self, table: sa.Table) -> Any:
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            return postgresql.insert(table)
        if dialect == "sqlite":
            return sqlite.insert(table)
        raise NotImplementedError(f"catalog upserts support SQLite and PostgreSQL, not {dialect}")

    def start_run(self, model_version: str, *, dead_after: timedelta = DEAD_AFTER) -> int:
        """Record a new run (status ``running``, heartbeat now) and return its id.

        Runs still ``running`` whose last heartbeat (:meth:`heartbeat`) is more than ``dead_after`` old were killed
        (SIGKILL, out of memory, a lost node): they are closed as ``failed`` here, so the ``runs`` table does not
        show them running. Their ``finished_at`` stays NULL (when they stopped is not known; ``heartbeat_at`` says
        when they were last alive).
        """
        if not model_version:
            raise ValueError("start_run needs a model version")
        now = _now()
        last_alive = sa.func.coalesce(runs_table.c.heartbeat_at, runs_table.c.started_at)
        with self.engine.begin() as conn:
            conn.execute(
                runs_table.update()
                .where(runs_table.c.status == "running", last_alive < now - dead_after)
                .values(status="failed")
            )
            result = conn.execute(
                runs_table.insert().values(model_version=model_version, started_at=now, heartbeat_at=now,
                                           status="running")
            )
            return int(result.inserted_primary_key[0])

    def heartbeat(self, run_id: int) -> bool:
        """Stamp the run's ``heartbeat_at`` with now. False when the run is no longer ``running`` (another run
        found its heartbeat too old and closed it)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                runs_table.update()
                .where(runs_table.c.id == run_id, runs_table.c.status == "running")
                .values(heartbeat_at=_now())
            )
            return result.rowcount == 1

    def record_inference(self, run_id: int, inference: str) -> None:
        """Say how the run computes its labels (``runs.inference``): one of :data:`INFERENCE_KINDS`."""
        if inference not in INFERENCE_KINDS:
            raise ValueError(f"inference must be one of {INFERENCE_KINDS}, got {inference!r}")
        with self.engine.begin() as conn:
            conn.execute(runs_table.update().where(runs_table.c.id == run_id).values(inference=inference))

    def finish_run(self, run_id: int, *, status: str = "succeeded", counts: Mapping[str, int] | None = None) -> None:
        """Close a run: ``status`` is ``succeeded`` or ``failed``; ``counts`` any of listed/tagged/skipped/failed."""
        if status not in RUN_STATUSES or status == "running":
            raise ValueError(f"finish status must be 'succeeded' or 'failed', got {status!r}")
        counts = dict(counts or {})
        unknown = sorted(set(counts) - set(RUN_COUNTS))
        if unknown:
            raise ValueError(f"unknown run counts {unknown}; expected some of {RUN_COUNTS}")
        now = _now()
        with self.engine.begin() as conn:
            result = conn.execute(
                runs_table.update()
                .where(runs_table.c.id == run_id)
                .values(finished_at=now, heartbeat_at=now, status=status, **{k: int(v) for k, v in counts.items()})
            )
            if result.rowcount != 1:
                raise ValueError(f"no run with id {run_id}")

    def tagged_versions(self, model_version: str, *, keys: Sequence[str] | None = None) -> dict[str, str]:
        """``{item key: object version}`` of every item fully labelled by ``model_version`` — the tagger skips an
        item whose current ``Item.version`` equals the stored one. Partial labels are left out: their items are
        tagged again. ``keys``: only these items (one page of a listing; looked up through the primary key, 500 at
        a time), so a run never loads the whole table."""
        query = sa.select(labels_table.c.item_key, labels_table.c.object_version).where(
            labels_table.c.model_version == model_version, sa.not_(labels_table.c.partial))
        return self._by_key(query, labels_table.c.item_key, keys)

    def open_rejects(self) -> dict[str, str | None]:
        """``{object key: object version}`` of the open listing rejects (``list`` failures not superseded), from runs
        of any model version: a reject is the object's fault, so a run records it only when it is new or changed."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(failures_table.c.item_key, failures_table.c.object_version)
                .where(failures_table.c.stage == "list", failures_table.c.superseded_by_run.is_(None))
                .order_by(failures_table.c.run_id)
            )
            return {key: version for key, version in rows}

    def see_items(self, items: Sequence[ListedItem], *, seen_at: datetime) -> None:
        """A listing found ``items``: each gets an ``items`` row (a new one: first seen now, duration unknown) with
        the listed object version and modalities, ``last_seen = seen_at`` and ``deleted_at`` cleared. The duration
        is kept only if the objects did not change. One transaction; call it per page of a long listing."""
        rows = [{"key": i.key, "object_version": i.object_version, "duration_s": None, "modalities": i.modalities,
                 "first_seen": seen_at, "last_seen": seen_at} for i in {i.key: i for i in items}.values()]
        if rows:
            with self.engine.begin() as conn:
                self._upsert_items(conn, rows, keep_duration=True)

    def mark_missing(self, run_id: int, *, listed_at: datetime, prefix: str = "",
                     reject_keys: Collection[str] = ()) -> int:
        """After a *complete* listing of ``prefix`` that started at ``listed_at`` (every item it found passed to
        :meth:`see_items` with ``seen_at = listed_at``): items under ``prefix`` it did not find get
        ``deleted_at = listed_at`` (those already deleted keep theirs), and the open listing rejects under
        ``prefix`` that are not among ``reject_keys`` (this listing's rejects) are superseded by run ``run_id``.
        Returns how many items were newly marked deleted. Never call it after a listing that failed or stopped
        early: every item it did not reach would look deleted."""
        under_prefix = sa.func.substr(items_table.c.key, 1, len(prefix)) == prefix if prefix else sa.true()
        still_rejected = set(reject_keys)
        with self.engine.begin() as conn:
            result = conn.execute(
                items_table.update()
                .where(items_table.c.deleted_at.is_(None), items_table.c.last_seen < listed_at, under_prefix)
                .values(deleted_at=listed_at)
            )
            gone = sorted(
                key for (key,) in conn.execute(
                    sa.select(failures_table.c.item_key)
                    .where(failures_table.c.stage == "list", failures_table.c.superseded_by_run.is_(None),
                           failures_table.c.run_id < run_id)
                )
                if key.startswith(prefix) and key not in still_rejected
            )
            for chunk in _chunks(gone):
                conn.execute(
                    failures_table.update()
                    .where(failures_table.c.item_key.in_(chunk), failures_table.c.stage == "list",
                           failures_table.c.superseded_by_run.is_(None), failures_table.c.run_id < run_id)
                    .values(superseded_by_run=run_id)
                )
            return int(result.rowcount)

    def failed_versions(self, model_version: str, *, keys: Sequence[str] | None = None) -> dict[str, str | None]:
        """``{key: object version}`` of open failures (not superseded) under ``model_version``: lets a nightly run
        skip items known to be broken at the same version, if the job chooses to. ``keys`` as in
        :meth:`tagged_versions`."""
        query = (
            sa.select(failures_table.c.item_key, failures_table.c.object_version)
            .join(runs_table, runs_table.c.id == failures_table.c.run_id)
            .where(runs_table.c.model_version == model_version, failures_table.c.superseded_by_run.is_(None))
            .order_by(failures_table.c.run_id)
        )
        return self._by_key(query, failures_table.c.item_key, keys)

    def _by_key(self, query: sa.Select, key_column: sa.Column, keys: Sequence[str] | None) -> dict[str, Any]:
        """``{key: value}`` of a two-column query, for all rows or for ``keys`` only (IN lists of 500: an index
        lookup whatever the database's collation)."""
        with self.engine.connect() as conn:
            if keys is None:
                return {key: value for key, value in conn.execute(query)}
            found: dict[str, Any] = {}
            for chunk in _chunks(list(keys)):
                found.update((key, value) for key, value in conn.execute(query.where(key_column.in_(chunk))))
            return found

    def write_batch(
        self, run_id: int, labels: Sequence[LabelRecord] = (), failures: Sequence[FailureRecord] = ()
    ) -> None:
        """Upsert a batch of labels and failures of run ``run_id`` in ONE transaction (all or nothing).

        Idempotent: writing the same records again (in this run or a later one) leaves one ``labels`` row per
        (item, model version) and one ``failures`` row per (item, run, stage). Within a batch the last record for a
        key wins. Each label supersedes the item's open failures under the same model version (including this
        run's); each failure supersedes the item's open failures from earlier runs of that model version.
        """
        labels = list({record.key: record for record in labels}.values())
        failures = list({(record.key, record.stage): record for record in failures}.values())
        if not labels and not failures:
            return
        now = _now()
        with self.engine.begin() as conn:
            model_version = conn.execute(sa.select(runs_table.c.model_version)
                                         .where(runs_table.c.id == run_id)).scalar_one_or_none()
            if model_version is None:
                raise ValueError(f"no run with id {run_id}")
            labelled = {record.key for record in labels}
            item_rows = [
                {"key": r.key, "object_version": r.object_version, "duration_s": r.duration_s,
                 "modalities": r.modalities, "first_seen": now, "last_seen": now}
                for r in labels
            ]
            # A failed item's duration is unknown; keep the stored one only if the objects did not change. A failure
            # without a version (retried next run) leaves the listed version in place.
            failed_item_rows = {
                r.key: {"key": r.key, "object_version": r.object_version or "", "duration_s": None,
                        "modalities": r.modalities, "first_seen": now, "last_seen": now}
                for r in failures
                if r.modalities is not None and r.key not in labelled
            }
            self._upsert_items(conn, item_rows, keep_duration=False)
            self._upsert_items(conn, list(failed_item_rows.values()), keep_duration=True)

            if failures:
                stmt = self._insert(failures_table)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["item_key", "run_id", "stage"],
                        set_={"object_version": stmt.excluded.object_version, "reason": stmt.excluded.reason,
                              "at": stmt.excluded.at},
                    ),
                    [{"item_key": r.key, "run_id": run_id, "object_version": r.object_version, "stage": r.stage,
                      "reason": r.reason, "at": now} for r in failures],
                )
                self._supersede(conn, run_id, model_version, sorted({r.key for r in failures}), same_run=False)
                # A listing reject is the object's fault, not the model's: its new record closes the older ones
                # of any model version, so open_failures holds one row per rejected object.
                self._supersede(conn, run_id, None, sorted({r.key for r in failures if r.stage == "list"}),
                                same_run=False, stage="list")

            if labels:
                stmt = self._insert(labels_table)
                row_columns = [c.name for c in labels_table.c if c.name not in ("item_key", "model_version")]
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["item_key", "model_version"],
                        set_={name: stmt.excluded[name] for name in row_columns},
                    ),
                    [r.row(run_id=run_id, model_version=model_version, now=now) for r in labels],
                )
                self._supersede(conn, run_id, model_version, sorted(labelled), same_run=True)

            if os.environ.get(HOLD_BATCH_ENV):
                _hold_batch(Path(os.environ[HOLD_BATCH_ENV]), [*labelled, *(r.key for r in failures)])

    def _upsert_items(self, conn: Connection, rows: list[dict[str, Any]], *, keep_duration: bool) -> None:
        if not rows:
            return
        stmt = self._insert(items_table)
        # "" = not known (a failure recorded without a version): the stored version stays.
        version = sa.case((stmt.excluded.object_version == "", items_table.c.object_version),
                          else_=stmt.excluded.object_version)
        duration = (
            sa.case((items_table.c.object_version == version, items_table.c.duration_s), else_=None)
            if keep_duration
            else stmt.excluded.duration_s
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["key"],
                set_={"object_version": version, "duration_s": duration,
                      "modalities": stmt.excluded.modalities, "last_seen": stmt.excluded.last_seen,
                      "deleted_at": None},
            ),
            rows,
        )

    @staticmethod
    def _supersede(conn: Connection, run_id: int, model_version: str | None, keys: Sequence[str], *, same_run: bool,
                   stage: str | None = None) -> None:
        """Mark the open failures of ``keys`` under ``model_version`` (None: any) at ``stage`` (None: any) as
        superseded by ``run_id``: from earlier runs only (a new failure), or from this run too (a label)."""
        same_version_runs = sa.select(runs_table.c.id).where(runs_table.c.model_version == model_version)
        for chunk in _chunks(keys):
            condition = sa.and_(
                failures_table.c.item_key.in_(chunk),
                failures_table.c.superseded_by_run.is_(None),
                failures_table.c.run_id.in_(same_version_runs) if model_version is not None else sa.true(),
                failures_table.c.stage == stage if stage is not None else sa.true(),
                failures_table.c.run_id <= run_id,
            )
            if not same_run:
                condition = sa.and_(condition, failures_table.c.run_id < run_id)
            conn.execute(failures_table.update().where(condition).values(superseded_by_run=run_id))
