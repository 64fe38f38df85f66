"""Service settings, read once from `MAMBAFT_*` environment variables (and `.env`)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAMBAFT_", env_file=".env", extra="ignore")

    data_dir: Path = Path("./var")
    # Empty means "derive from data_dir" (see _fill_defaults), so one flag moves everything.
    database_url: str = ""
    broker_url: str = ""
    storage_url: str = ""
    models_dir: Path | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"

    # Hub ids listed by GET /v1/models beside the folders in models_dir.
    hub_models: list[str] = Field(default_factory=list)
    # Auth may only be off on a loopback bind; `mambaft serve` refuses otherwise.
    auth_disabled: bool = False
    max_upload_bytes: int = 512 * 1024 * 1024
    max_line_bytes: int = 1024 * 1024
    # Per API key owner: requests a second (token bucket, per API process) and unfinished jobs at once
    # (counted in the database). 0 turns a limit off.
    rate_limit_per_second: float = Field(default=0, ge=0)
    max_concurrent_jobs: int = Field(default=0, ge=0)
    # Largest model POST /v1/models creates, counted from the architecture before anything is queued;
    # the default admits the largest public Mamba (2.8B).
    max_model_parameters: int = Field(default=3_000_000_000, ge=1)

    # Completions (POST /v1/completions, /v1/chat/completions): the most tokens one may generate, the
    # longest prompt in tokens, requests of one owner in flight at once (0 = no limit), the loaded models a
    # worker keeps (least recently used goes first), how long the API waits for a worker to take a request
    # (then 503) and for the whole answer (then 504).
    max_completion_tokens: int = Field(default=512, ge=1)
    max_prompt_tokens: int = Field(default=2048, ge=1)
    max_concurrent_completions: int = Field(default=4, ge=0)
    completion_models_cached: int = Field(default=2, ge=1)
    completion_start_timeout_seconds: float = Field(default=30, gt=0)
    completion_timeout_seconds: float = Field(default=300, gt=0)
    # A finished completion's prompt and text are deleted by the reaper this long after it finished (the
    # answer has been given by then: keep it above completion_timeout_seconds).
    completion_retention_seconds: int = Field(default=3600, ge=1)

    # A running job whose worker stops renewing its lease for this long is requeued by the reaper.
    lease_seconds: int = 60
    heartbeat_seconds: int = 10
    reaper_interval_seconds: int = 15
    max_attempts: int = 3
    checkpoint_every_steps: int = 50
    # A worker's checkpoint upload is retried this long while object storage is unreachable; then the job fails.
    storage_retry_seconds: int = Field(default=60, ge=0)
    # Bytes a job may use on the worker's device (GPU memory, or RAM on the CPU). Unset: 95% of the GPU's
    # free memory, or 80% of the host's free RAM (MemAvailable or the cgroup's limit, whichever is closer).
    worker_memory_bytes: int | None = Field(default=None, gt=0)

    # Webhooks: a delivery not answered 2xx is retried after webhook_retry_seconds, then twice that, and so
    # on, up to webhook_max_attempts attempts in all; then it is failed. Each post waits webhook_timeout_seconds.
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_retry_seconds: int = Field(default=30, ge=0)
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=30)
    # How often each worker looks for due deliveries.
    webhook_poll_seconds: float = Field(default=2.0, gt=0)
    # The server posts to the URLs tenants give; by default only to public addresses, so a tenant cannot
    # reach services inside the operator's network. True allows private and loopback targets (one user on
    # one machine, tests).
    webhook_allow_private_targets: bool = False
    # GET /metrics asks for an API key (any tenant's) when set. Off by default: Prometheus scrapes carry no
    # key, and the figures are totals across tenants (no ids, no names).
    metrics_require_key: bool = False
    # Where the API processes of `mambaft api --workers N` pool their request metrics (prometheus_client's
    # multiprocess mode reads the same variable); `mambaft api` sets and empties it itself. Unset: one process.
    prometheus_multiproc_dir: Path | None = Field(default=None, validation_alias="PROMETHEUS_MULTIPROC_DIR")

    # Experiment trackers a job may log to (its `integrations`). MLflow runs go to this tracking server
    # (empty: a SQLite store in data_dir); a job may name its own only when mlflow_allow_job_tracking_uri.
    mlflow_tracking_uri: str = ""
    mlflow_allow_job_tracking_uri: bool = False
    # W&B writes its run folders here; WANDB_API_KEY / WANDB_MODE (e.g. offline) are W&B's own settings.
    wandb_dir: Path | None = None
    # GPU workers' selective scan. The engine reads these two from the environment itself where it loads the
    # kernel (worker/engine/scan_cuda.py: the engine takes no settings); declared here so that start-up
    # refuses a misspelt value. kernel_dir unset: ~/.cache/mambaft/kernels.
    kernel_dir: Path | None = None
    scan_kernel: Literal["own", "mamba-ssm"] = "own"

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        data = self.data_dir.resolve()
        self.data_dir = data
        if not self.database_url:
            self.database_url = f"sqlite:///{data / 'mambaft.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.storage_url:
            self.storage_url = f"file://{data / 'objects'}"
        if self.models_dir is None:
            self.models_dir = data / "models"
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{data / 'mlflow.db'}"
        if self.wandb_dir is None:
            self.wandb_dir = data / "wandb"
        return self

    @property
    def broker_folder(self) -> Path:
        """Where the embedded filesystem broker keeps its messages (shared by API and worker)."""
        return self.data_dir / "broker"

    @property
    def model_cache_dir(self) -> Path:
        """Where a worker unpacks created models it fetched from object storage, one folder per model uid."""
        return self.data_dir / "model-cache"

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")


@lru_cache
def get_settings() -> Settings:
    return Settings()
