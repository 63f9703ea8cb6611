"""The caps on what a run keeps: the one home of every size limit.

Text is capped where it is made (in the task's process, before it is
serialised) and again where it is read, so no single run can make the
supervisor or the state grow without bound.
"""

from __future__ import annotations

OUTPUT_LIMIT = 64 * 1024  # characters of a run's output kept (its end)
ERROR_LIMIT = 4 * 1024  # characters of a run's error message
TRACEBACK_LIMIT = 64 * 1024  # characters of a run's traceback kept (its end)
RETURN_VALUE_LIMIT = 64 * 1024  # characters of a run's return value, as JSON or repr
# Characters of a return value (as JSON) the status page lists with a run; a longer one
# only on the run's own page (?run=ID): 150 runs of 64 KiB would make a page of 10 MB.
PAGE_VALUE_LIMIT = 1024
# Characters of a deferred call's arguments, as JSON: more is refused at the call.
CALL_LIMIT = 256 * 1024
# Bytes the supervisor reads from the child's result pipe: the capped
# fields above, JSON-escaped (up to 6 bytes a character), and room to spare.
RESULT_READ_LIMIT = 6 * (ERROR_LIMIT + TRACEBACK_LIMIT + RETURN_VALUE_LIMIT) + 4096


def cap(text: str, limit: int, *, keep_end: bool = False) -> str:
    """Cut ``text`` to at most ``limit`` characters, saying how many were cut."""
    if len(text) <= limit:
        return text
    room = limit - len(f"… [truncated {len(text)} characters]\n")  # a marker at its longest
    if room <= 0:
        return text[-limit:] if keep_end else text[:limit]
    marker = f"… [truncated {len(text) - room} characters]"
    return marker + "\n" + text[-room:] if keep_end else text[:room] + marker


#: The cap of each text field of a run, and whether its end is what matters.
RUN_TEXT_CAPS = {
    "output": (OUTPUT_LIMIT, True),
    "error": (ERROR_LIMIT, False),
    "traceback": (TRACEBACK_LIMIT, True),
    "return_value": (RETURN_VALUE_LIMIT, False),
}


def capped_field(column: str, value: object) -> object:
    """A run's field as a store keeps it: text capped as RUN_TEXT_CAPS says."""
    if column in RUN_TEXT_CAPS and isinstance(value, str):
        limit, keep_end = RUN_TEXT_CAPS[column]
        return cap(value, limit, keep_end=keep_end)
    return value
