"""Revocation status of a chain for the operator tools: ``inspect --revocation``, ``check``.

These commands fetch at their own pace (not the handshake path): `report_chain` asks every
certificate's responders, OCSP first, then CRL distribution points (as the prefetcher does),
until one gives a definite answer, each URL bounded by the client's timeout and the whole
report by `deadline`. Every failure becomes a line of the report (``error:PROBLEM``);
nothing here raises for what a responder or the network did. The caller owns the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import httpx
import trio
from cryptography import x509

from ._boundary import printable
from ._duration import format_time
from ._errors import VerificationError
from ._fetch import (
    DEFAULT_TIMEOUT,
    FetchError,
    crl_urls,
    fetch_crl,
    fetch_ocsp,
    http_client,
    ocsp_urls,
)
from ._revocation import RevocationTarget
from ._svid import leaf_spiffe_id

#: The bound on a whole report, however many certificates and URLs it asks.
DEFAULT_DEADLINE: Final = 30.0


@dataclass(frozen=True, slots=True)
class CertRevocation:
    """What was learnt about one certificate. ``result`` is good, revoked, unknown, or
    ``error:PROBLEM``; ``source`` is ``ocsp:URL`` or ``crl:URL`` (the one that answered, or
    the first that failed), ``none`` (the certificate names no URL) or ``no-issuer``."""

    name: str  # the SPIFFE id, or the subject for a CA certificate
    serial: int
    source: str
    result: str
    this_update: datetime | None = None
    next_update: datetime | None = None
    reason: str | None = None

    @property
    def revoked(self) -> bool:
        return self.result == "revoked"


def certificate_name(cert: x509.Certificate) -> str:
    """The SPIFFE id of a leaf, else the subject (an intermediate has no id)."""
    try:
        return str(leaf_spiffe_id(cert))
    except VerificationError:
        pass
    try:
        return printable(cert.subject.rfc4514_string(), 120) or "-"
    except Exception:  # a subject cryptography cannot render
        return "-"


def no_issuer(cert: x509.Certificate) -> CertRevocation:
    """The line for a certificate whose issuer is not known: nothing can be asked."""
    return CertRevocation(certificate_name(cert), cert.serial_number, "no-issuer", "unknown")


async def _one(
    client: httpx.AsyncClient, target: RevocationTarget, *, now: datetime, skew: timedelta
) -> CertRevocation:
    cert = target.certificate
    name, serial = certificate_name(cert), cert.serial_number
    sources = [("ocsp", u) for u in ocsp_urls(cert)] + [("crl", u) for u in crl_urls(cert)]
    if not sources:
        return CertRevocation(name, serial, "none", "unknown")
    answered: CertRevocation | None = None  # an "unknown" answer: better than an error
    failed: CertRevocation | None = None  # the first error, OCSP's when it has one
    for kind, url in sources:
        source = f"{kind}:{printable(url, 200)}"
        try:
            if kind == "ocsp":
                answer = await fetch_ocsp(client, url, target, now=now, skew=skew)
                status, this, next_, reason = (
                    answer.status, answer.this_update, answer.next_update, answer.reason
                )  # fmt: skip
            else:
                judged = await fetch_crl(client, url, target.issuer, now=now, skew=skew)
                entry = judged.revoked_entry(serial)
                status = "revoked" if entry is not None else "good"
                this, next_ = judged.this_update, judged.next_update
                reason = entry.reason if entry is not None else None
        except FetchError as exc:
            failed = failed or CertRevocation(name, serial, source, f"error:{exc.problem}")
            continue
        except Exception:  # a request that cannot be built for these certificates
            failed = failed or CertRevocation(name, serial, source, "error:unsupported")
            continue
        found = CertRevocation(name, serial, source, status, this, next_, reason)
        if status != "unknown":
            return found
        answered = answered or found
    result = answered or failed
    assert result is not None
    return result


async def report_chain(
    targets: Sequence[RevocationTarget],
    *,
    skew: timedelta,
    now: datetime | None = None,
    url_timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
) -> list[CertRevocation]:
    """The status of each target, in order, asked concurrently; `url_timeout` seconds per URL,
    `deadline` for all. A target not done by the deadline is ``error:timeout``."""
    at = now if now is not None else datetime.now(UTC)
    done: list[CertRevocation | None] = [None] * len(targets)

    async def ask(index: int, client: httpx.AsyncClient) -> None:
        done[index] = await _one(client, targets[index], now=at, skew=skew)

    async with http_client(timeout=url_timeout) as client:
        with trio.move_on_after(deadline):
            async with trio.open_nursery() as nursery:
                for index in range(len(targets)):
                    nursery.start_soon(ask, index, client)
    return [
        found
        if found is not None
        else CertRevocation(
            certificate_name(t.certificate), t.certificate.serial_number, "-", "error:timeout"
        )
        for t, found in zip(targets, done, strict=True)
    ]


def _when(value: datetime | None) -> str:
    return format_time(value) if value is not None else "-"


def report_lines(report: Sequence[CertRevocation]) -> list[str]:
    """One ``revocation:`` line per certificate, leaf first: its index, then ``key=value``
    fields, the certificate's name last (a subject may hold spaces)."""
    return [
        f"revocation: {index} serial={entry.serial:#x} result={entry.result}"
        f" source={entry.source} this_update={_when(entry.this_update)}"
        f" next_update={_when(entry.next_update)} reason={entry.reason or '-'}"
        f" cert={entry.name}"
        for index, entry in enumerate(report)
    ]
