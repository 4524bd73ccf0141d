"""The admin HTTP API: organizations, keys and usage under ``APIKEYS_ADMIN_URL_PREFIX``.

``access`` decides who may call it, ``schemas`` what goes in and out, ``views`` the routes (a
thin layer over :class:`~flask_apikeys.service.KeyService`), ``openapi`` the document.
"""

from __future__ import annotations

import functools
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map, Rule

from ..boundedcache import BoundedCache
from ..errors import MethodNotAllowedError, NotFoundError
from ..logmask import mask_secrets
from ..state import get_state
from .access import AdminCaller, authenticate_admin
from .openapi import build_openapi
from .views import OPERATIONS

__all__ = ["AdminCaller", "make_admin_blueprint"]

#: Documents kept, one per mount path the API was reached at.
MAX_CACHED_DOCUMENTS = 16
#: Every method, so that the catch-all route answers unknown paths and wrong methods alike.
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


@functools.cache
def admin_route_map(routes: tuple[tuple[str, str, str], ...]) -> Map:
    """The admin routes (path, endpoint, method) as a werkzeug ``Map``, built once per set.

    It holds no state of any app: only matched against (``bind``, ``match``,
    ``allowed_methods``), never added to, so every app's blueprint shares it. Compiling its
    rules (werkzeug generates two Python functions per rule) took about a tenth of the time
    to build a whole app, once for every app a process builds (a test suite builds hundreds).
    """
    return Map(
        [
            Rule(path, endpoint=endpoint, methods=[method, "OPTIONS"])
            for path, endpoint, method in routes
        ]
        + [Rule("/openapi.json", endpoint="openapi", methods=["GET", "OPTIONS"])]
    )


def make_admin_blueprint(url_prefix: str) -> Blueprint:
    """A fresh blueprint per app (apps must not share state), mounted at ``url_prefix``."""
    blueprint = Blueprint("apikeys_admin", __name__, url_prefix=url_prefix)
    # The admin routes alone, to tell an unknown path (404) from a wrong method (405), and to
    # answer OPTIONS with the methods of the path, not those of the catch-all route below.
    admin_routes = admin_route_map(tuple((op.path, op.endpoint, op.method) for op in OPERATIONS))

    def answer_options() -> Response | None:
        """OPTIONS on an admin path: 204 with ``Allow`` listing that path's methods."""
        if request.method != "OPTIONS":
            return None
        allowed = admin_routes.bind("localhost").allowed_methods(request.path[len(url_prefix) :])
        if not allowed:
            return None  # an unknown path: the catch-all answers 404
        return Response(status=204, headers={"Allow": ", ".join(sorted(allowed))})

    blueprint.before_request(answer_options)
    blueprint.before_request(authenticate_admin)
    for operation in OPERATIONS:
        blueprint.add_url_rule(
            operation.path, operation.endpoint, operation.view, methods=[operation.method]
        )
    documents: BoundedCache[str, dict[str, Any]] = BoundedCache(MAX_CACHED_DOCUMENTS)

    @blueprint.get("/openapi.json")
    def openapi() -> Response:
        """The OpenAPI 3 document of this API (public: it holds no data).

        Its server URL is where this request found the API, the app's mount path included.
        """
        server_url = request.script_root + url_prefix
        document = documents.get(server_url)
        if document is None:  # bounded: a forwarded prefix is client input
            plans = get_state().settings.plans
            document = documents.put(server_url, build_openapi(server_url, plans=plans))
        return jsonify(document)

    @blueprint.route("/", endpoint="unknown_root", methods=ANY_METHOD)
    @blueprint.route("/<path:rest>", endpoint="unknown", methods=ANY_METHOD)
    def unknown(rest: str = "") -> Response:
        """A path or method the admin API does not have: a problem document, not HTML."""
        try:
            admin_routes.bind("localhost").match("/" + rest, method=request.method)
        except MethodNotAllowed as error:
            raise MethodNotAllowedError(
                f"{request.method} is not allowed here.", allowed=list(error.valid_methods or ())
            ) from None
        except HTTPException:  # NotFound, or a redirect to a merged slash: not a route of ours
            pass
        # A key pasted into the path is not printed back (clients and gateways log errors).
        raise NotFoundError(f"The admin API has no {mask_secrets(repr(request.path))}.")

    return blueprint
