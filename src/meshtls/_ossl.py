"""The one place that reaches past pyOpenSSL into cryptography's raw OpenSSL binding.

pyOpenSSL drives the OpenSSL that the `cryptography` wheel bundles (4.0 at the time of
writing), but it does not expose everything a SPIFFE engine needs (issue 11). What it
lacks is reached here, through ``cryptography.hazmat.bindings.openssl.binding``, and
nowhere else; tests/test_ossl.py fails loudly if a symbol or a private pyOpenSSL
attribute used here goes away.

- **Groups** (`set_groups`). pyOpenSSL 26 has no ``set_groups``. The binding's
  ``SSL_CTX_set1_curves_list`` is OpenSSL's groups-list control under its old name
  (``SSL_CTX_set1_groups_list`` is the same ``SSL_CTRL_SET_GROUPS_LIST``), so it takes
  hybrid names such as ``X25519MLKEM768``. `negotiated_group` is pyOpenSSL's own
  ``get_group_name`` (``SSL_get0_group_name``). `validate_groups` checks a list from a
  person (``[tls] groups``, ``--groups``) before anything is built with it.
- **Specific alerts from verification** (`set_verify`). pyOpenSSL's verify callback is
  not handed the ``X509_STORE_CTX``, so a Python callback that says no leaves the store's
  error at ``X509_V_OK``; OpenSSL then records ``X509_V_ERR_UNSPECIFIED`` and the peer
  gets ``internal_error``. `set_verify` installs its own callback with
  ``SSL_CTX_set_verify`` and lets the verifier name the X509 error to fail with
  (``X509_STORE_CTX_set_error``), so that OpenSSL's own error-to-alert table
  (``ssl_x509err2alert``) sends the alert: see `REJECT`. ``access_denied`` is not in
  that table, so no verify error reaches it.
- **Whole writes** (`whole_writes`). pyOpenSSL turns ``SSL_MODE_ENABLE_PARTIAL_WRITE``
  on for every context; with memory BIOs it only splits a write into one call per record,
  so meshtls's contexts turn it off (``SSL_CTX_clear_mode``).
- **No resumption, and no tickets** (`refuse_resumption`). The binding has no
  ``SSL_CTX_set_num_tickets`` and no ``SSL_CTX_ctrl`` (the bundled library holds them,
  but as hidden symbols), and an ``OPENSSL_CONF`` ``NumTickets = 0`` would reach the
  whole process. What the binding does have is the servername callback, which OpenSSL
  calls on every ClientHello, SNI or not; when it turns ``OP_NO_TICKET`` on for the
  connection (off until then), OpenSSL drops the ticket it meant to send
  (``final_server_name``), so the server sends none. After a HelloRetryRequest the
  second ClientHello cannot turn tickets off again (the option is already on): that
  handshake ends with two stateful tickets that key a session cache which is off, so
  none can resume. Both paths are tested (tests/test_ossl.py). Tickets are worth
  removing, not only tolerating: a client that reads and writes one TLS connection
  from two threads (the `websockets` library's sync client on the stdlib ``ssl``) can
  lose its first write while its reader handles a ticket, and they cost 158 bytes.
"""

from __future__ import annotations

import difflib
import functools
import re
import threading
import weakref
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

from ._errors import ConfigError

_binding = Binding()
_ffi = _binding.ffi
_lib = _binding.lib

#: Every binding function this module calls; tests/test_ossl.py checks each one exists.
#: (The constants below are read at import, so a lost one fails every import at once.)
SYMBOLS: Final = (
    "SSL_CTX_set1_curves_list",
    "SSL_CTX_clear_mode",
    "SSL_CTX_set_verify",
    "SSL_get_ex_data_X509_STORE_CTX_idx",
    "X509_STORE_CTX_get_ex_data",
    "X509_STORE_CTX_get_error",
    "X509_STORE_CTX_get_error_depth",
    "X509_STORE_CTX_set_error",
    "ERR_clear_error",
    "SSL_session_reused",
    "SSL_CTX_set_tlsext_servername_callback",
    "SSL_set_options",
    "X509_STORE_CTX_get1_chain",
    "sk_X509_num",
    "sk_X509_value",
    "sk_X509_free",
    "X509_free",
    "i2d_X509_bio",
    "BIO_new",
    "BIO_s_mem",
    "BIO_get_mem_data",
    "BIO_free",
    "BIO_read",
    "X509_verify_cert_error_string",
    "SSL_get_verify_result",
    "SSL_CTX_get_cert_store",
    "X509_STORE_get0_objects",
    "sk_X509_OBJECT_num",
    "SSL_get_peer_cert_chain",
    "SSL_get_peer_certificate",
    "SSL_read",
    "SSL_get_error",
    "SSL_do_handshake",
)

HAS_NUM_TICKETS: Final[bool] = hasattr(_lib, "SSL_CTX_set_num_tickets")

X509_V_OK: Final = 0
#: OpenSSL's "unspecified" verify error (``x509_vfy.h``; absent from the binding): the
#: error a failed callback leaves, which OpenSSL answers with ``internal_error``.
X509_V_ERR_UNSPECIFIED: Final = 1

#: The X509 error to fail verification with for each alert the peer should receive,
#: chosen through OpenSSL's ``ssl_x509err2alert`` table (``ssl/statem/statem_lib.c``).
REJECT: Final[dict[str, int]] = {
    "certificate_expired": int(_lib.X509_V_ERR_CERT_HAS_EXPIRED),
    "unknown_ca": int(_lib.X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY),
    "certificate_revoked": int(_lib.X509_V_ERR_CERT_REVOKED),
    "bad_certificate": int(_lib.X509_V_ERR_CERT_REJECTED),
    "unsupported_certificate": int(_lib.X509_V_ERR_INVALID_PURPOSE),
    "handshake_failure": int(_lib.X509_V_ERR_APPLICATION_VERIFICATION),
    # an error the table does not list: OpenSSL falls back to certificate_unknown
    "certificate_unknown": int(_lib.X509_V_ERR_SUBJECT_ISSUER_MISMATCH),
    "internal_error": X509_V_ERR_UNSPECIFIED,
}

#: TLS alert descriptions (RFC 8446 section 6, and RFC 8446's certificate_required).
ALERTS: Final[dict[int, str]] = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}

_CB_ALERT: Final = int(_lib.SSL_CB_ALERT)
_CB_READ: Final = int(_lib.SSL_CB_READ)

#: Default groups: hybrid post-quantum first, then classic X25519 (issue 11).
DEFAULT_GROUPS: Final = "X25519MLKEM768:X25519"

#: Group names this OpenSSL offers for TLS 1.3, for "did you mean" hints only: OpenSSL
#: itself decides what a list may hold (`validate_groups`). Aliases are left out
#: (``secp256r1`` and ``prime256v1`` are ``P-256``).
KNOWN_GROUPS: Final = (
    "X25519MLKEM768",
    "SecP256r1MLKEM768",
    "SecP384r1MLKEM1024",
    "X25519",
    "X448",
    "P-256",
    "P-384",
    "P-521",
    "MLKEM512",
    "MLKEM768",
    "MLKEM1024",
    "brainpoolP256r1tls13",
    "brainpoolP384r1tls13",
    "brainpoolP512r1tls13",
    "ffdhe2048",
    "ffdhe3072",
    "ffdhe4096",
    "ffdhe6144",
    "ffdhe8192",
)
_GROUP_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_LIST_SYNTAX: Final = (
    "OpenSSL's list syntax (DEFAULT, a leading ?, * or -, tuples with /) is not taken:"
    " list the group names to offer, in order, joined by ':'"
)

#: The chain OpenSSL has built so far (DER, leaf first), read only when called.
Chain = Callable[[], list[bytes]]

#: A verifier: ``(connection, preverify_ok, error, depth, chain) -> X509 error``. Called
#: once per certificate of the chain, root first and the leaf (depth 0) last, after
#: OpenSSL's own check of it (``preverify_ok``, and ``error`` its X509 error or 0), and
#: again for a check OpenSSL makes later. Return `X509_V_OK` to accept, or an X509 error
#: (see `REJECT`) to end the handshake with the alert OpenSSL maps it to.
Verifier = Callable[[SSL.Connection, bool, int, int, Chain], int]


def set_groups(context: SSL.Context, groups: str = DEFAULT_GROUPS) -> None:
    """Offer and accept exactly `groups` (OpenSSL names joined by ``:``), in that order.

    Raises ValueError, leaving OpenSSL's error queue empty, if OpenSSL refuses the list
    (an unknown name, or none left).
    """
    if not groups or "\0" in groups:
        raise ValueError(f"not a groups list: {groups!r}")
    if _lib.SSL_CTX_set1_curves_list(_raw_context(context), groups.encode("ascii")) != 1:
        _lib.ERR_clear_error()
        raise ValueError(f"OpenSSL refused the groups list {groups!r}")


@functools.lru_cache(maxsize=64)
def validate_groups(text: str) -> str:
    """`text` checked and normalised as the key-exchange groups meshtls offers: OpenSSL
    group names joined by ``:``, most preferred first (``"X25519MLKEM768:X25519"``).

    Spaces around a name are dropped. Each name must be one this OpenSSL knows (tried
    alone on a throwaway context) and usable with TLS 1.3 (a throwaway client must be
    able to write its ClientHello with it), and none may appear twice (in any case).
    Returns the names joined by ``:``. Raises `ConfigError` (a ValueError) naming the
    first bad name; the caller prefixes where the list came from.
    """
    if not isinstance(text, str):
        raise ConfigError(f"expected a string of group names joined by ':', not {text!r}")
    if not text.strip():
        raise ConfigError(f"no groups in {text!r}: list at least one, such as {DEFAULT_GROUPS!r}")
    names = [name.strip(" \t") for name in text.split(":")]
    seen: dict[str, str] = {}
    for index, name in enumerate(names, 1):
        where = "" if name == text else f" in {text!r}"
        if not name:
            raise ConfigError(f"{text!r}: name {index} of {len(names)} is empty (a ':' too many)")
        if name.upper() == "DEFAULT" or name[0] in "?*-" or "/" in name:
            raise ConfigError(f"{name!r}{where}: {_LIST_SYNTAX}")
        if not _GROUP_NAME.fullmatch(name):
            raise ConfigError(f"{name!r}{where} is not a group name{_hint(name)}")
        first = seen.get(name.lower())
        if first is not None:
            twice = f"{name!r}" if first == name else f"{name!r} (as {first!r})"
            raise ConfigError(f"{twice} is listed twice{where}: name each group once")
        seen[name.lower()] = name
        _check_group(name, where)
    joined = ":".join(names)
    set_groups(SSL.Context(SSL.TLS_CLIENT_METHOD), joined)  # the whole list, as built
    return joined


def _check_group(name: str, where: str) -> None:
    """`name` is a group this OpenSSL knows, usable with TLS 1.3; else `ConfigError`
    (`where` names the list it is in)."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.set_max_proto_version(SSL.TLS1_3_VERSION)
    try:
        set_groups(context, name)
    except ValueError:
        raise ConfigError(f"unknown group {name!r}{where}{_hint(name)}") from None
    hello = SSL.Connection(context, None)
    hello.set_connect_state()
    try:
        hello.do_handshake()
    except SSL.WantReadError:
        return  # the ClientHello is written: the group can be offered
    except SSL.Error:
        _lib.ERR_clear_error()
    raise ConfigError(
        f"group {name!r}{where} cannot be used with TLS 1.3, and meshtls speaks TLS 1.3"
        f" only{_hint(name)}"
    )


def _hint(name: str) -> str:
    """``; did you mean 'X25519'?`` for a name close to a known group, else ``""``."""
    lowered = {known.lower(): known for known in KNOWN_GROUPS}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    if close and lowered[close[0]] != name:
        return f"; did you mean {lowered[close[0]]!r}?"
    return f"; known groups include {', '.join(KNOWN_GROUPS[:6])}"


def negotiated_group(connection: SSL.Connection) -> str | None:
    """The key-exchange group the handshake used (``X25519MLKEM768``), None before one."""
    return connection.get_group_name()


_PARTIAL_WRITE: Final = int(_lib.SSL_MODE_ENABLE_PARTIAL_WRITE)


def whole_writes(context: SSL.Context) -> None:
    """Let one ``SSL_write`` take a whole buffer: pyOpenSSL turns on
    ``SSL_MODE_ENABLE_PARTIAL_WRITE`` for every context, so a write returns after each
    16 KiB record (four calls, and four trips through pyOpenSSL, for 64 KiB), which is
    of use only with a socket BIO that can be full. A memory BIO takes everything."""
    _lib.SSL_CTX_clear_mode(_raw_context(context), _PARTIAL_WRITE)


def refuse_resumption(context: SSL.Context) -> None:
    """Make every handshake on `context` a full one (SPIFFE-RULES P-5), with no ticket.

    As a server: no ticket is sent (`_no_ticket`), or, after a HelloRetryRequest, two
    stateful ones that name nothing, the session cache being off; a client offering a
    ticket gets a full, verified handshake. As a client: no cache, so no session is
    ever offered. The context's own servername callback is taken (meshtls has no SNI);
    never set another, nor a session id context (``set_session_id``): without one,
    OpenSSL fails a handshake that would resume a verified peer, the backstop should a
    stateless ticket ever be issued. See the module docstring.
    """
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if HAS_NUM_TICKETS:  # pragma: no cover - not in cryptography 50's binding
        _lib.SSL_CTX_set_num_tickets(_raw_context(context), 0)
    # OP_NO_TICKET must stay off on the context: OpenSSL drops the ticket only when the
    # callback is what turns it on.
    _lib.SSL_CTX_set_tlsext_servername_callback(_raw_context(context), _no_ticket)


_OP_NO_TICKET: Final = int(_lib.SSL_OP_NO_TICKET)
_SNI_OK: Final = int(_lib.SSL_TLSEXT_ERR_OK)
_SNI_FATAL: Final = int(_lib.SSL_TLSEXT_ERR_ALERT_FATAL)


def _no_ticket_callback(ssl: object, alert: object, arg: object) -> int:
    """The servername callback of `refuse_resumption`: tickets off for this connection
    (no Python object is looked up, so nothing here can fail; if it did, the handshake
    would end with an alert rather than go on issuing tickets)."""
    _lib.SSL_set_options(ssl, _OP_NO_TICKET)
    return _SNI_OK


_no_ticket: Final = _ffi.callback(
    "int (*)(SSL *, int *, void *)", _no_ticket_callback, error=_SNI_FATAL
)


def session_reused(connection: SSL.Connection) -> bool:
    """Whether the handshake resumed a session (pyOpenSSL has no call for it)."""
    return bool(_lib.SSL_session_reused(_raw_connection(connection)))


# The callbacks must live as long as their context: OpenSSL holds only the C pointer.
_callbacks: weakref.WeakKeyDictionary[SSL.Context, object] = weakref.WeakKeyDictionary()
# An exception a verifier raised, per connection, for the engine to report.
_problems: weakref.WeakKeyDictionary[SSL.Connection, Exception] = weakref.WeakKeyDictionary()


def set_verify(
    context: SSL.Context,
    verifier: Verifier,
    *,
    mode: int = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
    leaf_only: bool = False,
) -> None:
    """Verify peers on `context` with `verifier` (see `Verifier`), replacing any other.

    With `leaf_only`, a certificate above the leaf that OpenSSL accepted is accepted
    without calling `verifier` (it is still called for the leaf, and for every failure).
    An exception from `verifier` rejects the peer with ``internal_error`` and is kept for
    `verify_problem`; it never escapes into OpenSSL.
    """

    def callback(preverify_ok: int, store: object) -> int:
        depth = int(_lib.X509_STORE_CTX_get_error_depth(store))
        if leaf_only and preverify_ok and depth:
            return 1
        connection: SSL.Connection | None = None
        try:
            connection = _connection_of(_lib.X509_STORE_CTX_get_ex_data(store, _STORE_SSL))
            error = verifier(
                connection,
                bool(preverify_ok),
                int(_lib.X509_STORE_CTX_get_error(store)),
                depth,
                lambda: _store_chain(store),
            )
        except Exception as exc:  # one peer's fault ends its handshake only
            if connection is not None:
                _problems[connection] = _without_frames(exc)  # no frame keeps the key alive
            error = X509_V_ERR_UNSPECIFIED
        if error == X509_V_OK:
            if not preverify_ok:  # the verifier overrode OpenSSL's refusal
                _lib.X509_STORE_CTX_set_error(store, X509_V_OK)
            return 1
        _lib.X509_STORE_CTX_set_error(store, error)
        return 0

    c_callback = _ffi.callback("int (*)(int, X509_STORE_CTX *)", callback, error=0)
    _callbacks[context] = c_callback
    _lib.SSL_CTX_set_verify(_raw_context(context), mode, c_callback)


def _without_frames(exc: Exception) -> Exception:
    """`exc`, and every exception chained to it, without tracebacks: a verifier's frames
    hold the connection, which keys `_problems` (kept, they would keep it alive for good)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        link = pending.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        link.with_traceback(None)
        pending += (link.__cause__, link.__context__)
    return exc


#: The ex-data index of the ``SSL *`` in a verify callback's store (one per process).
_STORE_SSL: Final = _lib.SSL_get_ex_data_X509_STORE_CTX_idx()


def _store_chain(store: object) -> list[bytes]:
    """DER of the chain a verify callback's store holds (``X509_STORE_CTX_get1_chain``)."""
    stack = _lib.X509_STORE_CTX_get1_chain(store)
    if stack == _ffi.NULL:
        return []
    certificates = [_lib.sk_X509_value(stack, i) for i in range(_lib.sk_X509_num(stack))]
    try:
        return _ders(certificates)
    finally:
        for certificate in certificates:
            _lib.X509_free(certificate)
        _lib.sk_X509_free(stack)


def _ders(certificates: list[object]) -> list[bytes]:
    """The DER of each certificate, encoded one after another into one memory BIO (a
    handshake's verify callback runs this: two binding calls a certificate, not five)."""
    bio = _lib.BIO_new(_lib.BIO_s_mem())
    if bio == _ffi.NULL:  # pragma: no cover - out of memory
        raise MemoryError("BIO_new")
    try:
        data = _ffi.new("char **")
        ends = [0]
        for certificate in certificates:
            if _lib.i2d_X509_bio(bio, certificate) != 1:  # pragma: no cover - out of memory
                _lib.ERR_clear_error()
                raise MemoryError("i2d_X509_bio")
            ends.append(_lib.BIO_get_mem_data(bio, data))
        encoded = bytes(_ffi.buffer(data[0], ends[-1])) if certificates else b""
        return [encoded[ends[i] : ends[i + 1]] for i in range(len(certificates))]
    finally:
        _lib.BIO_free(bio)


def peer_chain_length(connection: SSL.Connection, *, server_side: bool = False) -> int:
    """How many certificates the peer sent, without copying any. A server's
    ``SSL_get_peer_cert_chain`` leaves the client's leaf out: with `server_side`, the leaf
    is counted apart (``SSL_get_peer_certificate``, a reference let go at once)."""
    ssl = _raw_connection(connection)
    stack = _lib.SSL_get_peer_cert_chain(ssl)
    count = 0 if stack == _ffi.NULL else int(_lib.sk_X509_num(stack))
    if server_side:
        leaf = _lib.SSL_get_peer_certificate(ssl)
        if leaf != _ffi.NULL:
            _lib.X509_free(leaf)
            count += 1
    return count


def store_size(context: SSL.Context) -> int:
    """How many objects (trust anchors) `context`'s certificate store holds."""
    store = _lib.SSL_CTX_get_cert_store(_raw_context(context))
    return int(_lib.sk_X509_OBJECT_num(_lib.X509_STORE_get0_objects(store)))


def error_string(error: int) -> str:
    """OpenSSL's words for an X509 verify error (``"certificate has expired"``)."""
    return str(_ffi.string(_lib.X509_verify_cert_error_string(error)).decode("ascii", "replace"))


def verify_result(connection: SSL.Connection) -> int:
    """The X509 error OpenSSL recorded for the peer's chain (`X509_V_OK` if none)."""
    return int(_lib.SSL_get_verify_result(_raw_connection(connection)))


#: One scratch buffer per thread for `drain` and `read_records` (cffi drops the GIL in each
#: OpenSSL call, so threads must not share one). 256 KiB: a 64 KiB write is 4 records of
#: 16 KiB plus 22 bytes each, more than 64 KiB, which used to take two reads and a join.
_SCRATCH_SIZE: Final = 1 << 18
_scratch = threading.local()


def _buffer() -> object:
    buffer: object | None = getattr(_scratch, "buffer", None)
    if buffer is None:
        buffer = _scratch.buffer = _ffi.new("char[]", _SCRATCH_SIZE)
    return buffer


def drain(connection: SSL.Connection) -> bytes:
    """Every byte waiting in a memory-BIO connection's outgoing BIO, or b"".

    pyOpenSSL's ``bio_read`` raises ``WantReadError`` when the BIO is empty, which costs
    an error-queue walk on every empty read; this reads it directly (a private
    attribute: test_ossl.py), into this thread's scratch buffer.
    """
    bio = connection._from_ssl
    buffer = _buffer()
    parts: list[bytes] = []
    while (count := _lib.BIO_read(bio, buffer, _SCRATCH_SIZE)) > 0:
        parts.append(_ffi.buffer(buffer, count)[:])
    if not parts:
        return b""
    return parts[0] if len(parts) == 1 else b"".join(parts)


_SSL_ERROR_WANT_READ: Final = int(_lib.SSL_ERROR_WANT_READ)


def handshake_step(connection: SSL.Connection) -> bool:
    """One ``SSL_do_handshake``: True once the handshake is complete, False when it needs
    more input (no ``WantReadError`` raised and caught on every flight); otherwise the
    exception pyOpenSSL's ``do_handshake`` raises (``Connection._raise_ssl_error``)."""
    ssl = connection._ssl
    result = _lib.SSL_do_handshake(ssl)
    if result == 1:
        return True
    if _lib.SSL_get_error(ssl, result) == _SSL_ERROR_WANT_READ:
        return False
    connection._raise_ssl_error(ssl, result)
    raise SSL.Error(f"SSL_do_handshake returned {result}")  # pragma: no cover


def read_records(connection: SSL.Connection, max_bytes: int) -> tuple[bytes, SSL.Error | None]:
    """Up to `max_bytes` of application data from every record OpenSSL can decrypt with
    what it has been fed, in one copy; and what stopped it early, if not lack of input.

    ``SSL_read`` returns one record at most (16 KiB), and pyOpenSSL's ``recv`` allocates
    `max_bytes` and copies out on each call, and raises ``WantReadError`` (an error-queue
    walk) when a record is incomplete. This calls ``SSL_read`` into this thread's scratch
    buffer until `max_bytes` are read or it returns nothing. The error is None when it
    stopped for `max_bytes` or for want of input; otherwise it is the exception pyOpenSSL
    would have raised for that ``SSL_read`` (``ZeroReturnError`` after close_notify,
    ``SysCallError`` for a truncation, ``Error`` for a fatal alert), built at once from
    the error queue (``Connection._raise_ssl_error``, a private method: test_ossl.py),
    which it leaves empty. The data read before it stays valid.
    """
    ssl = connection._ssl
    buffer = _buffer()
    limit = min(max_bytes, _SCRATCH_SIZE)
    got = 0
    problem: SSL.Error | None = None
    while got < limit:
        count = _lib.SSL_read(ssl, buffer + got, limit - got)  # type: ignore[operator]
        if count > 0:
            got += count
            continue
        if _lib.SSL_get_error(ssl, count) != _SSL_ERROR_WANT_READ:
            try:
                connection._raise_ssl_error(ssl, count)
            except SSL.Error as exc:
                # without its traceback: kept (by the caller too), it would hold this
                # frame, whose `problem` holds it, and every caller's frame (a cycle
                # that only the cyclic collector frees, with the stream and its socket)
                problem = exc.with_traceback(None)
        break
    return (_ffi.buffer(buffer, got)[:] if got else b""), problem


def verify_problem(connection: SSL.Connection) -> Exception | None:
    """The exception the verifier raised while judging `connection`'s peer, if one did."""
    return _problems.get(connection)


def received_alert(where: int, value: int) -> str | None:
    """From an info callback's ``(where, value)``: the alert the peer sent, else None."""
    if where & _CB_ALERT and where & _CB_READ:
        return ALERTS.get(value & 0xFF, f"alert {value & 0xFF}")
    return None


def _raw_context(context: SSL.Context) -> object:
    """The ``SSL_CTX *`` of a pyOpenSSL context (a private attribute: test_ossl.py)."""
    raw: object = context._context
    return raw


def _raw_connection(connection: SSL.Connection) -> object:
    """The ``SSL *`` of a pyOpenSSL connection (a private attribute: test_ossl.py)."""
    raw: object = connection._ssl
    return raw


def _connection_of(ssl: object) -> SSL.Connection:
    """The pyOpenSSL connection of an ``SSL *`` (pyOpenSSL's own private map)."""
    return SSL.Connection._reverse_mapping[ssl]
