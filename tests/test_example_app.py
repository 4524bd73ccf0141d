"""The example app as a user runs it: ``python -m example_app`` on a fresh checkout."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def call(url: str, key: str | None = None, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()


def read_lines(process: subprocess.Popen[str], printed: queue.Queue[str]) -> None:
    """Forward the app's output line by line, so the test waits with a timeout, never on a
    ``readline`` that an app printing nothing more would block forever."""
    try:
        for line in process.stdout or ():
            printed.put(line)
    except (OSError, ValueError):  # stop() closed the pipe: the test is over
        pass


def start_example(
    tmp_path: Path, port: int, *arguments: str
) -> tuple[subprocess.Popen[str], dict[str, str], list[str]]:
    """Start ``python -m example_app`` and read what it prints up to "Serving on": the keys it
    printed (by variable name) and the lines."""
    env = {**os.environ, "PORT": str(port), "DATABASE_URL": f"sqlite:///{tmp_path / 'ex.sqlite'}"}
    env.pop("REDIS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "example_app", *arguments],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    printed: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(process, printed), daemon=True).start()
    deadline = time.monotonic() + 30
    keys: dict[str, str] = {}
    lines: list[str] = []
    while not lines or not lines[-1].startswith("Serving on"):
        try:
            line = printed.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            stop(process)
            raise AssertionError("the example app did not start:\n" + "".join(lines)) from None
        lines.append(line)
        match = re.search(r"export (\w+)=(pk_test_[0-9A-Za-z]{46})\b", line)
        if match:
            keys[match.group(1)] = match.group(2)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return process, keys, lines


def key_rows(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "ex.sqlite") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if "api_keys" not in tables:
            return 0
        return int(connection.execute("SELECT count(*) FROM api_keys").fetchone()[0])


@pytest.mark.slow
def test_example_app_prints_its_keys_and_serves_the_documented_calls(tmp_path: Path) -> None:
    port = free_port()
    process, keys, lines = start_example(tmp_path, port)
    try:
        assert set(keys) == {"ADMIN_KEY", "READ_KEY"}
        curl_lines = [line for line in lines if "curl" in line]
        assert curl_lines and all(f"127.0.0.1:{port}/" in line for line in curl_lines)
        base = f"http://127.0.0.1:{port}"
        assert call(f"{base}/health") == (200, {"status": "ok"})
        assert call(f"{base}/v1/presentations", keys["ADMIN_KEY"])[0] == 200
        status, body = call(f"{base}/v1/generate/outline", keys["ADMIN_KEY"], method="POST")
        assert status == 200 and body["organization"] == "example"
        status, body = call(f"{base}/v1/presentations")
        assert status == 401 and body["code"] == "missing_api_key"
        status, body = call(f"{base}/v1/generate/outline", keys["READ_KEY"], method="POST")
        assert status == 403 and body["code"] == "insufficient_scope"
        statuses = [call(f"{base}/v1/presentations", keys["READ_KEY"])[0] for _ in range(5)]
        assert statuses[-1] == 429 and set(statuses) == {200, 429}, statuses
        # The admin key is on the organization's (pro) limit, not the read-only key's.
        assert call(f"{base}/v1/presentations", keys["ADMIN_KEY"])[0] == 200
        # The dashboard is on, and its URL is printed.
        assert f"Dashboard: {base}/dashboard/ (sign in with the admin key)\n" in lines
        with urllib.request.urlopen(f"{base}/dashboard/sign-in", timeout=5) as page:
            assert page.status == 200 and b"Admin key" in page.read()
    finally:
        stop(process)


@pytest.mark.slow
def test_a_second_start_changes_nothing_and_new_keys_are_printed_only_when_asked(
    tmp_path: Path,
) -> None:
    process, first_keys, _ = start_example(tmp_path, free_port())
    stop(process)
    assert key_rows(tmp_path) == 2

    port = free_port()
    process, second_keys, lines = start_example(tmp_path, port)
    try:
        assert second_keys == {} and not any("pk_test_" in line for line in lines)
        assert key_rows(tmp_path) == 2
        status, _ = call(f"http://127.0.0.1:{port}/v1/presentations", first_keys["ADMIN_KEY"])
        assert status == 200
    finally:
        stop(process)

    port = free_port()
    process, new_keys, _ = start_example(tmp_path, port, "--new-keys")
    try:
        assert set(new_keys) == {"ADMIN_KEY", "READ_KEY"}
        assert set(new_keys.values()).isdisjoint(first_keys.values())
        base = f"http://127.0.0.1:{port}"
        assert call(f"{base}/v1/presentations", new_keys["ADMIN_KEY"])[0] == 200
        status, body = call(f"{base}/v1/presentations", first_keys["ADMIN_KEY"])
        assert status == 401 and body["code"] == "expired_api_key"
    finally:
        stop(process)


@pytest.mark.slow
def test_a_busy_port_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "PORT": str(port)}
        env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'ex.sqlite'}"
        result = subprocess.run(
            [sys.executable, "-m", "example_app"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert f"Port {port}" in result.stderr and "PORT=" in result.stderr
    assert "pk_test_" not in result.stdout + result.stderr
    assert key_rows(tmp_path) == 0


@pytest.mark.slow
def test_sigterm_writes_the_usage_rows_still_buffered(tmp_path: Path) -> None:
    port = free_port()
    process, keys, _ = start_example(tmp_path, port)
    try:
        for _ in range(3):
            assert call(f"http://127.0.0.1:{port}/v1/presentations", keys["ADMIN_KEY"])[0] == 200
    finally:
        stop(process)  # SIGTERM right away: well within one flush interval
    with sqlite3.connect(tmp_path / "ex.sqlite") as connection:
        assert connection.execute("SELECT count(*) FROM api_key_usage").fetchone()[0] == 3
