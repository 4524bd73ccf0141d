"""The distribution a user installs: wheel and sdist build, pass twine, install and run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_and_sdist_build_pass_twine_and_the_wheel_runs_the_example(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())],
        check=True,
        capture_output=True,
    )
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "flask_apikeys/py.typed" in names
    assert not any(name.startswith(("tests/", "example_app/")) for name in names)

    # A fresh venv that sees the already-installed dependencies but not this checkout.
    environment = tmp_path / "venv"
    venv.create(environment, system_site_packages=True, with_pip=True)
    python = environment / "bin" / "python"
    # Nor through PYTHONPATH, which a run against a worktree may set.
    isolated = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheels[0])],
        check=True,
        capture_output=True,
        env=isolated,
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
        "print('version', flask_apikeys.__version__)\n"
    )
    result = subprocess.run(
        [str(python), "-c", script],
        cwd=tmp_path / "app",
        env=isolated,
        check=True,
        capture_output=True,
        text=True,
    )
    from flask_apikeys import __version__

    assert result.stdout.strip() == f"version {__version__}"
