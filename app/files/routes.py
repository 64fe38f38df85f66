"""/v1/files: upload, list, read, download and delete training files."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, UploadFile
from fastapi.responses import StreamingResponse

from app.deps import IdempotencyKeyDep, OwnerDep, SessionDep, SettingsDep, StorageDep
from app.errors import not_found
from app.files import service
from app.files.models import File
from app.files.schemas import DeletedFile, FileObject
from app.pagination import AfterQuery, LimitQuery, ListObject

router = APIRouter(prefix="/files", tags=["files"])


def valid_file(file_id: str, owner: OwnerDep, session: SessionDep) -> File:
    """The caller's file named in the path; another owner's file is as absent as a missing one."""
    file = service.get_file(session=session, owner=owner, file_id=file_id)
    if file is None:
        raise not_found("file_not_found", f"No file with id {file_id!r}", param="file_id")
    return file


ValidFile = Annotated[File, Depends(valid_file)]


@router.post("")
def upload_file(
    file: UploadFile,
    purpose: Annotated[str, Form(max_length=64)],
    owner: OwnerDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> FileObject:
    return service.upload_file(
        session=session,
        storage=storage,
        settings=settings,
        owner=owner,
        stream=file.file,
        filename=file.filename,
        purpose=purpose,
        idempotency_key=idempotency_key,
    )


@router.get("")
def list_files(
    owner: OwnerDep,
    session: SessionDep,
    purpose: str | None = None,
    after: AfterQuery = None,
    limit: LimitQuery = 20,
) -> ListObject[FileObject]:
    page = service.list_files(session=session, owner=owner, purpose=purpose, after=after, limit=limit)
    return ListObject[FileObject](data=[FileObject.of(f) for f in page.items], has_more=page.has_more)


@router.get("/{file_id}")
def get_file(file: ValidFile) -> FileObject:
    return FileObject.of(file)


@router.get("/{file_id}/content")
def download_file(file: ValidFile, storage: StorageDep) -> StreamingResponse:
    return StreamingResponse(service.file_content(storage=storage, file=file), media_type="application/octet-stream")


@router.delete("/{file_id}")
def delete_file(file: ValidFile, owner: OwnerDep, session: SessionDep, storage: StorageDep) -> DeletedFile:
    service.delete_file(session=session, storage=storage, owner=owner, file=file)
    return DeletedFile(id=file.id)
