"""An app with its own models and Flask-Migrate that adds flask-apikeys (docs/migrations.rst).

``tests/test_migrations_user_app.py`` runs the real ``flask db`` commands on it, as it is.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys

db = SQLAlchemy()
migrate = Migrate()
apikeys = APIKeys()


class Invoice(db.Model):  # type: ignore[name-defined, misc]
    """The app's own model, with a history of its own before flask-apikeys arrives."""

    id = sa.Column(sa.Integer, primary_key=True)
    customer = sa.Column(sa.String(100), nullable=False)
    notes = sa.Column(sa.Text)


def create_app(database_url: str | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url or os.environ.get(
        "DATABASE_URL", "sqlite:///app.sqlite"
    )
    db.init_app(app)
    migrate.init_app(app, db)
    apikeys.init_app(app, db=db)  # the extension's tables join db.metadata
    return app
