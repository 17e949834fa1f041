"""meshtls: a SPIFFE-aware TLS 1.3 mutual-TLS mesh transport for Trio.

Only the names re-exported here are public; modules starting with ``_`` are private.
The Workload API names are imported on first use, so ``import meshtls`` loads neither
grpc nor py-spiffe.
"""

from typing import TYPE_CHECKING, Final

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
from ._config import NodeConfig as NodeConfig
from ._config import load_config as load_config
from ._errors import REASONS as REASONS
from ._errors import BundleError as BundleError
from ._errors import ConfigError as ConfigError
from ._errors import HandshakeError as HandshakeError
from ._errors import MeshError as MeshError
from ._errors import Reason as Reason
from ._errors import SpiffeIdError as SpiffeIdError
from ._errors import UnauthorizedPeerError as UnauthorizedPeerError
from ._errors import VerificationError as VerificationError
from ._identity import Identity as Identity
from ._identity import IdentitySource as IdentitySource
from ._node import Node as Node
from ._node import NodeError as NodeError
from ._node import ReloadError as ReloadError
from ._node import open_node as open_node
from ._policy import ValidationPolicy as ValidationPolicy
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

if TYPE_CHECKING:
    from ._workload import WorkloadApiError as WorkloadApiError
    from ._workload import WorkloadApiSource as WorkloadApiSource

__version__ = "0.1.0.dev0"

#: Names whose module loads grpc and py-spiffe (about 90 modules): imported on first use.
_LAZY: Final = frozenset({"WorkloadApiError", "WorkloadApiSource"})


if not TYPE_CHECKING:  # at run time only, so that mypy still flags a misspelt meshtls.Name

    def __getattr__(name: str) -> object:
        """`meshtls.WorkloadApiSource` and `WorkloadApiError`, imported when first asked for."""
        if name in _LAZY:
            from . import _workload  # noqa: PLC0415 - the point: grpc only for those who use it

            value: object = getattr(_workload, name)
            globals()[name] = value
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


# A library logs, and the application decides where the lines go (meshtls node does).
__import__("logging").getLogger("meshtls").addHandler(__import__("logging").NullHandler())
