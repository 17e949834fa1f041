"""SPIFFE ID and trust domain parsing, checked against vectors from other implementations.

The vectors in ``tests/vectors/`` were gathered from the test suites of go-spiffe,
java-spiffe, the Rust ``spiffe`` crate, py-spiffe and SPIRE, plus the SPIFFE spec's own
examples and a few cases of ours (marked ``meshtls`` in ``sources``). Their ``valid``
field is meshtls's strict verdict (SPIFFE-RULES.md); where a source expected otherwise,
the vector says so in ``source_verdict``. The files' ``about`` text describes the format.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NotRequired, TypedDict, cast

import pytest

import meshtls

VECTORS_DIR = Path(__file__).parent / "vectors"

#: Rules of SPIFFE-RULES.md that concern SPIFFE IDs. There is no ID-8: the table has
#: one row "ID-7, ID-9" (percent-encoding in the trust domain / in the path).
ID_RULES = frozenset(f"ID-{n}" for n in range(1, 16) if n != 8)

#: `sources` entries that do not name another implementation's test suite.
NOT_AN_IMPLEMENTATION = frozenset({"meshtls", "SPIFFE"})


class InputRepeat(TypedDict):
    """A long input: ``prefix + char * n + suffix``, exactly ``total_bytes`` in UTF-8."""

    prefix: str
    char: str
    total_bytes: int
    suffix: NotRequired[str]


class SpiffeIdVector(TypedDict):
    input: NotRequired[str]
    input_repeat: NotRequired[InputRepeat]
    valid: bool
    trust_domain: NotRequired[str]
    path: NotRequired[str]
    path_repeat: NotRequired[InputRepeat]
    rule: NotRequired[str]
    rules: NotRequired[list[str]]
    sources: list[str]
    source_verdict: NotRequired[str]
    note: NotRequired[str]


class TrustDomainVector(TypedDict):
    input: NotRequired[str]
    input_repeat: NotRequired[InputRepeat]
    form: Literal["name", "id"]
    valid: bool
    trust_domain: NotRequired[str]
    rule: NotRequired[str]
    rules: NotRequired[list[str]]
    sources: list[str]
    source_verdict: NotRequired[str]
    note: NotRequired[str]


class SpiffeIdFile(TypedDict):
    about: str
    vectors: list[SpiffeIdVector]


class TrustDomainFile(TypedDict):
    about: str
    vectors: list[TrustDomainVector]


def _load_spiffe_ids() -> list[SpiffeIdVector]:
    with (VECTORS_DIR / "spiffe_ids.json").open(encoding="utf-8") as f:
        return cast(SpiffeIdFile, json.load(f))["vectors"]


def _load_trust_domains() -> list[TrustDomainVector]:
    with (VECTORS_DIR / "trust_domains.json").open(encoding="utf-8") as f:
        return cast(TrustDomainFile, json.load(f))["vectors"]


SPIFFE_ID_VECTORS = _load_spiffe_ids()
TRUST_DOMAIN_VECTORS = _load_trust_domains()


def expand_repeat(rep: InputRepeat) -> str:
    """``prefix + char * n + suffix``, with n such that the UTF-8 length is ``total_bytes``."""
    prefix, unit, suffix = rep["prefix"], rep["char"], rep.get("suffix", "")
    room = rep["total_bytes"] - len((prefix + suffix).encode())
    count, rest = divmod(room, len(unit.encode()))
    assert rest == 0, f"input_repeat does not add up to total_bytes: {rep}"
    text = prefix + unit * count + suffix
    assert len(text.encode()) == rep["total_bytes"]
    return text


def vector_input(vector: SpiffeIdVector | TrustDomainVector) -> str:
    """The input text of a vector, expanding ``input_repeat``."""
    if "input" in vector:
        return vector["input"]
    return expand_repeat(vector["input_repeat"])


def expected_path(vector: SpiffeIdVector) -> str:
    """The path of a valid vector, expanding ``path_repeat``."""
    if "path" in vector:
        return vector["path"]
    return expand_repeat(vector["path_repeat"])


def implementation(source: str) -> str:
    """``"go-spiffe spiffeid/id_test.go"`` -> ``"go-spiffe"``."""
    return source.split(" ", 1)[0]


def _shown(vector: SpiffeIdVector | TrustDomainVector) -> str:
    if "input_repeat" in vector:
        rep = vector["input_repeat"]
        head = ascii(rep["prefix"][:24])[1:-1]
        return f"{head}+{ascii(rep['char'])[1:-1]}*..{rep.get('suffix', '')}[{rep['total_bytes']}B]"
    text = ascii(vector_input(vector))[1:-1]
    return text if len(text) <= 60 else text[:57] + "..."


def _params(vectors: Sequence[SpiffeIdVector | TrustDomainVector]) -> list[object]:
    return [
        pytest.param(v, id=f"{i:04d}-{implementation(v['sources'][0])}-{_shown(v)}")
        for i, v in enumerate(vectors)
    ]


def _assert_rule(error: meshtls.SpiffeIdError) -> None:
    # Several rules can apply to one input, so only the shape of .rule is checked.
    rule: object = error.rule
    assert isinstance(rule, str)
    assert rule.startswith("ID-"), rule


@pytest.mark.parametrize("vector", _params(SPIFFE_ID_VECTORS))
def test_spiffe_id_vector(vector: SpiffeIdVector) -> None:
    text = vector_input(vector)
    if vector["valid"]:
        sid = meshtls.SpiffeId.parse(text)
        assert str(sid) == text
        assert str(sid.trust_domain) == vector["trust_domain"]
        assert sid.path == expected_path(vector)
    else:
        with pytest.raises(meshtls.SpiffeIdError) as excinfo:
            meshtls.SpiffeId.parse(text)
        _assert_rule(excinfo.value)


@functools.cache
def _trust_domain_parse_accepts_id_form() -> bool:
    """Whether TrustDomain.parse takes ``spiffe://td[/path]`` as well as a bare name.

    That is the library's choice; the vectors only require it to be consistent.
    """
    try:
        meshtls.TrustDomain.parse("spiffe://example.org")
    except meshtls.SpiffeIdError:
        return False
    return True


@pytest.mark.parametrize("vector", _params(TRUST_DOMAIN_VECTORS))
def test_trust_domain_vector(vector: TrustDomainVector) -> None:
    text = vector_input(vector)
    id_form_ok = vector["form"] == "name" or _trust_domain_parse_accepts_id_form()
    accepted = vector["valid"] and id_form_ok
    if accepted:
        td = meshtls.TrustDomain.parse(text)
        assert str(td) == vector["trust_domain"]
    else:
        with pytest.raises(meshtls.SpiffeIdError) as excinfo:
            meshtls.TrustDomain.parse(text)
        _assert_rule(excinfo.value)


def test_spiffe_id_error_is_a_value_error() -> None:
    assert issubclass(meshtls.SpiffeIdError, ValueError)


def _all_vectors() -> list[SpiffeIdVector | TrustDomainVector]:
    return [*SPIFFE_ID_VECTORS, *TRUST_DOMAIN_VECTORS]


def test_vectors_are_well_formed() -> None:
    seen_ids: set[str] = set()
    seen_tds: set[str] = set()
    for vector in _all_vectors():
        assert ("input" in vector) != ("input_repeat" in vector), vector
        assert vector["sources"], vector
        if vector["valid"]:
            assert "trust_domain" in vector, vector
            assert "rule" not in vector, vector
        else:
            assert vector.get("rule", "") in ID_RULES, vector
            assert "trust_domain" not in vector, vector
            assert "path" not in vector, vector
            assert "path_repeat" not in vector, vector
        for rule in vector.get("rules", []):
            assert rule in ID_RULES, vector
    for id_vector in SPIFFE_ID_VECTORS:
        has_path = "path" in id_vector or "path_repeat" in id_vector
        assert has_path == id_vector["valid"], id_vector
        if id_vector["valid"]:
            assert vector_input(id_vector) == (
                "spiffe://" + id_vector["trust_domain"] + expected_path(id_vector)
            ), id_vector
        text = vector_input(id_vector)
        assert text not in seen_ids, f"duplicate input {text!r}"
        seen_ids.add(text)
    for td_vector in TRUST_DOMAIN_VECTORS:
        assert td_vector["form"] in ("name", "id"), td_vector
        text = vector_input(td_vector)
        assert text not in seen_tds, f"duplicate input {text!r}"
        seen_tds.add(text)


def test_vectors_come_from_at_least_four_implementations() -> None:
    implementations = {
        implementation(source)
        for vector in _all_vectors()
        for source in vector["sources"]
        if implementation(source) not in NOT_AN_IMPLEMENTATION and "observed" not in source
    }
    assert len(implementations) >= 4, sorted(implementations)


def test_every_rule_has_a_vector() -> None:
    referenced: set[str] = set()
    for vector in _all_vectors():
        if "rule" in vector:
            referenced.add(vector["rule"])
        referenced.update(vector.get("rules", []))
    assert sorted(ID_RULES - referenced, key=lambda r: int(r[3:])) == []
