"""The example app as a user runs it: ``python -m example_app`` on a fresh checkout."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
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


def start_example(tmp_path: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PORT": str(port), "DATABASE_URL": f"sqlite:///{tmp_path / 'ex.sqlite'}"}
    env.pop("REDIS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "example_app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    key = None
    while time.monotonic() < deadline and key is None:
        line = process.stdout.readline()
        if not line:
            break
        match = re.search(r"\b(pk_test_[0-9A-Za-z]{46})\b", line)
        key = match.group(1) if match else None
    if key is None:
        stop(process)
        raise AssertionError("the example app did not print a seeded key")
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return process, key


@pytest.mark.slow
def test_example_app_prints_a_working_key_and_serves_the_documented_calls(tmp_path: Path) -> None:
    port = free_port()
    process, key = start_example(tmp_path, port)
    try:
        base = f"http://127.0.0.1:{port}"
        assert call(f"{base}/health") == (200, {"status": "ok"})
        assert call(f"{base}/v1/presentations", key)[0] == 200
        status, body = call(f"{base}/v1/generate/outline", key, method="POST")
        assert status == 200 and body["organization"] == "default"
        status, body = call(f"{base}/v1/presentations")
        assert status == 401 and body["code"] == "missing_api_key"
    finally:
        stop(process)


@pytest.mark.slow
def test_second_start_prints_a_new_key_and_the_old_one_stops(tmp_path: Path) -> None:
    first_port, second_port = free_port(), free_port()
    process, first_key = start_example(tmp_path, first_port)
    stop(process)
    process, second_key = start_example(tmp_path, second_port)
    try:
        assert second_key != first_key
        base = f"http://127.0.0.1:{second_port}"
        assert call(f"{base}/v1/presentations", second_key)[0] == 200
        status, body = call(f"{base}/v1/presentations", first_key)
        assert status == 401 and body["code"] == "expired_api_key"
    finally:
        stop(process)
