"""The first of two migrations: commits on its own (transaction_per_migration)."""

import sqlalchemy as sa
from alembic import op

revision = "h1"
down_revision = None


def upgrade() -> None:
    op.create_table("invoices", sa.Column("id", sa.BigInteger(), primary_key=True))


def downgrade() -> None:
    op.drop_table("invoices")
