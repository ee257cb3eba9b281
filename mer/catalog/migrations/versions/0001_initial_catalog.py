"""Initial catalog: items, runs, labels, failures and the analysts' views latest_labels, open_failures.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Written out in full rather than built from ``mer.catalog.schema.metadata``: a migration is a frozen record of one
schema step and must not change when the package's table definitions move on.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on PostgreSQL (analysts can index and query into it), JSON text elsewhere.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)

LABEL_COLUMNS = (
    "item_key, model_version, run_id, object_version, quadrant, p_q1, p_q2, p_q3, p_q4, arousal_prob, "
    "valence_prob, branches_used, attn_symbolic, attn_harmony, attn_tone, attention, n_windows, timeline, "
    "problems, tagged_at"
)


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("key", sa.Text(), primary_key=True, comment="object key without extension, relative to the store"),
        sa.Column("object_version", sa.Text(), nullable=False, comment="ETags or size-mtime of the item's objects"),
        sa.Column("duration_s", sa.Float(), nullable=True, comment="seconds; NULL until the item was tagged"),
        sa.Column("modalities", sa.Text(), nullable=False, comment="'midi', 'audio' or 'midi,audio'"),
        sa.Column("first_seen", TIMESTAMP, nullable=False),
        sa.Column("last_seen", TIMESTAMP, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model_version", sa.Text(), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True, comment="NULL while running, or if the job was killed"),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("listed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("tagged", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("skipped", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
        sa.CheckConstraint("status IN ('running', 'succeeded', 'failed')", name="ck_runs_status"),
    )
    op.create_table(
        "labels",
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
        sa.Column("attention", JSON, nullable=True, comment="[head][query branch][key branch]"),
        sa.Column("n_windows", sa.Integer(), nullable=False),
        sa.Column("timeline", JSON, nullable=False, comment="per-window labels"),
        sa.Column("problems", sa.Text(), nullable=True),
        sa.Column("tagged_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("item_key", "model_version", name="pk_labels"),
        sa.CheckConstraint("quadrant IN ('Q1', 'Q2', 'Q3', 'Q4')", name="ck_labels_quadrant"),
    )
    op.create_index("ix_labels_run_id", "labels", ["run_id"])
    op.create_index("ix_labels_model_version_quadrant", "labels", ["model_version", "quadrant"])
    op.create_table(
        "failures",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("item_key", sa.Text(), nullable=False, comment="item key, or the object key if it made no item"),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", name="fk_failures_run"), nullable=False),
        sa.Column("object_version", sa.Text(), nullable=True),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column(
            "superseded_by_run",
            sa.Integer(),
            sa.ForeignKey("runs.id", name="fk_failures_superseded_by_run"),
            nullable=True,
            comment="a later run of the same model version that tagged the item or failed it again",
        ),
        sa.UniqueConstraint("item_key", "run_id", "stage", name="uq_failures_item_run_stage"),
    )
    op.create_index("ix_failures_run_id", "failures", ["run_id"])
    op.create_index("ix_failures_item_key", "failures", ["item_key"])
    create_views()


def create_views() -> None:
    """This revision's views (also what a downgrade from 0002 restores)."""
    # One row per item: its most recently written label (whatever the model version), with the item's facts.
    op.execute(
        f"""
        CREATE VIEW latest_labels AS
        SELECT ranked.item_key, ranked.model_version, ranked.run_id, ranked.object_version, ranked.quadrant,
               ranked.p_q1, ranked.p_q2, ranked.p_q3, ranked.p_q4, ranked.arousal_prob, ranked.valence_prob,
               ranked.branches_used, ranked.attn_symbolic, ranked.attn_harmony, ranked.attn_tone,
               ranked.attention, ranked.n_windows, ranked.timeline, ranked.problems, ranked.tagged_at,
               items.duration_s, items.modalities,
               ranked.object_version <> items.object_version AS stale
        FROM (
            SELECT {LABEL_COLUMNS},
                   ROW_NUMBER() OVER (PARTITION BY item_key ORDER BY tagged_at DESC, run_id DESC) AS rn
            FROM labels
        ) AS ranked
        JOIN items ON items.key = ranked.item_key
        WHERE ranked.rn = 1
        """
    )
    # Failures not yet fixed by a later run of the same model version.
    op.execute(
        """
        CREATE VIEW open_failures AS
        SELECT failures.item_key, runs.model_version, failures.run_id, failures.object_version, failures.stage,
               failures.reason, failures.at
        FROM failures
        JOIN runs ON runs.id = failures.run_id
        WHERE failures.superseded_by_run IS NULL
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS open_failures")
    op.execute("DROP VIEW IF EXISTS latest_labels")
    op.drop_table("failures")
    op.drop_table("labels")
    op.drop_table("runs")
    op.drop_table("items")
