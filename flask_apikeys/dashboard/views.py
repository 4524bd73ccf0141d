"""The dashboard's pages, one route table: read a form, call the service layer, render.

Every change goes through :class:`~flask_apikeys.service.KeyService` exactly as the admin API
calls it, with the signed-in admin as ``granted_by`` (nobody grants more than they hold) and as
the audit trail's actor. Ids of another organization are looked up *within* the signed-in
organization, so they answer 404 like ids that do not exist.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import make_response, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from ..admin.access import caller
from ..errors import APIKeyError, InvalidInput, OrganizationNotFound
from ..models import APIKey, Organization
from ..network import client_address
from ..state import get_state
from ..usage.stats import month_bounds
from . import charts, forms, session
from .audit_log import EVENTS, AuditFilter, audit_page

View = Callable[..., Any]
#: How soon before its expiry a key is shown as "expiring".
EXPIRING_WITHIN = timedelta(days=7)
#: Messages a redirect may ask a page to show (by name: a URL carries no free text).
NOTICES = {
    "revoked": "The key was revoked. Requests with it are refused from now on.",
    "updated": "The key was saved.",
    "signed-out": "You are signed out.",
    "session-ended": "Your session ended. Sign in again.",
}


@dataclass(frozen=True)
class Route:
    """One page or form of the dashboard."""

    rule: str
    view: View
    methods: tuple[str, ...] = ("GET",)

    @property
    def endpoint(self) -> str:
        return self.view.__name__


ROUTES: list[Route] = []
#: Endpoints served without a session: signing in, and the stylesheet and script.
PUBLIC_ENDPOINTS = frozenset({"sign_in", "static"})


def route(rule: str, *methods: str) -> Callable[[View], View]:
    def register(view: View) -> View:
        ROUTES.append(Route(rule, view, methods or ("GET",)))
        return view

    return register


def render(template: str, status: int = 200, **context: Any) -> Response:
    response = make_response(render_template(f"apikeys_dashboard/{template}", **context), status)
    return response


def organization() -> Organization:
    return get_state().service.organizations.get_organization(session.signed_in().organization_id)


def page(template: str, status: int = 200, **context: Any) -> Response:
    """A page for the signed-in admin, with the organization and the form token."""
    signed_in = session.signed_in()
    return render(
        template,
        status,
        organization=organization(),
        csrf_token=signed_in.csrf_token,
        signed_in=signed_in,
        notice=NOTICES.get(request.args.get("notice", "")),
        **context,
    )


def key_status(api_key: APIKey, now: datetime) -> str:
    """active, expiring (within a week), in overlap (rotated, still working), expired, revoked."""
    if api_key.revoked_at is not None or not api_key.is_active:
        return "revoked"
    if api_key.expires_at is not None and api_key.expires_at <= now:
        return "expired"
    if api_key.replaced_by_id is not None:
        return "in overlap"
    if api_key.expires_at is not None and api_key.expires_at - now <= EXPIRING_WITHIN:
        return "expiring"
    return "active"


# -- signing in and out ------------------------------------------------------------------------


@route("/sign-in", "GET", "POST")
def sign_in() -> Response:
    """Paste an admin key once; the browser gets a session cookie, never the key."""
    if request.method == "GET":
        if session.load_session() is not None:
            return redirect(url_for(".keys"))
        return sign_in_form()
    expected = request.cookies.get(session.SIGN_IN_COOKIE)
    session.check_csrf(expected)
    try:
        admin = session.verify_admin_credential(request.form.get("key", "").strip())
        if admin.key is not None:
            chosen = get_state().service.organizations.get_organization(admin.key.organization.id)
        else:
            slug = request.form.get("organization", "").strip()
            if not slug:
                raise InvalidInput(
                    "The bootstrap admin key manages every organization: name the one to open.",
                    errors={"organization": ["the slug of the organization"]},
                )
            chosen = get_state().service.organizations.get_organization(slug)
    except OrganizationNotFound:
        return sign_in_form("No organization by that slug.", 404)
    except APIKeyError as error:
        response = sign_in_form(error.detail, error.code or 400)
        response.headers.update(session.retry_after(error))
        return response
    token, row = session.start_session(admin, chosen)
    audit("dashboard.signed_in", admin.actor, chosen, admin.key.id if admin.key else None)
    response = redirect(url_for(".keys"), 303)
    session.set_session_cookie(response, token, prefix())
    response.delete_cookie(session.SIGN_IN_COOKIE, path=prefix())
    return response


def sign_in_form(error: str | None = None, status: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    response = render(
        "sign_in.html",
        status,
        sign_in_token=token,
        error=error,
        bootstrap=get_state().settings.admin_key_digest is not None,
        notice=NOTICES.get(request.args.get("notice", "")),
    )
    session.set_sign_in_cookie(response, token, prefix())
    return response


@route("/sign-out", "POST")
def sign_out() -> Response:
    signed_in = session.signed_in()
    session.end_session(request.cookies.get(session.SESSION_COOKIE))
    audit("dashboard.signed_out", signed_in.caller.actor, organization(), None)
    response = redirect(url_for(".sign_in", notice="signed-out"), 303)
    session.clear_session_cookie(response, prefix())
    return response


def prefix() -> str:
    return request.script_root + (get_state().settings.dashboard_url_prefix or "")


def audit(event: str, actor: str, chosen: Organization, key_id: Any) -> None:
    trail = get_state().audit
    if trail is not None:
        trail.record(
            event,
            actor=actor,
            organization_id=chosen.id,
            api_key_id=key_id,
            ip_address=client_address(request.environ, get_state().settings.trusted_proxies),
            user_agent=request.headers.get("User-Agent"),
        )


# -- keys --------------------------------------------------------------------------------------


@route("/")
def home() -> Response:
    return redirect(url_for(".keys"))


@route("/keys", "GET", "POST")
def keys() -> Response:
    """The organization's keys, and the form that creates one (the key is shown once)."""
    if request.method == "GET":
        return keys_page()
    try:
        values = forms.key_create_values(request.form)
        created = get_state().service.keys.create_key(
            organization(), granted_by=caller().key, actor=caller().actor, **values
        )
    except APIKeyError as error:
        return keys_page(error=error, form=request.form, status=error.code or 400)
    return page("key_created.html", api_key=created.api_key, key=created.key, replaces=None)


def keys_page(*, error: APIKeyError | None = None, form: Any = None, status: int = 200) -> Response:
    number = forms.page_number(request.args)
    api_keys, total = get_state().service.keys.list_keys(
        organization(), limit=forms.PAGE_SIZE, offset=(number - 1) * forms.PAGE_SIZE
    )
    now = datetime.now(UTC)
    return page(
        "keys.html",
        status,
        rows=[(api_key, key_status(api_key, now)) for api_key in api_keys],
        total=total,
        page_number=number,
        pages=max(1, -(-total // forms.PAGE_SIZE)),
        error=error,
        field_errors=getattr(error, "errors", {}),
        form=form or {},
        admin_scopes=held_scopes(),
    )


def held_scopes() -> list[str]:
    """What the signed-in admin may grant: its key's effective scopes (all, for bootstrap)."""
    key = caller().key
    return ["*"] if key is None else sorted(key.scopes)


@route("/keys/<key_id>", "GET", "POST")
def key(key_id: str) -> Response:
    """One key: its details, and the forms that edit, rotate and revoke it."""
    service = get_state().service
    api_key = service.keys.get_key(key_id, organization=organization())
    if request.method == "GET":
        return key_page(api_key)
    try:
        changes = forms.key_update_values(request.form)
        service.keys.update_key(
            api_key.id,
            organization=organization(),
            granted_by=caller().key,
            actor=caller().actor,
            **changes,
        )
    except APIKeyError as error:
        return key_page(api_key, error=error, form=request.form, status=error.code or 400)
    return redirect(url_for(".key", key_id=api_key.id, notice="updated"), 303)


def key_page(
    api_key: APIKey, *, error: APIKeyError | None = None, form: Any = None, status: int = 200
) -> Response:
    return page(
        "key.html",
        status,
        api_key=api_key,
        status_text=key_status(api_key, datetime.now(UTC)),
        error=error,
        field_errors=getattr(error, "errors", {}),
        form=form,
    )


@route("/keys/<key_id>/rotate", "POST")
def rotate(key_id: str) -> Response:
    """A new key with the same settings; the old one works for the chosen overlap."""
    service = get_state().service
    api_key = service.keys.get_key(key_id, organization=organization())
    try:
        values = forms.rotate_values(request.form)
        rotated = service.keys.rotate_key(
            api_key.id,
            rotated_by=caller().actor,
            organization=organization(),
            granted_by=caller().key,
            **values,
        )
    except APIKeyError as error:
        return key_page(api_key, error=error, status=error.code or 400)
    return page("key_created.html", api_key=rotated.api_key, key=rotated.key, replaces=api_key)


@route("/keys/<key_id>/revoke", "POST")
def revoke(key_id: str) -> Response:
    """Revoke for good, with a reason kept in the audit trail."""
    service = get_state().service
    api_key = service.keys.get_key(key_id, organization=organization())
    try:
        values = forms.revoke_values(request.form)
        service.keys.revoke_key(
            api_key.id, revoked_by=caller().actor, organization=organization(), **values
        )
    except APIKeyError as error:
        return key_page(api_key, error=error, status=error.code or 400)
    return redirect(url_for(".key", key_id=api_key.id, notice="revoked"), 303)


# -- usage -------------------------------------------------------------------------------------


@route("/usage")
def usage() -> Response:
    """Plan and limits, this minute and this month against them, and charts of a period."""
    service = get_state().service
    chosen = organization()
    today = datetime.now(UTC).date()
    try:
        start, end = forms.period(request.args, today)
        key_id = forms.optional_uuid(request.args, "key")
    except InvalidInput as error:
        return usage_error(error)
    selected_key = None if key_id is None else service.keys.get_key(key_id, organization=chosen)
    stats = service.reports.usage_stats(chosen, start=start, end=end, key=key_id)
    month_start, month_end = month_bounds(today.strftime("%Y-%m"))
    if key_id is None and start <= month_start and end > today:
        # The period holds the whole month so far (the default 30 days mostly do): its days
        # give the month's count without reading the statistics a second time.
        first_day = month_start.isoformat()
        this_month = sum(day["requests"] for day in stats["by_day"] if day["date"] >= first_day)
    else:
        month_stats = service.reports.usage_stats(chosen, start=month_start, end=month_end)
        this_month = month_stats["total_requests"]
    api_keys, _ = service.keys.list_keys(chosen, limit=500)
    return page(
        "usage.html",
        plan=service.organizations.plan_of(chosen),
        key_count=service.organizations.authenticating_key_count(chosen),
        this_minute=requests_this_minute(api_keys),
        this_month=this_month,
        stats=stats,
        start=start,
        last_day=end - timedelta(days=1),
        api_keys=api_keys,
        selected_key=selected_key,
        charts=charts.usage_charts(stats, start, end),
    )


def requests_this_minute(api_keys: list[APIKey]) -> int:
    """The organization's per-minute rate-limit counter as the next request will see it.

    Statistics are kept by the hour; the limiter's own counter is what the limit applies to.
    Any working key of the organization leads to it (they share it); 0 without one, or with
    rate limits off.
    """
    state = get_state()
    if state.limits is None:
        return 0
    for api_key in api_keys:
        verified = state.service.verification.verified_key_by_id(api_key.id)
        if verified is None or api_key.revoked_at is not None:
            continue
        counter = state.limits.counters_of(verified).get("organization")
        if counter is None:
            return 0
        value, _ = state.limits.counters.peek(counter)
        return value
    return 0


def usage_error(error: InvalidInput) -> Response:
    return page(
        "usage.html",
        error.code or 422,
        error=error,
        field_errors=error.errors,
        stats=None,
        api_keys=[],
        selected_key=None,
        start=None,
        last_day=None,
    )


# -- audit -------------------------------------------------------------------------------------


@route("/audit")
def audit_trail() -> Response:
    """The organization's audit records: key events, sign-ins, refused attempts."""
    chosen = organization()
    today = datetime.now(UTC).date()
    event = request.args.get("event", "")
    try:
        start, end = forms.period(request.args, today)
        key_id = forms.optional_uuid(request.args, "key")
        number = forms.page_number(request.args)
        if event and event not in EVENTS:
            raise InvalidInput("Some fields are not valid.", errors={"event": ["a known event"]})
    except InvalidInput as error:
        return page(
            "audit.html", error.code or 422, error=error, field_errors=error.errors,
            records=[], total=0, events=EVENTS, api_keys=[], filters=request.args,
            page_number=1, pages=1, start=None, last_day=None,
        )  # fmt: skip
    store = get_state().service.store
    selection = AuditFilter(start, end, event or None, key_id)
    records, total = audit_page(store, chosen.id, selection, number)
    api_keys, _ = get_state().service.keys.list_keys(chosen, limit=500)
    return page(
        "audit.html",
        records=records,
        actor_names={f"api-key:{api_key.id}": api_key.name for api_key in api_keys},
        total=total,
        events=EVENTS,
        api_keys=api_keys,
        filters=request.args,
        page_number=number,
        pages=max(1, -(-total // forms.PAGE_SIZE)),
        start=start,
        last_day=end - timedelta(days=1),
        field_errors={},
    )
