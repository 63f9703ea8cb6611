"""The sdist and wheel as a user gets them: built, checked, installed into a fresh venv, run.

The distributions are built once per session (``python -m build``, from a copy of
the source tree, so the checkout gets no ``build/`` or ``*.egg-info``), and the wheel
is installed once per session into a new venv outside the checkout, with its
dependencies resolved from the package index as a user's ``pip install`` would
(pip's cache is reused, so a second run is quick).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

import reqcron

# Building and installing fetch from the package index; on a busy machine that can
# take longer than the suite's 120 s per test.
pytestmark = pytest.mark.timeout(600)

EXAMPLE_TASKS = ["CleanUploads", "Heartbeat", "NightlyReport", "Reindex"]
VERSION = reqcron.__version__
# What a copy of the source tree leaves out: what `git clone` would not have.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", "*.py[cod]", ".*_cache", "build", "dist",
    "*.egg-info", "*.whl", "data",
)


def package_files() -> set[str]:
    """Every file of the reqcron package in the checkout, as a path in the wheel."""
    files = {p.relative_to(REPO).as_posix() for p in (REPO / "reqcron").rglob("*.py")}
    return files | {"reqcron/py.typed"}


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ (pip's index settings included) without what would reach the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", **extra}


def run(cmd: list[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """The command's stdout; a failure with everything it printed when it did not exit 0."""
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(proc.args)} exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel), built by `python -m build` as a release would be."""
    base = tmp_path_factory.mktemp("dists")
    source, out = base / "source", base / "dist"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    ok(run([sys.executable, "-m", "build", "--outdir", out, source], cwd=base, env=clean_env()))
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return sdists[0], wheels[0]


@pytest.fixture(scope="session")
def installed(dists: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and its dependencies installed: its bin directory."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    outside = venv.parent
    ok(run([sys.executable, "-m", "venv", venv], cwd=outside, env=clean_env()))
    bin_dir = venv / "bin"
    ok(run([bin_dir / "python", "-m", "pip", "install", "--disable-pip-version-check",
            "--no-input", dists[1]], cwd=outside, env=clean_env(), timeout=500))
    return bin_dir


@pytest.fixture
def example(tmp_path: Path) -> Iterator[Path]:
    """A copy of example_site, outside the checkout (its runs write data/ beside it)."""
    site = tmp_path / "example_site"
    shutil.copytree(REPO / "example_site", site, ignore=NOT_SOURCE)
    yield site


def test_version_is_written_once():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "reqcron.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|(a|b|rc)\d+)?", VERSION)


def test_distributions_carry_the_version(dists):
    sdist, wheel = dists
    assert sdist.name == f"reqcron-{VERSION}.tar.gz"
    assert wheel.name == f"reqcron-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(f"reqcron-{VERSION}.dist-info/METADATA").decode()
    assert f"\nVersion: {VERSION}\n" in metadata


def test_twine_check_passes(dists):
    out = ok(run([sys.executable, "-m", "twine", "check", "--strict", *dists], env=clean_env()))
    assert out.count("PASSED") == 2, out


def test_wheel_holds_the_package_and_nothing_else(dists):
    with zipfile.ZipFile(dists[1]) as zf:
        names = set(zf.namelist())
        info = f"reqcron-{VERSION}.dist-info/"
        metadata = zf.read(info + "METADATA").decode()
        entry_points = zf.read(info + "entry_points.txt").decode()
    package = {n for n in names if not n.startswith(info)}
    missing = package_files() - package
    assert not missing, f"modules missing from the wheel: {sorted(missing)}"
    assert package == package_files(), f"unexpected: {sorted(package - package_files())}"
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".whl"))]
    assert not [n for n in names if n.split("/")[0] in ("tests", "example_site", "benchmarks",
                                                         "docs", "scripts")]
    assert info + "licenses/LICENSE" in names
    # The metadata a user's pip reads.
    assert "\nLicense-Expression: MIT\n" in metadata
    assert "\nRequires-Python: >=3.11\n" in metadata
    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
    assert "webob>=1.8.8" in requires  # a required dependency: the status page needs it
    assert any(r.startswith("croniter") for r in requires)
    assert any(r.startswith("watchdog") for r in requires)
    assert any(r.startswith("psycopg") and 'extra == "postgres"' in r for r in requires)
    assert "\nProvides-Extra: postgres\n" in metadata
    assert "reqcron = reqcron.cli:main" in entry_points
    assert "runtask = reqcron.cli:runtask_main" in entry_points


def test_sdist_holds_the_source_and_its_tests(dists):
    with tarfile.open(dists[0]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    root = {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "PKG-INFO"}
    assert root <= names, sorted(root - names)
    assert package_files() <= names, sorted(package_files() - names)
    # The tests whole (conftest and the time shim too), so they can run from the sdist.
    tests = {p.relative_to(REPO).as_posix() for p in (REPO / "tests").rglob("*.py")}
    assert tests <= names, sorted(tests - names)
    assert "example_site/__tasks__.py" in names
    assert not [n for n in names if n.startswith((".venv", ".git/", "example_site/data"))
                or n.endswith((".whl", ".pyc")) or "__pycache__" in n]


def test_wheel_runs_the_example_from_a_fresh_venv(installed, example, tmp_path):
    bin_dir, env = installed, clean_env()

    def cmd(*args: str | Path, expect: int = 0) -> str:
        proc = run(list(args), cwd=tmp_path, env=env, timeout=120)
        if proc.returncode != expect:
            ok(proc)  # fails, showing the output
            pytest.fail(f"{args} exited {proc.returncode}, expected {expect}")
        return proc.stdout

    # The installed copy is what runs, not the checkout.
    where = cmd(bin_dir / "python", "-c", "import reqcron, sys; print(reqcron.__file__); "
                "print(sys.path)")
    assert where.startswith(str(bin_dir.parent)), where
    assert str(REPO) not in where
    cmd(bin_dir / "python", "-m", "pip", "check", "--disable-pip-version-check")

    assert cmd(bin_dir / "reqcron", "--version").strip() == f"reqcron {VERSION}"
    cmd(bin_dir / "reqcron", "check", example)
    listed = json.loads(cmd(bin_dir / "reqcron", "list", example, "--json"))
    assert sorted(t["name"] for t in listed["tasks"]) == EXAMPLE_TASKS
    text = cmd(bin_dir / "reqcron", "list", example)
    assert all(name in text for name in EXAMPLE_TASKS), text

    cmd(bin_dir / "runtask", example, "CleanUploads")
    cmd(bin_dir / "runtask", example, "NoSuchTask", expect=2)
    history = json.loads(cmd(bin_dir / "reqcron", "history", example, "--json"))
    runs = history["runs"] if isinstance(history, dict) else history
    assert [(r["task"], r["status"]) for r in runs] == [("CleanUploads", "ok")], runs


def test_wheel_serves_the_example_app_and_status_page(installed, example, tmp_path):
    """The example's WSGI app, with its status page: webob came with the wheel."""
    script = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import app  # the status page is on: reqcron.status imports webob
from webob import Request

page = Request.blank("/").get_response(app.application)
assert page.status_code == 200 and b"reqcron example site" in page.body, page
status = Request.blank("/_reqcron/?format=json", headers={"Authorization": "Bearer t0ken"}
                       ).get_response(app.application)
assert status.status_code == 200, status
print(json.dumps(sorted(t["name"] for t in status.json["tasks"])))
"""
    proc = run([installed / "python", "-c", script, example], cwd=tmp_path,
               env=clean_env(REQCRON_STATUS_TOKEN="t0ken"), timeout=120)
    assert json.loads(ok(proc).strip().splitlines()[-1]) == EXAMPLE_TASKS
