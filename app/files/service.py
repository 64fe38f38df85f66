"""Training files: validated while they stream in, stored in object storage, owned by one tenant."""

from collections.abc import Iterator
from typing import Any, BinaryIO

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.db import new_id, now
from app.downloads import open_object
from app.errors import conflict, invalid_request, not_found
from app.evaluations.lifecycle import TERMINAL as EVALUATION_TERMINAL
from app.evaluations.models import Evaluation
from app.files.models import File
from app.files.schemas import FileObject
from app.files.validation import scan_upload
from app.idempotency import claim_for, fingerprint_of, forget_object, run_once
from app.jobs.lifecycle import TERMINAL
from app.jobs.models import Job
from app.pagination import Page, newest_first
from app.settings import Settings
from app.storage import ObjectStorage

FINE_TUNE = "fine-tune"
MAX_FILENAME_CHARS = 255
FALLBACK_FILENAME = "upload.jsonl"


def clean_filename(raw: str | None) -> str:
    """The client's name minus any directories and unprintable characters (NUL, newlines), capped."""
    name = (raw or "").replace("\\", "/").rpartition("/")[2]
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:MAX_FILENAME_CHARS] or FALLBACK_FILENAME


def upload_file(
    *,
    session: Session,
    storage: ObjectStorage,
    settings: Settings,
    owner: str,
    stream: BinaryIO,
    filename: str | None,
    purpose: str,
    idempotency_key: str | None,
) -> FileObject:
    """Validate the JSONL in `stream`, then store it and its row; nothing is stored for a bad file."""
    if purpose != FINE_TUNE:
        raise invalid_request(f"purpose must be {FINE_TUNE!r}", param="purpose")
    scanned = scan_upload(stream, max_bytes=settings.max_upload_bytes, max_line_bytes=settings.max_line_bytes)
    claim = claim_for(
        owner=owner, key=idempotency_key, fingerprint=fingerprint_of("POST /v1/files", purpose, scanned.sha256)
    )
    file_id = new_id("file")
    storage_key = f"files/{file_id}.jsonl"

    def create() -> dict[str, Any]:
        stream.seek(0)
        storage.put_stream(storage_key, stream)
        row = File(
            id=file_id,
            owner=owner,
            filename=clean_filename(filename),
            purpose=purpose,
            bytes=scanned.size,
            created_at=now(),
            storage_key=storage_key,
            format=scanned.format,
            line_count=scanned.line_count,
        )
        session.add(row)
        session.flush()
        return FileObject.of(row).model_dump(mode="json")

    outcome = run_once(session=session, claim=claim, create=create, undo=lambda: storage.delete(storage_key))
    return FileObject.model_validate(outcome.body)


def get_file(*, session: Session, owner: str, file_id: str) -> File | None:
    """The owner's file with this id, or None."""
    return session.scalars(select(File).where(File.id == file_id, File.owner == owner)).one_or_none()


def list_files(*, session: Session, owner: str, purpose: str | None, after: str | None, limit: int) -> Page[File]:
    """The owner's files, newest first."""
    statement = select(File).where(File.owner == owner)
    if purpose is not None:
        statement = statement.where(File.purpose == purpose)
    return newest_first(session=session, statement=statement, entity=File, after=after, limit=limit)


def delete_file(*, session: Session, storage: ObjectStorage, owner: str, file: File) -> None:
    """Delete the file's row and bytes, unless a job or an evaluation that has not finished needs them."""
    job = session.scalar(
        select(Job.id)
        .where(Job.owner == owner, Job.status.not_in(TERMINAL))
        .where(or_(Job.training_file == file.id, Job.validation_file == file.id))
        .limit(1)
    )
    if job is not None:
        raise conflict("file_in_use", f"Job {job} still needs file {file.id}; cancel it or let it finish first")
    if (evaluation := _unfinished_evaluation_of(session=session, owner=owner, file_id=file.id)) is not None:
        raise conflict("file_in_use", f"Evaluation {evaluation} still needs file {file.id}; let it finish first")
    session.delete(file)
    forget_object(session=session, owner=owner, object_id=file.id)
    session.flush()
    storage.delete(file.storage_key)


def _unfinished_evaluation_of(*, session: Session, owner: str, file_id: str) -> str | None:
    """The id of an unfinished evaluation of `owner` that reads the file (validation_file or a task)."""
    # Tasks are a JSON list, which SQLite and Postgres search differently; an owner has few unfinished
    # evaluations, so they are searched here.
    unfinished = session.execute(
        select(Evaluation.id, Evaluation.validation_file, Evaluation.tasks).where(
            Evaluation.owner == owner, Evaluation.status.not_in(EVALUATION_TERMINAL)
        )
    )
    return next((row.id for row in unfinished if file_id == row.validation_file or file_id in row.tasks), None)


def file_content(*, storage: ObjectStorage, file: File) -> Iterator[bytes]:
    """The file's bytes, streamed from storage."""
    missing = not_found("file_content_missing", f"The content of file {file.id} is missing from storage")
    return open_object(storage=storage, key=file.storage_key, missing=missing)
