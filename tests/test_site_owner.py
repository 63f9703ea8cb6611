"""Two DOCROOTs of one host given the same `site` share one state and would run each other's
tasks: the second is refused with one clear error, the first goes on; a DOCROOT that has
stopped (a release folder replaced by the next deploy) is taken over."""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import reqcron_cmd

from reqcron import Docroot
from reqcron.engine import site_owner
from reqcron.errors import ConfigError, ExitCode
from reqcron.store.base import HOST

A = """
from reqcron import Task

class Backup(Task):
    every = 3600
"""
B = """
from reqcron import Task

class Mailer(Task):
    every = 3600
"""
SHOP = '[reqcron]\nsite = "shop"\n'


def test_a_second_docroot_with_the_same_site_is_refused_and_the_first_goes_on(make_docroot):
    first, second = make_docroot(A, SHOP), make_docroot(B, SHOP)
    with Docroot(first) as doc:
        assert set(doc.catalog().tasks) == {"Backup"}
    with Docroot(second) as doc, pytest.raises(ConfigError) as refused:
        doc.catalog()
    assert "site 'shop' is the site of" in str(refused.value) and str(first) in str(
        refused.value)
    checked = reqcron_cmd("check", str(second))
    assert checked.returncode == ExitCode.USAGE and "give this one a site of its own" in (
        checked.stderr + checked.stdout)
    assert "Traceback" not in checked.stderr
    with Docroot(first) as doc:  # its catalog stays, and it goes on
        assert set(doc.catalog().tasks) == {"Backup"}
        doc.due()


def test_a_docroot_that_stopped_or_changed_site_is_taken_over(make_docroot):
    first, second = make_docroot(A, SHOP), make_docroot(B, SHOP)
    with Docroot(first) as doc:
        doc.catalog()
        store = doc.store
        # The first last read its files long ago: the next deploy's folder takes over.
        held = json.loads(store.meta(f"docroot:{HOST}") or "{}")
        held["at"] = time.time() - site_owner.OWNED - 1
        store.set_meta(f"docroot:{HOST}", json.dumps(held))
    with Docroot(second) as doc:
        assert set(doc.catalog().tasks) == {"Mailer"}
    # A DOCROOT that is gone holds nothing, however recent its read.
    (first / "__tasks__.py").unlink()
    (first / "reqcron.toml").unlink()
    os.rmdir(first)
    third = make_docroot(A, SHOP)
    with Docroot(second) as doc:
        doc.store.set_meta(f"docroot:{HOST}", json.dumps({"path": str(first),
                                                          "at": time.time()}))
    with Docroot(third) as doc:
        assert set(doc.catalog().tasks) == {"Backup"}
