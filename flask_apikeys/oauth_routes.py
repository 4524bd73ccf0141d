"""How the OAuth 2.0 endpoints are mounted: each path answers every method itself.

The token, introspection and revocation endpoints and the metadata and JWKS documents are
published (the metadata lists them), so a wrong method there is no secret to keep from a caller
without a key. Left to Flask, it would match no route, and the request hook would ask for a key
(401, a problem document): an OAuth client such as Authlib, which may send a token request with
``GET``, would store that document as its token. Each route takes every method instead, serves
its own, answers ``OPTIONS`` with the methods it serves, and refuses the others with a 405 in
RFC 6749's error format (:class:`~flask_apikeys.errors.OAuthError`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from flask import Blueprint, Response, request

from .errors import OAuthError

#: Every method a route of the OAuth endpoints takes, to answer the ones it does not serve.
EVERY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


def served_methods(method: str) -> list[str]:
    """The methods a route serving ``method`` answers: ``HEAD`` with ``GET``, and ``OPTIONS``."""
    return [method, "HEAD", "OPTIONS"] if method == "GET" else [method, "OPTIONS"]


def add_oauth_route(
    blueprint: Blueprint, path: str, endpoint: str, view: Callable[[], Response], method: str
) -> None:
    """Mount ``view`` at ``path`` for ``method``; the route answers every other method too."""
    served = served_methods(method)
    allow = ", ".join(served)

    @functools.wraps(view)
    def route() -> Response:
        if request.method == "OPTIONS":
            return Response(status=204, headers={"Allow": allow})
        if request.method not in served:
            raise OAuthError(
                "invalid_request",
                f"{request.method} is not allowed here: send {method}.",
                status=405,
                headers={"Allow": allow},
            )
        return view()

    blueprint.add_url_rule(
        path, endpoint, route, methods=EVERY_METHOD, provide_automatic_options=False
    )
