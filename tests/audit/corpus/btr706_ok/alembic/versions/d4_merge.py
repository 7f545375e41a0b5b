# ruff: noqa
"""merge b2 and c3"""

revision = "d4"
down_revision = ("b2", "c3")


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
