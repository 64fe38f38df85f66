"""Finished completions are answered and then forgotten: their rows hold prompts and generated text."""

from sqlalchemy import delete, func, select

from app.completions.models import UNFINISHED, Completion, CompletionChunk
from app.db import now, session_scope
from app.settings import Settings


def prune_finished(*, settings: Settings) -> int:
    """Delete the completions (and their chunks) finished more than completion_retention_seconds ago;
    returns how many."""
    cutoff = now() - settings.completion_retention_seconds
    finished = select(Completion.id).where(
        Completion.status.not_in(UNFINISHED), func.coalesce(Completion.finished_at, Completion.created_at) < cutoff
    )
    with session_scope(settings.database_url) as session:
        ids = session.scalars(finished).all()
        if ids:
            # Chunks first: SQLite enforces no ON DELETE CASCADE without its foreign_keys pragma.
            session.execute(delete(CompletionChunk).where(CompletionChunk.completion_id.in_(ids)))
            session.execute(delete(Completion).where(Completion.id.in_(ids)))
    return len(ids)
