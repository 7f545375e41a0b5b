"""ALTER COLUMN TYPE on a big table: a rewrite under ACCESS EXCLUSIVE."""

import sqlalchemy as sa
from alembic import op

revision = "b1"
down_revision = None


def upgrade() -> None:
    op.alter_column("big", "v", type_=sa.BigInteger(), existing_type=sa.Integer())


def downgrade() -> None:
    op.alter_column("big", "v", type_=sa.Integer(), existing_type=sa.BigInteger())
