"""Streaming a stored object as a response body."""

import itertools
from collections.abc import Iterator

from app.errors import ApiError
from app.storage import ObjectNotFound, ObjectStorage


def open_object(*, storage: ObjectStorage, key: str, missing: ApiError) -> Iterator[bytes]:
    """The object's chunks, with the first read now: a missing object becomes `missing`, not a cut stream.

    That first read is blocking storage I/O, so routes call this inside `Db.run`, on its worker thread.
    """
    chunks = storage.iter_bytes(key)
    try:
        first = next(chunks)
    except StopIteration:
        return iter(())
    except ObjectNotFound:
        raise missing from None
    return itertools.chain([first], chunks)
