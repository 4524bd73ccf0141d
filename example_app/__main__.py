"""``python -m example_app``: create the tables, seed two keys once, serve on 127.0.0.1:$PORT.

The first start creates the "example" organization with an admin key (scope ``*``) and a
read-only key (``presentations:read``, 5 requests a minute), and prints both, once. Later
starts print nothing secret and change nothing; ``--new-keys`` replaces both keys and prints
the new ones (the old ones stop working at once). ``PORT`` (default 5000) picks the port.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from types import FrameType

from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.errors import OrganizationNotFound

from . import DASHBOARD_URL_PREFIX, apikeys, create_app

ORGANIZATION_SLUG = "example"
ADMIN_KEY_NAME = "Example admin key"
READ_ONLY_KEY_NAME = "Example read-only key"
#: Low on purpose, so the README can show a 429 with a short loop of curl calls.
READ_ONLY_RATE_LIMIT = "5/minute"
HOST = "127.0.0.1"


def seed_keys(extension: APIKeys, *, new_keys: bool) -> dict[str, str]:
    """Create the example organization and its two keys the first time (or replace the keys
    when asked); return the secrets that were just created, by name, or nothing."""
    try:
        organization = extension.get_organization(ORGANIZATION_SLUG)
    except OrganizationNotFound:
        organization = extension.create_organization(
            "Example Organization", "admin@example.com", "pro", slug=ORGANIZATION_SLUG
        )
    keys, _ = extension.list_keys(organization, include_revoked=False)
    existing = {key.name: key for key in keys}
    wanted = {
        ADMIN_KEY_NAME: {"scopes": ["*"]},
        READ_ONLY_KEY_NAME: {
            "scopes": ["presentations:read"],
            "rate_limit": READ_ONLY_RATE_LIMIT,
        },
    }
    created: dict[str, str] = {}
    for name, options in wanted.items():
        current = existing.get(name)
        if current is None:
            created[name] = extension.create_key(organization, name, "test", **options).key
        elif new_keys:
            replaced = extension.rotate_key(current.id, overlap_hours=0, rotated_by="example_app")
            created[name] = replaced.key
    return created


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # As the server will: a port left in TIME_WAIT by a stopped server is free to reuse.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def print_instructions(created: dict[str, str], port: int) -> None:
    base = f"http://{HOST}:{port}"
    if created:
        print("New keys for organization 'example' (shown this once; only hashes are stored):")
        print(f"  export ADMIN_KEY={created[ADMIN_KEY_NAME]}")
        print(f"  export READ_KEY={created[READ_ONLY_KEY_NAME]}")
    else:
        print(
            "The example keys were printed when they were created; run "
            "'python -m example_app --new-keys' to replace them and print new ones."
        )
    print("Try:")
    print(f'  curl -H "Authorization: Bearer $ADMIN_KEY" {base}/v1/presentations')
    print(f'  curl -X POST -H "X-API-Key: $ADMIN_KEY" {base}/v1/generate/outline')
    print(f'  curl -X POST -H "X-API-Key: $READ_KEY" {base}/v1/generate/outline     # 403')
    print(f"  curl {base}/v1/presentations                                     # 401")
    print(f"Dashboard: {base}{DASHBOARD_URL_PREFIX}/ (sign in with the admin key)")
    print(f"Serving on {base} (Ctrl-C to stop)", flush=True)


def flush_usage_on_exit(app: Flask) -> None:
    """Write the usage rows still buffered: the dev server otherwise ends with up to one
    flush interval of them unwritten."""
    with app.app_context():
        apikeys.flush_usage()


def stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Turn SIGTERM into a normal exit, so the ``finally`` that flushes usage runs."""
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m example_app", description=__doc__)
    parser.add_argument(
        "--new-keys", action="store_true", help="replace the example keys and print new ones"
    )
    arguments = parser.parse_args(argv)
    port = int(os.environ.get("PORT", "5000"))
    if not port_is_free(port):
        sys.exit(f"Port {port} on {HOST} is in use: stop what runs there, or set PORT=5055.")
    app = create_app()
    with app.app_context():
        apikeys.create_all()
        created = seed_keys(apikeys, new_keys=arguments.new_keys)
    print_instructions(created, port)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        app.run(host=HOST, port=port)
    except KeyboardInterrupt:
        pass
    finally:
        flush_usage_on_exit(app)


if __name__ == "__main__":
    main()
