# ruff: noqa
from alembic import op

revision = "b2"
down_revision = "a1"


def upgrade() -> None:
    op.add_column("orders", "total")


def downgrade() -> None:
    op.drop_column("orders", "total")
