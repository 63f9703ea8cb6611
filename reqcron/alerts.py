"""Telling people: ``notify`` when a task starts failing and when it recovers; ``ping``.

- ``notify`` (a Task attribute, or ``notify`` in reqcron.toml for every
  task) is a ``mailto:`` address (sent through ``smtp = "host:port"``), an
  ``http(s)://`` URL that receives a JSON POST, or ``"module:callable"``
  called with the same data.  One message when a run ends failed, timed
  out or lost after a good run (or as the first run), and one when a run
  ends ok after failures: a task that keeps failing sends nothing more,
  so a broken every-minute job does not send 1,440 mails a day.
- ``ping`` follows healthchecks.io: ``GET {ping}/start`` when a run starts,
  ``POST {ping}`` with the output's end when it succeeds, ``POST
  {ping}/fail`` when not.

Everything here runs in the task's supervisor (runtask) or in a worker
thread, never on a request's path; every network call has a timeout; a
failure is logged and kept on the run (``notified``), never changing the
run's own status.
"""

from __future__ import annotations

import logging
import os
import threading

from .records import FAILING, RAN

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import tzinfo
    from typing import Any

    from .config import Settings
    from .records import Run
    from .store import Store

log = logging.getLogger("reqcron")



def _timeout() -> float:
    try:
        value = float(os.environ.get("REQCRON_NOTIFY_TIMEOUT", "10"))
    except ValueError:
        return 10.0
    return value if 0.1 <= value <= 300 else 10.0


#: Seconds any one notification or ping may take (REQCRON_NOTIFY_TIMEOUT, default 10).
TIMEOUT = _timeout()
PING_BODY = 10_000  # characters of output sent with a ping (healthchecks keeps 100 kB)


def targets(value: object, what: str = "notify") -> list[str]:
    """The notification targets ``value`` names; ValueError naming ``what`` if unusable."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"{what} must be a string or a list of strings, not {value!r}")
    for item in items:
        check_target(item, what)
    return list(items)


def check_target(target: str, what: str = "notify") -> None:
    if target.startswith("mailto:"):
        address = target[len("mailto:"):]
        if "@" not in address or any(c in address for c in " ,;\r\n"):
            raise ValueError(f"{what} {target!r} is not one mail address (mailto:name@host)")
    elif target.startswith(("http://", "https://")):
        check_url(target, what)
    elif ":" in target and all(p.replace(".", "").replace("_", "").isalnum()
                               for p in target.split(":", 1)):
        pass  # module:callable: check_callable() imports it where task code is imported
    else:
        raise ValueError(f"{what} {target!r} must be mailto:ADDRESS, an http(s):// URL or "
                         "module:callable")


def check_callable(target: str, what: str = "notify") -> None:
    """Import a ``module:callable`` target now, so a typo is a load error, not a lost alert."""
    import importlib

    module, _, name = target.partition(":")
    try:
        found = getattr(importlib.import_module(module), name, None)
    except Exception as exc:
        raise ValueError(f"{what} {target!r}: {module} cannot be imported: "
                         f"{type(exc).__name__}: {exc}") from None
    if not callable(found):
        raise ValueError(f"{what} {target!r}: {module} has no function {name}")


def check_url(url: str, what: str = "ping") -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(
            c in url for c in " \r\n"):
        raise ValueError(f"{what} {url!r} is not an http(s):// URL")
    return url


# -- when to notify -----------------------------------------------------------------


#: The event of a run still going after its task's warn_after (sent once, while it runs).
RUNNING_LONG = "running_long"


def event_for(store: Store, run: Run) -> str | None:
    """"failed", "recovered", "corrected" or None (nothing to say) for a run that just ended.

    The run before it that really ran decides: a failure after a failure is
    damped, and only the first good run after failures is news.  A run
    whose failure was told already (a reaper took it for dead while its
    session was lost) is told again only if its own end proved it good.
    """
    if run.status not in RAN or run.call is not None:  # a Task.delay call: not the schedule's
        return None
    if "failed: sent to" in (run.notified or ""):  # its failure reached someone
        return None if run.status in FAILING else "corrected"
    before = next((r for r in store.runs(run.task, 50) if r.id is not None and run.id is not None
                   and r.id < run.id and r.status in RAN and r.call is None), None)
    was_failing = before is not None and before.status in FAILING
    if run.status in FAILING:
        return None if was_failing else "failed"
    return "recovered" if was_failing else None


def payload(event: str, run: Run, docroot: os.PathLike[str] | str,
            zone: tzinfo) -> dict[str, Any]:
    """What every kind of target receives (the JSON of a webhook); times in ``zone``."""
    from .times import iso

    error = (run.error or "").splitlines()[0] if run.error else None
    return {
        "event": event, "task": run.task, "status": run.status, "run": run.id,
        "host": os.uname().nodename, "docroot": os.fspath(docroot),
        "start": iso(run.start, zone), "end": iso(run.end, zone), "error": error,
        "see": f"reqcron history {os.fspath(docroot)} {run.task} --run {run.id}",
    }


def notify_run(settings: Settings, store: Store, run: Run, task_targets: Sequence[str],
               zone: tzinfo, event: str | None = None) -> None:
    """Send what the end of ``run`` calls for (or ``event``), and record how it went on the
    run, after what was recorded there before (a "running long" sent while it ran)."""
    wanted = [*task_targets, *settings.notify]
    if not wanted or run.id is None:
        return
    if event is None:
        try:
            event = event_for(store, run)
        except Exception as exc:  # the state is what failed; the run is recorded already
            log.error("reqcron: cannot tell whether to notify for run %s: %s", run.id, exc)
            return
    if event is None:
        return
    data = payload(event, run, settings.docroot, zone)
    outcomes = [run.notified] if run.notified else []
    for target in dict.fromkeys(wanted):
        try:
            send(target, data, settings)
            outcomes.append(f"{event}: sent to {target}")
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.error("reqcron: notifying %s about run %s failed: %s", target, run.id, reason)
            outcomes.append(f"{event}: NOT sent to {target}: {reason}")
    try:
        store.update_run(run.id, notified="\n".join(outcomes))
    except Exception as exc:
        log.error("reqcron: cannot record the notification of run %s: %s", run.id, exc)


# -- sending --------------------------------------------------------------------------


def send(target: str, data: dict[str, Any], settings: Settings) -> None:
    """Deliver ``data`` to one target within TIMEOUT in all; raise on failure."""
    within(TIMEOUT, lambda: _send(target, data, settings))


def within(seconds: float, action: Callable[[], None]) -> None:
    """Do ``action`` in a thread, waiting ``seconds`` in all; TimeoutError past that.

    A socket's timeout bounds each read, not the whole: an endpoint that
    drips a byte now and then would hold the caller for good.  The thread
    left behind is a daemon; what it still does is of no one's concern.
    """
    failure: list[BaseException] = []

    def attempt() -> None:
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            failure.append(exc)

    thread = threading.Thread(target=attempt, name="reqcron-send", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if failure:
        raise failure[0]


def _send(target: str, data: dict[str, Any], settings: Settings) -> None:
    if target.startswith("mailto:"):
        _mail(target[len("mailto:"):], data, settings)
    elif target.startswith(("http://", "https://")):
        import json

        _http("POST", target, json.dumps(data).encode(), "application/json")
    else:
        import importlib

        module, _, name = target.partition(":")
        function = getattr(importlib.import_module(module), name)
        function(data)


def _mail(address: str, data: dict[str, Any], settings: Settings) -> None:
    import smtplib
    from email.message import EmailMessage

    if not settings.smtp:
        raise ValueError("no smtp = \"host:port\" in reqcron.toml to send mail through")
    host, _, port = settings.smtp.rpartition(":")
    message = EmailMessage()
    what = (data["event"].replace("_", " ") if data["event"] in ("recovered", "corrected",
                                                                 RUNNING_LONG)
            else data["status"])
    message["Subject"] = f"reqcron: {data['task']} {what} on {data['host']}"
    message["From"] = settings.smtp_from or f"reqcron@{data['host']}"
    message["To"] = address
    message.set_content(text(data))
    with smtplib.SMTP(host, int(port), timeout=TIMEOUT) as smtp:
        if settings.smtp_starttls:
            smtp.starttls()
        if settings.smtp_user:
            smtp.login(settings.smtp_user, settings.smtp_password or "")
        smtp.send_message(message)


def text(data: dict[str, Any]) -> str:
    """A message people read: what, where, when, the first error line, where the rest is."""
    if data["event"] == "recovered":
        head = f"Task {data['task']} recovered: its run {data['run']} ended ok."
    elif data["event"] == RUNNING_LONG:
        head = (f"Task {data['task']}: run {data['run']} is still running, longer than its "
                "warn_after.")
    elif data["event"] == "corrected":
        head = (f"Task {data['task']}: run {data['run']}, told as failed when its process "
                f"looked dead, ended {data['status']} after all (it had lost its connection "
                "to the state).")
    else:
        head = f"Task {data['task']} {data['status']}: run {data['run']}."
    lines = [head, "", f"host:    {data['host']}", f"docroot: {data['docroot']}",
             f"start:   {data['start']}", f"end:     {data['end']}"]
    if data["error"]:
        lines.append(f"error:   {data['error']}")
    lines += ["", "The whole output and traceback:", f"    {data['see']}", ""]
    if data["event"] == "failed":
        lines.append("No more messages are sent while it keeps failing; one comes when it "
                     "recovers.")
    return "\n".join(lines)


def _http(method: str, url: str, body: bytes | None = None,
          content_type: str = "text/plain; charset=utf-8") -> None:
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": content_type,
                                              "User-Agent": "reqcron"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        response.read(1024)


# -- pings ------------------------------------------------------------------------------


def ping_start(url: str | None) -> threading.Thread | None:
    """``GET {ping}/start`` in a thread, so a slow endpoint never delays run().

    Pass the thread to ping_end, which waits for it: the start must reach the
    endpoint before the end, and before a short run's process exits.
    """
    if not url:
        return None
    thread = threading.Thread(target=_ping, args=("GET", f"{url.rstrip('/')}/start", None),
                              name="reqcron-ping", daemon=True)
    thread.start()
    return thread


def ping_end(url: str | None, ok: bool, output: str | None,
             started: threading.Thread | None = None) -> None:
    """``POST {ping}`` (or ``{ping}/fail``) with the end of the output; waits at most TIMEOUT."""
    if not url:
        return
    if started is not None:
        started.join(TIMEOUT)
    body = (output or "")[-PING_BODY:].encode("utf-8", "replace")
    _ping("POST", url.rstrip("/") + ("" if ok else "/fail"), body)


def _ping(method: str, url: str, body: bytes | None) -> None:
    try:
        within(TIMEOUT, lambda: _http(method, url, body))
    except Exception as exc:
        log.warning("reqcron: ping %s failed: %s", url, exc)


def notify_in_thread(settings: Settings, store: Store, zone: tzinfo,
                     runs: Sequence[tuple[int, Sequence[str]]]) -> None:
    """``notify_run`` for each (run id, the task's own targets), from a thread of its own.

    The caller may be the middleware's worker, which must not wait on a mail
    server.  Not a daemon: a command that recorded the run still sends
    before it exits.  Each run is read as recorded by then, not as found.
    """
    def tell() -> None:
        for run_id, targets in runs:
            recorded = store.get_run(run_id)
            if recorded is not None:
                notify_run(settings, store, recorded, targets, zone)

    threading.Thread(target=tell, name="reqcron-notify").start()
