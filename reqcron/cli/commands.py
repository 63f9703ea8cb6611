"""The ``reqcron`` subcommands, each a thin layer over Docroot and report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, NoReturn

from .. import report, times
from ..engine import registry
from ..engine.docroot import Docroot
from ..errors import ExitCode, ReqCronError
from ..records import Trigger
from .call_commands import add_call_commands
from .check import cmd_check
from .output import crontab_escaped as _crontab_escaped
from .output import emit as _emit
from .output import table as _table
from .time_commands import add_time_commands, paused_line

#: Which exit code of several runs is the worst, for `due --wait`.


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one sentence and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"reqcron: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="reqcron", description="See and steer the tasks of a DOCROOT.")
    parser.add_argument("--version", action="version", version=f"reqcron {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    def command(name: str, handler: Any, help: str, task: bool | str = False,
                json_flag: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("docroot", metavar="DOCROOT")
        if task == "optional":
            p.add_argument("task", metavar="TASK", nargs="?")
        elif task:
            p.add_argument("task", metavar="TASK")
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(handler=handler)
        return p

    command("run", cmd_run, "run a task now, in the foreground (same as runtask)", task=True)
    command("list", cmd_list, "each task: schedule, next and last run, state", json_flag=True)
    due = command("due", cmd_due, "start every due task, exactly as a request would")
    due.add_argument("--wait", action="store_true",
                     help="wait for them; exit with the worst task's code")
    hist = command("history", cmd_history, "past runs, newest first", task="optional",
                   json_flag=True)
    hist.add_argument("--limit", type=_positive, default=20, metavar="N")
    hist.add_argument("--run", type=int, metavar="ID", help="one run's whole output")
    command("enable", cmd_enable, "turn a task's schedule on, for every trigger", task=True)
    command("disable", cmd_disable, "turn a task's schedule off, for every trigger", task=True)
    add_time_commands(command)
    add_call_commands(command)
    command("check", cmd_check, "load __tasks__.py and reqcron.toml; report problems")
    command("crontab", cmd_crontab, "print crontab lines that run the same schedule")
    explain = command("explain", cmd_explain, "the next run times of a task", task=True,
                      json_flag=True)
    explain.add_argument("--count", type=_positive, default=10, metavar="N")
    state = sub.add_parser("state", help="look after the state itself",
                           description="look after the state itself")
    actions = state.add_subparsers(dest="action", required=True, metavar="ACTION",
                                   parser_class=_Parser)
    reset = actions.add_parser("reset", help="set a damaged state aside and start afresh",
                               description="set the state aside (kept beside it, renamed) "
                               "and start a fresh one; history and positions start over")
    reset.add_argument("docroot", metavar="DOCROOT")
    reset.add_argument("--force", action="store_true",
                       help="reset a state that is not damaged too (its history is set aside)")
    reset.set_defaults(handler=cmd_state_reset)
    copy = actions.add_parser("copy", help="copy the SQLite state into a PostgreSQL one",
                              description="copy this DOCROOT's SQLite state (schedule positions, "
                              "enable flags, history) into PostgreSQL as its `site`, for several "
                              "hosts; then set `state` in reqcron.toml")
    copy.add_argument("docroot", metavar="DOCROOT")
    copy.add_argument("url", metavar="URL", help="postgresql://...")
    copy.add_argument("--site", metavar="NAME",
                      help="the site's name there (default: `site` in reqcron.toml)")
    copy.set_defaults(handler=cmd_state_copy)
    return parser


def _open(args: argparse.Namespace) -> Docroot:
    """The DOCROOT's engine, closed with every other when the command ends (cli/main.py)."""
    return registry.engine(args.docroot, busy_timeout=registry.BACKGROUND_BUSY_TIMEOUT,
                           log_load_errors=False)  # each command reports them


def cmd_run(args: argparse.Namespace) -> int:
    from ..run.runner import run_command

    return run_command(args.docroot, args.task)


def cmd_list(args: argparse.Namespace) -> int:
    doc = _open(args)
    data = report.summary(doc)
    if args.json:
        _emit(data)
    else:
        zone = doc.zone
        rows = []
        for t in data["tasks"]:
            last = t["last_run"]
            last_text = "never"
            if last:
                start = _ts(last["start"] or last["end"])
                last_text = (f"{last['status']} {times.relative(start)}, "
                             f"{times.duration(last['duration'])}")
            next_ts = _ts(t["next_run"])
            rows.append([
                t["name"], t["schedule"],
                f"{times.local(next_ts, zone)} ({times.relative(next_ts)})" if next_ts
                else "-",
                last_text,
                ", ".join([*t["marks"], *(["running"] if t["running"] else []),
                           *(["pending"] if t["pending"] else [])]).upper() or "ok",
            ])
        out = _table(rows, ["TASK", "SCHEDULE", "NEXT RUN", "LAST RUN", "STATE"])
        out += _starved(data["tasks"])
        for error in data["load_errors"]:
            out += f"\nload error: {error}\n"
        broken = [t["name"] for t in data["tasks"] if t["error"]]
        if broken:
            out += (f"\nBROKEN: {', '.join(broken)} keep their last good schedule; their "
                    "slots are recorded as failed until they load again\n")
        for warning in data["warnings"]:
            out += f"\nwarning: {warning}\n"
        calls = data["calls"]
        if calls["queued"] or calls["running"]:
            out += (f"\ndeferred calls: {calls['queued']} queued, {calls['running']} running "
                    f"(reqcron history {doc.path} shows them)\n")
        if data["paused"]:
            out += paused_line(data["paused"])
        out += f"\nstate: {data['state']}\n"
        sys.stdout.write(out)
    if data["load_errors"]:
        return ExitCode.USAGE
    return ExitCode.FAILED if any(set(t["marks"]) - {"disabled", "paused", "running long"}
                               for t in data["tasks"]) else ExitCode.OK


def _starved(tasks: list[dict[str, Any]]) -> str:
    """The starved tasks, and once for all of them the crontab line that fixes them (the
    same `reqcron due` line for each)."""
    starved = [t for t in tasks if t["fix"]]
    if not starved:
        return ""
    names = ", ".join(t["name"] for t in starved)
    one = len(starved) == 1
    return (f"\n{names} {'is' if one else 'are'} starved: no request or crontab has "
            f"triggered {'it' if one else 'them'} since {'its' if one else 'their'} slot. "
            f"Add this crontab line:\n  {_crontab_escaped(starved[0]['fix'])}\n")


def _ts(value: str | None) -> float | None:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp() if value else None


def cmd_due(args: argparse.Namespace) -> int:
    from ..paths import owner_warning
    from ..run.spawn import Spawner

    doc = _open(args)
    load_errors = doc.load_errors()
    for problem in [*load_errors, *filter(None, [owner_warning(doc.path)])]:
        sys.stderr.write(f"reqcron: {problem}\n")
    spawner = Spawner()
    started = [(claim, spawner.start(doc, claim)) for claim in doc.due(Trigger.DUE)]
    for claim, ok in started:
        sys.stdout.write(f"started {claim.task} (run {claim.run_id})\n" if ok else
                         f"could not start {claim.task} (run {claim.run_id})\n")
    drainers = [spawner.start_drainer(doc) for _ in range(doc.drainers_wanted())]
    if drainers:
        sys.stdout.write(f"started {sum(drainers)} process(es) for the queued deferred calls\n")
    # What loads is started; the slots of what does not are recorded as failed.
    codes: list[int] = [ExitCode.USAGE] if load_errors else []
    codes += [ExitCode.OK if ok else ExitCode.FAILED for _, ok in started]
    if args.wait:
        while spawner.reap():
            time.sleep(0.05)
        for claim, ok in started:
            run = doc.get_run(claim.run_id)
            if ok:
                ended = run.exit_code if run is not None else None
                codes.append(ExitCode.FAILED if ended is None else ended)
    return ExitCode.worst(codes)


def cmd_history(args: argparse.Namespace) -> int:
    doc = _open(args)
    zone = doc.zone
    if args.run is not None:
        run = doc.get_run(args.run)
        if run is None or (args.task and run.task != args.task):
            raise _NoSuchRun(args.run)
        data = report.run_dict(run, zone, full=True)
        if args.json:
            _emit(data)
            return ExitCode.OK
        out = "".join(f"{k}: {_shown(k, v)}\n" for k, v in data.items()
                      if k not in ("output", "traceback", "full_error", "error") and v is not None)
        if run.error:
            out += f"error: {run.error}\n"
        output = report.output_without_traceback(run)
        if output.strip():
            out += f"\n--- output ---\n{output.rstrip()}\n"
        if run.traceback:
            out += f"\n--- traceback ---\n{run.traceback.rstrip()}\n"
        sys.stdout.write(out)
        return ExitCode.OK
    runs = doc.history(args.task, limit=args.limit)
    if args.json:
        _emit([report.run_dict(r, zone) for r in runs])
        return ExitCode.OK
    from ..engine.stored_calls import label

    rows = [[str(r.id), label(r), r.trigger, times.local(r.start or r.created, zone),
             times.duration(r.duration), r.status + (f" x{r.slots}" if r.slots > 1 else ""),
             report.shorten(report.first_error_line(r) or "", 70)] for r in runs]
    sys.stdout.write(_table(rows, ["RUN", "TASK", "TRIGGER", "START", "DURATION", "STATUS",
                                   "ERROR"]) if rows else "no runs yet\n")
    return ExitCode.OK


def _shown(key: str, value: Any) -> str:
    """One field of a run for people: seconds rounded, data as JSON."""
    if key in ("duration", "lateness"):
        return times.duration(value)
    if isinstance(value, str):
        return value
    return json.dumps(value)


class _NoSuchRun(ReqCronError, LookupError):
    def __init__(self, run_id: int):
        super().__init__(f"no run with id {run_id}")


def cmd_enable(args: argparse.Namespace) -> int:
    _open(args).enable(args.task)
    sys.stdout.write(f"{args.task} enabled\n")
    return ExitCode.OK


def cmd_disable(args: argparse.Namespace) -> int:
    _open(args).disable(args.task)
    sys.stdout.write(f"{args.task} disabled (a run in progress, if any, sees proceed() "
                     "turn False)\n")
    return ExitCode.OK


def cmd_crontab(args: argparse.Namespace) -> int:
    doc = _open(args)
    # The commented-out `reqcron due` line is meant to be uncommented: escaped too.
    due = f"# {report.crontab_due_line(doc)}"
    lines = [line if line.startswith("#") and line != due else _crontab_escaped(line)
             for line in report.crontab_lines(doc)]
    sys.stdout.write("\n".join(lines) + "\n")
    errors = doc.load_errors()
    for error in errors:
        sys.stderr.write(f"reqcron: {error}\n")
    if errors:
        sys.stderr.write("reqcron: the lines above keep the last good schedule of the tasks "
                         "that do not load; fix them and print the lines again\n")
    return ExitCode.FAILED if errors else ExitCode.OK


def cmd_state_copy(args: argparse.Namespace) -> int:
    from ..store.postgres import redact

    if not args.url.startswith(("postgresql://", "postgres://")):
        raise _Usage(f"URL must be a PostgreSQL URL (postgresql://...), not "
                     f"{redact(args.url)!r}")
    doc = _open(args)
    tasks, runs = doc.copy_state_to(args.url, args.site)
    site = args.site or doc.settings.site
    sys.stdout.write(f"copied {tasks} tasks and {runs} runs into {redact(args.url)}; now set "
                     f'state = "{redact(args.url)}" and site = "{site}" in reqcron.toml\n')
    return ExitCode.OK


class _Usage(ReqCronError, ValueError):
    pass


def cmd_state_reset(args: argparse.Namespace) -> int:
    doc = _open(args)
    if not args.force and not doc.state_problems():
        sys.stderr.write(f"reqcron: the state at {doc.state_location} is usable; "
                         "pass --force to set it aside all the same\n")
        return ExitCode.USAGE
    aside = doc.reset_state()
    sys.stdout.write(f"the old state is kept at {aside}; a fresh state starts at "
                     f"{doc.state_location}\n" if aside else
                     f"there was no state at {doc.state_location}; nothing to reset\n")
    return ExitCode.OK


def cmd_explain(args: argparse.Namespace) -> int:
    doc = _open(args)
    info = doc.info(args.task)
    describe = info.describe
    if doc.catalog().error_of(args.task):
        sys.stderr.write(f"reqcron: {args.task} does not load; these are the times of its last "
                         f"good schedule: {doc.catalog().error_of(args.task)}\n")
    pause = doc.paused()
    runs = report.explain(doc, args.task, args.count, pause)
    paused = None
    if pause is not None:
        paused = {"since": times.iso(pause.since, doc.zone), "until": times.iso(pause.until,
                                                                                doc.zone)}
    if args.json:
        _emit({"task": args.task, "schedule": describe, "between": info.between,
               "even_when_paused": info.even_when_paused, "site_paused": paused, "runs": runs})
        return ExitCode.OK
    out = f"{args.task}: {describe}\n"
    if info.between:
        out += f"  only between {info.between} ({info.zone or doc.zone}): other slots are skipped\n"
    if paused is not None:
        until = f"until {paused['until']}" if paused["until"] else "until `reqcron resume`"
        out += (f"  the site is PAUSED since {paused['since']} {until}"
                + ("; this task runs anyway (even_when_paused)\n" if info.even_when_paused
                   else ": its slots meanwhile are recorded as skipped\n"))
    for r in runs:
        notes = [*([r["dst_change"]] if r["dst_change"] else []),
                 *(["paused: recorded as skipped"] if r["paused"] else [])]
        out += f"  {r['local']}" + (f"   <- {'; '.join(notes)}" if notes else "") + "\n"
    if not runs:
        out += "  no future runs\n"
    sys.stdout.write(out)
    return ExitCode.OK
