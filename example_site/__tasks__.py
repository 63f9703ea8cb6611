"""The example site's tasks: what a small site typically schedules."""

import time
from datetime import timedelta
from pathlib import Path

from reqcron import Task

DATA = Path(__file__).resolve().parent / "data"


class Heartbeat(Task):
    """Proves the scheduler is alive: writes the time every few seconds."""

    every = timedelta(seconds=5)

    def run(self):
        DATA.mkdir(exist_ok=True)
        (DATA / "heartbeat.txt").write_text(time.strftime("%Y-%m-%d %H:%M:%S %z"))
        self.logger.info("beat")


class CleanUploads(Task):
    """Removes uploads older than an hour, every ten minutes."""

    cron = "*/10 * * * *"
    timeout = 120

    def run(self):
        uploads = DATA / "uploads"
        cutoff = time.time() - 3600
        removed = 0
        for path in uploads.glob("*") if uploads.exists() else ():
            if not self.proceed():
                break
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        self.logger.info("removed %d old uploads", removed)
        return {"removed": removed}


class NightlyReport(Task):
    """Writes a report of yesterday at 02:30, Draco style."""

    def __init__(self):
        Task.__init__(self)
        self.schedule(hour=2, minute=30)

    def run(self):
        DATA.mkdir(exist_ok=True)
        report = DATA / f"report-{time.strftime('%Y-%m-%d')}.txt"
        report.write_text(f"{self.config.get('site_name', 'site')}: all quiet\n")
        return str(report)


class Reindex(Task):
    """On demand only: `reqcron run example_site Reindex`, or the status page."""

    def run(self):
        for step in range(3):
            if not self.proceed():
                return "stopped early"
            self.logger.info("reindexing, step %d of 3", step + 1)
            time.sleep(0.5)
        return "reindexed"
