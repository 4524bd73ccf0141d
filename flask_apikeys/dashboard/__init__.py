"""The self-serve dashboard: an organization's admin manages keys and sees usage in a browser.

Optional: mounted by ``init_app`` only when ``APIKEYS_DASHBOARD_URL_PREFIX`` is set.
``session`` signs admins in and out (server-side sessions, CSRF, security headers), ``views``
holds the one route table over the service layer, ``forms`` reads the forms, ``charts`` draws
the usage charts as SVG on the server and ``audit_log`` pages the organization's audit trail.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, g, redirect, request, url_for
from werkzeug.wrappers import Response

from ..errors import APIKeyError
from . import session
from .views import PUBLIC_ENDPOINTS, ROUTES, render

__all__ = ["make_dashboard_blueprint"]

#: The largest form body the dashboard reads: its forms hold a few fields of text.
MAX_FORM_BYTES = 64 * 1024


def make_dashboard_blueprint(url_prefix: str) -> Blueprint:
    """A fresh blueprint per app (apps must not share state), mounted at ``url_prefix``."""
    blueprint = Blueprint(
        "apikeys_dashboard",
        __name__,
        url_prefix=url_prefix,
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )

    @blueprint.before_request
    def require_session() -> Response | None:
        """Refuse cross-site posts, then find the signed-in admin or send to sign-in."""
        if request.method == "POST":
            # Read none of a body bigger than our forms ever are (413): sign-in is read
            # before anyone is signed in.
            request.max_content_length = MAX_FORM_BYTES
            refuse_foreign_origin()
        endpoint = (request.endpoint or "").rpartition(".")[2]
        if endpoint in PUBLIC_ENDPOINTS:
            return None
        signed_in = session.load_session()
        if signed_in is None:
            notice = "session-ended" if request.cookies.get(session.SESSION_COOKIE) else None
            response = redirect(url_for(".sign_in", notice=notice), 303)
            session.clear_session_cookie(response, request.script_root + url_prefix)
            return response
        g._apikeys_dashboard = signed_in
        g._apikeys_admin = signed_in.caller  # what the admin API's access checks read
        if request.method == "POST":
            session.check_csrf(signed_in.csrf_token)
        session.spend_admin_budget(signed_in.caller)
        return None

    blueprint.after_request(session.add_security_headers)

    @blueprint.errorhandler(APIKeyError)
    def show_error(error: APIKeyError) -> Response:
        """The error as a page, with the status the admin API would answer."""
        response = render("error.html", error.code or 500, error=error)
        response.headers.update(session.retry_after(error))
        return response

    for page in ROUTES:
        blueprint.add_url_rule(page.rule, page.endpoint, page.view, methods=list(page.methods))
    return blueprint


def refuse_foreign_origin() -> None:
    """A form posted from another site is refused whatever it carries (CSRF, before the
    token check). Browsers say where a request comes from in ``Sec-Fetch-Site``; older ones
    send ``Origin``, which is ``null`` on our own pages (their referrer policy is
    ``no-referrer``), so only a real origin other than ours is refused there."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        if fetch_site not in ("same-origin", "none"):
            raise session.CSRFRefused("This form was sent from another site.")
        return
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return
    expected = urlsplit(request.host_url)
    sent = urlsplit(origin)
    if (sent.scheme, sent.netloc) != (expected.scheme, expected.netloc):
        raise session.CSRFRefused("This form was sent from another site.")
