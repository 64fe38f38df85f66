"""The family tests run on one thread, as the engine tests do (the test box is shared)."""

from engine.conftest import one_thread  # noqa: F401
