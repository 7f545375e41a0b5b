# ruff: noqa
"""add total: no downgrade at all"""

from alembic import op

revision: str = "b2"  # expect: BTR705
down_revision: str | None = "a1"


def upgrade() -> None:
    op.add_column("orders", "total")
