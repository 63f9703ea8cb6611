"""The one home of reqcron's caps on text kept from a run."""

from __future__ import annotations

OUTPUT_LIMIT = 64 * 1024  # characters of a run's output kept in the history
ERROR_LIMIT = 4 * 1024  # characters of a run's error message
TRACEBACK_LIMIT = 64 * 1024  # characters of a run's traceback
RETURN_VALUE_LIMIT = 4 * 1024  # characters of a run's return value (as JSON or repr)
RESULT_READ_LIMIT = 256 * 1024  # bytes read from a task process's result pipe


def cap(text: str, limit: int, *, keep_end: bool = False) -> str:
    """Cut ``text`` to about ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    if keep_end:
        return f"[… {cut} characters truncated]\n" + text[-limit:]
    return text[:limit] + f" [… {cut} characters truncated]"
