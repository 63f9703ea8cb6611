"""One DOCROOT per site on each host: two that name the same `site` would fight.

Two DOCROOTs of one host given the same ``site`` share one state, and each
would re-read its own task files whenever it saw the other's catalog, the
tasks running as one file or the other said.  So before a process reads its
task files because the stored catalog is not theirs, it looks at which
DOCROOT of this host read them last: another that still exists, names the
same site and read them within OWNED seconds is a clash, refused with one
clear error (the site keeps running from the first).  A release folder
replaced by the next deploy has stopped reading: the new one takes over.
Other hosts (PostgreSQL) have DOCROOTs of their own, told apart by host.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import CONFIG_FILE, load_settings
from ..errors import ConfigError
from ..store.base import HOST

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~3 ms
if TYPE_CHECKING:
    from ..config import Settings
    from ..store import Store

#: Seconds after its last read during which a DOCROOT still holds its site on this host.
OWNED = 600.0


def claim(store: Store, path: Path, settings: Settings) -> None:
    """Note ``path`` as the DOCROOT of its site on this host, or raise ConfigError if
    another DOCROOT of this host holds the site."""
    if settings.site is None:  # a state keyed by the DOCROOT's own path: no one shares it
        return
    key = f"docroot:{HOST}"
    try:
        held = json.loads(store.meta(key) or "{}")
        other, at = Path(held["path"]), float(held["at"])
    except (ValueError, KeyError, TypeError):
        other, at = None, 0.0
    if other is not None and other != path and time.time() - at < OWNED and _same_site(
            other, settings):
        raise ConfigError(str(path / CONFIG_FILE), f"site {settings.site!r} is the site of "
                          f"{other} on this host already: two DOCROOTs sharing a site would "
                          "run each other's tasks; give this one a site of its own")
    store.set_meta(key, json.dumps({"path": str(path), "at": time.time()}))


def _same_site(other: Path, settings: Settings) -> bool:
    """Whether DOCROOT ``other`` still exists and names the same site in the same state."""
    if not (other / CONFIG_FILE).is_file():
        return False
    try:
        theirs = load_settings(other)
    except (ConfigError, OSError):
        return False
    return (theirs.site, theirs.state, theirs.state_dir) == (settings.site, settings.state,
                                                             settings.state_dir)
