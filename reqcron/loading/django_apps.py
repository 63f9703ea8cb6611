"""Django apps' ``cron.py`` files: task modules found by the installed apps, like ``modules``.

With ``reqcron.contrib.django`` installed, each installed app's ``cron.py``
(django-cron's convention) is a task module.  Which apps are installed is
known only once Django is set up, in the processes that import task code;
the web server's processes, which import none, follow the ``cron.py``
files of the DOCROOT's own folders (where ``startproject`` puts the apps).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

APP = "reqcron.contrib.django"
CRON_FILE = "cron.py"


def cron_modules(modules: Sequence[str] = ()) -> list[str]:
    """Each installed app's ``cron`` module, apps in their settings order (Django set up).

    Empty unless ``reqcron.contrib.django`` is an installed app; ``modules``
    already listed are left out.
    """
    from django.apps import apps

    if not apps.is_installed(APP):
        return []
    found = [f"{config.name}.cron" for config in apps.get_app_configs()
             if os.path.isfile(os.path.join(config.path, CRON_FILE))]
    return [name for name in found if name not in modules]


def cron_files(docroot: Path) -> list[Path]:
    """The ``cron.py`` files of the DOCROOT's folders, found without importing anything."""
    return sorted(docroot.glob(f"*/{CRON_FILE}"))
