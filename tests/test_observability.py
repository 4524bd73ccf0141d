"""Signals, Prometheus metrics, the log context filter, the alert rules and the dashboard."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from flask_apikeys import APIKeys, signals
from flask_apikeys.config import ConfigError
from flask_apikeys.keys import VISIBLE_SECRET_CHARACTERS
from flask_apikeys.logcontext import APIKeyLogContext
from flask_apikeys.metrics import METRIC_NAMES, APIKeysMetrics

ROOT = Path(__file__).resolve().parent.parent
OBSERVABILITY = ROOT / "flask_apikeys" / "observability"


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every signal sent during the test, with its name and arguments (the sender aside)."""
    events: list[tuple[str, dict[str, Any]]] = []
    connected = []
    for name in (
        "key_created",
        "key_updated",
        "key_revoked",
        "key_rotated",
        "organization_created",
        "organization_updated",
        "request_authenticated",
        "credential_refused",
        "rate_limit_refused",
        "quota_refused",
    ):

        def receive(sender: Any, _name: str = name, **details: Any) -> None:
            events.append((_name, details))

        signal = getattr(signals, name)
        signal.connect(receive, weak=False)
        connected.append((signal, receive))
    yield events
    for signal, receive in connected:
        signal.disconnect(receive)


def names(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in events]


# -- signals ------------------------------------------------------------------------------------


def test_key_and_organization_events_are_signals_and_still_audited(
    app: Flask, apikeys: APIKeys, received: list[tuple[str, dict[str, Any]]]
) -> None:
    with app.app_context():
        organization = apikeys.create_organization(name="Beta", email="ops@beta.test")
        apikeys.update_organization(organization.id, plan="pro", actor="ops")
        created = apikeys.create_key(organization, "k", scopes=["*"], actor="ops")
        apikeys.update_key(created.api_key.id, name="renamed", actor="ops")
        rotated = apikeys.rotate_key(created.api_key.id)
        apikeys.revoke_key(rotated.api_key.id, reason="done", revoked_by="ops")
        assert received[4][1]["previous"].id == created.api_key.id
        assert apikeys.flush_usage() == 0
        rows = app.extensions["sqlalchemy"].session.execute(
            sa.text("SELECT event FROM api_key_audit_log ORDER BY id")
        )
        audited = [row[0] for row in rows]
    assert names(received) == [
        "organization_created",
        "organization_updated",
        "key_created",
        "key_updated",
        "key_rotated",
        "key_revoked",
    ]
    assert audited == [
        "organization.created",
        "organization.updated",
        "key.created",
        "key.updated",
        "key.rotated",
        "key.revoked",
    ]
    assert apikeys.verify_audit() is None


def test_signals_are_sent_with_the_app_and_a_receiver_for_another_app_hears_nothing(
    app: Flask, apikeys: APIKeys, make_app: Any
) -> None:
    other = make_app()
    heard: list[Flask] = []
    with signals.organization_created.connected_to(lambda sender, **_: heard.append(sender), other):
        with app.app_context():
            apikeys.create_organization(name="Gamma", email="g@g.test")
        assert heard == []
        with other.app_context():
            other.extensions["apikeys"].extension.create_organization(name="D", email="d@d.test")
    assert heard == [other]


def test_authenticated_request_and_refused_credential_send_signals_without_the_key(
    app: Flask,
    apikeys: APIKeys,
    client: FlaskClient,
    make_key: Any,
    received: list[tuple[str, dict[str, Any]]],
) -> None:
    key, wrong = make_key(), make_key()
    with app.app_context():
        apikeys.revoke_key(apikeys.verify_key(wrong).id, reason="test")
    assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    assert client.get("/v1/whoami", headers={"X-API-Key": wrong}).status_code == 401
    del received[: names(received).index("request_authenticated")]  # the key's creation
    assert names(received) == ["request_authenticated", "credential_refused"]
    authenticated = received[0][1]
    assert authenticated["key"].hint == key[-4:]
    assert 0 <= authenticated["seconds"] < 5
    refusal = received[1][1]
    assert refusal["code"] == "revoked_api_key"
    assert refusal["key_prefix"] == wrong[: len("pk_live_") + VISIBLE_SECRET_CHARACTERS]
    assert refusal["key_hint"] == wrong[-4:]
    assert refusal["address"] == "127.0.0.1"
    assert key not in repr(received) and wrong not in repr(received)


@pytest.mark.parametrize(
    ("org_limits", "expected"),
    [
        ({"rate_limit_per_minute": 2}, "rate_limit_refused"),
        ({"monthly_request_limit": 2}, "quota_refused"),
    ],
)
def test_limit_refusals_send_their_signal(
    app: Flask,
    apikeys: APIKeys,
    client: FlaskClient,
    received: list[tuple[str, dict[str, Any]]],
    org_limits: dict[str, int],
    expected: str,
) -> None:
    with app.app_context():
        organization = apikeys.create_organization(name="L", email="l@l.test", **org_limits)
        key = apikeys.create_key(organization, "k", scopes=["*"]).key
    statuses = [client.get("/v1/whoami", headers={"X-API-Key": key}).status_code for _ in "abc"]
    assert statuses == [200, 200, 429]
    refusals = [details for name, details in received if name == expected]
    assert len(refusals) == 1
    assert refusals[0]["error"].code == 429


class _Webhook(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []
    arrived = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 - the http.server name
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()
        type(self).arrived.set()

    def log_message(self, *args: Any) -> None:
        pass


def test_the_documented_webhook_example_posts_refusals_to_a_real_http_server(
    app: Flask, apikeys: APIKeys, client: FlaskClient, make_key: Any
) -> None:
    path = ROOT / "docs" / "examples" / "refusal_webhook.py"
    spec = importlib.util.spec_from_file_location("refusal_webhook", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    server = HTTPServer(("127.0.0.1", 0), _Webhook)
    _Webhook.bodies, _Webhook.arrived = [], threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pending = example.forward_refusals(app, f"http://127.0.0.1:{server.server_port}/hook")
        forged = make_key()
        with app.app_context():
            apikeys.revoke_key(apikeys.verify_key(forged).id, reason="leaked")
        assert client.get("/v1/whoami", headers={"X-API-Key": forged}).status_code == 401
        pending.join()
        assert _Webhook.arrived.wait(5)
    finally:
        server.shutdown()
        server.server_close()
    assert _Webhook.bodies == [
        {
            "code": "revoked_api_key",
            "key_prefix": forged[: len("pk_live_") + VISIBLE_SECRET_CHARACTERS],
            "key_hint": forged[-4:],
            "address": "127.0.0.1",
        }
    ]


# -- metrics ------------------------------------------------------------------------------------


def scrape(client: FlaskClient, key: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/apikeys/metrics", headers={"X-API-Key": key})
    assert response.status_code == 200, response.get_data(as_text=True)
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_requests_refusals_quota_cost_and_cache(
    app: Flask, apikeys: APIKeys, client: FlaskClient
) -> None:
    APIKeysMetrics(app)
    with app.app_context():
        organization = apikeys.create_organization(
            name="M", email="m@m.test", monthly_request_limit=100
        )
        key = apikeys.create_key(organization, "k", scopes=["*"]).key
        reader = apikeys.create_key(organization, "metrics", scopes=["apikeys:metrics"]).key
        org = str(organization.id)
    for _ in range(3):
        assert client.get("/v1/whoami", headers={"X-API-Key": key}).status_code == 200
    assert client.post("/v1/generate/slides", headers={"X-API-Key": key}).status_code == 200
    assert client.get("/nowhere", headers={"X-API-Key": key}).status_code == 404
    assert client.get("/v1/whoami", headers={"X-API-Key": key + "x"}).status_code == 401
    samples = scrape(client, reader)
    requests = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "apikeys_requests_total"
    }
    assert requests == {
        (("endpoint", "/v1/whoami"), ("organization", org), ("status_class", "2xx")): 3.0,
        (("endpoint", "/v1/generate/slides"), ("organization", org), ("status_class", "2xx")): 1.0,
        (("endpoint", "[unmatched]"), ("organization", org), ("status_class", "4xx")): 1.0,
    }
    assert samples[("apikeys_credential_refusals_total", (("code", "invalid_api_key"),))] == 1
    assert samples[("apikeys_cost_usd_total", (("organization", org),))] == pytest.approx(0.0125)
    # 5 requests took from the quota; the scrape's own is counted after its response
    month = (("month", time.strftime("%Y-%m", time.gmtime())), ("organization", org))
    assert samples[("apikeys_quota_used_requests", month)] == 5
    assert samples[("apikeys_quota_limit_requests", (("organization", org),))] == 100
    # refused credentials are timed too; the scrape's own verification after its response
    assert samples[("apikeys_verification_seconds_count", (("outcome", "accepted"),))] == 5
    assert samples[("apikeys_verification_seconds_count", (("outcome", "refused"),))] == 1
    hits = samples[("apikeys_key_cache_hits_total", ())]
    misses = samples[("apikeys_key_cache_misses_total", ())]
    assert misses >= 2 and hits >= 3
    with app.app_context():
        written = apikeys.flush_usage()
    assert written == 6
    after = scrape(client, reader)
    assert after[("apikeys_usage_rows_written_total", ())] == 6
    assert after[("apikeys_usage_rows_dropped_total", ())] == 0
    assert not any(key in str(name) + str(labels) for name, labels in after)


def test_metrics_need_the_metrics_scope(app: Flask, client: FlaskClient, make_key: Any) -> None:
    APIKeysMetrics(app)
    assert client.get("/apikeys/metrics").status_code == 401
    other = make_key(scopes=["presentations:read"])
    assert client.get("/apikeys/metrics", headers={"X-API-Key": other}).status_code == 403


def test_a_wildcard_or_admin_level_key_of_an_organization_cannot_read_every_organizations_metrics(
    app: Flask, apikeys: APIKeys, client: FlaskClient
) -> None:
    """The metrics name every organization (ids, traffic, quota used): only a key that holds
    the metrics scope by name reads them, never one of a tenant's ``*`` or admin keys."""
    APIKeysMetrics(app)
    with app.app_context():
        acme = apikeys.create_organization(name="Acme", email="a@acme.test")
        rival = apikeys.create_organization(name="Rival", email="r@rival.test", plan="pro")
        acme_key = apikeys.create_key(acme, "a", scopes=["presentations:read"]).key
        wildcard = apikeys.create_key(rival, "w", scopes=["*"]).key
        admin_level = apikeys.create_key(rival, "l", level="admin").key
        reader = apikeys.create_key(rival, "m", scopes=["apikeys:metrics"]).key
        acme_id = str(acme.id)
    client.get("/v1/whoami", headers={"X-API-Key": acme_key})
    for tenant_key in (wildcard, admin_level):
        refused = client.get("/apikeys/metrics", headers={"X-API-Key": tenant_key})
        assert refused.status_code == 403, refused.get_data(as_text=True)[:200]
        assert acme_id not in refused.get_data(as_text=True)
    assert acme_id in client.get("/apikeys/metrics", headers={"X-API-Key": reader}).text


def test_an_organization_admin_cannot_hand_out_the_metrics_scope_it_holds_only_by_wildcard(
    app: Flask, apikeys: APIKeys, client: FlaskClient
) -> None:
    APIKeysMetrics(app)
    with app.app_context():
        rival = apikeys.create_organization(name="Rival", email="r@rival.test", plan="pro")
        admin = apikeys.create_key(rival, "admin", scopes=["*"]).key
        before = len(apikeys.list_keys(rival)[0])
    for fields in ({"scopes": ["apikeys:metrics"]}, {"scopes": ["reports:read"]}):
        response = client.post(
            f"/admin/organizations/{rival.id}/keys",
            json={"name": "scraper", **fields},
            headers={"X-API-Key": admin},
        )
        if "apikeys:metrics" in fields["scopes"]:
            assert response.status_code == 403, response.json
            assert response.json["code"] == "insufficient_scope"
        else:
            assert response.status_code == 201, response.json
    with app.app_context():
        assert len(apikeys.list_keys(rival)[0]) == before + 1


def test_rate_limit_refusals_are_counted_by_organization_and_policy(
    app: Flask, apikeys: APIKeys, client: FlaskClient
) -> None:
    APIKeysMetrics(app)
    with app.app_context():
        organization = apikeys.create_organization(name="R", email="r@r.test")
        key = apikeys.create_key(organization, "k", scopes=["*"], rate_limit="1/minute")
        reader = apikeys.create_key(organization, "m", scopes=["apikeys:metrics"]).key
        labels = (("organization", str(organization.id)), ("policy", "apikey"))
    for _ in range(3):
        client.get("/v1/whoami", headers={"X-API-Key": key.key})
    samples = scrape(client, reader)
    assert samples[("apikeys_rate_limit_refusals_total", labels)] == 2


def test_key_id_is_a_label_only_when_asked(make_app: Any) -> None:
    app = make_app(APIKEYS_METRICS_KEY_ID_LABEL=True)
    APIKeysMetrics(app)
    apikeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(name="K", email="k@k.test")
        key = apikeys.create_key(organization, "k", scopes=["*", "apikeys:metrics"]).key
    client = app.test_client()
    client.get("/v1/whoami", headers={"X-API-Key": key})
    samples = scrape(client, key)
    labelled = [dict(labels) for name, labels in samples if name == "apikeys_requests_total"]
    assert all("key_id" in labels for labels in labelled) and labelled


# -- log context --------------------------------------------------------------------------------


def test_log_records_made_during_a_request_carry_the_key_context(
    app: Flask, client: FlaskClient, make_key: Any
) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.addFilter(APIKeyLogContext())
    handler.setFormatter(
        logging.Formatter(
            "%(organization_id)s %(api_key_id)s %(key_hint)s %(request_id)s %(message)s"
        )
    )
    # A logger of its own: an earlier test's logging.config (Alembic's env.py) may have
    # disabled the loggers that existed then.
    logger = logging.getLogger(f"test_log_context.{id(handler)}")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)

    @app.get("/v1/logs")
    def log_something() -> str:
        logger.warning("inside the view")
        return "ok"

    key = make_key()
    try:
        client.get("/v1/logs", headers={"X-API-Key": key, "X-Request-ID": "req-42"})
        client.get("/v1/logs", headers={"X-API-Key": key})
        # pytest-flask keeps a test request context pushed: log from a thread without one
        outside_thread = threading.Thread(target=logger.warning, args=("outside any request",))
        outside_thread.start()
        outside_thread.join()
    finally:
        logger.removeHandler(handler)
    with app.app_context():
        verified = app.extensions["apikeys"].extension.verify_key(key)
    first, second, outside = lines
    assert first == f"{verified.organization.id} {verified.id} {key[-4:]} req-42 inside the view"
    assert re.fullmatch(rf"\S+ {verified.id} {key[-4:]} [0-9a-f]{{32}} inside the view", second)
    assert outside == "- - - - outside any request"
    assert key not in "".join(lines)


# -- alert rules and dashboard ------------------------------------------------------------------


@pytest.fixture
def exported(make_app: Any) -> dict[str, set[frozenset[str]]]:
    """Every exported metric name with the label names it has, from a real scrape of an app
    that made each metric count something."""
    app = make_app(APIKEYS_COST_TABLE={"*": {"request": 0.001}})
    APIKeysMetrics(app)
    apikeys = app.extensions["apikeys"].extension
    with app.app_context():
        limited = apikeys.create_organization(name="L", email="l@l.test", monthly_request_limit=1)
        quota_key = apikeys.create_key(limited, "q", scopes=["*"]).key
        open_organization = apikeys.create_organization(name="O", email="o@o.test")
        rate_key = apikeys.create_key(open_organization, "r", scopes=["*"], rate_limit="1/minute")
        reader = apikeys.create_key(open_organization, "m", scopes=["apikeys:metrics"]).key
    client = app.test_client()
    statuses = [
        client.get("/v1/whoami", headers={"X-API-Key": credential}).status_code
        for credential in (quota_key, quota_key, rate_key.key, rate_key.key, reader + "x")
    ]
    assert statuses == [200, 429, 200, 429, 401]
    with app.app_context():
        apikeys.flush_usage()
    response = client.get("/apikeys/metrics", headers={"X-API-Key": reader})
    names: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            names.setdefault(sample.name, set()).add(frozenset(sample.labels))
    return names


def metric_names_in(expression: str) -> set[str]:
    return set(re.findall(r"\bapikeys_[a-z_]+\b", expression))


def test_every_metric_is_exported_once_each_has_counted(
    exported: dict[str, set[frozenset[str]]],
) -> None:
    histogram = "apikeys_verification_seconds"
    assert {f"{histogram}_bucket", f"{histogram}_count", f"{histogram}_sum"} <= exported.keys()
    assert set(METRIC_NAMES) - {histogram} <= exported.keys()


def test_every_dashboard_expression_uses_only_exported_metric_names(
    exported: dict[str, set[frozenset[str]]],
) -> None:
    dashboard = json.loads((OBSERVABILITY / "dashboard.json").read_text())
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert len(expressions) >= 12
    used = set().union(*map(metric_names_in, expressions))
    assert used <= exported.keys(), used - exported.keys()
    labels = set().union(*(set(label_set) for name in used for label_set in exported[name]))
    for expression in expressions:
        for grouped in re.findall(r"by \(([^)]*)\)", expression):
            assert {label.strip() for label in grouped.split(",")} <= labels | {"le"}


# -- cost from configuration --------------------------------------------------------------------


COST_TABLE = {
    "/v1/generate/slides": {"request": 0.01, "per_1k_tokens": 0.5},
    "list_presentations": {"request": 0.001},
    "*": {"request": 0.0001},
}


def test_cost_table_prices_every_request_into_the_usage_row_and_the_metric(
    make_app: Any,
) -> None:
    app = make_app(APIKEYS_COST_TABLE=COST_TABLE, APIKEYS_USAGE_MODE="sync")
    APIKeysMetrics(app)
    apikeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(name="C", email="c@c.test")
        org = str(organization.id)
        key = apikeys.create_key(organization, "k", scopes=["*", "apikeys:metrics"]).key
    client = app.test_client()
    headers = {"X-API-Key": key}
    # the view records 1200 tokens and 0.0125 USD itself: 0.01 + 1.2 * 0.5 + 0.0125
    assert client.post("/v1/generate/slides", headers=headers).status_code == 200
    assert client.get("/v1/presentations", headers=headers).status_code == 200  # by endpoint
    assert client.get("/v1/whoami", headers=headers).status_code == 200  # "*"
    assert client.get("/nowhere", headers=headers).status_code == 404  # not charged
    with app.app_context():
        costs = dict(
            app.extensions["sqlalchemy"]
            .session.execute(sa.text("SELECT endpoint, cost_usd FROM api_key_usage"))
            .all()
        )
    assert costs["/v1/generate/slides"] == pytest.approx(0.6225)
    assert costs["/v1/presentations"] == pytest.approx(0.001)
    assert costs["/v1/whoami"] == pytest.approx(0.0001)
    assert costs["[unmatched]"] is None
    samples = scrape(client, key)
    assert samples[("apikeys_cost_usd_total", (("organization", org),))] == pytest.approx(0.6236)


@pytest.mark.parametrize(
    "table",
    [["/v1"], {"/v1": 3}, {"/v1": {}}, {"/v1": {"request": -1}}, {"/v1": {"per_call": 1}}],
)
def test_a_wrong_cost_table_is_refused_at_start_up(make_app: Any, table: Any) -> None:
    with pytest.raises(ConfigError, match="APIKEYS_COST_TABLE is invalid"):
        make_app(APIKEYS_COST_TABLE=table)


# -- the docs page ------------------------------------------------------------------------------


def test_the_observability_page_runs_as_written(tmp_path: Path) -> None:
    """Its Python blocks, in order, in one namespace (as a reader pasting them would)."""
    import docutils.core
    import docutils.nodes

    source = (ROOT / "docs" / "observability.rst").read_text()
    document = docutils.core.publish_doctree(
        source, settings_overrides={"report_level": 5, "halt_level": 5}
    )
    blocks = [
        node.astext()
        for node in document.findall(docutils.nodes.literal_block)
        if "python" in node.get("classes", []) and "literalinclude" not in node.get("source", "")
    ]
    assert len(blocks) >= 7
    namespace: dict[str, Any] = {"__name__": "docs_observability"}
    for block in blocks:
        exec(compile(block, "<docs/observability.rst>", "exec"), namespace)  # noqa: S102
    namespace["apikeys"].close(namespace["app"])


def test_a_dropped_app_is_collected_with_its_audit_and_metrics_receivers(make_app: Any) -> None:
    """Receivers are held by the app's state, not by the signals: an app factory run a thousand
    times (tests) does not keep a thousand apps alive."""
    import gc
    import weakref

    from .factory import create_app

    app, db, apikeys = create_app("sqlite://")
    APIKeysMetrics(app)
    dropped = weakref.ref(app)
    gc.collect()  # earlier tests' apps first
    receivers_before = len(signals.key_created.receivers)
    apikeys.close(app)
    del app, db, apikeys
    gc.collect()
    assert dropped() is None
    assert len(signals.key_created.receivers) == receivers_before - 1


def test_the_cost_table_and_metrics_settings_come_from_the_environment_too(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIKEYS_COST_TABLE", '{"*": {"request": 0.5}}')
    monkeypatch.setenv("APIKEYS_METRICS_PATH", "/internal/metrics")
    app = make_app(APIKEYS_USAGE_MODE="sync")
    APIKeysMetrics(app)
    apikeys = app.extensions["apikeys"].extension
    with app.app_context():
        organization = apikeys.create_organization(name="E", email="e@e.test")
        key = apikeys.create_key(organization, "k", scopes=["*", "apikeys:metrics"]).key
        org = organization.id
    client = app.test_client()
    client.get("/v1/whoami", headers={"X-API-Key": key})
    scraped = client.get("/internal/metrics", headers={"X-API-Key": key}).get_data(as_text=True)
    assert f'apikeys_cost_usd_total{{organization="{org}"}} 0.5' in scraped
