"""The second: a backfill that fails on the data (a division by zero on real rows)."""

import sqlalchemy as sa
from alembic import op

revision = "h2"
down_revision = "h1"


def upgrade() -> None:
    op.add_column("orders", sa.Column("unit_price", sa.Numeric(), nullable=True))
    op.execute("UPDATE orders SET unit_price = 100 / (qty - qty)")


def downgrade() -> None:
    op.drop_column("orders", "unit_price")
