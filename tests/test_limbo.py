"""x509-limbo's cases as SPIFFE chains (tests/cases_limbo.py): what is not the verdict table.

The cases themselves are rows of the shared table (`test_verify.TABLES`), run by its one
runner: `verify_svid` in tests/test_verify.py, and a real handshake in both roles in
tests/test_handshake_verdicts.py (``python -m tests.test_handshake_verdicts`` prints the
table). What stays here checks the cases: ids, and that the hand-made certificates carry
the one defect they are named after. docs/limbo.md explains the expectations.
"""

from __future__ import annotations

import re
import warnings

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from meshtls.testing import IssuedCertificate

from .cases_limbo import LIMBO_ACCEPTED, LIMBO_REJECTED, domain
from .conftest import World
from .table import Case, presented

CASES: dict[str, Case] = {i: c for i, c, _ in LIMBO_REJECTED} | dict(LIMBO_ACCEPTED)


def leaf(world: World, case_id: str) -> x509.Certificate:
    return chain(world, case_id).leaf


def chain(world: World, case_id: str) -> IssuedCertificate:
    return presented(world, CASES[case_id])[0]


def test_case_ids_are_limbo_ids() -> None:
    """Each id is limbo's (``namespace::name``), or ``meshtls::`` for an edge limbo lacks."""
    ids = [i for i, _, _ in LIMBO_REJECTED] + [i for i, _ in LIMBO_ACCEPTED]
    assert len(ids) == len(set(ids)) == len(CASES)
    pattern = re.compile(r"(rfc5280|webpki|pathlen|pathological|meshtls)(::[a-z0-9A-Z.-]+)+")
    assert [i for i in ids if not pattern.fullmatch(i)] == []
    assert len(ids) >= 35


def test_hand_made_certificates_carry_their_one_defect(world: World) -> None:
    """The DER edits in cases_limbo do what their names say, and the edited certificates are
    still signed by their issuer: a case must fail for its defect, not for a broken signature."""
    ski, aki = ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER
    critical_ski = domain("critical-ski").authorities[0]
    assert critical_ski.extensions.get_extension_for_oid(ski).critical
    critical_ski.verify_directly_issued_by(critical_ski)
    with pytest.raises(x509.ExtensionNotFound):
        domain("missing-ski").authorities[0].extensions.get_extension_for_oid(ski)
    basic = (
        domain("noncritical-bc")
        .authorities[0]
        .extensions.get_extension_for_class(x509.BasicConstraints)
    )
    assert basic.value.ca
    assert not basic.critical
    no_aki = leaf(world, "rfc5280::aki::leaf-missing-aki")
    no_aki.verify_directly_issued_by(world.ca.certificate)
    assert aki not in {ext.oid for ext in no_aki.extensions}
    v1 = leaf(world, "webpki::v1-cert")
    assert v1.version == x509.Version.v1
    v1.verify_directly_issued_by(world.ca.certificate)
    with pytest.raises(x509.DuplicateExtension):
        _ = leaf(world, "rfc5280::duplicate-extensions").extensions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography warns about non-positive serials
        assert leaf(world, "rfc5280::serial::zero").serial_number == 0
        assert leaf(world, "rfc5280::serial::negative").serial_number == -62
        assert leaf(world, "rfc5280::serial::too-long").serial_number.bit_length() > 160
    for case_id in ("rfc5280::serial::zero", "rfc5280::serial::too-long"):
        leaf(world, case_id).verify_directly_issued_by(world.ca.certificate)
    empty = domain("empty-subject").authorities[0]
    assert len(empty.subject) == 0
    assert len(leaf(world, "rfc5280::ca-empty-subject").issuer) == 0
