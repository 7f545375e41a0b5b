"""A safe migration: a new table, and a nullable column (no rewrite, no scan)."""

import sqlalchemy as sa
from alembic import op

revision = "s1"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("note", sa.Text(), nullable=True),
    )
    op.add_column("orders", sa.Column("note", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("orders", "note")
    op.drop_table("audit_log")
