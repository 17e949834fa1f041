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
  ``get_group_name`` (``SSL_get0_group_name``).
- **Specific alerts from verification** (`set_verify`). pyOpenSSL's verify callback is
  not handed the ``X509_STORE_CTX``, so a Python callback that says no leaves the store's
  error at ``X509_V_OK``; OpenSSL then records ``X509_V_ERR_UNSPECIFIED`` and the peer
  gets ``internal_error``. `set_verify` installs its own callback with
  ``SSL_CTX_set_verify`` and lets the verifier name the X509 error to fail with
  (``X509_STORE_CTX_set_error``), so that OpenSSL's own error-to-alert table
  (``ssl_x509err2alert``) sends the alert: see `REJECT`. ``access_denied`` is not in
  that table, so no verify error reaches it.
- **No resumption** (`refuse_resumption`). The binding has no ``SSL_CTX_set_num_tickets``
  and no ``SSL_CTX_ctrl`` (the bundled library holds them, but as hidden symbols), and an
  ``OPENSSL_CONF`` ``NumTickets = 0`` would reach the whole process. So an OpenSSL 4
  server still sends its two TLS 1.3 tickets, but they are stateful (``OP_NO_TICKET``:
  a ticket is only a session-cache key) and the server's cache is off, so none can ever
  resume. If the binding gains ``SSL_CTX_set_num_tickets``, it is called with 0 too.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Final

from cryptography.hazmat.bindings.openssl.binding import Binding
from OpenSSL import SSL

_binding = Binding()
_ffi = _binding.ffi
_lib = _binding.lib

#: Every binding function this module calls; tests/test_ossl.py checks each one exists.
#: (The constants below are read at import, so a lost one fails every import at once.)
SYMBOLS: Final = (
    "SSL_CTX_set1_curves_list",
    "SSL_CTX_set_verify",
    "SSL_get_ex_data_X509_STORE_CTX_idx",
    "X509_STORE_CTX_get_ex_data",
    "X509_STORE_CTX_get_error",
    "X509_STORE_CTX_get_error_depth",
    "X509_STORE_CTX_set_error",
    "ERR_clear_error",
    "SSL_session_reused",
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


def negotiated_group(connection: SSL.Connection) -> str | None:
    """The key-exchange group the handshake used (``X25519MLKEM768``), None before one."""
    return connection.get_group_name()


def refuse_resumption(context: SSL.Context) -> None:
    """Make every handshake on `context` a full one (SPIFFE-RULES P-5).

    Server side: tickets are stateful (``OP_NO_TICKET``) and the session cache is off, so
    a ticket names nothing and a client offering one gets a full, verified handshake.
    Client side: no cache, so no session is ever offered. See the module docstring.
    """
    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if HAS_NUM_TICKETS:  # pragma: no cover - not in cryptography 50's binding
        _lib.SSL_CTX_set_num_tickets(_raw_context(context), 0)


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
) -> None:
    """Verify peers on `context` with `verifier` (see `Verifier`), replacing any other.

    An exception from `verifier` rejects the peer with ``internal_error`` and is kept for
    `verify_problem`; it never escapes into OpenSSL.
    """

    def callback(preverify_ok: int, store: object) -> int:
        connection: SSL.Connection | None = None
        try:
            ssl = _lib.X509_STORE_CTX_get_ex_data(store, _lib.SSL_get_ex_data_X509_STORE_CTX_idx())
            connection = _connection_of(ssl)
            error = verifier(
                connection,
                bool(preverify_ok),
                int(_lib.X509_STORE_CTX_get_error(store)),
                int(_lib.X509_STORE_CTX_get_error_depth(store)),
                lambda: _store_chain(store),
            )
        except Exception as exc:  # one peer's fault ends its handshake only
            if connection is not None:
                _problems[connection] = exc
            error = X509_V_ERR_UNSPECIFIED
        if error == X509_V_OK:
            _lib.X509_STORE_CTX_set_error(store, X509_V_OK)
            return 1
        _lib.X509_STORE_CTX_set_error(store, error)
        return 0

    c_callback = _ffi.callback("int (*)(int, X509_STORE_CTX *)", callback, error=0)
    _callbacks[context] = c_callback
    _lib.SSL_CTX_set_verify(_raw_context(context), mode, c_callback)


def _store_chain(store: object) -> list[bytes]:
    """DER of the chain a verify callback's store holds (``X509_STORE_CTX_get1_chain``)."""
    stack = _lib.X509_STORE_CTX_get1_chain(store)
    if stack == _ffi.NULL:
        return []
    try:
        return [_der(_lib.sk_X509_value(stack, i)) for i in range(_lib.sk_X509_num(stack))]
    finally:
        for i in range(_lib.sk_X509_num(stack)):
            _lib.X509_free(_lib.sk_X509_value(stack, i))
        _lib.sk_X509_free(stack)


def _der(certificate: object) -> bytes:
    bio = _lib.BIO_new(_lib.BIO_s_mem())
    if bio == _ffi.NULL:  # pragma: no cover - out of memory
        raise MemoryError("BIO_new")
    try:
        if _lib.i2d_X509_bio(bio, certificate) != 1:  # pragma: no cover - out of memory
            _lib.ERR_clear_error()
            raise MemoryError("i2d_X509_bio")
        data = _ffi.new("char **")
        length = _lib.BIO_get_mem_data(bio, data)
        return bytes(_ffi.buffer(data[0], length))
    finally:
        _lib.BIO_free(bio)


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


_DRAIN_SIZE: Final = 65536
_drain_buffer = _ffi.new("char[]", _DRAIN_SIZE)


def drain(connection: SSL.Connection) -> bytes:
    """Every byte waiting in a memory-BIO connection's outgoing BIO, or b"".

    pyOpenSSL's ``bio_read`` raises ``WantReadError`` when the BIO is empty, which costs
    an error-queue walk on every empty read; this reads it directly (a private
    attribute: test_ossl.py). Not thread-safe (one shared buffer; meshtls runs on one).
    """
    bio = connection._from_ssl
    parts: list[bytes] = []
    while (count := _lib.BIO_read(bio, _drain_buffer, _DRAIN_SIZE)) > 0:
        parts.append(_ffi.buffer(_drain_buffer, count)[:])
    if not parts:
        return b""
    return parts[0] if len(parts) == 1 else b"".join(parts)


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
