"""Models a tenant created over the API (POST /v1/models); their weights live in object storage.

The operator's shared models (folders in models_dir, hub ids) are not rows: every tenant sees those.
A created model's `id` is the client's name for it and is unique per owner only; `uid` names it
everywhere else (storage key, worker cache, broker message), so two tenants' models never meet.
"""

from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.db import Base
from app.work.models import LeasedColumns, LeaseStatus


class ModelStatus(StrEnum):
    # Built as leased work (lifecycle.py): queued -> running -> ready | failed.
    QUEUED = LeaseStatus.QUEUED.value
    RUNNING = LeaseStatus.RUNNING.value
    READY = "ready"
    FAILED = "failed"


# What the API calls a model that is queued or running: it has no weights yet.
CREATING = "creating"


class CreatedModel(LeasedColumns, Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("owner", "id"),)

    uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    id: Mapped[str] = mapped_column(String(64))
    family: Mapped[str] = mapped_column(String(16))
    variant: Mapped[str] = mapped_column(String(32))  # ssm_structure (Mamba) or a_constraint (Mamba-2)
    # The architecture request (d_model, n_layer, d_state, tokenizer, seed, ...): what the worker builds.
    architecture: Mapped[dict[str, Any]] = mapped_column(JSON)
    parameters: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Set with status ready, once the packed weights are stored.
    storage_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)

    @property
    def public_status(self) -> str:
        """The status the API shows: creating until the build ends."""
        return self.status if self.status in (ModelStatus.READY, ModelStatus.FAILED) else CREATING


def created_model(session: Session, owner: str, model_id: str) -> CreatedModel | None:
    """The owner's created model with this id (ids are unique per owner only), or None."""
    statement = select(CreatedModel).where(CreatedModel.owner == owner, CreatedModel.id == model_id)
    return session.scalars(statement).one_or_none()
