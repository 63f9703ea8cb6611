"""Who may use the status page: the token, signed sessions, and a throttle on wrong tokens.

No webob here: the page (status.py) asks the gate and renders the answer.
A session is a cookie value ``{id}.{expiry}.{hmac}`` keyed by the token, so
every worker process can check it without shared state.  Signed-out
sessions are remembered in this process only: another worker still takes a
replayed cookie until it expires, which SESSION_SECONDS bounds; changing
the token ends every session.  An optional metrics token is good for
``/metrics`` only: it never signs in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import deque

SESSION_SECONDS = 12 * 3600  # a login lasts this long (the cookie's Max-Age)
# Wrong tokens (login form or Bearer header) allowed within FAILURE_WINDOW
# seconds, from one client address and from all of them, per process;
# beyond that, 429 without checking the token.  Behind a reverse proxy every
# client shares the proxy's address (X-Forwarded-For is not trusted).
FAILURES_PER_CLIENT = 10
FAILURES_PER_PROCESS = 100
FAILURE_WINDOW = 300.0


class Throttle:
    """Count wrong tokens per client and in all over a sliding window."""

    def __init__(self, per_client: int, total: int, window: float):
        self.per_client, self.total, self.window = per_client, total, window
        self._clients: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def wait(self, client: str, now: float) -> float:
        """Return the seconds ``client`` must wait before a token is checked (0: none)."""
        self._forget(now)
        waits = [0.0]
        mine = self._clients.get(client)
        if mine and len(mine) >= self.per_client:
            waits.append(mine[0] + self.window - now)
        if len(self._all) >= self.total:
            waits.append(self._all[0] + self.window - now)
        return max(waits)

    def failed(self, client: str, now: float) -> None:
        self._clients.setdefault(client, deque()).append(now)
        self._all.append(now)

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)

    def _forget(self, now: float) -> None:
        # Checks stop once `total` failures are counted, so this stays small.
        cutoff = now - self.window
        while self._all and self._all[0] <= cutoff:
            self._all.popleft()
        for client, times in list(self._clients.items()):
            while times and times[0] <= cutoff:
                times.popleft()
            if not times:
                del self._clients[client]


class Gate:
    """The status token of one page, and what it signs."""

    def __init__(self, token: str | None, metrics_token: str | None = None):
        if not token and not metrics_token:
            raise ValueError("status_token must not be empty")
        # Without a status token nothing signs in, so sessions are keyed by a
        # secret nobody has: a forged cookie never passes.
        self._token = token.encode() if token else secrets.token_bytes(32)
        # Compared as digests: no length leaks.  None: that token is not set.
        self._digest = hashlib.sha256(token.encode()).digest() if token else None
        self._metrics_digest = (hashlib.sha256(metrics_token.encode()).digest()
                                if metrics_token else None)
        self._throttle = Throttle(FAILURES_PER_CLIENT, FAILURES_PER_PROCESS, FAILURE_WINDOW)
        self._revoked: dict[str, int] = {}  # signed-out session id -> its expiry

    def _mac(self, message: str) -> str:
        return hmac.new(self._token, message.encode(), hashlib.sha256).hexdigest()

    def wait(self, client: str) -> float:
        """Seconds before ``client``'s next token is checked at all (0: now)."""
        return self._throttle.wait(client, time.monotonic())

    def check(self, client: str, typed: str, metrics: bool = False) -> bool:
        """Compare a typed token (for ``metrics``, the metrics token too); a wrong one counts
        against ``client``."""
        digest = hashlib.sha256(typed.encode()).digest()
        right = [d for d in (self._digest, self._metrics_digest if metrics else None) if d]
        if any([hmac.compare_digest(digest, d) for d in right]):  # a list: no short cut
            self._throttle.succeeded(client)
            return True
        self._throttle.failed(client, time.monotonic())
        return False

    def new_session(self) -> str:
        """A fresh session cookie's value."""
        sid, expires = secrets.token_urlsafe(32), int(time.time()) + SESSION_SECONDS
        return f"{sid}.{expires}.{self._mac(f'session:{sid}.{expires}')}"

    def session(self, cookie: str) -> tuple[str, int] | None:
        """The (id, expiry) of a valid, unexpired, not signed-out session cookie."""
        if self._digest is None:
            return None
        sid, _, rest = cookie.partition(".")
        expires, _, mac = rest.partition(".")
        if not (sid and re.fullmatch("[0-9]{1,12}", expires) and int(expires) > time.time()):
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(f"session:{sid}.{expires}").encode()):
            return None
        return None if sid in self._revoked else (sid, int(expires))

    def sign_out(self, cookie: str) -> None:
        session = self.session(cookie)
        if session is not None:
            now = time.time()
            self._revoked = {s: e for s, e in self._revoked.items() if e > now}
            self._revoked[session[0]] = session[1]

    def csrf(self, session_id: str | None) -> str:
        """The CSRF token of a session, or of Bearer callers (None)."""
        return self._mac(f"csrf:{session_id}" if session_id else "csrf:bearer")
