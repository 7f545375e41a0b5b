# ruff: noqa
from alembic import op

revision = "c3"
down_revision = "a1"


def upgrade() -> None:
    op.add_column("orders", "note")


def downgrade() -> None:
    op.drop_column("orders", "note")
