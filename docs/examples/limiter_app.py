"""An app that uses Flask-Limiter next to flask-apikeys (docs/ratelimits.rst, tested as is)."""

from __future__ import annotations

from flask import Flask, jsonify
from flask_limiter import Limiter
from flask_sqlalchemy import SQLAlchemy

from flask_apikeys import APIKeys, current_key

db = SQLAlchemy()
apikeys = APIKeys()
limiter = Limiter(key_func=apikeys.key_func, default_limits=["1000/hour"])


def create_app(database_url: str = "sqlite:///app.sqlite") -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    app.config["RATELIMIT_STORAGE_URI"] = "memory://"  # redis://… with several workers
    app.config["RATELIMIT_HEADERS_ENABLED"] = False  # flask-apikeys writes X-RateLimit-*
    db.init_app(app)
    limiter.init_app(app)
    apikeys.init_app(app, db=db, limiter=limiter)  # and share its storage

    @app.post("/v1/exports")
    @limiter.limit("2/minute", key_func=apikeys.key_func)
    def export() -> dict[str, str]:
        return {"key": str(current_key.id)}

    # The app's own error pages, as Flask-Limiter's docs show: Retry-After and
    # WWW-Authenticate are still added to them.
    @app.errorhandler(429)
    def too_many(error: Exception) -> tuple[object, int]:
        return jsonify(error="slow down"), 429

    @app.errorhandler(401)
    def unauthorized(error: Exception) -> tuple[object, int]:
        return jsonify(error="who are you?"), 401

    return app
