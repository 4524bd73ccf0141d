"""The docs run as written: every code block of README.rst and docs/quickstart.rst is taken
from the file itself (parsed, never copied here) and executed, and every error code's ``type``
URL lands on an anchor of the built errors page."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import docutils.core
import docutils.nodes
import pytest

import flask_apikeys
from flask_apikeys.errors import ERROR_TYPE_BASE, APIKeyError

from .servers import free_port
from .test_example_app import start_example, stop

ROOT = Path(__file__).resolve().parent.parent

#: Runs a document's blocks in order in one interpreter, as a reader pasting them would. Shell
#: blocks may only install the package (checked against pyproject's extras, not run: CI runs
#: the install commands in a fresh venv) or call the app with curl, which it then serves.
DRIVER = textwrap.dedent(
    r"""
    import json, os, re, shlex, subprocess, sys, threading
    from werkzeug.serving import make_server

    blocks, extras = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
    namespace = {"__name__": "__main__"}
    base_url = None
    for language, text in blocks:
        if language == "python":
            exec(compile(text, "<code block>", "exec"), namespace)
            continue
        for line in text.splitlines():
            command = line.split("#", 1)[0].strip()
            if not command:
                continue
            if command.startswith("pip install"):
                for extra in re.findall(r"\[([a-z,]+)\]", command):
                    assert set(extra.split(",")) <= extras, f"unknown extra in {command}"
                continue
            assert command.startswith("curl "), f"cannot run {command!r}"
            if base_url is None:
                server = make_server("127.0.0.1", 0, namespace["app"], threaded=True)
                threading.Thread(target=server.serve_forever, daemon=True).start()
                base_url = f"http://127.0.0.1:{server.server_port}"
            runnable = command.replace("https://api.example.com", base_url).replace(
                "pk_live_…", namespace["created"].key
            )
            done = subprocess.run(
                ["bash", "-c", runnable], capture_output=True, text=True, timeout=30
            )
            print("CURL", done.stdout.strip() or done.stderr, command, flush=True)
    print("DRIVER DONE", flush=True)
    """
)


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """The literal blocks of an reST file in order, as ``(language, text)``; a ``::`` block
    counts as ``sh``. Roles unknown outside Sphinx (``:doc:``) are ignored while parsing."""
    document = docutils.core.publish_doctree(
        path.read_text(),
        source_path=str(path),
        settings_overrides={"report_level": 5, "halt_level": 5},
    )
    blocks = []
    for block in document.findall(docutils.nodes.literal_block):
        languages = [name for name in block["classes"] if name != "code"]
        blocks.append((languages[0] if languages else "sh", block.astext()))
    return blocks


def test_code_blocks_are_found_in_both_files() -> None:
    """Guards the tests below against a parser that silently finds nothing."""
    readme, quickstart = code_blocks(ROOT / "README.rst"), code_blocks(ROOT / "docs/quickstart.rst")
    assert [language for language, _ in readme].count("python") == 2
    assert [language for language, _ in quickstart].count("python") == 4
    assert any("curl" in text for _, text in quickstart)


def extras() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return sorted(project["optional-dependencies"])


def run_blocks(blocks: list[tuple[str, str]], workdir: Path) -> str:
    environment = {**curl_printing_only_status(workdir / "curl"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(blocks), json.dumps(extras())],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "DRIVER DONE" in result.stdout
    return result.stdout


@pytest.mark.slow  # runs the page's blocks and curl in child processes: seconds
def test_the_quickstart_runs_as_written(tmp_path: Path) -> None:
    output = run_blocks(code_blocks(ROOT / "docs/quickstart.rst"), tmp_path)
    keys = re.findall(r"^pk_live_[0-9A-Za-z]{46}$", output, re.MULTILINE)
    assert len(keys) == 2 and keys[0] != keys[1]  # the created key, then its rotation
    statuses = re.findall(r"^CURL (\d+) ", output, re.MULTILINE)
    assert statuses == ["200", "200", "200"], output


@pytest.mark.slow  # runs the README's blocks in child processes: seconds
def test_the_readme_quick_start_runs_as_written(tmp_path: Path) -> None:
    blocks = [block for block in code_blocks(ROOT / "README.rst") if block[0] == "python"]
    output = run_blocks(blocks, tmp_path)
    assert re.search(r"^pk_live_[0-9A-Za-z]{46}$", output, re.MULTILINE), output


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    """CI runs the block after ``.. test-command`` literally (``.ci/run``); it must exist and
    be a command a new user can paste."""
    after_marker = (ROOT / "README.rst").read_text().split(".. test-command", 1)[1]
    command = next(
        text for _, text in code_blocks(ROOT / "README.rst") if text.splitlines()[0] in after_marker
    )
    assert command.startswith("python -m pip install -e ") and "python -m pytest" in command


def curl_printing_only_status(directory: Path) -> dict[str, str]:
    """An environment whose curl prints each answer's status and nothing else (through a
    ``.curlrc``), so documented commands run exactly as written."""
    directory.mkdir(exist_ok=True)
    (directory / ".curlrc").write_text(
        'silent\noutput = "/dev/null"\nwrite-out = "%{http_code} "\n'
    )
    return {**os.environ, "CURL_HOME": str(directory)}


@pytest.mark.slow
def test_the_readme_example_app_commands_answer_as_the_readme_says(tmp_path: Path) -> None:
    """The first block starts the example app (its install half is run by CI in a fresh
    venv); the curl lines after it run as written, against the port the app was given."""
    blocks = code_blocks(ROOT / "README.rst")
    (_, start_command), (_, curl_block) = blocks[0], blocks[1]
    install, launch = start_command.split(" && ")
    assert install == "python -m pip install -e ."
    assert shlex.split(launch) == ["python", "-m", "example_app"]
    port = free_port()
    process, keys, _ = start_example(tmp_path, port)
    try:
        environment = {**curl_printing_only_status(tmp_path / "curl"), **keys}
        for line in curl_block.splitlines():
            command, _, comment = line.partition("#")
            runnable = command.replace("127.0.0.1:5000", f"127.0.0.1:{port}")
            done = subprocess.run(
                ["bash", "-c", runnable],
                env=environment,
                capture_output=True,
                text=True,
                timeout=60,
            )
            statuses = done.stdout.split()
            expected = re.search(r"\b(\d{3})\b", comment)
            assert done.returncode == 0 and statuses, (line, done.stderr)
            assert statuses[-1] == (expected.group(1) if expected else "200"), (line, statuses)
    finally:
        stop(process)


#: A reST comment ``.. not-run: <why>`` right before a code block keeps the test below from
#: running it; the reason must say where the same thing is run instead.
NOT_RUN_MARKER = "not-run:"
#: Pages whose blocks have tests of their own: the two above, and the observability page's
#: (tests/test_observability.py, with Prometheus' multiprocess directory set up).
PAGES_RUN_ELSEWHERE = {"quickstart.rst", "observability.rst"}
#: What a reader's deployment has in its environment, for the blocks that read it.
READER_ENVIRONMENT = {"APIKEYS_JWT_SECRET": "a-jwt-secret-of-32-or-more-characters-from-a-vault"}

PAGE_DRIVER = textwrap.dedent(
    r"""
    import json, sys
    setup, blocks = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    namespace = {"__name__": "__main__"}
    for text in setup:
        exec(compile(text, "<quickstart>", "exec"), namespace)
    for number, text in blocks:
        with namespace["app"].app_context():
            exec(compile(text, f"<python block {number}>", "exec"), namespace)
    print("PAGE DONE", flush=True)
    """
)


def python_blocks_to_run(path: Path) -> tuple[list[tuple[int, str]], list[str]]:
    """The page's Python blocks as ``(number, text)``, and the reasons of those not run."""
    document = docutils.core.publish_doctree(
        path.read_text(),
        source_path=str(path),
        settings_overrides={"report_level": 5, "halt_level": 5},
    )
    runnable, reasons, reason = [], [], None
    for node in document.findall(
        lambda node: isinstance(node, docutils.nodes.comment | docutils.nodes.literal_block)
    ):
        if isinstance(node, docutils.nodes.comment):
            text = node.astext().strip()
            reason = (
                text.removeprefix(NOT_RUN_MARKER).strip()
                if text.startswith(NOT_RUN_MARKER)
                else None
            )
            continue
        if "python" in node["classes"] and not node.get("source"):  # literalinclude: a file
            if reason is None:
                runnable.append((node.line or 0, node.astext()))
            else:
                reasons.append(reason)
        reason = None
    return runnable, reasons


DOC_PAGES = sorted(
    path for path in (ROOT / "docs").glob("*.rst") if path.name not in PAGES_RUN_ELSEWHERE
)


@pytest.mark.slow  # each page in a child process, after the quickstart: seconds
@pytest.mark.parametrize("page", DOC_PAGES, ids=[path.name for path in DOC_PAGES])
def test_every_python_block_of_a_docs_page_runs_after_the_quickstart(
    page: Path, tmp_path: Path
) -> None:
    """A reader who did the quickstart pastes the page's blocks in order (inside an app
    context, as the pages say): each runs, or says with ``.. not-run:`` where it is run."""
    blocks, reasons = python_blocks_to_run(page)
    assert all(reasons), f"a '.. not-run:' without a reason in {page.name}"
    if not blocks:
        return
    setup = [
        text for language, text in code_blocks(ROOT / "docs/quickstart.rst") if language == "python"
    ]
    result = subprocess.run(
        [sys.executable, "-c", PAGE_DRIVER, json.dumps(setup), json.dumps(blocks)],
        cwd=tmp_path,
        env={**os.environ, **READER_ENVIRONMENT, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{page.name}:\n{result.stdout}\n{result.stderr}"
    assert "PAGE DONE" in result.stdout


def test_the_docs_pages_hold_python_blocks_to_run() -> None:
    """Guards the test above against a parser that silently finds nothing."""
    counted = {page.name: len(python_blocks_to_run(page)[0]) for page in DOC_PAGES}
    assert counted["permissions.rst"] == 2 and counted["usage.rst"] == 2
    assert sum(counted.values()) >= 12


def every_error_code() -> set[str]:
    for module in pkgutil.walk_packages(flask_apikeys.__path__, "flask_apikeys."):
        importlib.import_module(module.name)
    codes, pending = set(), list(APIKeyError.__subclasses__())
    while pending:
        error = pending.pop()
        pending += error.__subclasses__()
        if "error_code" in vars(error):  # not an intermediate base that inherits one
            codes.add(error.error_code)
    return codes


@pytest.mark.slow
def test_every_error_type_url_resolves_to_an_anchor_in_the_built_docs(tmp_path: Path) -> None:
    if not ERROR_TYPE_BASE.endswith("errors.html#"):
        pytest.fail(f"{ERROR_TYPE_BASE} no longer points at errors.html")
    try:
        importlib.import_module("sphinx")
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("Sphinx is not installed; CI is set, so this test must not be skipped")
        pytest.skip("Sphinx is not installed (pip install -e '.[docs]')")
    built = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-q", "-b", "html", str(ROOT / "docs"), str(built)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    anchors = set(re.findall(r'\bid="([^"]+)"', (built / "errors.html").read_text()))
    codes = every_error_code()
    assert len(codes) >= 20
    assert codes - anchors == set()
