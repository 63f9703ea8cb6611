"""reqcron as a Django app: apps' ``cron.py``, ``manage.py reqcron``, a django.tasks backend.

``INSTALLED_APPS += ["reqcron.contrib.django"]``; ``REQCRON_DOCROOT``
(default ``BASE_DIR``) names the DOCROOT whose ``reqcron.toml`` holds the
rest.  ``ReqCronBackend`` is imported on first use: the Tasks framework is
not loaded with the app.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReqCronBackend"]


def __getattr__(name: str) -> Any:
    if name == "ReqCronBackend":
        from .backend import ReqCronBackend

        return ReqCronBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
