"""/v1/files: upload, list, read, download and delete training files."""

from typing import Annotated

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import StreamingResponse
from starlette.datastructures import FormData

from app.deps import DbDep, IdempotencyKeyDep, RequestContext, StorageDep
from app.errors import invalid_request, not_found
from app.files import service
from app.files.models import File
from app.files.schemas import DeletedFile, FileObject
from app.pagination import AfterQuery, LimitQuery, ListObject

router = APIRouter(prefix="/files", tags=["files"])


def owned_file(ctx: RequestContext, file_id: str) -> File:
    """The caller's file with this id; another owner's file is as absent as a missing one."""
    file = service.get_file(session=ctx.session, owner=ctx.owner, file_id=file_id)
    if file is None:
        raise not_found("file_not_found", f"No file with id {file_id!r}", param="file_id")
    return file


def refuse_repeated_fields(form: FormData) -> None:
    """Raise a 400 naming the first form field sent more than once: which copy counts would be a guess."""
    seen: set[str] = set()
    for name, _ in form.multi_items():
        if name in seen:
            raise invalid_request(f"{name}: the form field is sent more than once; send it once", param=name)
        seen.add(name)


@router.post("")
async def upload_file(
    request: Request,
    file: UploadFile,
    purpose: Annotated[str, Form(max_length=64)],
    db: DbDep,
    storage: StorageDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> FileObject:
    refuse_repeated_fields(await request.form())  # parsed already, for the parameters above
    return await db.run(
        lambda ctx: service.upload_file(
            session=ctx.session,
            storage=storage,
            settings=ctx.settings,
            owner=ctx.owner,
            stream=file.file,
            filename=file.filename,
            purpose=purpose,
            idempotency_key=idempotency_key,
        )
    )


@router.get("")
async def list_files(
    db: DbDep, purpose: str | None = None, after: AfterQuery = None, limit: LimitQuery = 20
) -> ListObject[FileObject]:
    def work(ctx: RequestContext) -> ListObject[FileObject]:
        page = service.list_files(session=ctx.session, owner=ctx.owner, purpose=purpose, after=after, limit=limit)
        return ListObject[FileObject](data=[FileObject.of(f) for f in page.items], has_more=page.has_more)

    return await db.read(work)


@router.get("/{file_id}")
async def get_file(file_id: str, db: DbDep) -> FileObject:
    return await db.read(lambda ctx: FileObject.of(owned_file(ctx, file_id)))


@router.get("/{file_id}/content")
async def download_file(file_id: str, db: DbDep, storage: StorageDep) -> StreamingResponse:
    def work(ctx: RequestContext) -> StreamingResponse:
        content = service.file_content(storage=storage, file=owned_file(ctx, file_id))
        return StreamingResponse(content, media_type="application/octet-stream")

    return await db.run(work)


@router.delete("/{file_id}")
async def delete_file(file_id: str, db: DbDep, storage: StorageDep) -> DeletedFile:
    def work(ctx: RequestContext) -> DeletedFile:
        file = owned_file(ctx, file_id)
        service.delete_file(session=ctx.session, storage=storage, owner=ctx.owner, file=file)
        return DeletedFile(id=file.id)

    return await db.run(work)
