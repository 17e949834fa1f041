"""Public helpers for tests, ours and our users': a test CA that mints every defect.

from datetime import UTC, datetime
from meshtls.testing import CA

now = datetime(2030, 1, 1, tzinfo=UTC)
ca = CA("example.org", now=now)
good = ca.issue("spiffe://example.org/web")
no_ku = ca.issue("spiffe://example.org/web", key_usage=None)
meshtls.verify_svid(good.chain, ca.bundle_set(), now=now)
"""

from ._ca import CA as CA
from ._ca import CA_KEY_USAGE as CA_KEY_USAGE
from ._ca import LEAF_KEY_USAGE as LEAF_KEY_USAGE
from ._ca import SVID_EKU as SVID_EKU
from ._ca import WEAK_KEY_TYPES as WEAK_KEY_TYPES
from ._ca import AnyPrivateKey as AnyPrivateKey
from ._ca import CertificateSpec as CertificateSpec
from ._ca import ExtraExtension as ExtraExtension
from ._ca import IssuedCertificate as IssuedCertificate
from ._ca import KeyType as KeyType
from ._ca import KeyUsageName as KeyUsageName
from ._ca import generate_key as generate_key
