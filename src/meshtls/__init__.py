"""meshtls: a SPIFFE-aware TLS 1.3 mutual-TLS mesh transport for Trio.

Only the names re-exported here are public; modules starting with ``_`` are private.
Every name is imported on first use (PEP 562), so ``import meshtls`` costs almost
nothing: the ``meshtls`` command can hold stop signals before it loads trio or
cryptography (`meshtls._entry`), and the Workload API names, whose module loads grpc and
py-spiffe, cost nothing to those who never use them.
"""

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._authorize import Authorizer as Authorizer
    from ._authorize import all_of as all_of
    from ._authorize import any_of as any_of
    from ._authorize import authorize_any as authorize_any
    from ._authorize import authorize_id as authorize_id
    from ._authorize import authorize_member_of as authorize_member_of
    from ._authorize import authorize_one_of as authorize_one_of
    from ._authorize import authorize_path_prefix as authorize_path_prefix
    from ._bundle import BundleSet as BundleSet
    from ._bundle import X509Bundle as X509Bundle
    from ._channel import ChannelSettings as ChannelSettings
    from ._channel import Message as Message
    from ._config import NodeConfig as NodeConfig
    from ._config import load_config as load_config
    from ._errors import REASONS as REASONS
    from ._errors import BundleError as BundleError
    from ._errors import ConfigError as ConfigError
    from ._errors import HandshakeError as HandshakeError
    from ._errors import MeshError as MeshError
    from ._errors import Reason as Reason
    from ._errors import SendError as SendError
    from ._errors import SpiffeIdError as SpiffeIdError
    from ._errors import UnauthorizedPeerError as UnauthorizedPeerError
    from ._errors import VerificationError as VerificationError
    from ._identity import Identity as Identity
    from ._identity import IdentitySource as IdentitySource
    from ._node import Node as Node
    from ._node import NodeError as NodeError
    from ._node import PeerChannel as PeerChannel
    from ._node import ReloadError as ReloadError
    from ._node import open_node as open_node
    from ._policy import ValidationPolicy as ValidationPolicy
    from ._pool import PeerStatus as PeerStatus
    from ._sources import FileSource as FileSource
    from ._sources import LocalCASource as LocalCASource
    from ._sources import StaticSource as StaticSource
    from ._spiffeid import SpiffeId as SpiffeId
    from ._spiffeid import TrustDomain as TrustDomain
    from ._stream import MeshStream as MeshStream
    from ._stream import PeerRejectedError as PeerRejectedError
    from ._stream import connect as connect
    from ._stream import serve as serve
    from ._svid import VerifiedPeer as VerifiedPeer
    from ._svid import X509Svid as X509Svid
    from ._svid import verify_svid as verify_svid
    from ._workload import WorkloadApiError as WorkloadApiError
    from ._workload import WorkloadApiSource as WorkloadApiSource

__version__ = "0.1.0.dev0"

#: Each public name and the private module that defines it.
_HOMES: Final[dict[str, str]] = {
    "Authorizer": "._authorize",
    "all_of": "._authorize",
    "any_of": "._authorize",
    "authorize_any": "._authorize",
    "authorize_id": "._authorize",
    "authorize_member_of": "._authorize",
    "authorize_one_of": "._authorize",
    "authorize_path_prefix": "._authorize",
    "BundleSet": "._bundle",
    "X509Bundle": "._bundle",
    "ChannelSettings": "._channel",
    "Message": "._channel",
    "NodeConfig": "._config",
    "load_config": "._config",
    "REASONS": "._errors",
    "BundleError": "._errors",
    "ConfigError": "._errors",
    "HandshakeError": "._errors",
    "MeshError": "._errors",
    "Reason": "._errors",
    "SendError": "._errors",
    "SpiffeIdError": "._errors",
    "UnauthorizedPeerError": "._errors",
    "VerificationError": "._errors",
    "Identity": "._identity",
    "IdentitySource": "._identity",
    "Node": "._node",
    "NodeError": "._node",
    "PeerChannel": "._node",
    "ReloadError": "._node",
    "open_node": "._node",
    "ValidationPolicy": "._policy",
    "PeerStatus": "._pool",
    "FileSource": "._sources",
    "LocalCASource": "._sources",
    "StaticSource": "._sources",
    "SpiffeId": "._spiffeid",
    "TrustDomain": "._spiffeid",
    "MeshStream": "._stream",
    "PeerRejectedError": "._stream",
    "connect": "._stream",
    "serve": "._stream",
    "VerifiedPeer": "._svid",
    "X509Svid": "._svid",
    "verify_svid": "._svid",
    "WorkloadApiError": "._workload",
    "WorkloadApiSource": "._workload",
}

__all__ = [
    "REASONS",
    "Authorizer",
    "BundleError",
    "BundleSet",
    "ChannelSettings",
    "ConfigError",
    "FileSource",
    "HandshakeError",
    "Identity",
    "IdentitySource",
    "LocalCASource",
    "MeshError",
    "MeshStream",
    "Message",
    "Node",
    "NodeConfig",
    "NodeError",
    "PeerChannel",
    "PeerRejectedError",
    "PeerStatus",
    "Reason",
    "ReloadError",
    "SendError",
    "SpiffeId",
    "SpiffeIdError",
    "StaticSource",
    "TrustDomain",
    "UnauthorizedPeerError",
    "ValidationPolicy",
    "VerificationError",
    "VerifiedPeer",
    "WorkloadApiError",
    "WorkloadApiSource",
    "X509Bundle",
    "X509Svid",
    "all_of",
    "any_of",
    "authorize_any",
    "authorize_id",
    "authorize_member_of",
    "authorize_one_of",
    "authorize_path_prefix",
    "connect",
    "load_config",
    "open_node",
    "serve",
    "verify_svid",
]


if not TYPE_CHECKING:  # at run time only, so that mypy still flags a misspelt meshtls.Name

    def __getattr__(name: str) -> object:
        """A public name, imported from its module when first asked for."""
        home = _HOMES.get(name)
        if home is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from importlib import import_module  # noqa: PLC0415 - only when a name is asked for

        value: object = getattr(import_module(home, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


# A library logs, and the application decides where the lines go (meshtls node does).
__import__("logging").getLogger("meshtls").addHandler(__import__("logging").NullHandler())
