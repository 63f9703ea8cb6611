"""The DOCROOT of a Django project: ``REQCRON_DOCROOT``, else ``BASE_DIR``."""

from __future__ import annotations

import os


def docroot() -> str:
    """The project's DOCROOT; ImproperlyConfigured when settings name none."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    path = getattr(settings, "REQCRON_DOCROOT", None) or getattr(settings, "BASE_DIR", None)
    if not path:
        raise ImproperlyConfigured(
            "reqcron.contrib.django needs REQCRON_DOCROOT (or BASE_DIR) in the settings: "
            "the folder whose reqcron.toml configures reqcron")
    return str(os.fspath(path))
