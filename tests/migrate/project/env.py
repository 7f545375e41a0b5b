"""The sample Alembic project's environment: the database URL from ``$DATABASE_URL``.

Each scenario is an ini file beside this one naming its own versions folder;
``transaction_per_migration = true`` in an ini commits after each migration (so a later
failure leaves the earlier ones applied: the half-way scenario).
"""

import os

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
url = os.environ["DATABASE_URL"]
per_migration = config.get_main_option("transaction_per_migration", "false") == "true"

if context.is_offline_mode():
    context.configure(url=url, literal_binds=True, transaction_per_migration=per_migration)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=per_migration)
        with context.begin_transaction():
            context.run_migrations()
