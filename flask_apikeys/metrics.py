"""Prometheus metrics for flask-apikeys (the ``flask-apikeys[metrics]`` extra).

:class:`APIKeysMetrics` subscribes to the signals of :mod:`flask_apikeys.signals` and to
Flask's ``request_finished``, like any receiver, and serves the metrics on a route that only
keys with the ``apikeys:metrics`` scope may read. Labels are bounded by design: the
organization id, the status class, the endpoint as its URL rule, a reason code; the key id only
when ``APIKEYS_METRICS_KEY_ID_LABEL`` asks; never a raw path, and never a key.

Under gunicorn (or any pre-fork server) set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory
before the server starts: each worker writes its values there, and a scrape of any worker
adds up all of them (prometheus_client's multiprocess mode). A worker adds its requests up
and writes them every ``sync_interval`` seconds (:mod:`flask_apikeys.metrics_batch`), so a
scrape sees another worker's at most that late.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, cast

from flask import (
    Flask,
    Response,
    after_this_request,
    current_app,
    has_request_context,
    request,
    request_finished,
)
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from . import signals
from .auth import get_current_key
from .decorators import require_scopes
from .environ import (
    COST_ENVIRON_KEY,
    OUTCOME_ENVIRON_KEY,
    RESULT_ENVIRON_KEY,
    VERIFICATION_SECONDS_ENVIRON_KEY,
)
from .errors import InsufficientScope
from .forking import after_fork_in_child
from .identity import VerifiedKey
from .metrics_batch import MAX_PENDING, RequestBatch
from .permissions import names_scope

#: Every metric name this module exports (the dashboard and the alert rules use only these).
METRIC_NAMES = (
    "apikeys_requests_total",
    "apikeys_credential_refusals_total",
    "apikeys_rate_limit_refusals_total",
    "apikeys_quota_refusals_total",
    "apikeys_quota_used_requests",
    "apikeys_quota_limit_requests",
    "apikeys_verification_seconds",
    "apikeys_key_cache_hits_total",
    "apikeys_key_cache_misses_total",
    "apikeys_usage_queue_rows",
    "apikeys_usage_rows_written_total",
    "apikeys_usage_rows_dropped_total",
    "apikeys_cost_usd_total",
)
MAX_REMEMBERED_ORGANIZATIONS = 100_000
#: Seconds: a cached key verifies in microseconds, a cache miss costs a database read.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
#: Seconds between two moves of a process's own figures (the requests it finished, key-cache
#: lookups, queue depth, quota) into prometheus_client; a scrape through :func:`serve_metrics`
#: moves this process's first, so under multiprocess mode another worker's are at most this
#: late.
SYNC_INTERVAL = 1.0


class APIKeysMetrics:
    """Prometheus metrics of one app; call after ``APIKeys.init_app``.

    :param app: the app, or ``None`` to call :meth:`init_app` later.
    :param registry: where the metrics are registered; a registry of their own by default
        (pass ``prometheus_client.REGISTRY`` to serve them with your other metrics).
    :param sync_interval: seconds between two moves of the figures a process keeps itself
        (the requests it finished, key-cache lookups, usage queue depth, quota used) into the
        metrics; see :data:`SYNC_INTERVAL`.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        registry: CollectorRegistry | None = None,
        sync_interval: float = SYNC_INTERVAL,
    ):
        self._registry = registry
        self._sync_interval = sync_interval
        if app is not None:
            self.init_app(app, registry=registry, sync_interval=sync_interval)

    def init_app(
        self,
        app: Flask,
        *,
        registry: CollectorRegistry | None = None,
        sync_interval: float | None = None,
    ) -> None:
        """Create the metrics, subscribe to the signals and register the metrics route."""
        state = app.extensions.get("apikeys")
        if state is None:
            raise RuntimeError("Call APIKeys.init_app(app) before APIKeysMetrics.init_app(app).")
        if "apikeys_metrics" in app.extensions:
            raise RuntimeError("APIKeysMetrics is already initialised on this app.")
        settings = state.settings  # read and checked by APIKeys.init_app
        registry = registry or self._registry or CollectorRegistry()
        interval = self._sync_interval if sync_interval is None else sync_interval
        if not interval > 0:
            raise RuntimeError(f"sync_interval must be a positive number of seconds: {interval!r}")
        recorder = _Recorder(registry, state, settings.metrics_key_id_label, interval)
        app.extensions["apikeys_metrics"] = recorder
        writer = state.writer
        # Receivers are plain functions, held by the recorder and connected weakly: blinker
        # calls one for ~4.5k instructions less than a bound method, whose weak reference it
        # rebuilds per call.
        if settings.usage_tracking and writer is not None and not writer.synchronous:
            # Every authenticated request queues a usage row that holds what its counters
            # need: one signal per batch the writer takes, instead of Flask's request_finished
            # on every request (~13k instructions for blinker's dispatch alone).
            recorder.usage_writer = writer
            signals.usage_rows_taken.connect(recorder.on_usage_rows_taken, writer)
            signals.credential_refused.connect(recorder.on_credential_refused_timed, app)
        else:
            request_finished.connect(recorder.on_request_finished, app)
            signals.credential_refused.connect(recorder.on_credential_refused, app)
        signals.rate_limit_refused.connect(recorder.on_rate_limit_refused, app)
        signals.quota_refused.connect(recorder.on_quota_refused, app)
        if state.writer is not None:
            signals.usage_rows_written.connect(recorder.on_rows_written, state.writer)
        recorder.start_syncing()
        path = settings.metrics_path
        # APIKEYS_ENABLED = False lets every scoped view through: the metrics name every
        # organization, so with no key checked they are not served at all.
        if path and settings.enabled:
            view = require_scopes(settings.metrics_scope)(serve_metrics)
            app.add_url_rule(path, "apikeys_metrics", view)


def serve_metrics() -> Response:
    """The metrics in Prometheus' text format; all workers' under multiprocess mode.

    They name every organization, so the key must hold the metrics scope by name
    (:func:`~flask_apikeys.permissions.names_scope`): a tenant's ``*`` key reads none of it.
    """
    recorder = cast(_Recorder, current_app.extensions["apikeys_metrics"])
    scope = recorder.state.settings.metrics_scope
    key = get_current_key()
    definitions = recorder.state.service.store.role_definitions
    if key is None or not names_scope(scope, key.own_scopes, key.roles, definitions):
        raise InsufficientScope(
            f"The metrics need a key given the {scope} scope by name (not through '*' or a "
            "level): they cover every organization.",
            required_scopes=[scope],
        )
    recorder.hand_over_and_sync()  # this process's figures are exact; other workers' later
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = recorder.registry
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class _Recorder:
    """The metric objects of one app and the receivers that update them.

    A finished request only appends its figures to :attr:`batch`; refusals (rare, and an
    alert wants them at once) go to prometheus_client at once. The requests, their latency,
    cost and quota figure, and the figures the process keeps anyway (the key cache's lookups,
    the usage queue's length) are moved in by :meth:`sync`: at each scrape of this process,
    every ``sync_interval`` seconds from a thread (what another worker's scrape sees under
    gunicorn), when a request finds :data:`~flask_apikeys.metrics_batch.MAX_PENDING` waiting,
    and at exit. Each prometheus_client update takes a lock and costs about as much as the rest
    of a receiver (``bench/README.md``).
    """

    def __init__(
        self, registry: CollectorRegistry, state: Any, key_id_label: bool, sync_interval: float
    ) -> None:
        self.registry = registry
        self.state = state
        self.key_id_label = key_id_label
        self.sync_interval = sync_interval
        request_labels = ["organization", "endpoint", "status_class"]
        if key_id_label:
            request_labels.append("key_id")

        def counter(name: str, text: str, labels: list[str] | tuple[str, ...] = ()) -> Counter:
            return Counter(name.removesuffix("_total"), text, labels, registry=registry)

        self.requests = counter(
            "apikeys_requests_total",
            "Requests authenticated by a key, by organization, endpoint and status class.",
            request_labels,
        )
        self.credential_refusals = counter(
            "apikeys_credential_refusals_total",
            "Presented keys or tokens refused, by reason code.",
            ["code"],
        )
        self.rate_limit_refusals = counter(
            "apikeys_rate_limit_refusals_total",
            "Requests refused by a rate limit (429), by organization and policy.",
            ["organization", "policy"],
        )
        self.quota_refusals = counter(
            "apikeys_quota_refusals_total",
            "Requests refused because the organization's monthly quota was used up.",
            ["organization"],
        )
        # The shared counter only grows within a month: the largest value any worker saw is
        # the latest (the last worker to finish a request may have taken an earlier unit).
        self.quota_used = Gauge(
            "apikeys_quota_used_requests",
            "Requests taken from the organization's monthly quota in the month (UTC, YYYY-MM).",
            ["organization", "month"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.quota_limit = Gauge(
            "apikeys_quota_limit_requests",
            "The organization's monthly quota.",
            ["organization"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.verification = Histogram(
            "apikeys_verification_seconds",
            "Time to verify a presented key or token, by outcome (accepted, refused).",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.cache_hits = counter(
            "apikeys_key_cache_hits_total", "Verified-key cache lookups that found the key."
        )
        self.cache_misses = counter(
            "apikeys_key_cache_misses_total", "Verified-key cache lookups that did not."
        )
        self.queue_depth = Gauge(
            "apikeys_usage_queue_rows",
            "Usage rows queued in a process, not written yet.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.rows_written = counter(
            "apikeys_usage_rows_written_total", "Usage rows written to the database."
        )
        self.rows_dropped = counter(
            "apikeys_usage_rows_dropped_total",
            "Usage rows dropped: refused by the database or past APIKEYS_USAGE_MAX_QUEUE.",
        )
        self.cost = counter(
            "apikeys_cost_usd_total",
            "Cost of the organization's requests in USD (record_cost and APIKEYS_COST_TABLE).",
            ["organization"],
        )
        self._cache_seen = (0, 0)
        self._sync_lock = threading.Lock()
        self._sync_wake = threading.Event()
        self._exit_hooks_registered = False
        #: (organization id, month) → (used, limit) as the last request saw them, for sync().
        self._quota_seen: dict[tuple[Any, str], tuple[int, int]] = {}
        self._quota_synced: dict[tuple[Any, str], tuple[int, int]] = {}
        self._quota_months: dict[str, str] = {}
        self.batch = RequestBatch(
            self.requests,
            self.verification,
            self.cost,
            LATENCY_BUCKETS,
            key_id_label=key_id_label,
        )
        #: The writer whose usage rows count the requests (usage tracking on, buffered), or
        #: ``None``: Flask's ``request_finished`` does.
        self.usage_writer: Any = None
        #: Flask's ``request_finished`` receiver (a plain function: see ``init_app``).
        self.on_request_finished = _request_finished_receiver(self)
        #: :data:`~flask_apikeys.signals.usage_rows_taken`'s receiver (a plain function).
        self.on_usage_rows_taken = _usage_rows_taken_receiver(self)

    # -- receivers ----------------------------------------------------------------------------

    def on_credential_refused(self, sender: Flask, *, code: str, **_: Any) -> None:
        self.credential_refusals.labels(code).inc()

    def on_credential_refused_timed(self, sender: Flask, *, code: str, **_: Any) -> None:
        """Count a refusal, and (no usage row times it) its verification's seconds once the
        hook has measured them: when the request's response is made."""
        self.credential_refusals.labels(code).inc()
        if has_request_context():
            after_this_request(self._time_refusal)

    def _time_refusal(self, response: Response) -> Response:
        seconds = request.environ.get(VERIFICATION_SECONDS_ENVIRON_KEY)
        if seconds is not None:
            self.batch.finished.append((None, None, 0, seconds, None, None))
        return response

    def on_rate_limit_refused(self, sender: Flask, *, error: Any) -> None:
        key = get_current_key()
        organization = "" if key is None else str(key.organization.id)
        policy = str(getattr(error, "extra", {}).get("policy", "") or "")
        self.rate_limit_refusals.labels(organization, policy).inc()

    def on_quota_refused(self, sender: Flask, *, error: Any) -> None:
        key = get_current_key()
        self.quota_refusals.labels("" if key is None else str(key.organization.id)).inc()

    def on_rows_written(self, sender: Any, *, count: int, dropped: int) -> None:
        if count:
            self.rows_written.inc(count)
        if dropped:
            self.rows_dropped.inc(dropped)

    # -- the figures a process keeps itself ---------------------------------------------------

    def hand_over_and_sync(self) -> None:
        """Have the writer hand over the usage rows it queued (each once), then :meth:`sync`:
        what a scrape of this process does, so that its own requests are all counted."""
        if self.usage_writer is not None:
            self.usage_writer.hand_over()
        self.sync()

    def sync(self) -> None:
        """Move the key cache's lookups since the last sync, the usage queue's length and the
        latest quota figures into the metrics."""
        with self._sync_lock:  # the thread, a scrape, a request and exit may sync at once
            self.batch.fold(self._see_quota)
            cache = self.state.cache
            hits, misses = cache.hits.value, cache.misses.value
            seen_hits, seen_misses = self._cache_seen
            self._cache_seen = (hits, misses)
            if hits > seen_hits:
                self.cache_hits.inc(hits - seen_hits)
            if misses > seen_misses:
                self.cache_misses.inc(misses - seen_misses)
            writer = self.state.writer
            if writer is not None:
                self.queue_depth.set(writer.queued)
            for (organization_id, month), figure in list(self._quota_seen.items()):
                if self._quota_synced.get((organization_id, month)) != figure:
                    self._sync_quota(organization_id, month, figure)
            if len(self._quota_synced) >= MAX_REMEMBERED_ORGANIZATIONS:
                self._quota_synced.clear()

    def _see_quota(self, organization_id: Any, month: str, figure: tuple[int, int]) -> None:
        """Remember a request's quota figure (used, limit) for :meth:`sync`."""
        seen = self._quota_seen
        if len(seen) >= MAX_REMEMBERED_ORGANIZATIONS:
            seen.clear()
        previous = seen.get((organization_id, month))
        # Two threads may finish out of order: keep the larger, the counter only grows.
        if previous is None or figure[0] >= previous[0]:
            seen[(organization_id, month)] = figure

    def _sync_quota(self, organization_id: Any, month: str, figure: tuple[int, int]) -> None:
        """Set an organization's quota gauges. When its month changes, the month just ended
        drops to 0 in this process, so that alerts on the largest figure see only the current
        month, and its series goes (one per organization and month would grow forever; under
        multiprocess mode the 0 stays in this process's file until the server restarts)."""
        organization = str(organization_id)
        previous = self._quota_months.get(organization)
        if previous is not None and month < previous:  # a request that finished late
            self._quota_seen.pop((organization_id, month), None)
            return
        if previous != month:
            if previous is not None:
                self.quota_used.labels(organization, previous).set(0)
                if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # not implemented there
                    self.quota_used.remove(organization, previous)
                self._quota_seen.pop((organization_id, previous), None)
                self._quota_synced.pop((organization_id, previous), None)
            if len(self._quota_months) >= MAX_REMEMBERED_ORGANIZATIONS:
                self._quota_months.clear()
            self._quota_months[organization] = month
        self.quota_used.labels(organization, month).set(figure[0])
        self.quota_limit.labels(organization).set(figure[1])
        self._quota_synced[(organization_id, month)] = figure

    def start_syncing(self) -> None:
        """Sync every ``sync_interval`` seconds from a daemon thread of this process, and at
        exit (a gunicorn worker's last figures); again in a forked worker (:meth:`_start_afresh`).
        """
        reference = weakref.ref(self)  # the thread must not keep a dropped app alive
        self._sync_wake = wake = threading.Event()
        interval = self.sync_interval

        def sync_now_and_then() -> None:
            while not wake.wait(interval):
                recorder = reference()
                if recorder is None:
                    return
                recorder.sync()
                del recorder

        def sync_at_exit() -> None:
            recorder = reference()
            if recorder is not None:
                recorder._sync_wake.set()
                # Before the writer's own exit flush (registered earlier, run later).
                recorder.hand_over_and_sync()

        name = "flask-apikeys-metrics"
        threading.Thread(target=sync_now_and_then, name=name, daemon=True).start()
        if not self._exit_hooks_registered:
            self._exit_hooks_registered = True
            atexit.register(sync_at_exit)
            after_fork_in_child(self, _Recorder._start_afresh)

    def _start_afresh(self) -> None:
        """In a forked worker (gunicorn ``--preload``): a lock and a thread of its own, and none
        of the parent's requests."""
        self._sync_lock = threading.Lock()
        self.batch.forget_parent()
        self.start_syncing()


def _request_finished_receiver(recorder: _Recorder) -> Callable[..., None]:
    """The receiver of Flask's ``request_finished`` for ``recorder``: it appends the request's
    figures to the batch (one C call, safe from any thread) and leaves the counting to the
    sync. One function: it runs on every request."""
    finished = recorder.batch.finished
    append = finished.append

    def on_request_finished(sender: Flask, *, response: Response, **_: Any) -> None:
        current_request = request._get_current_object()  # type: ignore[attr-defined]
        environ = current_request.environ
        key = environ.get(OUTCOME_ENVIRON_KEY)
        seconds = environ.get(VERIFICATION_SECONDS_ENVIRON_KEY)
        if isinstance(key, VerifiedKey):
            append(
                (
                    key,
                    current_request.url_rule,
                    response.status_code,
                    seconds,
                    environ.get(COST_ENVIRON_KEY),
                    environ.get(RESULT_ENVIRON_KEY),
                )
            )
        elif seconds is not None:  # a credential was presented and refused
            append((None, None, 0, seconds, None, None))
        else:
            return
        if len(finished) >= MAX_PENDING:  # the sync thread is late (or syncs rarely)
            recorder.sync()

    return on_request_finished


def _usage_rows_taken_receiver(recorder: _Recorder) -> Callable[..., None]:
    """The receiver of :data:`~flask_apikeys.signals.usage_rows_taken` for ``recorder``: it
    appends the batch of rows (one C call) and leaves the counting to the sync."""
    taken = recorder.batch.taken
    append = taken.append

    def on_usage_rows_taken(sender: Any, *, rows: tuple[tuple[Any, ...], ...]) -> None:
        append(rows)
        if len(taken) >= MAX_PENDING:  # batches: the sync thread is late
            recorder.sync()

    return on_usage_rows_taken
