"""Bring a database to the latest schema with Alembic, from code (the serve command and tests)."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from app.resources import shipped_path


def alembic_config(database_url: str) -> Config:
    """The project's Alembic config (app/alembic.ini) aimed at `database_url`, leaving the caller's
    logging alone."""
    config = Config(str(shipped_path("alembic.ini")))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logging"] = False
    return config


def upgrade_database(database_url: str) -> None:
    """Run `alembic upgrade head` against `database_url`, creating a SQLite file's folder first."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), "head")
