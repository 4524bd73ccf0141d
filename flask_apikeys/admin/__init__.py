"""The admin HTTP API: organizations, keys and usage under ``APIKEYS_ADMIN_URL_PREFIX``.

``access`` decides who may call it, ``schemas`` what goes in and out, ``views`` the routes (a
thin layer over :class:`~flask_apikeys.service.KeyService`), ``openapi`` the document.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from .access import AdminCaller, authenticate_admin
from .openapi import build_openapi
from .views import OPERATIONS

__all__ = ["AdminCaller", "make_admin_blueprint"]


def make_admin_blueprint(url_prefix: str) -> Blueprint:
    """A fresh blueprint per app (apps must not share state), mounted at ``url_prefix``."""
    blueprint = Blueprint("apikeys_admin", __name__, url_prefix=url_prefix)
    blueprint.before_request(authenticate_admin)
    for operation in OPERATIONS:
        blueprint.add_url_rule(
            operation.path, operation.endpoint, operation.view, methods=[operation.method]
        )
    document: dict[str, Any] = {}

    @blueprint.get("/openapi.json")
    def openapi() -> Response:
        """The OpenAPI 3 document of this API (public: it holds no data)."""
        if not document:
            document.update(build_openapi(url_prefix))
        return jsonify(document)

    return blueprint
