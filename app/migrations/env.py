"""Alembic environment: the target is `Base.metadata` with every model module imported."""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

# Every module that defines tables must be imported here, or autogenerate (and the drift test in
# tests/api/test_migrations.py) will not see its tables.
import app.auth.models
import app.base_models.models
import app.completions.models
import app.evaluations.models
import app.files.models
import app.idempotency
import app.jobs.models
import app.webhooks.models
import app.work.models
import app.workers.models  # noqa: F401
from app.db import Base
from app.settings import get_settings

config = context.config
if config.config_file_name and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    """From code (`app.migrate`), then `-x url=...`, then the service settings."""
    return (
        config.attributes.get("database_url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or get_settings().database_url
    )


def configure(url: str, **kwargs: object) -> None:
    # Batch mode lets ALTERs run on SQLite, which rebuilds a table instead of altering it in place.
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=url.startswith("sqlite"),
        compare_type=True,
        **kwargs,
    )


def run_offline() -> None:
    url = database_url()
    configure(url, url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    url = database_url()
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        configure(url, connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
