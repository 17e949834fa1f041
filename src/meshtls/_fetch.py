"""Fetching revocation data over HTTP: OCSP responses and CRLs (P-4).

Theory of operation. The prefetcher (`meshtls._prefetch`) owns an `http_client` and calls
`fetch_ocsp` / `fetch_crl`; nothing else here does I/O. Each fetch is bounded: a timeout
for the whole exchange, a size cap on the body, no redirects followed and no proxy or
netrc taken from the environment. Every failure becomes a `FetchError` naming its kind
("ocsp" or "crl"), its result ("error": no answer; "invalid": an answer that failed its
judge) and its problem, so the caller counts it; no foreign exception crosses.

OCSP is asked by POST (``application/ocsp-request``); when that gets no usable answer
(refused, reset, a non-200), it is asked once more by GET with the base64 request in the
path (RFC 6960 appendix A). A timeout is not retried: the responder is slow, not picky.
"""

from __future__ import annotations

import base64
import urllib.parse
from datetime import datetime, timedelta
from typing import Final, Literal

import httpx
import trio
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from ._boundary import describe_error, printable
from ._crl import CrlError, JudgedCrl, judge_crl, load_crl
from ._errors import MeshError
from ._metrics import FetchKind
from ._ocsp import OcspAnswer, OcspError, judge_ocsp, ocsp_request
from ._revocation import RevocationTarget

#: What a failed fetch brought: nothing ("error"), or an answer its judge refused ("invalid").
FetchFailure = Literal["error", "invalid"]

#: The largest body read from a responder or distribution point.
MAX_BODY: Final = 1 << 20
DEFAULT_TIMEOUT: Final = 5.0
_SCHEMES: Final = ("http://", "https://")
_OCSP_REQUEST: Final = {"Content-Type": "application/ocsp-request"}


class FetchError(MeshError):
    """A fetch that brought nothing usable. ``problem`` is "timeout", "connect",
    "http_status", "too_large", or the judge's problem when ``result`` is "invalid"."""

    def __init__(
        self, kind: FetchKind, result: FetchFailure, problem: str, detail: str, url: str
    ) -> None:
        super().__init__(f"{kind} {printable(url, 120)}: {problem}: {detail}")
        self.kind: FetchKind = kind
        self.result: FetchFailure = result
        self.problem = problem
        self.detail = detail
        self.url = url


def _uris(names: list[x509.GeneralName]) -> list[str]:
    return [
        name.value
        for name in names
        if isinstance(name, x509.UniformResourceIdentifier)
        and name.value.lower().startswith(_SCHEMES)
    ]


def ocsp_urls(cert: x509.Certificate) -> tuple[str, ...]:
    """The http(s) OCSP responder URLs in `cert`'s AIA; () when none or unreadable."""
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        names = [
            d.access_location
            for d in access
            if d.access_method == AuthorityInformationAccessOID.OCSP
        ]
        return tuple(dict.fromkeys(_uris(names)))
    except Exception:
        return ()


def crl_urls(cert: x509.Certificate) -> tuple[str, ...]:
    """The http(s) fullName URIs of `cert`'s CRL distribution points; () when none."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        names = [name for point in points for name in (point.full_name or ())]
        return tuple(dict.fromkeys(_uris(names)))
    except Exception:
        return ()


def http_client(*, timeout: float = DEFAULT_TIMEOUT) -> httpx.AsyncClient:
    """A client for revocation fetches: `timeout` per phase, no redirects, no environment.
    The caller owns it (``async with``)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": "meshtls", "Accept-Encoding": "identity"},
    )


async def _body(
    client: httpx.AsyncClient,
    kind: FetchKind,
    url: str,
    method: str,
    request_url: str,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """The 200 body of one request, at most `MAX_BODY` bytes; `FetchError` for anything else.

    The whole exchange is bounded by the client's read timeout, so a peer that drips its
    answer cannot hold a fetch longer than that; the body is read raw (no decoding).
    """
    total = client.timeout.read or DEFAULT_TIMEOUT
    try:
        with trio.move_on_after(total):
            request = client.build_request(method, request_url, content=content, headers=headers)
            response = await client.send(request, stream=True)
            try:
                return await _read(response, kind, url)
            finally:
                await response.aclose()
        raise FetchError(kind, "error", "timeout", f"no answer within {total:g} s", url)
    except FetchError:
        raise
    except httpx.TimeoutException as exc:
        raise FetchError(kind, "error", "timeout", type(exc).__name__, url) from exc
    except Exception as exc:  # refused, reset, a bad URL, a broken HTTP answer: no answer
        raise FetchError(kind, "error", "connect", describe_error(exc), url) from exc


async def _read(response: httpx.Response, kind: FetchKind, url: str) -> bytes:
    if response.status_code != 200:
        raise FetchError(kind, "error", "http_status", f"HTTP {response.status_code}", url)
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise FetchError(kind, "error", "too_large", f"{declared} bytes declared", url)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > MAX_BODY:
            raise FetchError(kind, "error", "too_large", f"over {MAX_BODY} bytes", url)
        chunks.append(chunk)
    return b"".join(chunks)


async def fetch_ocsp(
    client: httpx.AsyncClient,
    url: str,
    target: RevocationTarget,
    *,
    now: datetime,
    skew: timedelta,
) -> OcspAnswer:
    """Ask the responder at `url` about `target` and judge the answer at `now`.

    Raises `FetchError` ("error" when no answer came, "invalid" when `judge_ocsp` refused it).
    """
    der = ocsp_request(target)
    if not url.lower().startswith(_SCHEMES):
        raise FetchError("ocsp", "error", "connect", "not an http(s) URL", url)
    try:
        data = await _body(client, "ocsp", url, "POST", url, content=der, headers=_OCSP_REQUEST)
    except FetchError as failed:
        if failed.problem not in ("connect", "http_status"):
            raise
        encoded = urllib.parse.quote(base64.b64encode(der).decode("ascii"), safe="")
        get_url = url + ("" if url.endswith("/") else "/") + encoded
        try:
            data = await _body(client, "ocsp", url, "GET", get_url)
        except FetchError:
            raise failed from None
    try:
        return judge_ocsp(data, target, now=now, skew=skew)
    except OcspError as exc:
        raise FetchError("ocsp", "invalid", exc.problem, exc.detail, url) from exc


async def fetch_crl(
    client: httpx.AsyncClient,
    url: str,
    issuer: x509.Certificate,
    *,
    now: datetime,
    skew: timedelta,
) -> JudgedCrl:
    """Fetch the CRL at `url` and judge it as `issuer`'s at `now`.

    Raises `FetchError` ("error" when nothing came, "invalid" when `judge_crl` refused it).
    """
    if not url.lower().startswith(_SCHEMES):
        raise FetchError("crl", "error", "connect", "not an http(s) URL", url)
    data = await _body(client, "crl", url, "GET", url)
    try:
        return judge_crl(load_crl(data), issuer, now=now, skew=skew)
    except CrlError as exc:
        raise FetchError("crl", "invalid", exc.problem, exc.detail, url) from exc
