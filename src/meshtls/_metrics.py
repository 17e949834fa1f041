"""`NodeMetrics`, a node's Prometheus metrics, and `serve_http`, its ``/metrics`` endpoint.

Theory of operation
-------------------
Several nodes can live in one process, so nothing here touches prometheus_client's
global registry: a `NodeMetrics` creates every metric of API.md on the registry it is
given, and `serve_http` exposes exactly that registry.

The rest of the node never names a metric or a label. It calls one small method per
event (`NodeMetrics.handshake`, `NodeMetrics.rotated`, ...), whose label values are
checked against fixed sets: an unknown value is a bug and raises `ValueError`
instead of minting a new series. Every label combination known in advance is
created at zero up front, so each series exists from the first scrape and rates
have no gaps.

The two certificate gauges are not stored values. A collector computes them from
the injected clock at scrape time, so they move with the clock (and with
`NodeMetrics.set_certificate`, called on rotation) without any task updating them.

`serve_http` is a deliberately small HTTP/1.1 server: h11 over `trio.serve_tcp`,
one request per connection, then close. Every connection runs under one deadline
(reading, answering and closing), the request head is bounded, and the number of
connections at once is capped; hostile input gets a 4xx and a close, a fault in one
connection is logged and never stops the server.

Probes must be answered under load, because a liveness probe that goes unanswered gets
the process killed. So idle connections cannot hold the places: a connection has
`request_timeout` (2 s) for its request head, and when every place is taken, the oldest
connection still waiting for its head is closed to admit the new one (`_Places`). Only
connections that sent a whole request are never evicted, and they finish quickly.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from http import HTTPStatus
from typing import Final, Literal, NoReturn, TypeVar, get_args
from urllib.parse import parse_qs

import h11
import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from ._errors import REASONS, Reason
from ._logs import event
from ._status import Json, Readiness

__all__ = [
    "CERTIFICATE_REASONS",
    "CONNECTION_BUCKETS",
    "HANDSHAKE_BUCKETS",
    "LISTENER_REFUSALS",
    "ListenerMetrics",
    "NodeMetrics",
    "add_process_collectors",
    "serve_http",
]

logger = logging.getLogger("meshtls")

#: The default first word of every metric name; ``[metrics] prefix`` changes it.
DEFAULT_PREFIX: Final = "meshtls"
_PREFIX_RE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

#: Our side of a connection: "server" for accepted connections, "client" for dialed ones.
MetricRole = Literal["client", "server"]
HandshakeResult = Literal["ok", "failed"]
RevocationSource = Literal["ocsp", "crl", "cache"]
RevocationResult = Literal["good", "revoked", "unknown"]
FetchKind = Literal["ocsp", "crl"]
FetchResult = Literal["ok", "error", "invalid"]

_ROLES: Final[tuple[MetricRole, ...]] = get_args(MetricRole)
_HANDSHAKE_RESULTS: Final[tuple[HandshakeResult, ...]] = get_args(HandshakeResult)
_REVOCATION_SOURCES: Final[tuple[RevocationSource, ...]] = get_args(RevocationSource)
_REVOCATION_RESULTS: Final[tuple[RevocationResult, ...]] = get_args(RevocationResult)
_FETCH_KINDS: Final[tuple[FetchKind, ...]] = get_args(FetchKind)
_FETCH_RESULTS: Final[tuple[FetchResult, ...]] = get_args(FetchResult)
#: Why a fetched OCSP response or CRL was not trusted: every `OcspProblem` and `CrlProblem`
#: (tests/test_metrics.py holds the two in step), and ``other`` for anything else.
REFUSAL_PROBLEMS: Final[tuple[str, ...]] = (
    "malformed", "unsuccessful", "wrong_certificate", "bad_signature", "unauthorized_signer",
    "delegate_without_eku", "not_yet_valid", "stale", "unsupported", "wrong_issuer",
    "issuer_cannot_sign_crls", "no_next_update", "other",
)  # fmt: skip

#: The reasons that are not about a certificate: a peer can be rejected for them, but no
#: certificate "failed validation" because of them.
_NOT_CERTIFICATE_REASONS: Final = frozenset(
    {"unauthorized", "handshake_timeout", "protocol_error", "no_client_certificate"}
)
#: The `REASONS` a certificate can fail validation for: the label values of
#: ``meshtls_certificate_validation_failures_total``.
CERTIFICATE_REASONS: Final[frozenset[str]] = REASONS - _NOT_CERTIFICATE_REASONS

#: Handshake duration buckets, in seconds: 0.5 ms to 10 s (the default handshake timeout),
#: about three per decade.
HANDSHAKE_BUCKETS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_K = TypeVar("_K")
_V = TypeVar("_V")


def _lookup(table: Mapping[_K, _V], key: _K, what: str) -> _V:
    try:
        return table[key]
    except KeyError:
        raise ValueError(f"unknown {what} label value: {key!r}") from None


class _CertificateGauges:
    """Collector for the expiry and age gauges of our SVID, computed at scrape time."""

    EXPIRY_HELP: Final = (
        "Seconds until this node's current SVID expires (not_after - now); negative once"
        " expired, absent until the first SVID is loaded."
    )
    AGE_HELP: Final = (
        "Seconds since this node's current SVID became valid (now - not_before);"
        " absent until the first SVID is loaded."
    )

    def __init__(self, clock: Callable[[], datetime], prefix: str) -> None:
        self._clock = clock
        self.expiry_name = f"{prefix}_certificate_expiry_seconds"
        self.age_name = f"{prefix}_certificate_age_seconds"
        self.validity: tuple[datetime, datetime] | None = None

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(self.expiry_name, self.EXPIRY_HELP),
            GaugeMetricFamily(self.age_name, self.AGE_HELP),
        )

    def describe(self) -> Iterable[Metric]:
        """The families without samples: lets the registry refuse duplicate names."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        expiry, age = self._families()
        validity = self.validity  # one read: a concurrent set_certificate cannot tear it
        if validity is not None:
            now = self._clock()
            not_before, not_after = validity
            expiry.add_metric([], (not_after - now).total_seconds())
            age.add_metric([], (now - not_before).total_seconds())
        return [expiry, age]


class _RevocationGauges:
    """Collector for the revocation cache gauges, read at scrape time from callbacks.

    Absent (help and type only) until `NodeMetrics.watch_revocations` names the cache;
    the age is absent while the cache is empty.
    """

    ENTRIES_HELP: Final = "Entries (OCSP answers and CRLs) held in the revocation cache."
    AGE_HELP: Final = (
        "Seconds since the oldest entry of the revocation cache was fetched;"
        " absent while the cache is empty."
    )

    def __init__(self, prefix: str) -> None:
        self.entries_name = f"{prefix}_revocation_cache_entries"
        self.age_name = f"{prefix}_revocation_cache_age_seconds"
        self.sources: tuple[Callable[[], int], Callable[[], float | None]] | None = None

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(self.entries_name, self.ENTRIES_HELP),
            GaugeMetricFamily(self.age_name, self.AGE_HELP),
        )

    def describe(self) -> Iterable[Metric]:
        """The families without samples: lets the registry refuse duplicate names."""
        return self._families()

    def collect(self) -> Iterable[Metric]:
        entries, age = self._families()
        sources = self.sources  # one read: a concurrent watch cannot tear it
        if sources is not None:
            count, oldest_age = sources
            entries.add_metric([], float(count()))
            if (seconds := oldest_age()) is not None:
                age.add_metric([], seconds)
        return [entries, age]


class NodeMetrics:
    """Every metric of one node, created on `registry` (never the global registry).

    Every name starts with `prefix` and an underscore (``meshtls_...`` by default;
    ``mtls`` gives the names of the system meshtls replaces). `clock` returns the
    current time as an aware `datetime`; the certificate gauges read it at each scrape.
    Each method records one event; a label value outside its fixed set raises
    `ValueError`. Creating two `NodeMetrics` on one registry raises prometheus_client's
    `ValueError` for the duplicated names.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], datetime],
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(
                f"metric prefix {prefix!r} is not a Prometheus name ([a-zA-Z_][a-zA-Z0-9_]*)"
            )
        self.registry = registry
        self.prefix = prefix
        self._certificate = _CertificateGauges(clock, prefix)
        registry.register(self._certificate)

        self._rotations = Counter(
            f"{prefix}_certificate_rotations_total",
            "Identity updates (a new SVID or trust bundle) swapped into this node's TLS contexts.",
            registry=registry,
        )
        certificate_failures = Counter(
            f"{prefix}_certificate_validation_failures_total",
            "Certificates that failed validation, by reason: our own SVID updates that were"
            " refused, and peers' certificates rejected in a handshake.",
            ["reason"],
            registry=registry,
        )
        self._certificate_failures = {
            reason: certificate_failures.labels(reason) for reason in sorted(CERTIFICATE_REASONS)
        }
        peer_failures = Counter(
            f"{prefix}_peer_verification_failures_total",
            "Peers rejected (their connection closed before any application byte), by reason.",
            ["reason"],
            registry=registry,
        )
        self._peer_failures = {reason: peer_failures.labels(reason) for reason in sorted(REASONS)}
        handshakes = Counter(
            f"{prefix}_handshakes_total",
            "TLS handshakes finished, by our role (server: accepted, client: dialed) and"
            " result (ok: the peer was verified and authorized; failed: it was not).",
            ["role", "result"],
            registry=registry,
        )
        self._handshakes = {
            (role, result): handshakes.labels(role, result)
            for role in _ROLES
            for result in _HANDSHAKE_RESULTS
        }
        durations = Histogram(
            f"{prefix}_handshake_duration_seconds",
            "Duration of successful handshakes, from the first byte to a verified and"
            " authorized peer, by our role. Failed handshakes are counted, not timed.",
            ["role"],
            registry=registry,
            buckets=HANDSHAKE_BUCKETS,
        )
        self._durations = {role: durations.labels(role) for role in _ROLES}
        connections = Gauge(
            f"{prefix}_connections_active",
            "Verified connections open now, by our role (server: accepted, client: dialed).",
            ["role"],
            registry=registry,
        )
        self._connections = {role: connections.labels(role) for role in _ROLES}
        checks = Counter(
            f"{prefix}_revocation_checks_total",
            "Revocation lookups, by where the verdict came from (ocsp, crl, cache) and"
            " verdict (good, revoked, unknown).",
            ["source", "result"],
            registry=registry,
        )
        self._checks = {
            (source, result): checks.labels(source, result)
            for source in _REVOCATION_SOURCES
            for result in _REVOCATION_RESULTS
        }
        fetches = Counter(
            f"{prefix}_revocation_fetch_total",
            "Fetches of revocation data, by kind (ocsp, crl) and result (ok: fetched and"
            " verified; error: not fetched; invalid: fetched but unusable).",
            ["kind", "result"],
            registry=registry,
        )
        self._fetches = {
            (kind, result): fetches.labels(kind, result)
            for kind in _FETCH_KINDS
            for result in _FETCH_RESULTS
        }
        refused = Counter(
            f"{prefix}_revocation_refused_total",
            "Fetched OCSP responses and CRLs that were not trusted, by kind and by the check"
            " that refused them (bad_signature, stale, wrong_certificate, ...).",
            ["kind", "problem"],
            registry=registry,
        )
        self._refusals = {
            (kind, problem): refused.labels(kind, problem)
            for kind in _FETCH_KINDS
            for problem in REFUSAL_PROBLEMS
        }
        self._revocation_gauges = _RevocationGauges(prefix)
        registry.register(self._revocation_gauges)
        self._listener_families: _ListenerFamilies | None = None
        self._listeners: dict[str, ListenerMetrics] = {}

    # ------------------------------------------------------------------ handshakes

    def handshake(self, role: MetricRole, *, seconds: float, reason: Reason | None = None) -> None:
        """Record one finished handshake on our side `role`.

        With no `reason`, it succeeded: counted as ``ok`` and `seconds` is observed in
        the duration histogram. With a `reason`, the peer was rejected: counted as
        ``failed``, and also in ``peer_verification_failures_total{reason}`` and, if
        the reason is about a certificate, ``certificate_validation_failures_total``.
        So call only this for a handshake, not `peer_rejected` or `certificate_invalid`.
        """
        if reason is None:
            handshakes = _lookup(self._handshakes, (role, "ok"), "role")
            handshakes.inc()
            self._durations[role].observe(seconds)
            return
        handshakes = _lookup(self._handshakes, (role, "failed"), "role")
        self.peer_rejected(reason)
        if reason in CERTIFICATE_REASONS:
            self.certificate_invalid(reason)
        handshakes.inc()

    def peer_rejected(self, reason: Reason) -> None:
        """Count a peer rejected outside a handshake (e.g. a live connection closed as revoked)."""
        _lookup(self._peer_failures, reason, "reason").inc()

    def certificate_invalid(self, reason: Reason) -> None:
        """Count a certificate that failed validation outside a handshake (e.g. our new SVID).

        `reason` must be one of `CERTIFICATE_REASONS`.
        """
        _lookup(self._certificate_failures, reason, "certificate reason").inc()

    # ------------------------------------------------------------------ our identity

    def rotated(self) -> None:
        """Count one identity update (a new SVID or bundle) swapped into the TLS contexts."""
        self._rotations.inc()

    def set_certificate(self, not_before: datetime, not_after: datetime) -> None:
        """Make the expiry and age gauges describe our SVID valid from `not_before` to `not_after`.

        Both must be aware datetimes. The gauges are computed from the clock at each scrape.
        """
        if not_before.tzinfo is None or not_after.tzinfo is None:
            raise ValueError("not_before and not_after must be aware datetimes")
        self._certificate.validity = (not_before, not_after)

    # ------------------------------------------------------------------ connections

    def connection_opened(self, role: MetricRole) -> None:
        """Count a verified connection as open; pair with `connection_closed` (or `connection`)."""
        _lookup(self._connections, role, "role").inc()

    def connection_closed(self, role: MetricRole) -> None:
        """Count a connection from `connection_opened` as closed."""
        _lookup(self._connections, role, "role").dec()

    @contextmanager
    def connection(self, role: MetricRole) -> Iterator[None]:
        """Count a verified connection as open for the duration of the ``with`` block."""
        gauge = _lookup(self._connections, role, "role")
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    # ------------------------------------------------------------------ revocation

    def revocation_check(self, source: RevocationSource, result: RevocationResult) -> None:
        """Count one revocation verdict and where it came from."""
        _lookup(self._checks, (source, result), "revocation source/result").inc()

    def revocation_fetch(self, kind: FetchKind, result: FetchResult) -> None:
        """Count one fetch of an OCSP response or a CRL and how it ended."""
        _lookup(self._fetches, (kind, result), "revocation fetch kind/result").inc()

    def revocation_refused(self, kind: FetchKind, problem: str) -> None:
        """Count one fetched response or CRL that failed a check (``problem``: which one;
        a name outside `REFUSAL_PROBLEMS` counts as ``other``)."""
        label = problem if problem in REFUSAL_PROBLEMS else "other"
        _lookup(self._refusals, (kind, label), "revocation refusal kind/problem").inc()

    def watch_revocations(
        self, cache_entries: Callable[[], int], oldest_age: Callable[[], float | None]
    ) -> None:
        """Read the revocation cache gauges from these callbacks at each scrape.

        `cache_entries` gives the number of entries; `oldest_age` the seconds since the
        oldest was fetched, or None when the cache is empty. A second call replaces them.
        """
        self._revocation_gauges.sources = (cache_entries, oldest_age)

    # ------------------------------------------------------------------ per listener

    def listener(self, name: str) -> ListenerMetrics:
        """The series of the listener `name` (``"mesh"``, ``"expose:HOST:PORT"``, ...).

        The families are created on the first call, and each listener's series (every
        refusal reason at zero) on its first call; the node calls this for each listener
        it starts, so a scrape shows every listener from the start.
        """
        families = self._listener_families
        if families is None:
            families = self._listener_families = _ListenerFamilies(self.registry, self.prefix)
        series = self._listeners.get(name)
        if series is None:
            series = self._listeners[name] = ListenerMetrics(families, name)
        return series

    def listener_names(self) -> list[str]:
        """The listeners `listener` has made series for, in order."""
        return list(self._listeners)


#: Why a send failed (`SendError.reason`): the label values of ``message_send_failures_total``.
SEND_FAILURES: Final[tuple[str, ...]] = (
    "unknown_peer",
    "unavailable",
    "closed",
    "timeout",
    "too_large",
)
#: Why a message link ended (`LinkEnd.reason`, plus the pool's own): any other is ``other``.
#: The pool counts its client links once up (a failed upgrade is a failed dial); the
#: mesh listener counts every server link, failed upgrades (``not_websocket``, ...) too.
LINK_ENDS: Final[tuple[str, ...]] = (
    "closed",
    "drained",
    "revoked",
    "rejected",
    "replaced",
    "keepalive_timeout",
    "close_timeout",
    "message_too_large",
    "protocol_error",
    "peer_error",
    "not_websocket",
    "wrong_path",
    "upgrade_rejected",
    "upgrade_timeout",
    "broken",
    "internal_error",
    "cancelled",
    "other",
)


class MeshMetrics:
    """The dialer pool's and the message channels' metrics, on `registry` with `prefix`.

    The ``peer`` label takes pooled peers only (``[[peers]]`` and `Node.add_peer`), so its
    cardinality is what the operator configured; `forget` drops a removed peer's series.
    A reason outside its fixed set counts as ``other`` (links) or raises (sends).
    """

    def __init__(self, registry: CollectorRegistry, prefix: str = DEFAULT_PREFIX) -> None:
        self._connected = Gauge(
            f"{prefix}_peer_connected",
            "1 while the dialer pool holds a verified message link to the peer, else 0.",
            ["peer"],
            registry=registry,
        )
        self._dials = Counter(
            f"{prefix}_peer_dials_total",
            "Dials by the pool to each peer, by result (ok: a verified link; failed: not).",
            ["peer", "result"],
            registry=registry,
        )
        self._sent = Counter(
            f"{prefix}_messages_sent_total",
            "Messages sent and confirmed by the peer node.",
            registry=registry,
        )
        self._received = Counter(
            f"{prefix}_messages_received_total",
            "Messages received from verified peers and queued for the application.",
            registry=registry,
        )
        failures = Counter(
            f"{prefix}_message_send_failures_total",
            "Sends reported to the caller as failed (SendError), by reason.",
            ["reason"],
            registry=registry,
        )
        self._failures = {reason: failures.labels(reason) for reason in SEND_FAILURES}
        ended = Counter(
            f"{prefix}_channel_links_ended_total",
            "Message links (WebSocket over a verified connection) that ended, by our role"
            " (client: the pool dialled; server: a peer dialled us) and reason.",
            ["role", "reason"],
            registry=registry,
        )
        self._ended = {
            (role, reason): ended.labels(role, reason) for role in _ROLES for reason in LINK_ENDS
        }

    def peer_added(self, peer: str) -> None:
        """Show `peer`'s series from now on (disconnected, no dials)."""
        self._connected.labels(peer).set(0)
        for result in ("ok", "failed"):
            self._dials.labels(peer, result)

    def forget(self, peer: str) -> None:
        """Drop a removed peer's series."""
        for metric, labels in (
            (self._connected, (peer,)),
            (self._dials, (peer, "ok")),
            (self._dials, (peer, "failed")),
        ):
            with suppress(KeyError):
                metric.remove(*labels)

    def peer_connected(self, peer: str, up: bool) -> None:
        self._connected.labels(peer).set(1 if up else 0)

    def dialed(self, peer: str, *, ok: bool) -> None:
        self._dials.labels(peer, "ok" if ok else "failed").inc()

    def message_sent(self) -> None:
        self._sent.inc()

    def message_received(self) -> None:
        self._received.inc()

    def send_failed(self, reason: str) -> None:
        _lookup(self._failures, reason, "send failure reason").inc()

    def link_ended(self, role: MetricRole, reason: str) -> None:
        label = reason if reason in LINK_ENDS else "other"
        _lookup(self._ended, (role, label), "role").inc()


#: Why a listener refused a connection: a handshake's `REASONS`, or its connection cap.
LISTENER_REFUSALS: Final[frozenset[str]] = REASONS | {"connection_limit"}
#: Connection duration buckets, in seconds: 10 ms to 1 h.
CONNECTION_BUCKETS: Final[tuple[float, ...]] = (
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)


class _ListenerFamilies:
    """The per-listener families, created once per registry (label ``listener``)."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.accepted = Counter(
            f"{prefix}_listener_connections_accepted_total",
            "Connections a listener accepted (TCP), before any verification.",
            ["listener"],
            registry=registry,
        )
        self.open = Gauge(
            f"{prefix}_listener_connections_open",
            "Connections a listener holds now, from accept to close (handshakes included).",
            ["listener"],
            registry=registry,
        )
        self.refused = Counter(
            f"{prefix}_listener_connections_refused_total",
            "Connections a listener refused, by reason: a handshake's reason (the peer"
            " failed verification or authorization) or connection_limit (over its cap).",
            ["listener", "reason"],
            registry=registry,
        )
        self.received = Counter(
            f"{prefix}_listener_received_bytes_total",
            "Application bytes received from the side that connected to the listener.",
            ["listener"],
            registry=registry,
        )
        self.sent = Counter(
            f"{prefix}_listener_sent_bytes_total",
            "Application bytes sent to the side that connected to the listener.",
            ["listener"],
            registry=registry,
        )
        self.backend_failures = Counter(
            f"{prefix}_listener_backend_dial_failures_total",
            "Tunnels whose far end could not be reached: an expose's backend, or a"
            " forward's peer (unreachable, too slow, or refused in the handshake).",
            ["listener"],
            registry=registry,
        )
        self.duration = Histogram(
            f"{prefix}_listener_connection_duration_seconds",
            "How long served connections lasted, from accept to close (refused ones are"
            " counted in refused_total, not timed).",
            ["listener"],
            registry=registry,
            buckets=CONNECTION_BUCKETS,
        )


class ListenerMetrics:
    """One listener's series; `began` and `ended` record a connection's account."""

    def __init__(self, families: _ListenerFamilies, name: str) -> None:
        self.accepted = families.accepted.labels(name)
        self.open = families.open.labels(name)
        self.refused = {
            reason: families.refused.labels(name, reason) for reason in sorted(LISTENER_REFUSALS)
        }
        self.received = families.received.labels(name)
        self.sent = families.sent.labels(name)
        self.backend_failures = families.backend_failures.labels(name)
        self.duration = families.duration.labels(name)

    def began(self) -> None:
        """A connection was accepted."""
        self.accepted.inc()
        self.open.inc()

    def ended(
        self,
        *,
        refused: str | None,
        received: int,
        sent: int,
        backend_failed: bool,
        seconds: float | None,
    ) -> None:
        """A connection from `began` ended: refused for a reason, or served (`seconds`)."""
        self.open.dec()
        if refused is not None:
            _lookup(self.refused, refused, "refusal reason").inc()
        if received:
            self.received.inc(received)
        if sent:
            self.sent.inc(sent)
        if backend_failed:
            self.backend_failures.inc()
        if seconds is not None:
            self.duration.observe(seconds)


def add_process_collectors(registry: CollectorRegistry) -> None:
    """Register prometheus_client's process and platform collectors on `registry`.

    Their names are the standard ones (``process_cpu_seconds_total``, ``python_info``),
    without the node's prefix, so that stock dashboards find them. Registering them
    twice on one registry raises prometheus_client's `ValueError`.
    """
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)


# ---------------------------------------------------------------------- HTTP endpoint

#: Every connection is answered and closed within this many seconds, or dropped.
DEFAULT_CONNECTION_TIMEOUT: Final = 10.0
#: A connection whose request head has not fully arrived within this many seconds is closed.
DEFAULT_REQUEST_TIMEOUT: Final = 2.0
#: Connections served at once; past it, the oldest one still waiting for its request is
#: closed to make room, else the oldest that has not taken its answer within the request
#: timeout, else the new one.
DEFAULT_MAX_CONNECTIONS: Final = 64
#: The largest request head (request line and headers) accepted; larger gets a 431.
MAX_REQUEST_HEAD: Final = 8192
_RECEIVE_SIZE: Final = 4096
#: After answering, how long unread input is drained so closing does not reset the answer.
_LINGER: Final = 1.0
_TEXT: Final = "text/plain; charset=utf-8"
_JSON: Final = "application/json"
_ALLOWED: Final = "GET, HEAD"
_PATHS: Final = frozenset({b"/metrics", b"/healthz", b"/readyz", b"/status"})
#: Content types of served files, by name suffix (anything else is octet-stream).
_FILE_TYPES: Final = {".pem": "application/x-pem-file", ".crl": "application/pkix-crl"}

#: A file the endpoint serves: its current bytes, or None for "not there" (404).
FileReader = Callable[[], bytes | None]

#: What the endpoint answers about the node: readiness, and the ``/status`` document.
ReadyCheck = Callable[[], Readiness]
StatusReport = Callable[[], Mapping[str, Json]]


class _Places:
    """The endpoint's `limit` places, in arrival order; who waits for a request head.

    `admit` gives a new connection a place when every place is taken by closing
    (cancelling) the oldest connection still waiting for its request head; with none, the
    oldest that has had its request (`busy`) for `stale` seconds or more, which is as
    stuck as an idle one (it does not take its answer); with neither, the new connection
    is refused. `leave` frees the place; evicted connections have lost theirs already.
    """

    def __init__(self, limit: int, stale: float) -> None:
        self._limit = limit
        self._stale = stale
        #: Each place's cancel scope, and since when it is busy (None: still waiting).
        self._taken: dict[object, tuple[trio.CancelScope, float | None]] = {}  # age order

    def admit(self, token: object, scope: trio.CancelScope) -> bool:
        if len(self._taken) >= self._limit:
            oldest = self._evictable()
            if oldest is None:
                return False
            evicted, _ = self._taken.pop(oldest)
            evicted.cancel()
        self._taken[token] = (scope, None)
        return True

    def _evictable(self) -> object | None:
        waiting = (t for t, (_, since) in self._taken.items() if since is None)
        if (oldest := next(waiting, None)) is not None:
            return oldest
        cutoff = trio.current_time() - self._stale
        stuck = (
            t for t, (_, since) in self._taken.items() if since is not None and since <= cutoff
        )
        return next(stuck, None)

    def busy(self, token: object) -> None:
        if token in self._taken:
            self._taken[token] = (self._taken[token][0], trio.current_time())

    def leave(self, token: object) -> None:
        self._taken.pop(token, None)


async def serve_http(
    registry: CollectorRegistry,
    host: str | None,
    port: int,
    *,
    ready: ReadyCheck,
    status: StatusReport | None = None,
    files: Mapping[str, FileReader] | None = None,
    connection_timeout: float = DEFAULT_CONNECTION_TIMEOUT,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``/metrics``, ``/healthz``, ``/readyz`` and ``/status`` over HTTP/1.1 on `host`:`port`.

    Use with ``await nursery.start(serve_http, registry, host, port, ready=...)``:
    ``started()`` gives the bound `trio.SocketListener`s (port 0 picks a free port).

    - ``GET /metrics``: `registry` in the Prometheus text format, or in OpenMetrics when
      the ``Accept`` header asks for it.
    - ``GET /healthz``: 200 while the server runs.
    - ``GET /readyz``: 200 when ``ready()`` says so, else 503 with the reason in the
      body; as JSON (the ``status()`` document) with ``Accept: application/json`` or
      ``?format=json``.
    - ``GET /status``: the ``status()`` document as JSON, always 200 (404 without `status`).
    - ``GET <path>`` for each `files` entry (such as ``"/crl.pem"``): what its reader
      returns, read at each request; 404 when it returns None. The reader owns the file
      and says what "not there" is; anything it raises is a 500, logged.

    HEAD works like GET; other methods get 405, other paths 404. Each connection
    carries one request and is closed after the answer; its request head must arrive
    within `request_timeout` seconds and the whole exchange end within
    `connection_timeout`, or it is dropped. At most `max_connections` are served at
    once (see `_Places`). `ready` and `status` are called at each request; an exception
    from either is a 500, logged. Runs until cancelled.
    """
    if connection_timeout <= 0:
        raise ValueError("connection_timeout must be positive")
    if request_timeout <= 0:
        raise ValueError("request_timeout must be positive")
    if max_connections < 1:
        raise ValueError("max_connections must be >= 1")
    for path in files or {}:
        if not path.startswith("/") or path.encode() in _PATHS or "?" in path:
            raise ValueError(f"files: {path!r} must be a path of its own, starting with '/'")
    places = _Places(max_connections, stale=request_timeout)
    answers = _Answers(registry, ready, status, files)

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            token = object()
            with trio.CancelScope() as evicted:
                if not places.admit(token, evicted):
                    return  # every place is answering a request: closed unanswered
                try:
                    with trio.move_on_after(connection_timeout):
                        await _serve_one(
                            stream, answers, request_timeout, lambda: places.busy(token)
                        )
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the client went away
                except Exception as exc:
                    event(logger, logging.ERROR, "metrics endpoint: request failed", exc_info=exc)
                finally:
                    places.leave(token)

    await trio.serve_tcp(handler, port, host=host, task_status=task_status)
    raise AssertionError("unreachable: serve_tcp runs until cancelled")  # pragma: no cover


async def _serve_one(
    stream: trio.SocketStream,
    answers: _Answers,
    request_timeout: float,
    on_request: Callable[[], None],
) -> None:
    """Read one request from `stream`, send the answer and half-close; the caller closes.

    Calls `on_request` once a whole request head has arrived (or a bad one: it is
    answered too). A head that is not complete within `request_timeout` is not answered.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    request: h11.Request | None = None
    try:
        with trio.move_on_after(request_timeout):
            request = await _receive_request(stream, conn)
    except h11.RemoteProtocolError as exc:
        on_request()
        status = exc.error_status_hint
        await _send(stream, conn, status, _TEXT, f"{HTTPStatus(status).phrase}\n".encode())
        return
    if request is None:
        return  # closed, or too slow, before a complete request: nothing to answer
    on_request()
    try:
        status, content_type, body, headers = answers.answer(request)
    except Exception as exc:  # a broken collector, ready() or status(): answer 500, keep serving
        event(
            logger,
            logging.ERROR,
            "metrics endpoint: answering failed",
            exc_info=exc,
            path=request.target.decode("ascii", "replace"),
        )
        status, content_type, body, headers = 500, _TEXT, b"internal error\n", []
    await _send(
        stream, conn, status, content_type, body, head=request.method == b"HEAD", extra=headers
    )


async def _receive_request(stream: trio.SocketStream, conn: h11.Connection) -> h11.Request | None:
    """The next request head from `stream`, or None if the client closed before one.

    Raises `h11.RemoteProtocolError` for a malformed head, or one over `MAX_REQUEST_HEAD`
    bytes (h11's own bound lets a head that arrives complete in one read exceed it).
    """
    received = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            room = MAX_REQUEST_HEAD - received  # never read past the bound
            if room <= 0:
                raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
            data = await stream.receive_some(min(_RECEIVE_SIZE, room))
            received += len(data)
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            return event
        else:  # ConnectionClosed: a server sees nothing else before a request
            return None


Answer = tuple[int, str, bytes, list[tuple[str, str]]]


class _Answers:
    """What each request gets: status, content type, body and extra headers; no I/O."""

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: ReadyCheck,
        status: StatusReport | None,
        files: Mapping[str, FileReader] | None = None,
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._status = status
        self._files = {path.encode(): read for path, read in (files or {}).items()}

    def answer(self, request: h11.Request) -> Answer:
        path, _, query = request.target.partition(b"?")
        known = path in _PATHS or path in self._files
        if not known or (path == b"/status" and self._status is None):
            return 404, _TEXT, b"not found\n", []
        if request.method not in (b"GET", b"HEAD"):
            return 405, _TEXT, b"method not allowed\n", [("Allow", _ALLOWED)]
        if path in self._files:
            body = self._files[path]()
            if body is None:
                return 404, _TEXT, b"not found\n", []
            suffix = path[path.rfind(b".") :].decode("latin-1") if b"." in path else ""
            return 200, _FILE_TYPES.get(suffix, "application/octet-stream"), body, []
        accept = _header(request, b"accept")
        if path == b"/metrics":
            encoder, content_type = choose_encoder(accept)
            return 200, content_type, encoder(self._registry), []
        if path == b"/healthz":
            return 200, _TEXT, b"ok\n", []
        if path == b"/status":
            return 200, _JSON, _json(self._document()), []
        if _wants_json(accept, query):
            document = self._document()
            code = 200 if document.get("ready") is True else 503  # agrees with the body
            return code, _JSON, _json(document), []
        verdict = self._ready()
        detail = f"; {verdict.detail}" if verdict.detail else ""
        if verdict.ready:
            return 200, _TEXT, f"ready{detail}\n".encode(), []
        return 503, _TEXT, f"not ready: {verdict.reason or 'unknown'}{detail}\n".encode(), []

    def _document(self) -> Mapping[str, Json]:
        """The status document; without `status`, readiness alone."""
        if self._status is not None:
            return self._status()
        verdict = self._ready()
        return {"ready": verdict.ready, "reason": verdict.reason}


def _json(document: Mapping[str, Json]) -> bytes:
    return json.dumps(document, indent=2).encode() + b"\n"


def _header(request: h11.Request, name: bytes) -> str:
    """The request's `name` header values joined by commas ("" when absent)."""
    values = [value for key, value in request.headers if key == name]
    return b", ".join(values).decode("latin-1")


def _wants_json(accept: str, query: bytes) -> bool:
    """``?format=json``, or an ``Accept`` header that names ``application/json``."""
    formats = parse_qs(query.decode("latin-1")).get("format", [])
    return "json" in formats or "application/json" in accept.lower()


async def _send(
    stream: trio.SocketStream,
    conn: h11.Connection,
    status: int,
    content_type: str,
    body: bytes,
    *,
    head: bool = False,
    extra: Iterable[tuple[str, str]] = (),
) -> None:
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
        *extra,
    ]
    reason = HTTPStatus(status).phrase.encode()
    data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
    if not head:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)
    await stream.send_eof()
    # Lingering close: closing with unread input makes the kernel send a reset, which can
    # destroy the answer before the client reads it. So drain a little first.
    with trio.move_on_after(_LINGER):
        while await stream.receive_some(_RECEIVE_SIZE):
            pass
