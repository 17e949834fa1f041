"""The verification pipeline itself: its step list, its boundary, its path search and the
handshake's caches. The verdicts of the rules are in test_verify.py's table."""

from __future__ import annotations

import functools
import re
import threading
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

import meshtls
from meshtls import _svid
from meshtls._boundary import LATEST
from meshtls._cache import LruCache
from meshtls._certs import CertFacts, read_facts, read_signer
from meshtls._svid import (
    MAX_SEARCH_STEPS,
    MAX_SIGNATURE_CHECKS,
    STEPS,
    Judgement,
    _PathSearch,
    check_svid_offline,
    leaf_spiffe_id,
    verify_handshake_chain,
)
from meshtls.testing import CA, IssuedCertificate, generate_key

from . import certkit
from .conftest import T, World
from .test_verify import NO_EXPIRY, SPIFFE_URI, TWO_PRIVATE_EXTENSIONS

DOCS = Path(__file__).parent.parent / "docs" / "verification-order.md"
EDI_SAN = [(certkit.san_extension(SPIFFE_URI, certkit.EDI_PARTY_NAME), False)]


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


# ---------------------------------------------------------------- one list of steps


def test_the_documented_steps_are_the_steps_in_their_order() -> None:
    documented = re.findall(r"^\| \d+ \| `(\w+)`", DOCS.read_text(encoding="utf-8"), re.M)
    assert documented == [step.__name__ for step in STEPS]


def test_every_step_has_a_docstring_naming_what_it_checks() -> None:
    for step in STEPS:
        assert step.__doc__, step.__name__


# ---------------------------------------------------------------- the boundary


@pytest.fixture
def edi_leaf(world: World) -> IssuedCertificate:
    """A leaf whose SAN holds an EDIPartyName: cryptography raises UnsupportedGeneralNameType."""
    return world.ca.issue(uris=(), extensions=EDI_SAN)


def test_boundary_verify_svid_and_check_offline(world: World, edi_leaf: IssuedCertificate) -> None:
    for call in (
        functools.partial(meshtls.verify_svid, edi_leaf.chain, world.bundles, now=T),
        functools.partial(check_svid_offline, edi_leaf.chain, now=T),
        functools.partial(leaf_spiffe_id, edi_leaf.leaf),
    ):
        with pytest.raises(meshtls.VerificationError) as info:
            call()
        assert info.value.reason == "malformed_certificate"
        assert "UnsupportedGeneralNameType" in str(info.value)


def test_boundary_own_svid(edi_leaf: IssuedCertificate) -> None:
    with pytest.raises(meshtls.VerificationError) as info:
        meshtls.X509Svid.load(edi_leaf.chain_pem, edi_leaf.key_pem)
    assert info.value.reason == "malformed_certificate"
    with pytest.raises(meshtls.VerificationError):
        meshtls.X509Svid.from_parts(edi_leaf.chain, edi_leaf.private_key)  # type: ignore[arg-type]


def test_boundary_handshake_chain(world: World, edi_leaf: IssuedCertificate) -> None:
    with pytest.raises(meshtls.VerificationError) as info:
        verify_handshake_chain(
            [der(c) for c in (*edi_leaf.chain, world.ca.certificate)],
            world.bundles,
            policy=meshtls.ValidationPolicy(),
            now=T,
            role="client",
        )
    assert info.value.reason == "malformed_certificate"
    with pytest.raises(meshtls.VerificationError) as info:
        verify_handshake_chain(
            [b"\x30\x03\x02\x01\x00"],
            world.bundles,
            policy=meshtls.ValidationPolicy(),
            now=T,
            role="client",
        )
    assert info.value.reason == "malformed_certificate"


def test_boundary_bundle_authority_with_a_duplicate_extension(world: World) -> None:
    """read_signer (which every bundle runs on its roots) maps DuplicateExtension."""
    root = CA("example.org", now=T, extensions=TWO_PRIVATE_EXTENSIONS)
    bad = certkit.duplicated(root.certificate, root.key, certkit.PLACEHOLDER_PRIVATE)
    with pytest.raises(meshtls.VerificationError) as info:
        read_signer(bad, -1)
    assert info.value.reason == "malformed_certificate"
    with pytest.raises(meshtls.BundleError, match="unreadable"):
        meshtls.X509Bundle(meshtls.TrustDomain("example.org"), (bad,))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda w: IssuedCertificate(
                (
                    certkit.duplicated(
                        (
                            i := w.ca.issue(
                                extensions=[
                                    (
                                        x509.UnrecognizedExtension(
                                            certkit.PLACEHOLDER_SAN, certkit.san_der(SPIFFE_URI)
                                        ),
                                        False,
                                    )
                                ]
                            )
                        ).leaf,
                        w.ca.key,
                        certkit.PLACEHOLDER_SAN,
                    ),
                ),
                i.private_key,
            ),
            id="duplicate SAN",
        ),
        pytest.param(
            lambda w: w.ca.issue(
                extensions=[
                    (
                        x509.UnrecognizedExtension(
                            ObjectIdentifier("1.3.6.1.5.5.7.1.14"),
                            certkit.tlv(
                                0x30, certkit.tlv(0x30, bytes.fromhex("06082b06010505071501"))
                            ),
                        ),
                        False,
                    )
                ]
            ),
            id="proxyCertInfo",
        ),
    ],
)
def test_leaves_openssl_will_not_even_present_are_malformed(world: World, make: object) -> None:
    """OpenSSL refuses to load these as a peer's certificate, so the handshake table cannot
    show them; verify_svid refuses them as OpenSSL would."""
    issued: IssuedCertificate = make(world)  # type: ignore[operator]
    with pytest.raises(meshtls.VerificationError) as info:
        meshtls.verify_svid(issued.chain, world.bundles, now=T)
    assert info.value.reason == "malformed_certificate"


# ---------------------------------------------------------------- dates at the edge


def test_no_expiry_dates_are_clamped_not_overflowed(world: World) -> None:
    """``99991231235959Z`` plus the skew overflowed `datetime`; now it is a date like any other."""
    root = CA("example.org", now=T, not_after=NO_EXPIRY)
    bundles = root.bundle_set(world.other)
    peer = meshtls.verify_svid(root.intermediate(not_after=NO_EXPIRY).issue().chain, bundles, now=T)
    assert peer.not_after == T + timedelta(minutes=30)
    long_lived = root.issue(not_after=NO_EXPIRY)
    peer = meshtls.verify_svid(
        long_lived.chain, bundles, now=T, policy=meshtls.ValidationPolicy(max_ttl=None)
    )
    assert peer.not_after == LATEST
    svid = long_lived.svid()
    assert svid.not_after == LATEST
    assert svid.not_after + timedelta(days=300) > svid.not_after  # arithmetic is safe


# ---------------------------------------------------------------- the path search


def test_a_hostile_pool_costs_a_bounded_search(world: World) -> None:
    """Seven self-issued certificates with the leaf's issuer name and one key: every pair
    verifies, so an unbounded search would walk thousands of orderings."""
    key = generate_key()
    name = world.ca.certificate.subject
    pool = []
    for serial in range(7):
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(serial + 1)
            .not_valid_before(T - timedelta(days=1))
            .not_valid_after(T + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        pool.append(cert)
    leaf = world.ca.issue(signing_key=key)  # names the real root, signed by the pool's key
    chain = (leaf.leaf, *pool)
    with pytest.raises(meshtls.VerificationError) as info:
        meshtls.verify_svid(chain, world.bundles, now=T)
    assert info.value.reason == "untrusted_chain"
    j = Judgement(
        read_facts(leaf.leaf, leaf=True), None, world.bundles, meshtls.ValidationPolicy(), T
    )
    for step in _svid._BEFORE_PATH:
        step(j)
    search = _PathSearch(j, [read_facts(c, index=i) for i, c in enumerate(pool, 1)])
    assert list(search.paths()) == []
    assert search.exhausted
    assert len(search._checked) <= MAX_SIGNATURE_CHECKS
    assert search.steps == MAX_SEARCH_STEPS + 1


# ---------------------------------------------------------------- the handshake's caches


def handshake_chain(issued: IssuedCertificate, root: x509.Certificate) -> list[bytes]:
    """What OpenSSL hands over after a handshake: the path, leaf first, root last."""
    return [der(c) for c in (*issued.chain, root)]


def judge(chain: list[bytes], bundles: meshtls.BundleSet, **options: object) -> str | None:
    settings: dict[str, object] = {"policy": meshtls.ValidationPolicy(), "now": T, "role": "client"}
    settings.update(options)
    try:
        verify_handshake_chain(chain, bundles, **settings)  # type: ignore[arg-type]
    except meshtls.VerificationError as exc:
        return exc.reason
    return None


def test_caches_are_bounded_lru_caches() -> None:
    assert _svid._LEAVES.limit == _svid.LEAF_CACHE_SIZE == 1024
    assert _svid._SIGNERS.limit == _svid.SIGNER_CACHE_SIZE == 256
    assert _svid._VERDICTS.limit == _svid.VERDICT_CACHE_SIZE == 1024


def test_cache_eviction_and_reading_again(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Smaller caches of the same kind, so that eviction runs: an evicted leaf or
    intermediate is read again, and judged the same."""
    monkeypatch.setattr(_svid, "_LEAVES", LruCache[bytes, CertFacts](2))
    monkeypatch.setattr(_svid, "_SIGNERS", LruCache[bytes, CertFacts](2))
    verdicts = LruCache[tuple[str | bytes, ...], _svid._Verdict](2)  # chains[0] leaves it too
    monkeypatch.setattr(_svid, "_VERDICTS", verdicts)
    chains = [
        handshake_chain(world.ca.intermediate().issue(), world.ca.certificate) for _ in range(3)
    ]
    for chain in chains:
        assert judge(chain, world.bundles) is None
    assert _svid._LEAVES.evictions == 1
    assert _svid._SIGNERS.evictions == 2  # the root recurs, so it stays: least recently used
    assert chains[0][0] not in _svid._LEAVES
    assert judge(chains[0], world.bundles) is None
    assert chains[0][0] in _svid._LEAVES
    assert _svid._LEAVES.evictions == 2


def test_a_cached_leaf_is_judged_again_on_every_handshake(world: World) -> None:
    """Facts are cached by DER; time, the role's EKU and the binding are checked each time."""
    issued = world.ca.issue(eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    chain = handshake_chain(issued, world.ca.certificate)
    assert judge(chain, world.bundles, role="server") is None
    assert chain[0] in _svid._LEAVES  # cached while valid ...
    later = T + timedelta(minutes=31)
    assert judge(chain, world.bundles, role="server", now=later) == "expired"  # ... yet expired
    assert judge(chain, world.bundles, role="client") == "extended_key_usage"
    assert judge(chain, world.other.bundle_set(), role="server") == "unknown_trust_domain"
    impostor = CA("example.org", now=T).bundle_set()  # example.org, another root
    assert judge(chain, impostor, role="server") == "untrusted_chain"
    assert judge(chain, world.bundles, role="server") is None


async def test_a_cached_leaf_still_meets_the_clock_and_the_authorizer() -> None:
    """Through real connections: the server's cached facts of a client's leaf do not skip
    the expiry check or the authorizer on the next handshakes."""
    from .meshnet import Mesh

    mesh = Mesh(now=T)
    server_now = [T]
    allowed = [True]
    send_rejected, rejected = trio.open_memory_channel[meshtls.HandshakeError](10)

    def authorize(peer: meshtls.VerifiedPeer) -> None:
        if not allowed[0]:
            raise meshtls.UnauthorizedPeerError(f"{peer.spiffe_id} is not allowed now")

    async def echo(stream: meshtls.MeshStream) -> None:
        await stream.send_all(await stream.receive_some())

    async def round_trip(port: int) -> bytes:
        stream = await meshtls.connect(
            "127.0.0.1",
            port,
            source=mesh.client,
            authorize=meshtls.authorize_any(),
            clock=lambda: T,
        )
        async with stream:
            await stream.send_all(b"ping")
            return await stream.receive_some()

    async with trio.open_nursery() as nursery:
        serve = functools.partial(
            meshtls.serve,
            echo,
            0,
            host="127.0.0.1",
            source=mesh.server,
            authorize=authorize,
            clock=lambda: server_now[0],
            on_rejected=send_rejected.send_nowait,
        )
        listeners: list[trio.SocketListener] = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(10):
            assert await round_trip(port) == b"ping"
            allowed[0] = False
            with pytest.raises(trio.BrokenResourceError):
                await round_trip(port)
            assert (await rejected.receive()).reason == "unauthorized"
            allowed[0] = True
            assert await round_trip(port) == b"ping"
            server_now[0] = T + timedelta(minutes=31)
            with pytest.raises(trio.BrokenResourceError):
                await round_trip(port)
            assert (await rejected.receive()).reason == "expired"
        nursery.cancel_scope.cancel()


def test_the_verify_benchmark_runs_with_a_small_budget() -> None:
    """benchmarks/verify.py (the full run reports verify_svid against bare cryptography)."""
    from benchmarks.verify import measure

    rows = measure(rounds=1, calls=2)
    assert [row["certificates_sent"] for row in rows] == [1, 2]
    for row in rows:
        for key in ("bare_cryptography_us", "verify_svid_us", "verify_handshake_chain_us"):
            value = row[key]
            assert isinstance(value, float)
            assert value > 0


def test_a_negative_serial_in_the_handshake_is_judged_without_a_warning(world: World) -> None:
    """Found by benchmarks/fuzz_verify.py: the handshake parsed the peer's DER and
    cryptography warned (a warning per handshake; an error where warnings are errors,
    as in this suite), instead of judging the certificate."""
    issued = world.ca.issue(serial=0x42)
    data = der(issued.leaf)
    assert data.count(b"\x02\x01\x42") == 1
    negative = data.replace(b"\x02\x01\x42", b"\x02\x01\xc2")  # INTEGER -62, signature now bad
    chain = [negative, der(world.ca.certificate)]
    assert judge(chain, world.bundles) == "malformed_certificate"  # RFC 5280 4.1.2.2


def test_a_name_cryptography_warns_about_is_judged_without_a_warning(world: World) -> None:
    """Found by benchmarks/fuzz_verify.py: reading a countryName of the wrong length made
    cryptography warn while the verifier read names (an error where warnings are errors)."""
    inter = world.ca.intermediate()
    issued = inter.issue()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # making it warns too
        odd = x509.Name(
            [
                *inter.certificate.subject,
                x509.NameAttribute(NameOID.COUNTRY_NAME, "EXAMPLE", _validate=False),
            ]
        )
        intermediate = x509.load_der_x509_certificate(
            der(certkit.resigned(inter.certificate, world.ca.key, subject=odd))
        )
        leaf = x509.load_der_x509_certificate(
            der(certkit.resigned(issued.leaf, inter.key, issuer=odd))
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peer = meshtls.verify_svid((leaf, intermediate), world.bundles, now=T)
    assert peer.chain == (leaf, intermediate, world.ca.certificate)


def test_mutation_fuzzing_of_both_entry_points_with_a_small_budget() -> None:
    """benchmarks/fuzz_verify.py with a fixed budget: no foreign exception, no warning and
    no forgery from `verify_svid` or `verify_handshake_chain` (it found two warnings; with
    the verifier's warning guard removed by hand, this budget finds a negative serial)."""
    from benchmarks.fuzz_verify import run

    report = run(inputs=1500, seed=11)
    assert report["findings"] == []
    outcomes = report["outcomes"]
    assert isinstance(outcomes, dict)
    judged = sum(n for outcome, n in outcomes.items() if outcome != "not parsed by cryptography")
    assert judged > 200  # the budget reaches the verifier


def test_verifying_in_two_threads_leaves_the_warning_filters_alone(world: World) -> None:
    """The Workload API reader verifies in its own thread. `warnings.catch_warnings` is not
    thread-safe: unguarded, two threads inside it left an "ignore" filter behind for good."""
    bad = world.ca.issue(key_usage=None).chain  # refused: its description is read too
    before = list(warnings.filters)

    def work() -> None:
        for _ in range(400):
            with pytest.raises(meshtls.VerificationError):
                meshtls.verify_svid(bad, world.bundles, now=T)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    work()
    for thread in threads:
        thread.join()
    assert warnings.filters == before


@pytest.mark.parametrize("defect", ["curve OID one byte off", "OU as a BIT STRING"])
def test_boundary_bundle_authority_that_cryptography_cannot_read(defect: str) -> None:
    """From the fuzzing of bundles (issue 7): each raised UnsupportedAlgorithm or TypeError."""
    root = CA("example.org", now=T)
    if defect == "curve OID one byte off":
        curve = bytes.fromhex("06082a8648ce3d030107")  # prime256v1

        def edit(tbs: bytes) -> bytes:
            return tbs.replace(curve, curve[:-1] + b"\x08", 1)
    else:
        ou = b"\x0c\x0bexample.org"

        def edit(tbs: bytes) -> bytes:
            return tbs.replace(ou, b"\x03\x0b\x00xample.org", 1)

    bad = certkit.resign_tbs(root.certificate, root.key, edit)
    with pytest.raises(meshtls.VerificationError, match=r"^malformed_certificate: authority"):
        read_signer(bad, -1)
    with pytest.raises(meshtls.BundleError, match="unreadable"):
        meshtls.X509Bundle(meshtls.TrustDomain("example.org"), (bad,))


@pytest.mark.parametrize("control", ["\r", "\n", "\x1b[31m", "\u2028", "\x00"])
def test_a_hostile_subject_stays_one_printable_line_in_messages(world: World, control: str) -> None:
    """Found by benchmarks/fuzz_verify.py once it judged with fuzz.check_verify: a subject
    with a carriage return (O=me\\rhtls) reached the error message as it was. A message
    names a peer's certificate, and is printed and logged: it must be one printable line."""
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"me{control}shtls")])
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(world.other.name)  # issued by a CA that is not its trust domain's
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(T)
        .not_valid_after(T + timedelta(minutes=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://example.org/w")]),
            critical=False,
        )
        .add_extension(x509.KeyUsage(True, *[False] * 8), critical=True)
        .sign(world.other.key, hashes.SHA256())
    )
    with pytest.raises(meshtls.VerificationError) as info:
        meshtls.verify_svid([leaf], world.bundles, now=T)
    message = str(info.value)
    assert message.isprintable(), message
    assert message.isascii(), message
    assert "O=me\\" in message  # escaped, still recognisable
