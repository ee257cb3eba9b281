"""The SQL catalog the tagger writes and analysts query: items, runs, labels, failures.

A SQLite file is the embedded default (``sqlite:///path/catalog.db``, or just a path); PostgreSQL by URL
(``postgresql+psycopg://user@host/db``). The schema is created and upgraded by the Alembic migrations in
``mer/migrations`` (:func:`upgrade_catalog`); :data:`metadata` mirrors the head revision for the writer's
statements (a test checks the two agree).

Tables (see the migration for every column):

- ``items``: one row per item key (object key without extension): current object version, duration, modalities.
- ``runs``: one row per tagging run: model version, start/finish, status, counts.
- ``labels``: one *current* label per (item, model version); a re-tag overwrites it in place.
- ``failures``: what went wrong, per (item, run, stage). A failure stays as history, but once a later run of the
  same model version tags the item (or fails it again) ``superseded_by_run`` points at that run, so the open
  problems are the rows where it is NULL (view ``open_failures``). A failure never deletes an earlier good label:
  the label stays with its older ``object_version`` (``latest_labels.stale`` is then true) and the next run
  retries the item.
- view ``latest_labels``: each item's most recently written label, with its duration and modalities.

Idempotency: :meth:`CatalogWriter.write_batch` upserts everything in one transaction, so a job killed at any point
and run again (as a new run) leaves every item once, labelled by whichever run wrote it last.

Analysts' queries (plain SQL, identical on SQLite and PostgreSQL) are :data:`ANALYST_QUERIES`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from mer.config import BRANCHES, QUADRANTS

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Our own version table name, so the catalog can live in a database shared with other Alembic-managed apps.
VERSION_TABLE = "mer_alembic_version"
HEAD_REVISION = "0001"
ABANDONED_AFTER = timedelta(hours=24)
"""A run still ``running`` this long after its start was killed; the next run closes it as ``failed``."""
MIGRATION_LOCK_KEY = 0x6D6572  # "mer": the PostgreSQL advisory lock that serialises schema migrations
MODALITIES: tuple[str, ...] = ("midi", "audio")
RUN_STATUSES: tuple[str, ...] = ("running", "succeeded", "failed")
RUN_COUNTS: tuple[str, ...] = ("listed", "tagged", "skipped", "failed")
TIMELINE_KEYS: tuple[str, ...] = ("start_s", "quadrant", "p_q1", "p_q2", "p_q3", "p_q4", "arousal_prob", "valence_prob")

# --- analysts' SQL -------------------------------------------------------------------------------------------------

SADDEST_PIECES = """
SELECT item_key, model_version, p_q3, arousal_prob, valence_prob, duration_s
FROM latest_labels
WHERE quadrant = 'Q3'
ORDER BY p_q3 DESC, item_key
LIMIT 20
"""
"""The twenty saddest pieces: labelled Q3 (negative valence, low arousal), most confident first."""

HARMONY_CARRIED = """
SELECT item_key, model_version, quadrant, attn_symbolic, attn_harmony, attn_tone
FROM latest_labels
WHERE attn_harmony > attn_symbolic AND attn_harmony > attn_tone
ORDER BY attn_harmony DESC, item_key
"""
"""Pieces whose emotion is carried mostly by harmony: the harmony (chroma) branch receives the most attention."""

QUADRANT_COUNTS_PER_RUN = """
SELECT runs.id AS run_id, runs.model_version, runs.started_at, labels.quadrant, COUNT(*) AS n
FROM labels
JOIN runs ON runs.id = labels.run_id
GROUP BY runs.id, runs.model_version, runs.started_at, labels.quadrant
ORDER BY runs.id, labels.quadrant
"""
"""Labels per quadrant per run (a label counts for the run that wrote it last)."""

ANALYST_QUERIES: dict[str, str] = {
    "saddest_pieces": SADDEST_PIECES,
    "harmony_carried": HARMONY_CARRIED,
    "quadrant_counts_per_run": QUADRANT_COUNTS_PER_RUN,
}

# --- schema (mirrors the head migration) ---------------------------------------------------------------------------

metadata = sa.MetaData()
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)

items_table = sa.Table(
    "items",
    metadata,
    sa.Column("key", sa.Text(), primary_key=True, comment="object key without extension, relative to the store"),
    sa.Column("object_version", sa.Text(), nullable=False, comment="ETags or size-mtime of the item's objects"),
    sa.Column("duration_s", sa.Float(), nullable=True, comment="seconds; NULL until the item was tagged"),
    sa.Column("modalities", sa.Text(), nullable=False, comment="'midi', 'audio' or 'midi,audio'"),
    sa.Column("first_seen", _TIMESTAMP, nullable=False),
    sa.Column("last_seen", _TIMESTAMP, nullable=False),
)

runs_table = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("model_version", sa.Text(), nullable=False),
    sa.Column("started_at", _TIMESTAMP, nullable=False),
    sa.Column("finished_at", _TIMESTAMP, nullable=True, comment="NULL while running, or if the job was killed"),
    sa.Column("status", sa.Text(), nullable=False),
    sa.Column("listed", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("tagged", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("skipped", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
    sa.CheckConstraint("status IN ('running', 'succeeded', 'failed')", name="ck_runs_status"),
)

labels_table = sa.Table(
    "labels",
    metadata,
    sa.Column("item_key", sa.Text(), sa.ForeignKey("items.key", name="fk_labels_item"), nullable=False),
    sa.Column("model_version", sa.Text(), nullable=False),
    sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", name="fk_labels_run"), nullable=False),
    sa.Column("object_version", sa.Text(), nullable=False, comment="items.object_version when tagged"),
    sa.Column("quadrant", sa.Text(), nullable=False),
    sa.Column("p_q1", sa.Float(), nullable=False),
    sa.Column("p_q2", sa.Float(), nullable=False),
    sa.Column("p_q3", sa.Float(), nullable=False),
    sa.Column("p_q4", sa.Float(), nullable=False),
    sa.Column("arousal_prob", sa.Float(), nullable=False, comment="P(high arousal)"),
    sa.Column("valence_prob", sa.Float(), nullable=False, comment="P(positive valence)"),
    sa.Column("branches_used", sa.Text(), nullable=False, comment="e.g. 'symbolic,harmony,tone'"),
    sa.Column("attn_symbolic", sa.Float(), nullable=True, comment="mean attention the branch receives"),
    sa.Column("attn_harmony", sa.Float(), nullable=True),
    sa.Column("attn_tone", sa.Float(), nullable=True),
    sa.Column("attention", _JSON, nullable=True, comment="[head][query branch][key branch]"),
    sa.Column("n_windows", sa.Integer(), nullable=False),
    sa.Column("timeline", _JSON, nullable=False, comment="per-window labels"),
    sa.Column("problems", sa.Text(), nullable=True),
    sa.Column("tagged_at", _TIMESTAMP, nullable=False),
    sa.PrimaryKeyConstraint("item_key", "model_version", name="pk_labels"),
    sa.CheckConstraint("quadrant IN ('Q1', 'Q2', 'Q3', 'Q4')", name="ck_labels_quadrant"),
    sa.Index("ix_labels_run_id", "run_id"),
    sa.Index("ix_labels_model_version_quadrant", "model_version", "quadrant"),
)

failures_table = sa.Table(
    "failures",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
    sa.Column("item_key", sa.Text(), nullable=False, comment="item key, or the object key if it made no item"),
    sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", name="fk_failures_run"), nullable=False),
    sa.Column("object_version", sa.Text(), nullable=True),
    sa.Column("stage", sa.Text(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("at", _TIMESTAMP, nullable=False),
    sa.Column(
        "superseded_by_run",
        sa.Integer(),
        sa.ForeignKey("runs.id", name="fk_failures_superseded_by_run"),
        nullable=True,
        comment="a later run of the same model version that tagged the item or failed it again",
    ),
    sa.UniqueConstraint("item_key", "run_id", "stage", name="uq_failures_item_run_stage"),
    sa.Index("ix_failures_run_id", "run_id"),
    sa.Index("ix_failures_item_key", "item_key"),
)

# --- records -------------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """NumPy arrays/scalars and tuples → plain lists/floats/ints, so records serialise as JSON on any driver."""
    if hasattr(value, "tolist"):  # numpy array or scalar, without importing numpy here
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _probability(value: Any, what: str) -> float:
    p = float(value)
    if not (math.isfinite(p) and -1e-6 <= p <= 1 + 1e-6):
        raise ValueError(f"{what} must be a probability in [0, 1], got {value!r}")
    return min(max(p, 0.0), 1.0)


def _names(value: str | Iterable[str], allowed: Sequence[str], what: str) -> str:
    """A set of names as canonical comma-separated text in ``allowed`` order (e.g. 'symbolic,tone')."""
    given = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v) for v in value]
    unknown = sorted(set(given) - set(allowed))
    if unknown or not given:
        raise ValueError(f"{what} must be a non-empty subset of {allowed}, got {value!r}")
    return ",".join(name for name in allowed if name in given)


def branch_attention(attention: Sequence[Sequence[Sequence[float]]] | None) -> dict[str, float] | None:
    """Mean attention each branch *receives*: ``{branch: value}`` in BRANCHES order, or None.

    ``attention`` is (heads, 3, 3) [head][query branch][key branch] with rows of absent/unbuilt branches all zero
    and the other rows summing to 1. The value of branch b is the mean of column b over heads and over the query
    rows that are present, so the three values sum to 1. None when there is no attention (None, or all zeros as
    ``predict_windows`` emits for a model without attention).
    """
    if attention is None:
        return None
    totals = [0.0] * len(BRANCHES)
    rows = 0
    for head in attention:
        for row in head:
            if sum(row) <= 0:
                continue
            rows += 1
            for b, weight in enumerate(row):
                totals[b] += float(weight)
    if rows == 0:
        return None
    return {branch: totals[b] / rows for b, branch in enumerate(BRANCHES)}


@dataclass(frozen=True)
class LabelRecord:
    """One piece's label from one model version, as the tagger hands it to :meth:`CatalogWriter.write_batch`.

    NumPy values are accepted and converted to plain Python on construction; invalid values raise ValueError.

    - ``key``: the item key (``Item.stem``); ``object_version``: ``Item.version`` of the objects that were read.
    - ``modalities``: ``Item.modalities`` (subset of ``("midi", "audio")``), tuple or comma-separated text.
    - ``duration_s``: the piece's duration in seconds.
    - ``quadrant``: ``"Q1".."Q4"``; ``quadrant_probs``: (4,) P(Q1..Q4), the mean over windows.
    - ``arousal_prob``, ``valence_prob``: P(high arousal), P(positive valence).
    - ``branches_used``: the branches that saw input (subset of BRANCHES).
    - ``attention``: (heads, 3, 3) mean attention over windows, BRANCHES order; None without attention.
    - ``timeline``: one dict per window with keys TIMELINE_KEYS (start_s in seconds).
    - ``problems``: what was wrong but did not stop tagging (e.g. "audio: silent; tagged from MIDI only").
    """

    key: str
    object_version: str
    modalities: str | Sequence[str]
    duration_s: float
    quadrant: str
    quadrant_probs: Sequence[float]
    arousal_prob: float
    valence_prob: float
    branches_used: str | Sequence[str]
    attention: Sequence[Any] | None = None
    timeline: Sequence[Mapping[str, Any]] = field(default_factory=list)
    problems: str | None = None

    def __post_init__(self) -> None:
        fix = partial(object.__setattr__, self)  # normalise fields of a frozen dataclass
        if not self.key or not isinstance(self.key, str):
            raise ValueError(f"label key must be a non-empty string, got {self.key!r}")
        fix("object_version", str(self.object_version))
        fix("modalities", _names(self.modalities, MODALITIES, "modalities"))
        fix("branches_used", _names(self.branches_used, BRANCHES, "branches_used"))
        duration = float(self.duration_s)
        if not (math.isfinite(duration) and duration >= 0):
            raise ValueError(f"{self.key}: duration_s must be a finite number of seconds >= 0, got {self.duration_s!r}")
        fix("duration_s", duration)
        if self.quadrant not in QUADRANTS:
            raise ValueError(f"{self.key}: quadrant must be one of {QUADRANTS}, got {self.quadrant!r}")
        probs = _plain(self.quadrant_probs)
        if len(probs) != len(QUADRANTS):
            raise ValueError(f"{self.key}: quadrant_probs must have 4 values, got {len(probs)}")
        fix("quadrant_probs", tuple(_probability(p, f"{self.key}: quadrant_probs") for p in probs))
        fix("arousal_prob", _probability(self.arousal_prob, f"{self.key}: arousal_prob"))
        fix("valence_prob", _probability(self.valence_prob, f"{self.key}: valence_prob"))
        if self.attention is not None:
            attention = _plain(self.attention)
            if not all(len(head) == len(BRANCHES) and all(len(row) == len(BRANCHES) for row in head) for head in attention):
                raise ValueError(f"{self.key}: attention must have shape (heads, 3, 3)")
            fix("attention", [[[float(w) for w in row] for row in head] for head in attention])
        timeline = []
        for window in _plain(list(self.timeline)):
            missing = [k for k in TIMELINE_KEYS if k not in window]
            if missing:
                raise ValueError(f"{self.key}: timeline window lacks {missing}")
            entry = {k: (window[k] if k == "quadrant" else float(window[k])) for k in TIMELINE_KEYS}
            if entry["quadrant"] not in QUADRANTS:
                raise ValueError(f"{self.key}: timeline quadrant must be one of {QUADRANTS}, got {entry['quadrant']!r}")
            timeline.append(entry)
        fix("timeline", timeline)

    def row(self, *, run_id: int, model_version: str, now: datetime) -> dict[str, Any]:
        """The ``labels`` row."""
        attn = branch_attention(self.attention)
        p_q1, p_q2, p_q3, p_q4 = self.quadrant_probs
        return {
            "item_key": self.key,
            "model_version": model_version,
            "run_id": run_id,
            "object_version": self.object_version,
            "quadrant": self.quadrant,
            "p_q1": p_q1,
            "p_q2": p_q2,
            "p_q3": p_q3,
            "p_q4": p_q4,
            "arousal_prob": self.arousal_prob,
            "valence_prob": self.valence_prob,
            "branches_used": self.branches_used,
            "attn_symbolic": attn["symbolic"] if attn else None,
            "attn_harmony": attn["harmony"] if attn else None,
            "attn_tone": attn["tone"] if attn else None,
            "attention": self.attention if attn else None,
            "n_windows": len(self.timeline),
            "timeline": self.timeline,
            "problems": self.problems,
            "tagged_at": now,
        }


@dataclass(frozen=True)
class FailureRecord:
    """Why an item (or an object that made no item) could not be tagged in a run.

    - ``key``: the item key, or for a listing reject the object key.
    - ``object_version``: the version that failed (None if unknown).
    - ``stage``: where it failed: ``list``, ``read``, ``features``, ``inference`` or ``write`` (the metrics stages).
    - ``reason``: words a user can act on (``BadInputError.reason``).
    - ``modalities``: the item's modalities when the failure concerns a listed item — the item then gets an
      ``items`` row (duration NULL); None for listing rejects, which are objects rather than items.
    """

    key: str
    object_version: str | None
    stage: str
    reason: str
    modalities: str | Sequence[str] | None = None

    def __post_init__(self) -> None:
        if not self.key or not isinstance(self.key, str):
            raise ValueError(f"failure key must be a non-empty string, got {self.key!r}")
        if not self.stage or not self.reason:
            raise ValueError(f"{self.key}: a failure needs a stage and a reason")
        if self.object_version is not None:
            object.__setattr__(self, "object_version", str(self.object_version))
        if self.modalities is not None:
            object.__setattr__(self, "modalities", _names(self.modalities, MODALITIES, "modalities"))


# --- engine and migrations -----------------------------------------------------------------------------------------


def catalog_url(url_or_path: str | os.PathLike[str]) -> str:
    """A SQLAlchemy URL: URLs pass through; a plain path means a SQLite file there."""
    text = os.fspath(url_or_path)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().absolute()}"


def create_catalog_engine(url_or_path: str | os.PathLike[str]) -> Engine:
    """An engine for the catalog. SQLite: creates the file's folder, enforces foreign keys, WAL journal (analysts
    can read while the job writes) and waits up to 30 s for a lock instead of failing."""
    url = sa.make_url(catalog_url(url_or_path))
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config

    # Built in code: works from an installed package and any working directory, and keeps the URL (with any
    # password) out of alembic's config.
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def upgrade_catalog(url_or_path: str | os.PathLike[str] | Engine, revision: str = "head") -> None:
    """Create or upgrade the catalog schema to ``revision`` (idempotent)."""
    _migrate(url_or_path, "upgrade", revision)


def downgrade_catalog(url_or_path: str | os.PathLike[str] | Engine, revision: str = "base") -> None:
    """Downgrade the schema to ``revision`` (``"base"`` drops every catalog table and view)."""
    _migrate(url_or_path, "downgrade", revision)


def catalog_revision(url_or_path: str | os.PathLike[str] | Engine) -> str | None:
    """The schema revision the database is at (None: no catalog yet)."""
    from alembic.runtime.migration import MigrationContext

    engine = url_or_path if isinstance(url_or_path, Engine) else create_catalog_engine(url_or_path)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
    finally:
        if engine is not url_or_path:
            engine.dispose()


def _migrate(url_or_path: str | os.PathLike[str] | Engine, direction: str, revision: str) -> None:
    from alembic import command

    engine = url_or_path if isinstance(url_or_path, Engine) else create_catalog_engine(url_or_path)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Jobs starting together on an empty database would both create the tables and one would fail:
                # the lock (released at commit) makes the second wait and then find the schema up to date.
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            getattr(command, direction)(_alembic_config(connection), revision)
    finally:
        if engine is not url_or_path:
            engine.dispose()


# --- writer --------------------------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _chunks(values: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    # Bounded IN lists: SQLite caps bound parameters per statement.
    for start in range(0, len(values), size):
        yield values[start : start + size]


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

    def start_run(self, model_version: str, *, abandoned_after: timedelta = ABANDONED_AFTER) -> int:
        """Record a new run (status ``running``) and return its id.

        Runs still ``running`` that started more than ``abandoned_after`` ago were killed (a nightly run takes
        hours, not a day): they are closed as ``failed`` here, so the ``runs`` table does not show them running
        forever. Their ``finished_at`` stays NULL: when they stopped is not known.
        """
        if not model_version:
            raise ValueError("start_run needs a model version")
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(
                runs_table.update()
                .where(runs_table.c.status == "running", runs_table.c.started_at < now - abandoned_after)
                .values(status="failed")
            )
            result = conn.execute(
                runs_table.insert().values(model_version=model_version, started_at=now, status="running")
            )
            return int(result.inserted_primary_key[0])

    def finish_run(self, run_id: int, *, status: str = "succeeded", counts: Mapping[str, int] | None = None) -> None:
        """Close a run: ``status`` is ``succeeded`` or ``failed``; ``counts`` any of listed/tagged/skipped/failed."""
        if status not in RUN_STATUSES or status == "running":
            raise ValueError(f"finish status must be 'succeeded' or 'failed', got {status!r}")
        counts = dict(counts or {})
        unknown = sorted(set(counts) - set(RUN_COUNTS))
        if unknown:
            raise ValueError(f"unknown run counts {unknown}; expected some of {RUN_COUNTS}")
        with self.engine.begin() as conn:
            result = conn.execute(
                runs_table.update()
                .where(runs_table.c.id == run_id)
                .values(finished_at=_now(), status=status, **{k: int(v) for k, v in counts.items()})
            )
            if result.rowcount != 1:
                raise ValueError(f"no run with id {run_id}")

    def tagged_versions(self, model_version: str) -> dict[str, str]:
        """``{item key: object version}`` of every item labelled by ``model_version`` — the tagger skips an item
        whose current ``Item.version`` equals the stored one."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(labels_table.c.item_key, labels_table.c.object_version).where(labels_table.c.model_version == model_version)
            )
            return {key: version for key, version in rows}

    def failed_versions(self, model_version: str) -> dict[str, str | None]:
        """``{key: object version}`` of open failures (not superseded) under ``model_version``: lets a nightly run
        skip items known to be broken at the same version, if the job chooses to."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(failures_table.c.item_key, failures_table.c.object_version)
                .join(runs_table, runs_table.c.id == failures_table.c.run_id)
                .where(runs_table.c.model_version == model_version, failures_table.c.superseded_by_run.is_(None))
                .order_by(failures_table.c.run_id)
            )
            return {key: version for key, version in rows}

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
            model_version = conn.execute(sa.select(runs_table.c.model_version).where(runs_table.c.id == run_id)).scalar_one_or_none()
            if model_version is None:
                raise ValueError(f"no run with id {run_id}")
            labelled = {record.key for record in labels}
            item_rows = [
                {"key": r.key, "object_version": r.object_version, "duration_s": r.duration_s,
                 "modalities": r.modalities, "first_seen": now, "last_seen": now}
                for r in labels
            ]
            # A failed item's duration is unknown; keep the stored one only if the objects did not change.
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

    def _upsert_items(self, conn: Connection, rows: list[dict[str, Any]], *, keep_duration: bool) -> None:
        if not rows:
            return
        stmt = self._insert(items_table)
        duration = (
            sa.case((items_table.c.object_version == stmt.excluded.object_version, items_table.c.duration_s), else_=None)
            if keep_duration
            else stmt.excluded.duration_s
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["key"],
                set_={"object_version": stmt.excluded.object_version, "duration_s": duration,
                      "modalities": stmt.excluded.modalities, "last_seen": stmt.excluded.last_seen},
            ),
            rows,
        )

    @staticmethod
    def _supersede(conn: Connection, run_id: int, model_version: str, keys: Sequence[str], *, same_run: bool) -> None:
        """Mark the open failures of ``keys`` under ``model_version`` as superseded by ``run_id``: from earlier
        runs only (a new failure), or from this run too (a label)."""
        same_version_runs = sa.select(runs_table.c.id).where(runs_table.c.model_version == model_version)
        for chunk in _chunks(keys):
            condition = sa.and_(
                failures_table.c.item_key.in_(chunk),
                failures_table.c.superseded_by_run.is_(None),
                failures_table.c.run_id.in_(same_version_runs),
                failures_table.c.run_id <= run_id,
            )
            if not same_run:
                condition = sa.and_(condition, failures_table.c.run_id < run_id)
            conn.execute(failures_table.update().where(condition).values(superseded_by_run=run_id))
