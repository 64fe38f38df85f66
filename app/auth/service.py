"""API keys: issue, revoke, and resolve a presented key to its owner."""

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.models import ApiKey
from app.db import new_id, now
from app.errors import ApiError, invalid_request, not_found

KEY_PREFIX = "mft-"
# "mft-" plus a few secret characters: enough for an operator to tell keys apart, too few to guess.
SHOWN_PREFIX_CHARS = 12
# The owner column's width.
MAX_OWNER_CHARS = 128


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def invalid_api_key(message: str) -> ApiError:
    return ApiError(401, "invalid_api_key", message, headers={"WWW-Authenticate": "Bearer"})


def validate_owner(owner: str) -> None:
    """An owner names a tenant in logs and listings: one visible word, so two owners that print alike are
    the same owner (no spaces, control characters, or bidi and zero-width marks that hide or reorder text)."""
    if not owner:
        raise invalid_request("The owner must not be empty", param="owner")
    if len(owner) > MAX_OWNER_CHARS:
        raise invalid_request(
            f"The owner must be at most {MAX_OWNER_CHARS} characters, not {len(owner)}", param="owner"
        )
    # isprintable() is False for control, format (bidi, zero-width), separator and unassigned characters.
    if bad := next((char for char in owner if char.isspace() or not char.isprintable()), None):
        raise invalid_request(
            f"The owner must not contain whitespace or invisible characters (found U+{ord(bad):04X})", param="owner"
        )


def create_api_key(*, session: Session, owner: str, name: str = "") -> tuple[ApiKey, str]:
    """Store a new key for `owner`; returns the row and the plaintext key, which is never stored."""
    validate_owner(owner)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=new_id("key"),
        owner=owner,
        name=name,
        key_hash=hash_key(key),
        prefix=key[:SHOWN_PREFIX_CHARS],
        created_at=now(),
    )
    session.add(row)
    session.flush()
    return row, key


def revoke_api_key(*, session: Session, key_id: str) -> ApiKey:
    """Revoke the key with id `key_id` (an operator action, so across owners); idempotent."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise not_found("api_key_not_found", f"No API key with id {key_id!r}", param="key_id")
    if row.revoked_at is None:
        row.revoked_at = now()
    return row


_LIVE_KEY = select(ApiKey.owner, ApiKey.revoked_at)


def authenticate(*, session: Session, key: str) -> str:
    """The owner of a live key; raises invalid_api_key for unknown or revoked keys."""
    # Only the hash is compared, and a key is 256 random bits, so the lookup leaks nothing by timing.
    # Two columns, not the row as an ORM object: this runs on every request, and loading an entity
    # costs more than the indexed lookup.
    row = session.execute(_LIVE_KEY.where(ApiKey.key_hash == hash_key(key))).one_or_none()
    if row is None or row.revoked_at is not None:
        raise invalid_api_key("Incorrect or revoked API key")
    return row.owner
