"""A migration whose downgrade does nothing: the way back is broken."""

import sqlalchemy as sa
from alembic import op

revision = "w1"
down_revision = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("archived", sa.Boolean(), nullable=True))


def downgrade() -> None:
    pass
