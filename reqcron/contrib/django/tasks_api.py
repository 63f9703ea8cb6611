"""Django's Tasks framework: ``django.tasks`` (Django 6+), else the ``django-tasks`` backport.

Both have the same API; the names this app uses are taken from whichever
is there, as plain attributes (one module to change when they part).
"""

from __future__ import annotations

import importlib
from typing import Any

try:
    _tasks = importlib.import_module("django.tasks")
    _PACKAGE = "django.tasks"
except ImportError:  # Django before 6
    _tasks = importlib.import_module("django_tasks")
    _PACKAGE = "django_tasks"

_base = importlib.import_module(f"{_PACKAGE}.base")
_exceptions = importlib.import_module(f"{_PACKAGE}.exceptions")

BaseTaskBackend: Any = importlib.import_module(f"{_PACKAGE}.backends.base").BaseTaskBackend
Task: Any = _base.Task
TaskContext: Any = _base.TaskContext
TaskError: Any = _base.TaskError
TaskResult: Any = _base.TaskResult
TaskResultStatus: Any = _base.TaskResultStatus
TaskResultDoesNotExist: Any = _exceptions.TaskResultDoesNotExist
#: InvalidTask in Django, InvalidTaskError in the backport.
InvalidTask: Any = getattr(_exceptions, "InvalidTask", None) or _exceptions.InvalidTaskError
signals: Any = importlib.import_module(f"{_PACKAGE}.signals")
normalize_json: Any = (_base.normalize_json if hasattr(_base, "normalize_json")
                       else importlib.import_module(f"{_PACKAGE}.utils").normalize_json)
