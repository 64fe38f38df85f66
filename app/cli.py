"""The `mambaft` command: run the service (embedded or as separate API / worker processes) and admin it;
its client commands (files, jobs, models, eval: app/client/) use a running one over HTTP.

The API process never imports torch: the tiny models are built and jobs are trained in subprocesses.
Subcommands import the web stack, Alembic and the auth service on first use, so `create-key` and
`worker` start without loading what they do not run.
"""

import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from sqlalchemy import func, select

from app.celery_config import QUEUE
from app.client.commands import evaluate, files, models
from app.client.jobs import jobs
from app.db import session_scope
from app.settings import Settings, get_settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def worker_command() -> list[str]:
    # solo pool: CUDA is unsafe in forked children; one worker process per GPU.
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "-Q",
        QUEUE,
        "--hostname",
        f"mambaft-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "INFO",
    ]


def _fail(message: str) -> NoReturn:
    print(f"mambaft: {message}", file=sys.stderr)
    raise SystemExit(2)


def _check_auth(settings: Settings, host: str) -> None:
    if settings.auth_disabled and not is_loopback(host):
        _fail(
            f"refusing to listen on {host} with authentication disabled: anyone who can reach it could "
            "run jobs and read every file. Bind 127.0.0.1, or unset MAMBAFT_AUTH_DISABLED and create a key "
            "with `mambaft create-key --owner NAME`."
        )


def _active_key_count(settings: Settings) -> int:
    from app.auth.models import ApiKey

    with session_scope(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) or 0


# Longer than the idle timeout of the proxies put in front of APIs (60 s on AWS ALB and in nginx's upstream
# keep-alive): with uvicorn's 5 s, a client or proxy that reused a pooled connection just as the server
# closed it had its request reset instead of answered.
KEEP_ALIVE_S = 90


# The server's options beyond the app and the address, the same for `serve` and `api`.
UVICORN_OPTIONS = {"log_level": "info", "timeout_keep_alive": KEEP_ALIVE_S}


def _pool_request_metrics(folder: Path) -> None:
    """Have the API processes about to start write their request metrics into `folder`, emptied first
    (counts left by an earlier run would be added in), so GET /metrics sums them whichever answers."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    # prometheus_client's own variable, read by each process as it starts (and by Settings).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


def _serve_api(settings: Settings, host: str, port: int, workers: int = 1) -> None:
    import uvicorn

    from app.main import served_app

    if workers > 1 and settings.prometheus_multiproc_dir is None:
        _pool_request_metrics(settings.data_dir / "prometheus")
    # Each worker process builds its own app (uvicorn needs an import string for that), so every one
    # reads the same MAMBAFT_* settings this process read.
    app = served_app(settings) if workers == 1 else "app.main:served_app"
    uvicorn.run(app, factory=workers > 1, workers=workers, host=host, port=port, **UVICORN_OPTIONS)


def _migrate(settings: Settings) -> None:
    from app.migrate import upgrade_database

    upgrade_database(settings.database_url)


def _raise_on_sigterm() -> None:
    # SIGTERM would otherwise end the process without running `finally`, orphaning the worker.
    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


DataDir = Annotated[
    Path | None,
    typer.Option(help="Where the embedded database, objects and models live (MAMBAFT_DATA_DIR).", show_default=False),
]
Host = Annotated[str, typer.Option(help="The address to listen on.")]
Port = Annotated[int, typer.Option(help="The port to listen on.")]

cli = typer.Typer(
    name="mambaft",
    help="Run the mambaft service and admin it, or use a running one (files, jobs, models, eval).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings(data_dir: Path | None) -> Settings:
    if data_dir is not None:
        # Through the environment, so this process's settings and every child's agree.
        os.environ["MAMBAFT_DATA_DIR"] = str(data_dir.resolve())
        get_settings.cache_clear()
    return get_settings()


@cli.command()
def serve(host: Host = "127.0.0.1", port: Port = 8000, data_dir: DataDir = None) -> None:
    """API and one worker on one machine: the embedded default (`make run`)."""
    settings = _settings(data_dir)
    _check_auth(settings, host)
    _migrate(settings)
    subprocess.run([sys.executable, "-m", "worker.bootstrap", "--models-dir", str(settings.models_dir)], check=True)
    if not _active_key_count(settings):
        if "auth_disabled" not in settings.model_fields_set and is_loopback(host):
            # Zero configuration on one's own machine; a stored key turns auth on at the next start.
            settings = settings.model_copy(update={"auth_disabled": True})
            print("mambaft: authentication is off (loopback bind, no API keys yet).", flush=True)
        hint = f"mambaft create-key --owner NAME --data-dir {settings.data_dir}"
        print(f"mambaft: create an API key with `{hint}`", flush=True)
    import uvicorn

    from app.main import served_app
    from app.supervisor import WorkerSupervisor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(uvicorn.Config(served_app(settings), host=host, port=port, **UVICORN_OPTIONS))
    supervisor = WorkerSupervisor(worker_command(), settings, on_give_up=lambda: setattr(server, "should_exit", True))
    _raise_on_sigterm()
    supervisor.start()
    try:
        server.run()
    finally:
        supervisor.stop()
    if supervisor.gave_up:
        print("mambaft: the worker keeps dying as it starts (see its log above); stopped.", file=sys.stderr)
        raise SystemExit(1)


@cli.command()
def api(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    workers: Annotated[int, typer.Option(help="API processes sharing the port (uvicorn workers).")] = 1,
    data_dir: DataDir = None,
) -> None:
    """The API alone (production: migrations run separately, workers run on GPU hosts)."""
    settings = _settings(data_dir)
    _check_auth(settings, host)
    _serve_api(settings, host, port, workers)


@cli.command()
def worker(data_dir: DataDir = None) -> None:
    """One Celery worker (production: one per GPU); replaces this process so signals reach Celery."""
    _settings(data_dir)
    command = worker_command()
    os.execv(command[0], command)


@cli.command()
def migrate(data_dir: DataDir = None) -> None:
    """Apply database migrations."""
    _migrate(_settings(data_dir))
    print("mambaft: database is up to date")


@cli.command("create-key")
def create_key(
    owner: Annotated[str, typer.Option(help="The tenant whose files and jobs the key reaches.")],
    name: Annotated[str, typer.Option(help="A label to tell keys apart.")] = "",
    data_dir: DataDir = None,
) -> None:
    """Create an API key and print it once."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.auth.service import create_api_key, validate_owner
    from app.errors import ApiError

    settings = _settings(data_dir)
    try:
        validate_owner(owner)
        # A new data dir (or database) gets its schema first, as `serve` would give it.
        _migrate(settings)
        with session_scope(settings.database_url) as session:
            row, key = create_api_key(session=session, owner=owner, name=name)
    except ApiError as error:
        _fail(error.message)
    except (SQLAlchemyError, OSError) as error:
        _fail(f"cannot write to the database ({type(error).__name__}): check MAMBAFT_DATABASE_URL or --data-dir")
    print(f"Created API key {row.id} for owner {row.owner!r}. It is shown only this once:", file=sys.stderr)
    print(key)


@cli.command("revoke-key")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The id create-key printed.")], data_dir: DataDir = None
) -> None:
    """Revoke an API key by id."""
    from app.auth.service import revoke_api_key
    from app.errors import ApiError

    settings = _settings(data_dir)
    try:
        with session_scope(settings.database_url) as session:
            revoke_api_key(session=session, key_id=key_id)
    except ApiError as error:
        _fail(error.message)
    print(f"Revoked API key {key_id}")


# The client: HTTP to a running server (MAMBAFT_URL, MAMBAFT_API_KEY), listed after the service's commands.
cli.add_typer(files, name="files")
cli.add_typer(jobs, name="jobs")
cli.add_typer(models, name="models")
cli.command("eval")(evaluate)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
