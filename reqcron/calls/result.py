"""``Result``: what became of a deferred call, read from the state by any process."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..records import FINAL, Status

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..engine.docroot import Docroot
    from ..records import Run

R = TypeVar("R")
#: The status of a call kept in a host's spool until the state takes it (not a row's status).
SPOOLED = "spooled"


def engine_of(root: str) -> Docroot:
    """This process's engine for the DOCROOT ``root`` (engine/registry.py)."""
    from ..engine import registry  # the engine machinery only once a call is stored or read

    return registry.engine(root, log_load_errors=False)


class Result(Generic[R]):
    """What became of a deferred call: read from the state, from any process."""

    def __init__(self, docroot: str | os.PathLike[str] | None, id: int | None, *,
                 token: str | None = None):
        self.docroot = Path(docroot) if docroot is not None else None
        self._id = id
        self._token = token
        self._run: Run | None = None
        self._inline: tuple[bool, Any, str | None] | None = None

    @classmethod
    def get(cls, docroot: str | os.PathLike[str], id: int) -> Result[Any]:
        """The Result of call ``id`` of ``docroot``; LookupError if there is no such call."""
        result = cls(docroot, id)
        run = result._read()
        if run is None or run.call is None:
            raise LookupError(f"no deferred call with id {id} in {docroot}")
        return result

    @classmethod
    def inline(cls, function: Callable[[], R]) -> Result[R]:
        """Run ``function`` now, here, and keep what came of it."""
        result: Result[R] = cls(None, None)
        try:
            result._inline = (True, function(), None)
        except Exception as exc:
            result._inline = (False, None, f"{type(exc).__name__}: {exc}")
        return result

    @property
    def id(self) -> int | None:
        """The call's run id; None while it waits in a host's spool (status "spooled")."""
        if self._id is None and self._token is not None and self.docroot is not None:
            from ..engine import call_spool

            state_dir = engine_of(os.fspath(self.docroot)).settings.state_dir
            self._id = call_spool.stored_id(state_dir, self._token)
        return self._id

    def _spooled(self) -> bool:
        """Whether the call still waits in the spool (it learns its id once stored)."""
        return self._token is not None and self.id is None

    def _read(self) -> Run | None:
        if self._spooled():
            return None
        if self._inline is None and self.id is not None and self.docroot is not None:
            if self._run is None or self._run.status not in FINAL:
                self._run = engine_of(os.fspath(self.docroot)).store.get_run(self.id)
        return self._run

    @property
    def status(self) -> str:
        """queued, running, ok, failed, timeout or lost (``ok``/``failed`` inline); spooled
        while the state could not take the call and this host keeps it."""
        if self._inline is not None:
            return Status.OK if self._inline[0] else Status.FAILED
        if self._spooled():
            return SPOOLED
        run = self._read()
        if run is None:
            raise LookupError(f"deferred call {self.id} is no longer in the state of "
                              f"{self.docroot} (finished calls are kept result_days days)")
        return run.status

    def is_ready(self) -> bool:
        """True once the call has run, well or not (never blocks)."""
        return self.status in FINAL

    def wait(self, timeout: float | None = None) -> Result[R]:
        """Block until the call is ready; TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.002
        while not self.is_ready():
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"deferred call {self.id} is still {self.status} after "
                                   f"{timeout:g} s")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.1)
        return self

    @property
    def has_error(self) -> bool:
        return self.is_ready() and self.status != Status.OK

    @property
    def error_message(self) -> str | None:
        """The error's first line (``Type: message``), once ready; None if it went well."""
        if self._inline is not None:
            return self._inline[2]
        if not self.has_error:
            return None
        run = self._read()
        return (run.error if run is not None else None) or f"the call ended {self.status}"

    @property
    def traceback(self) -> str | None:
        run = self._read()
        return run.traceback if run is not None and self.has_error else None

    @property
    def result(self) -> R | None:
        """What the function returned (JSON), once it ran well; else None."""
        if self._inline is not None:
            value: R | None = self._inline[1]
            return value
        run = self._read()
        if run is None or run.status != Status.OK or run.return_value is None:
            return None
        import json

        value = json.loads(run.return_value)
        return value  # the JSON that R came back as

    def __repr__(self) -> str:
        return f"<Result {self.id} {self.status}>"
