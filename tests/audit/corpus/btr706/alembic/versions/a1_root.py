# ruff: noqa
from alembic import op

revision = "a1"
down_revision = None


def upgrade() -> None:
    op.create_table("orders")


def downgrade() -> None:
    op.drop_table("orders")
