"""Key and mode of every label: the piece's estimated key (Krumhansl–Kessler), its mode and the confidence.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

- ``labels.key`` (the tonic, e.g. ``'F#'``), ``labels.mode`` (``'major'`` | ``'minor'``), ``labels.key_confidence``
  (the best key's correlation margin over the runner-up, 0..2): from the duration-weighted pitch-class histogram
  of the piece's MIDI notes, else of its chromagram (mer.features.key). NULL for labels written before.
- ``latest_labels`` shows them; ``open_failures`` and ``label_changes`` are recreated unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY_COLUMNS = ("key", "mode", "key_confidence")


def _previous():
    return context.script.get_revision(down_revision).module


def _drop_views() -> None:
    for view in ("label_changes", "open_failures", "latest_labels"):
        op.execute(f"DROP VIEW IF EXISTS {view}")


def _create_views(label_columns: Sequence[str]) -> None:
    previous = _previous()
    latest = previous.LATEST_LABELS.replace(
        ", ".join(f"ranked.{name}" for name in previous.LABEL_COLUMNS),
        ", ".join(f"ranked.{name}" for name in label_columns),
    ).replace(", ".join(previous.LABEL_COLUMNS) + ",", ", ".join(label_columns) + ",")
    op.execute(latest)
    op.execute(previous.OPEN_FAILURES)
    op.execute(previous.LABEL_CHANGES)


def upgrade() -> None:
    _drop_views()
    op.add_column("labels", sa.Column("key", sa.Text(), nullable=True,
                                      comment="estimated key's tonic (C, C#, D, Eb, E, F, F#, G, Ab, A, Bb, B); "
                                              "Krumhansl-Kessler over the piece's pitch classes"))
    op.add_column("labels", sa.Column("mode", sa.Text(), nullable=True, comment="'major' or 'minor'"))
    op.add_column("labels", sa.Column("key_confidence", sa.Float(), nullable=True,
                                      comment="the best key's correlation minus the runner-up's (0: a tie)"))
    _create_views((*_previous().LABEL_COLUMNS, *KEY_COLUMNS))


def downgrade() -> None:
    _drop_views()
    for column in reversed(KEY_COLUMNS):  # plain DROP COLUMN (SQLite >= 3.35), as 0002's downgrade
        op.execute(f"ALTER TABLE labels DROP COLUMN {column}")
    _create_views(_previous().LABEL_COLUMNS)
