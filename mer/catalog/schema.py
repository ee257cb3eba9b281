"""The catalog's schema — tables ``items``, ``runs``, ``labels``, ``failures`` — and how a database gets it.

A SQLite file is the embedded default (``sqlite:///path/catalog.db``, or just a path); PostgreSQL by URL
(``postgresql+psycopg://user@host/db``). The schema is created and upgraded by the Alembic migrations in
``mer/catalog/migrations`` (:func:`upgrade_catalog`); :data:`metadata` mirrors the head revision for the writer's
statements (a test checks the two agree). The migration is written out in full on purpose: it is a frozen record
of one schema step, while :data:`metadata` follows the head.

Tables (see the migration for every column):

- ``items``: one row per item key (object key without extension): object version and modalities as last listed,
  duration, ``last_seen`` (refreshed by every listing that finds it) and ``deleted_at`` (set when a complete
  listing no longer finds it, cleared when it comes back).
- ``runs``: one row per tagging run: model version, start/finish, status, counts, ``heartbeat_at`` (stamped every
  heartbeat, 30 s by default, while the run lives; a ``running`` run whose heartbeat is older than a few minutes
  was killed and the next run closes it as ``failed``).
- ``labels``: one *current* label per (item, model version); a re-tag overwrites it in place. ``arousal_prob`` and
  ``valence_prob`` are implied by the quadrant probabilities (p_q1 + p_q2, p_q1 + p_q4; a CHECK holds them to it);
  the separate binary V/A head's outputs are ``va_head_arousal_prob``/``va_head_valence_prob``. ``partial``: made
  from one modality because the other could not be *read*; retried by the next run.
- ``failures``: what went wrong, per (item, run, stage). A failure stays as history, but once a later run of the
  same model version tags the item (or fails it again) ``superseded_by_run`` points at that run, so the open
  problems are the rows where it is NULL (view ``open_failures``). A failure never deletes an earlier good label:
  the label stays with its older ``object_version`` (``latest_labels.stale`` is then true) and the next run
  retries the item. A listing reject is recorded once per object version, and superseded by the first complete
  listing that no longer rejects it.
- view ``latest_labels``: each existing (not deleted) item's most recently written label, with its duration and
  modalities; ``open_failures``: the open failures, less those of deleted items; ``label_changes``: items whose
  quadrant differs between two model versions, with the probability each gave its quadrant.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Our own version table name, so the catalog can live in a database shared with other Alembic-managed apps.
VERSION_TABLE = "mer_alembic_version"
HEAD_REVISION = "0004"
MIGRATION_LOCK_KEY = 0x6D6572  # "mer": the PostgreSQL advisory lock that serialises schema migrations
MODALITIES: tuple[str, ...] = ("midi", "audio")
RUN_STATUSES: tuple[str, ...] = ("running", "succeeded", "failed")
RUN_COUNTS: tuple[str, ...] = ("listed", "tagged", "skipped", "failed")
INFERENCE_KINDS: tuple[str, ...] = ("float32", "int8")
"""How a run's model computed its labels (``runs.inference``): float32, or int8 weights in the Bi-GRU and linear
layers on CPU actors (mer.model.quantization)."""
INFERENCE_COMMENT = ("'int8' when the run's CPU actors ran the Bi-GRU and linear layers with int8 weights "
                     "(probabilities within about 0.05 of float32), 'float32' otherwise (GPUs, --no-int8); NULL "
                     "for runs that ran no model or came before revision 0004")
TIMELINE_KEYS: tuple[str, ...] = ("start_s", "quadrant", "p_q1", "p_q2", "p_q3", "p_q4", "arousal_prob", "valence_prob")
"""Keys of every window in ``labels.timeline``; ``arousal_prob``/``valence_prob`` as for the label (from the window's
quadrant probabilities)."""
TIMELINE_HEAD_KEYS: tuple[str, ...] = ("va_head_arousal_prob", "va_head_valence_prob")
"""Keys a timeline window has besides :data:`TIMELINE_KEYS` when the label keeps the binary V/A head's outputs."""
AV_TOLERANCE = 1e-6
"""How far a stored arousal/valence probability may be from the sum of its quadrant probabilities (float rounding)."""

# Column comments the head migration writes too (PostgreSQL keeps them; analysts see them in \d+ and in Grafana).
AROUSAL_COMMENT = "P(high arousal) = p_q1 + p_q2: implied by the quadrant probabilities, never the binary head's"
VALENCE_COMMENT = "P(positive valence) = p_q1 + p_q4: implied by the quadrant probabilities, never the binary head's"
HEAD_AROUSAL_COMMENT = ("the separate binary arousal head's P(high arousal), mean over windows: may disagree with "
                        "arousal_prob; NULL when not kept")
HEAD_VALENCE_COMMENT = ("the separate binary valence head's P(positive valence), mean over windows: may disagree "
                        "with valence_prob; NULL when not kept")
PARTIAL_COMMENT = ("made from one modality because the other could not be read (a store or network error, not "
                   "its content): provisional, retried by the next run")
SUPERSEDED_COMMENT = ("a later run of the same model version that tagged the item or failed it again; for a listing "
                      "reject, the first complete listing that no longer rejects the object")

# --- schema (mirrors the head migration) ---------------------------------------------------------------------------

metadata = sa.MetaData()
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)

items_table = sa.Table(
    "items",
    metadata,
    sa.Column("key", sa.Text(), primary_key=True, comment="object key without extension, relative to the store"),
    sa.Column("object_version", sa.Text(), nullable=False,
              comment="ETags or size-mtime of the item's objects, as last listed (or tagged)"),
    sa.Column("duration_s", sa.Float(), nullable=True,
              comment="seconds; NULL until the item was tagged, and again when its objects change"),
    sa.Column("modalities", sa.Text(), nullable=False, comment="'midi', 'audio' or 'midi,audio'"),
    sa.Column("first_seen", _TIMESTAMP, nullable=False),
    sa.Column("last_seen", _TIMESTAMP, nullable=False, comment="the last listing (or write) that found the item"),
    sa.Column("deleted_at", _TIMESTAMP, nullable=True,
              comment="when a complete listing first missed the item; NULL while it exists (cleared if it returns)"),
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
    sa.Column("heartbeat_at", _TIMESTAMP, nullable=True,
              comment="stamped every heartbeat (30 s by default) while the run lives; a 'running' run whose "
                      "heartbeat is minutes old was killed, and the next run closes it as failed"),
    sa.Column("inference", sa.Text(), nullable=True, comment=INFERENCE_COMMENT),
    sa.CheckConstraint("status IN ('running', 'succeeded', 'failed')", name="ck_runs_status"),
)

labels_table = sa.Table(
    "labels",
    metadata,
    sa.Column("item_key", sa.Text(), sa.ForeignKey("items.key", name="fk_labels_item"), nullable=False),
    sa.Column("model_version", sa.Text(), nullable=False),
    sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", name="fk_labels_run"), nullable=False),
    sa.Column("object_version", sa.Text(), nullable=False,
              comment="items.object_version of the objects the label was made from (partial labels too)"),
    sa.Column("quadrant", sa.Text(), nullable=False),
    sa.Column("p_q1", sa.Float(), nullable=False),
    sa.Column("p_q2", sa.Float(), nullable=False),
    sa.Column("p_q3", sa.Float(), nullable=False),
    sa.Column("p_q4", sa.Float(), nullable=False),
    sa.Column("arousal_prob", sa.Float(), nullable=False, comment=AROUSAL_COMMENT),
    sa.Column("valence_prob", sa.Float(), nullable=False, comment=VALENCE_COMMENT),
    sa.Column("va_head_arousal_prob", sa.Float(), nullable=True, comment=HEAD_AROUSAL_COMMENT),
    sa.Column("va_head_valence_prob", sa.Float(), nullable=True, comment=HEAD_VALENCE_COMMENT),
    sa.Column("partial", sa.Boolean(), nullable=False, server_default=sa.false(), comment=PARTIAL_COMMENT),
    sa.Column("branches_used", sa.Text(), nullable=False, comment="e.g. 'symbolic,harmony,tone'"),
    sa.Column("attn_symbolic", sa.Float(), nullable=True, comment="mean attention the branch receives"),
    sa.Column("attn_harmony", sa.Float(), nullable=True),
    sa.Column("attn_tone", sa.Float(), nullable=True),
    sa.Column("attention", _JSON, nullable=True, comment="[head][query branch][key branch]"),
    sa.Column("n_windows", sa.Integer(), nullable=False),
    sa.Column("timeline", _JSON, nullable=False, comment="per-window labels"),
    sa.Column("problems", sa.Text(), nullable=True),
    sa.Column("tagged_at", _TIMESTAMP, nullable=False),
    sa.Column("key", sa.Text(), nullable=True,
              comment="estimated key's tonic (C, C#, D, Eb, E, F, F#, G, Ab, A, Bb, B); "
                      "Krumhansl-Kessler over the piece's pitch classes"),
    sa.Column("mode", sa.Text(), nullable=True, comment="'major' or 'minor'"),
    sa.Column("key_confidence", sa.Float(), nullable=True,
              comment="the best key's correlation minus the runner-up's (0: a tie)"),
    sa.PrimaryKeyConstraint("item_key", "model_version", name="pk_labels"),
    sa.CheckConstraint("quadrant IN ('Q1', 'Q2', 'Q3', 'Q4')", name="ck_labels_quadrant"),
    sa.CheckConstraint(f"ABS(arousal_prob - (p_q1 + p_q2)) <= {AV_TOLERANCE}", name="ck_labels_arousal_from_quadrants"),
    sa.CheckConstraint(f"ABS(valence_prob - (p_q1 + p_q4)) <= {AV_TOLERANCE}", name="ck_labels_valence_from_quadrants"),
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
        comment=SUPERSEDED_COMMENT,
    ),
    sa.UniqueConstraint("item_key", "run_id", "stage", name="uq_failures_item_run_stage"),
    sa.Index("ix_failures_run_id", "run_id"),
    sa.Index("ix_failures_item_key", "item_key"),
)

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
