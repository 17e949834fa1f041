"""What ``import meshtls`` costs, and the private py-spiffe modules `_workload` relies on (§6)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import meshtls

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("grpc", "spiffe", "google")  # google: protobuf, which grpc's stubs pull in


def test_import_meshtls_loads_neither_grpc_nor_py_spiffe() -> None:
    code = "import sys, meshtls; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = set(out.split())
    assert "meshtls" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_the_workload_api_names_still_resolve_from_the_package() -> None:
    from meshtls import _workload

    assert meshtls.WorkloadApiSource is _workload.WorkloadApiSource
    assert meshtls.WorkloadApiError is _workload.WorkloadApiError
    assert issubclass(meshtls.WorkloadApiError, meshtls.MeshError)
    assert {"WorkloadApiSource", "WorkloadApiError"} <= set(dir(meshtls))


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="WorkloadApiClient"):
        _ = meshtls.WorkloadApiClient  # type: ignore[attr-defined]


def test_the_private_spiffe_proto_modules_are_where_workload_imports_them() -> None:
    """`_workload` imports ``spiffe._proto``, which py-spiffe does not promise to keep: this
    fails, naming the module, the day a py-spiffe release moves or renames them."""
    from spiffe._proto import workload_pb2, workload_pb2_grpc

    assert callable(workload_pb2_grpc.SpiffeWorkloadAPIStub)
    for name in ("X509SVIDRequest", "X509SVIDResponse", "X509SVID"):
        assert hasattr(workload_pb2, name), name


def test_the_installed_spiffe_is_inside_the_pinned_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (spec,) = [Requirement(text) for text in project["dependencies"] if text.startswith("spiffe")]
    assert spec.specifier, "pin py-spiffe: _workload imports its private _proto modules"
    assert importlib.metadata.version("spiffe") in spec.specifier
    assert "0.4" not in spec.specifier  # a minor release may move _proto


def test_every_public_name_is_exported_and_resolves() -> None:
    """The lazy `meshtls` namespace: `__all__` lists exactly the names it maps, and each
    one resolves to the object its module defines (a typo in the table fails here)."""
    import importlib

    homes = meshtls._HOMES
    assert sorted(meshtls.__all__) == sorted(homes)
    for name, home in homes.items():
        assert getattr(meshtls, name) is getattr(importlib.import_module(home, "meshtls"), name)
