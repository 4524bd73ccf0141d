"""The third attack pass on what the extension leaves on the host for other local users to read.

The file through which processes announce key changes (:mod:`flask_apikeys.cache_generation`)
sits in the shared temporary directory, named after a SHA-256 of the database URL, password
included: anyone on the host could list it and test password guesses offline against it.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from flask_apikeys.cache_generation import FileGeneration
from flask_apikeys.state import database_identity

PASSWORD = "correct-horse-battery-staple"


def app_with(uri: str, binds: dict[str, object] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = uri
    if binds is not None:
        app.config["SQLALCHEMY_BINDS"] = binds
    return app


def test_the_announcement_file_is_named_without_the_database_password() -> None:
    binds = {"audit": {"url": f"postgresql://audit:{PASSWORD}@db/audit", "pool_size": 5}}
    with_password = app_with(f"postgresql://api:{PASSWORD}@db.internal:5432/keys", binds)
    other_password = app_with(
        "postgresql://api:rotated-password@db.internal:5432/keys",
        {"audit": {"url": "postgresql://audit:another@db/audit", "pool_size": 5}},
    )
    identity = database_identity(with_password)
    assert PASSWORD not in identity
    assert "db.internal:5432/keys" in identity and "@db/audit" in identity
    # The same database whatever the password: every process of the host shares the file.
    assert identity == database_identity(other_password)
    path = Path(FileGeneration.for_database(identity).path)
    assert path.parent.is_dir()
    assert database_identity(app_with("sqlite:////tmp/a.db")) != database_identity(
        app_with("sqlite:////tmp/b.db")
    )
