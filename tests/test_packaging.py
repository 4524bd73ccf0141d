"""The distribution a user installs: wheel and sdist build, pass twine, install and run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from .parallel import CHECKOUT_GROUP

ROOT = Path(__file__).resolve().parent.parent

# A build writes build/ and *.egg-info into the checkout: one build at a time (tests/parallel.py).
pytestmark = pytest.mark.xdist_group(CHECKOUT_GROUP)


def run(command: list[str], **options: object) -> subprocess.CompletedProcess[str]:
    """Run a child process; on failure, show its output (pytest would otherwise hide it)."""
    result = subprocess.run(command, capture_output=True, text=True, **options)  # type: ignore[call-overload]
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited with {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
    return result  # type: ignore[no-any-return]


def without_pythonpath() -> dict[str, str]:
    """The environment without PYTHONPATH, which a run against a checkout may set."""
    return {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}


def venv_seeing_the_runners_packages(environment: Path) -> Path:
    """A fresh venv that sees the dependencies installed for this test run, but not this checkout.

    ``system_site_packages`` would show the *base* interpreter's packages, which are not the
    runner's when pytest itself runs in a venv. A path file adds the runner's own site-packages
    instead; its ``.pth`` files are not processed, so an editable install of this checkout there
    stays invisible.
    """
    venv.create(environment, with_pip=True)  # the runner's venv may have no pip (uv makes none)
    python = environment / "bin" / "python"
    child_purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        env=without_pythonpath(),
    ).stdout.strip()
    runner_paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(child_purelib) / "runner-site-packages.pth").write_text(
        "".join(f"{path}\n" for path in sorted(runner_paths))
    )
    return python


#: Never part of a distribution, and written by other tests while this one runs (a ``.pyc``
#: is written under a temporary name, then renamed): a build that lists such a file and then
#: copies it fails with "No such file or directory".
NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    "__pycache__",
    "*.py[cod]",
    "*.py[cod].*",
    "*.egg-info",
    "build",
    "dist",
    ".*_cache",
    ".hypothesis",
    "instance",
    "node_modules",
    "*.sqlite*",
    "*.db",
    "*.db-*",
)


def snapshot_of_the_checkout(destination: Path) -> Path:
    """The checkout's sources, copied: built from there, the build sees no file that another
    test is writing, and writes its ``build/`` and ``*.egg-info`` outside the checkout."""
    try:
        shutil.copytree(ROOT, destination, ignore=NOT_SOURCES)
    except shutil.Error as error:
        # copytree copies everything it can, then reports; only files that vanished are fine.
        vanished = [reason for _, _, reason in error.args[0] if "No such file" in reason]
        if len(vanished) != len(error.args[0]):
            raise
    return destination


def build(tmp_path: Path) -> tuple[Path, Path]:
    dist = tmp_path / "dist"
    source = snapshot_of_the_checkout(tmp_path / "checkout")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)])
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())])
    return wheels[0], sdists[0]


@pytest.mark.slow
def test_wheel_and_sdist_build_pass_twine_and_the_wheel_runs_the_example(tmp_path: Path) -> None:
    wheel, _ = build(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "flask_apikeys/py.typed" in names
    assert "flask_apikeys/observability/alerts.yml" in names
    assert "flask_apikeys/observability/dashboard.json" in names
    for part in (
        "templates/apikeys_dashboard/base.html",
        "static/dashboard.css",
        "static/dashboard.js",
    ):
        assert f"flask_apikeys/dashboard/{part}" in names
    assert not any(name.startswith(("tests/", "example_app/", "docs/")) for name in names)

    python = venv_seeing_the_runners_packages(tmp_path / "venv")
    run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        env=without_pythonpath(),
    )
    shutil.copytree(ROOT / "example_app", tmp_path / "app" / "example_app")
    script = (
        "import flask_apikeys, example_app, sys\n"
        "assert 'venv' in flask_apikeys.__file__, flask_apikeys.__file__\n"
        "app = example_app.create_app({'SQLALCHEMY_DATABASE_URI': 'sqlite://'})\n"
        "with app.app_context():\n"
        "    example_app.apikeys.create_all()\n"
        "    org, created = example_app.apikeys.seed()\n"
        "client = app.test_client()\n"
        "response = client.get('/v1/presentations', headers={'X-API-Key': created.key})\n"
        "assert response.status_code == 200, response.data\n"
        "page = client.get('/dashboard/sign-in')\n"  # the dashboard's templates are installed
        "assert page.status_code == 200 and b'Admin key' in page.data, page.data\n"
        "assert client.get('/dashboard/static/dashboard.css').status_code == 200\n"
        "print('version', flask_apikeys.__version__)\n"
    )
    result = run([str(python), "-c", script], cwd=tmp_path / "app", env=without_pythonpath())
    from flask_apikeys import __version__

    assert result.stdout.strip() == f"version {__version__}"


@pytest.mark.slow
def test_the_tests_run_from_an_unpacked_sdist(tmp_path: Path) -> None:
    """The sdist carries what a packager needs to test it: the whole test suite with its
    helpers, the docs, the changelog and the example app."""
    _, sdist = build(tmp_path)
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (source,) = (tmp_path / "unpacked").iterdir()
    for needed in (
        "tests/__init__.py",
        "tests/conftest.py",
        "tests/factory.py",
        "tests/servers.py",
        "docs/conf.py",
        "docs/index.rst",
        "CHANGES.rst",
        "tox.ini",
        "example_app/__main__.py",
        "example_app/migrations/alembic.ini",
    ):
        assert (source / needed).is_file(), f"{needed} is missing from the sdist"
    assert sorted(path.name for path in (source / "tests").glob("test_*.py")) == sorted(
        path.name for path in (ROOT / "tests").glob("test_*.py")
    )

    # The unpacked sdist's own code and tests, not this checkout's.
    isolated = without_pythonpath()
    imported = run(
        [sys.executable, "-c", "import flask_apikeys; print(flask_apikeys.__file__)"],
        cwd=source,
        env=isolated,
    )
    assert Path(imported.stdout.strip()).is_relative_to(source), imported.stdout
    collected = run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=source,
        env=isolated,
    )
    summary = collected.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ tests collected in [\d.]+s( \(.*\))?", summary), collected.stdout
    result = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow"]
        + ["tests/test_keys.py", "tests/test_example_app.py", "tests/test_docs.py"],
        cwd=source,
        env=isolated,
    )
    assert " passed" in result.stdout and "failed" not in result.stdout, result.stdout
