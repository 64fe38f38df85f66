"""docker-compose.yml and .env.example: they parse, agree with app/settings.py and with each other."""

import os
import re
from urllib.parse import urlparse

import pytest
from deployfiles import APP_SERVICES, ROOT, WORKERS, compose, dockerfile, env_example, services

from app.settings import Settings
from app.supervisor import WORKER_STOP_TIMEOUT_S

SETTING_NAMES = {f"MAMBAFT_{name.upper()}" for name in Settings.model_fields}
# Settings whose embedded defaults (SQLite, filesystem broker, local folder) are wrong for this stack.
PRODUCTION_REQUIRED = ("MAMBAFT_DATABASE_URL", "MAMBAFT_BROKER_URL", "MAMBAFT_STORAGE_URL", "MAMBAFT_S3_ENDPOINT_URL")


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    return env if isinstance(env, dict) else dict(item.partition("=")[::2] for item in env)


def volume_mounts(service: dict) -> dict[str, str]:
    """target -> 'source[:mode]' for the short volume syntax this file uses."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        mounts[target] = ":".join([source, *mode])
    return mounts


def test_compose_file_parses_into_services_and_named_volumes():
    assert compose()["name"] == "mambaft"  # fixes volume and network names the docs refer to
    assert {"postgres", "redis", "minio", "minio-init", "migrate", *APP_SERVICES} <= set(services())
    assert {"pgdata", "redisdata", "miniodata", "models"} <= set(compose()["volumes"])


def test_every_mambaft_variable_is_a_settings_field():
    used = set(env_example())
    for service in services().values():
        used |= set(environment(service))
    used |= {name for target in dockerfile().stages for name in dockerfile().env(target)}
    unknown = {name for name in used if name.startswith("MAMBAFT_")} - SETTING_NAMES
    assert not unknown, f"not fields of app.settings.Settings (typo?): {sorted(unknown)}"


def test_env_example_sets_every_production_setting_to_the_compose_services(monkeypatch):
    env = env_example()
    missing = [name for name in PRODUCTION_REQUIRED if not env.get(name)]
    assert not missing, f".env.example leaves the embedded defaults in place for {missing}"

    for name in list(os.environ):
        if name.startswith("MAMBAFT_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)

    assert settings.database_url.startswith("postgresql+psycopg://")
    assert urlparse(settings.database_url).hostname == "postgres"
    assert urlparse(settings.broker_url).hostname == "redis"
    assert settings.storage_url.startswith("s3://")
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.auth_disabled is False
    assert not settings.embedded_broker


def test_every_variable_compose_interpolates_is_in_env_example():
    text = (ROOT / "docker-compose.yml").read_text()
    referenced = set(re.findall(r"\$\{(\w+)", text))
    assert referenced <= set(env_example()), f"missing from .env.example: {sorted(referenced - set(env_example()))}"


def test_postgres_credentials_match_the_database_url():
    env, postgres = env_example(), environment(services()["postgres"])
    url = urlparse(env["MAMBAFT_DATABASE_URL"])
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    assert url.password == env["POSTGRES_PASSWORD"]
    assert url.username == postgres["POSTGRES_USER"]
    assert (url.port, url.path.lstrip("/")) == (5432, postgres["POSTGRES_DB"])


def test_minio_runs_with_the_s3_key_pair_and_creates_the_storage_bucket():
    minio, init = environment(services()["minio"]), services()["minio-init"]
    assert minio["MINIO_ROOT_USER"].startswith("${AWS_ACCESS_KEY_ID")
    assert minio["MINIO_ROOT_PASSWORD"].startswith("${AWS_SECRET_ACCESS_KEY")
    alias = environment(init)["MC_HOST_mambaft"]
    assert "${AWS_ACCESS_KEY_ID}:${AWS_SECRET_ACCESS_KEY}@minio:9000" in alias

    bucket = urlparse(env_example()["MAMBAFT_STORAGE_URL"]).netloc
    assert init["command"] == ["mb", "--ignore-existing", f"mambaft/{bucket}"]


@pytest.mark.parametrize("name", ["postgres", "redis", "minio"])
def test_backing_service_has_a_healthcheck(name):
    assert services()[name]["healthcheck"]["test"]


def test_redis_keeps_the_queue_on_disk():
    redis = services()["redis"]
    assert redis["command"] == ["redis-server", "--appendonly", "yes"]
    assert volume_mounts(redis)["/data"] == "redisdata"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_starts_after_healthy_backing_services_and_migrations(name):
    service = services()[name]
    assert service["env_file"] == ".env"
    conditions = {dep: spec["condition"] for dep, spec in service["depends_on"].items()}
    assert conditions == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "minio": "service_healthy",
        "minio-init": "service_completed_successfully",
        "migrate": "service_completed_successfully",
    }


def test_migrate_is_a_one_shot_on_the_api_image_after_postgres():
    migrate, api = services()["migrate"], services()["api"]
    assert migrate["command"] == ["mambaft", "migrate"]
    assert migrate["build"] == api["build"] == {"context": ".", "target": "api"}
    assert migrate["image"] == api["image"]
    assert migrate["env_file"] == ".env"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "restart" not in migrate  # a restart policy would rerun it forever


def test_api_publishes_port_8000_and_reads_models_read_only():
    api = services()["api"]
    assert api["ports"] == ["8000:8000"]
    assert volume_mounts(api) == {dockerfile().env("api")["MAMBAFT_MODELS_DIR"]: "models:ro"}


def test_gpu_worker_reserves_one_nvidia_gpu():
    worker = services()["worker"]
    assert worker["build"]["target"] == "worker"
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]


@pytest.mark.parametrize("name", WORKERS)
def test_worker_scales_and_writes_the_shared_models_volume(name):
    worker = services()[name]
    # `--scale worker=N` fails on a fixed container name or a fixed host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert volume_mounts(worker) == {dockerfile().env(worker["build"]["target"])["MAMBAFT_MODELS_DIR"]: "models"}
    # A worker checkpoints its job on SIGTERM; Docker must not kill it sooner than the CLI would.
    minutes = int(worker["stop_grace_period"].removesuffix("m"))
    assert minutes * 60 >= WORKER_STOP_TIMEOUT_S


def test_gpu_and_cpu_workers_are_profiles_chosen_in_env_example():
    assert services()["worker"]["profiles"] == ["gpu"]
    assert services()["worker-cpu"]["profiles"] == ["cpu"]
    assert "deploy" not in services()["worker-cpu"]
    assert env_example()["COMPOSE_PROFILES"] == "gpu"
