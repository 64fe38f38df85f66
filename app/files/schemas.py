"""The file objects of the OpenAI Files API."""

from typing import Literal

from pydantic import BaseModel

from app.files.models import File


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    # Uploads are validated before they are stored, so every stored file is processed.
    status: Literal["processed"] = "processed"

    @classmethod
    def of(cls, row: File) -> "FileObject":
        return cls(id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename, purpose=row.purpose)


class DeletedFile(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: Literal[True] = True
