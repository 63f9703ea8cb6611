"""Log each cause once: what a server logs must not grow with its requests or its runs."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("reqcron")


class LogOnce:
    """Logs a message once per cause (the message itself, or ``key``)."""

    def __init__(self, again_after: float | None = None):
        # Seconds after which the same cause is logged again (a reminder); None: never.
        self.again_after = again_after
        self._seen: dict[str, float] = {}

    def __call__(self, level: int, message: str, *args: object, key: str | None = None) -> None:
        cause = key if key is not None else (message % args if args else message)
        last = self._seen.get(cause)
        clock = time.monotonic()
        if last is None or (self.again_after is not None and clock - last > self.again_after):
            self._seen[cause] = clock
            log.log(level, message, *args)
