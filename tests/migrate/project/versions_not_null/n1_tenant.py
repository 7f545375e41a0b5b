"""A NOT NULL column without a default on a table with rows: fails on real data."""

import sqlalchemy as sa
from alembic import op

revision = "n1"
down_revision = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("tenant", sa.BigInteger(), nullable=False))


def downgrade() -> None:
    op.drop_column("orders", "tenant")
