"""The app: its system checks, and the DOCROOT that ``@delay`` falls back to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.core import checks

CONFIG_FILE = "reqcron.toml"


class ReqCronConfig(AppConfig):  # type: ignore[misc]
    name = "reqcron.contrib.django"
    label = "reqcron"
    verbose_name = "reqcron"

    def ready(self) -> None:
        checks.register(check_docroot)
        from .conf import docroot

        try:
            # Deferred calls made outside a ReqCron middleware (manage.py, a
            # shell) go to this DOCROOT too (calls/delay.py).
            os.environ.setdefault("REQCRON_DOCROOT", docroot())
        except Exception:
            pass  # check_docroot says what is missing


def check_docroot(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """REQCRON_DOCROOT is a folder whose reqcron.toml sets this project's django_settings."""
    from django.conf import settings

    from .conf import docroot

    try:
        root = Path(docroot())
    except Exception as exc:
        return [checks.Error(str(exc), id="reqcron.E001")]
    module = os.environ.get("DJANGO_SETTINGS_MODULE") or getattr(settings, "SETTINGS_MODULE", "")
    line = f'django_settings = "{module or "mysite.settings"}"'
    config = root / CONFIG_FILE
    if not root.is_dir():
        return [checks.Error(f"REQCRON_DOCROOT {root} is not a folder", id="reqcron.E002")]
    from ...config import load_settings
    from ...errors import ConfigError

    try:
        settings_module = load_settings(root).django_settings
    except ConfigError as exc:
        return [checks.Error(str(exc), id="reqcron.E003")]
    if not settings_module:
        return [checks.Error(
            f"{config} does not set django_settings, so task processes cannot set Django "
            "up and the apps' cron.py files are not read",
            hint=f"write these lines in {config}:\n[reqcron]\n{line}", id="reqcron.E004")]
    return []
