"""How each run computed its labels: ``runs.inference`` ('float32' or 'int8').

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

CPU inference actors run the Bi-GRU and linear layers with int8 weights by default (mer.model.quantization):
probabilities within about 0.05 of float32, and a label can differ at a near-tie. Analysts comparing two runs of
one model version see here which ran how. NULL for runs before this revision and for runs that ran no model.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INFERENCE_COMMENT = ("'int8' when the run's CPU actors ran the Bi-GRU and linear layers with int8 weights "
                     "(probabilities within about 0.05 of float32), 'float32' otherwise (GPUs, --no-int8); NULL "
                     "for runs that ran no model or came before revision 0004")  # as mer.catalog.schema's, frozen


def upgrade() -> None:
    op.add_column("runs", sa.Column("inference", sa.Text(), nullable=True, comment=INFERENCE_COMMENT))


def downgrade() -> None:
    op.execute("ALTER TABLE runs DROP COLUMN inference")  # plain DROP COLUMN (SQLite >= 3.35), as 0002's downgrade
