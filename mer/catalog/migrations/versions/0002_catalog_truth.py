"""Catalog truth: deleted items, run heartbeats, partial labels, arousal/valence implied by the quadrants, and the
view label_changes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

- ``items.deleted_at``: set when a complete listing misses the item; ``latest_labels`` and ``open_failures``
  leave such items out (``labels`` and ``failures`` keep their history).
- ``runs.heartbeat_at``: stamped while a run lives; existing runs get their finish (or start) time.
- ``labels.partial``: a label made from one modality because the other could not be read. Before, such a label
  was stored with ``object_version = ''``: those become ``partial`` (their version stays unknown).
- ``labels.arousal_prob`` / ``valence_prob`` become p_q1 + p_q2 / p_q1 + p_q4 (CHECKed from now on), in each
  timeline window too; what they held — the separate binary head's outputs — moves to ``va_head_arousal_prob`` /
  ``va_head_valence_prob`` (and the windows' keys of the same names).
- Views: ``latest_labels`` (plus ``partial``, the head's columns and ``last_seen``; deleted items out),
  ``open_failures`` (failures of deleted items out), ``label_changes`` (new).

Written out in full (see 0001). Downgrade puts the head's outputs back under the old names and marks partial
labels with ``object_version = ''`` again, as revision 0001's tagger expects.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
AV_TOLERANCE = 1e-6  # float rounding allowed between a stored arousal/valence probability and its quadrant sum
HEAD_KEYS = {"arousal_prob": "va_head_arousal_prob", "valence_prob": "va_head_valence_prob"}

# Lightweight table for the data steps (the migration must not import the package's current schema).
labels = sa.table(
    "labels",
    sa.column("item_key", sa.Text()), sa.column("model_version", sa.Text()), sa.column("object_version", sa.Text()),
    sa.column("p_q1", sa.Float()), sa.column("p_q2", sa.Float()), sa.column("p_q4", sa.Float()),
    sa.column("arousal_prob", sa.Float()), sa.column("valence_prob", sa.Float()),
    sa.column("va_head_arousal_prob", sa.Float()), sa.column("va_head_valence_prob", sa.Float()),
    sa.column("partial", sa.Boolean()), sa.column("timeline", JSON),
)
runs = sa.table("runs", sa.column("started_at", TIMESTAMP), sa.column("finished_at", TIMESTAMP),
                sa.column("heartbeat_at", TIMESTAMP))

# (table, column, type, nullable, comment at this revision, comment before it): comments PostgreSQL keeps.
COMMENTS = (
    ("items", "object_version", sa.Text(), False, "ETags or size-mtime of the item's objects, as last listed (or tagged)",
     "ETags or size-mtime of the item's objects"),
    ("items", "duration_s", sa.Float(), True,
     "seconds; NULL until the item was tagged, and again when its objects change",
     "seconds; NULL until the item was tagged"),
    ("items", "last_seen", TIMESTAMP, False, "the last listing (or write) that found the item", None),
    ("labels", "object_version", sa.Text(), False,
     "items.object_version of the objects the label was made from (partial labels too)",
     "items.object_version when tagged"),
    ("labels", "arousal_prob", sa.Float(), False,
     "P(high arousal) = p_q1 + p_q2: implied by the quadrant probabilities, never the binary head's",
     "P(high arousal)"),
    ("labels", "valence_prob", sa.Float(), False,
     "P(positive valence) = p_q1 + p_q4: implied by the quadrant probabilities, never the binary head's",
     "P(positive valence)"),
    ("failures", "superseded_by_run", sa.Integer(), True,
     "a later run of the same model version that tagged the item or failed it again; for a listing reject, the "
     "first complete listing that no longer rejects the object",
     "a later run of the same model version that tagged the item or failed it again"),
)

LABEL_COLUMNS = (
    "item_key", "model_version", "run_id", "object_version", "quadrant", "p_q1", "p_q2", "p_q3", "p_q4",
    "arousal_prob", "valence_prob", "va_head_arousal_prob", "va_head_valence_prob", "partial", "branches_used",
    "attn_symbolic", "attn_harmony", "attn_tone", "attention", "n_windows", "timeline", "problems", "tagged_at",
)


def _quadrant_prob(alias: str) -> str:
    """SQL: the probability the label ``alias`` gives its own quadrant."""
    return (f"CASE {alias}.quadrant WHEN 'Q1' THEN {alias}.p_q1 WHEN 'Q2' THEN {alias}.p_q2 "
            f"WHEN 'Q3' THEN {alias}.p_q3 ELSE {alias}.p_q4 END")


# One row per existing item: its most recently written label (whatever the model version), with the item's facts.
LATEST_LABELS = f"""
CREATE VIEW latest_labels AS
SELECT {", ".join(f"ranked.{name}" for name in LABEL_COLUMNS)},
       items.duration_s, items.modalities, items.last_seen,
       ranked.object_version <> items.object_version AS stale
FROM (
    SELECT {", ".join(LABEL_COLUMNS)},
           ROW_NUMBER() OVER (PARTITION BY item_key ORDER BY tagged_at DESC, run_id DESC) AS rn
    FROM labels
) AS ranked
JOIN items ON items.key = ranked.item_key
WHERE ranked.rn = 1 AND items.deleted_at IS NULL
"""

# Failures not yet fixed by a later run of the same model version, less those of items deleted since. Listing
# rejects are objects, not items: they have no items row and stay.
OPEN_FAILURES = """
CREATE VIEW open_failures AS
SELECT failures.item_key, runs.model_version, failures.run_id, failures.object_version, failures.stage,
       failures.reason, failures.at
FROM failures
JOIN runs ON runs.id = failures.run_id
LEFT JOIN items ON items.key = failures.item_key
WHERE failures.superseded_by_run IS NULL AND items.deleted_at IS NULL
"""

# Every existing item whose current labels from two model versions disagree on the quadrant, once per ordered pair
# of versions (pick one with from_version / to_version), with the probability each version gave its quadrant.
LABEL_CHANGES = f"""
CREATE VIEW label_changes AS
SELECT a.item_key, a.model_version AS from_version, b.model_version AS to_version,
       a.quadrant AS from_quadrant, {_quadrant_prob("a")} AS from_prob,
       b.quadrant AS to_quadrant, {_quadrant_prob("b")} AS to_prob,
       a.object_version = b.object_version AS same_objects, a.partial AS from_partial, b.partial AS to_partial,
       a.tagged_at AS from_tagged_at, b.tagged_at AS to_tagged_at
FROM labels AS a
JOIN labels AS b ON b.item_key = a.item_key AND b.model_version <> a.model_version
JOIN items ON items.key = a.item_key
WHERE a.quadrant <> b.quadrant AND items.deleted_at IS NULL
"""


def _postgresql() -> bool:
    return op.get_context().dialect.name == "postgresql"


def _drop_views() -> None:
    for view in ("label_changes", "open_failures", "latest_labels"):
        op.execute(f"DROP VIEW IF EXISTS {view}")


def _comment(*, upgrade: bool) -> None:
    # Only PostgreSQL stores comments; on SQLite an ALTER would copy whole tables for nothing.
    if not _postgresql():
        return
    for table, column, type_, nullable, new, old in COMMENTS:
        op.alter_column(table, column, existing_type=type_, existing_nullable=nullable,
                        comment=new if upgrade else old, existing_comment=old if upgrade else new)


def _rewrite_timelines(window: Callable[[dict[str, Any]], dict[str, Any]], chunk: int = 1000) -> None:
    """Apply ``window`` to every window of every label's timeline, a chunk of labels per round trip."""
    bind = op.get_bind()
    after: tuple[str, str] | None = None
    while True:
        query = sa.select(labels.c.item_key, labels.c.model_version, labels.c.timeline)
        if after is not None:
            query = query.where(sa.tuple_(labels.c.item_key, labels.c.model_version) > sa.tuple_(*after))
        rows = bind.execute(query.order_by(labels.c.item_key, labels.c.model_version).limit(chunk)).all()
        if not rows:
            return
        for key, version, timeline in rows:
            bind.execute(labels.update()
                         .where(labels.c.item_key == key, labels.c.model_version == version)
                         .values(timeline=[window(dict(w)) for w in timeline or []]))
        after = (rows[-1][0], rows[-1][1])


def _derived_window(window: dict[str, Any]) -> dict[str, Any]:
    """A 0001 timeline window → 0002: the head's values under their own names, arousal/valence from the quadrants."""
    for name, head in HEAD_KEYS.items():
        if name in window:
            window[head] = window[name]
    window["arousal_prob"] = min(1.0, max(0.0, float(window["p_q1"]) + float(window["p_q2"])))
    window["valence_prob"] = min(1.0, max(0.0, float(window["p_q1"]) + float(window["p_q4"])))
    return window


def _head_window(window: dict[str, Any]) -> dict[str, Any]:
    """A 0002 timeline window → 0001: the head's values back under arousal_prob / valence_prob."""
    for name, head in HEAD_KEYS.items():
        if head in window:
            window[name] = window.pop(head)
    return window


def upgrade() -> None:
    _drop_views()  # SQLite's table copy (batch mode, below) cannot run under views that name the table

    op.add_column("items", sa.Column("deleted_at", TIMESTAMP, nullable=True,
                                     comment="when a complete listing first missed the item; NULL while it exists "
                                             "(cleared if it returns)"))
    # Nullable: SQLite cannot add a NOT NULL column without a constant default, and copying runs (which labels and
    # failures reference) is refused while foreign keys are enforced. Every run since this revision sets it.
    op.add_column("runs", sa.Column("heartbeat_at", TIMESTAMP, nullable=True,
                                    comment="stamped every heartbeat (30 s by default) while the run lives; a "
                                            "'running' run whose heartbeat is minutes old was killed, and the next "
                                            "run closes it as failed"))
    op.execute(runs.update().values(heartbeat_at=sa.func.coalesce(runs.c.finished_at, runs.c.started_at)))

    op.add_column("labels", sa.Column("va_head_arousal_prob", sa.Float(), nullable=True,
                                      comment="the separate binary arousal head's P(high arousal), mean over windows: "
                                              "may disagree with arousal_prob; NULL when not kept"))
    op.add_column("labels", sa.Column("va_head_valence_prob", sa.Float(), nullable=True,
                                      comment="the separate binary valence head's P(positive valence), mean over "
                                              "windows: may disagree with valence_prob; NULL when not kept"))
    op.add_column("labels", sa.Column("partial", sa.Boolean(), nullable=False, server_default=sa.false(),
                                      comment="made from one modality because the other could not be read (a store "
                                              "or network error, not its content): provisional, retried by the next "
                                              "run"))
    op.execute(labels.update().values(
        va_head_arousal_prob=labels.c.arousal_prob, va_head_valence_prob=labels.c.valence_prob,
        arousal_prob=labels.c.p_q1 + labels.c.p_q2, valence_prob=labels.c.p_q1 + labels.c.p_q4,
        partial=labels.c.object_version == "",
    ))
    _rewrite_timelines(_derived_window)
    with op.batch_alter_table("labels") as batch:
        batch.create_check_constraint("ck_labels_arousal_from_quadrants",
                                      f"ABS(arousal_prob - (p_q1 + p_q2)) <= {AV_TOLERANCE}")
        batch.create_check_constraint("ck_labels_valence_from_quadrants",
                                      f"ABS(valence_prob - (p_q1 + p_q4)) <= {AV_TOLERANCE}")
    _comment(upgrade=True)

    op.execute(LATEST_LABELS)
    op.execute(OPEN_FAILURES)
    op.execute(LABEL_CHANGES)


def downgrade() -> None:
    _drop_views()
    _comment(upgrade=False)
    with op.batch_alter_table("labels") as batch:
        batch.drop_constraint("ck_labels_valence_from_quadrants", type_="check")
        batch.drop_constraint("ck_labels_arousal_from_quadrants", type_="check")
    op.execute(labels.update().values(
        arousal_prob=sa.func.coalesce(labels.c.va_head_arousal_prob, labels.c.arousal_prob),
        valence_prob=sa.func.coalesce(labels.c.va_head_valence_prob, labels.c.valence_prob),
    ))
    op.execute(labels.update().where(labels.c.partial).values(object_version=""))
    _rewrite_timelines(_head_window)
    # Plain DROP COLUMN (SQLite >= 3.35 has it): batch mode would copy runs and items, which other tables reference.
    for table, column in (("labels", "partial"), ("labels", "va_head_valence_prob"),
                          ("labels", "va_head_arousal_prob"), ("runs", "heartbeat_at"), ("items", "deleted_at")):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    context.script.get_revision(down_revision).module.create_views()
