"""SIGTERM to gunicorn under load: every buffered usage row reaches PostgreSQL, none is lost."""

from __future__ import annotations

import http.client
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from .factory import create_app
from .servers import gunicorn_workers, tail

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
KEYS = 3
CLIENTS = 4
REQUESTS = 300  # in all, CLIENTS threads sharing them
TERMINATE_AFTER = REQUESTS // 3  # answered requests before SIGTERM reaches the master


@dataclass
class Gunicorn:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    keys: dict[str, str]  # secret → key id
    database_url: str


@pytest.fixture
def gunicorn(postgresql_url: str, tmp_path: Path) -> Iterator[Gunicorn]:
    """gunicorn -w 2 on PostgreSQL, usage buffered for an hour: only shutdown can write it."""
    app, db, apikeys = create_app(postgresql_url)
    with app.app_context():
        apikeys.create_all()
        org = apikeys.create_organization(name="Acme", email="a@acme.io", plan="enterprise")
        created = [apikeys.create_key(org, f"k{n}", scopes=["*"]) for n in range(KEYS)]
        keys = {item.key: str(item.api_key.id) for item in created}
    with app.app_context():  # once the session has given its connection back
        db.engine.dispose()
    environment = {
        "TEST_DATABASE_URL": postgresql_url,
        "APIKEYS_USAGE_MODE": "buffered",
        "APIKEYS_USAGE_FLUSH_INTERVAL": "3600",
        "APIKEYS_USAGE_BATCH_SIZE": "100000",
        # Hundreds of requests a second with three keys: a limit would answer 429.
        "APIKEYS_RATELIMIT_ENABLED": "false",
    }
    log = tmp_path / "gunicorn.log"
    with gunicorn_workers(environment, log, "--graceful-timeout", "20") as (process, port):
        yield Gunicorn(process, port, log, keys, postgresql_url)


def usage_in_database(connection: sa.Connection) -> tuple[int, dict[str, int]]:
    """The number of usage rows, and each key's ``total_requests``, as committed now."""
    rows = connection.execute(sa.text("SELECT count(*) FROM api_key_usage")).scalar_one()
    totals = connection.execute(sa.text("SELECT id, total_requests FROM api_keys")).all()
    connection.rollback()  # end the snapshot, so the next call sees later commits
    return int(rows), {str(key_id): int(total) for key_id, total in totals}


def test_sigterm_under_load_writes_every_buffered_usage_row(gunicorn: Gunicorn) -> None:
    """Graceful shutdown of gunicorn (SIGTERM to the master) loses no buffered usage.

    The master passes SIGTERM on to the sync workers, which finish the request in hand and
    leave through ``sys.exit``; the writer's ``atexit`` flush must then write the queue. The
    clients keep sending while that happens: every 2xx a client saw must have its row, each
    key's ``total_requests`` must match, and no request may be recorded twice. Nothing is
    written before the signal (the flush interval is an hour), so the rows can only come
    from the shutdown flush.
    """
    secrets = list(gunicorn.keys)
    answered: Counter[str] = Counter()  # key id → 2xx responses seen by the clients
    refused: Counter[str] = Counter()  # what the clients got instead, after SIGTERM only
    sent_after_sigterm = 0
    lock = threading.Lock()
    sigterm_sent = threading.Event()
    enough_answered = threading.Event()

    def client(worker: int) -> None:
        nonlocal sent_after_sigterm
        for n in range(worker, REQUESTS, CLIENTS):
            secret = secrets[n % KEYS]
            if sigterm_sent.is_set():
                with lock:
                    sent_after_sigterm += 1
            connection = http.client.HTTPConnection("127.0.0.1", gunicorn.port, timeout=10)
            try:
                connection.request("GET", "/v1/whoami", headers={"X-API-Key": secret})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as error:
                if not sigterm_sent.is_set():
                    raise
                # Listener closed or connection reset by the stopping server: the client saw
                # no answer, so there must be no row either. Stop, as a real client would.
                with lock:
                    refused[type(error).__name__] += 1
                return
            finally:
                connection.close()
            assert 200 <= response.status < 300, response.status
            with lock:
                answered[gunicorn.keys[secret]] += 1
                if sum(answered.values()) >= TERMINATE_AFTER:
                    enough_answered.set()

    engine = sa.create_engine(gunicorn.database_url)
    try:
        with engine.connect() as database:
            assert usage_in_database(database)[0] == 0
            started = time.monotonic()
            with ThreadPoolExecutor(CLIENTS) as pool:
                clients = [pool.submit(client, worker) for worker in range(CLIENTS)]
                assert enough_answered.wait(timeout=15), f"too slow:\n{tail(gunicorn.log)}"
                # Still nothing written: everything so far sits in the workers' queues.
                buffered_rows = usage_in_database(database)[0]
                gunicorn.process.send_signal(signal.SIGTERM)
                sigterm_sent.set()
                for future in clients:
                    future.result(timeout=30)  # re-raises a client's failure
            exit_code = gunicorn.process.wait(timeout=25)
            elapsed = time.monotonic() - started
            rows, totals = usage_in_database(database)
    finally:
        engine.dispose()
    log = tail(gunicorn.log)
    assert exit_code == 0, log
    assert "could not write" not in log, log
    seen = sum(answered.values())
    print(
        f"\n{seen} of {REQUESTS} answered ({sent_after_sigterm} sent after SIGTERM, refused: "
        f"{dict(refused) or 'none'}); {rows} usage rows; totals {sorted(totals.values())}; "
        f"load to exit {elapsed:.2f} s"
    )
    assert buffered_rows == 0
    assert sent_after_sigterm > 0, "SIGTERM came after the load: nothing was tested under load"
    assert rows == seen
    assert totals == {key_id: answered[key_id] for key_id in gunicorn.keys.values()}
