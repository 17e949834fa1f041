"""`ValidationPolicy`: the time and revocation rules applied on top of the SPIFFE spec.

A frozen value. It is checked when built, so a bad policy fails at start-up with a
`ConfigError`, never in the middle of a handshake.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Literal, get_args

from ._errors import ConfigError

RevocationMode = Literal["soft-fail", "hard-fail", "off"]
REVOCATION_MODES: Final[tuple[str, ...]] = get_args(RevocationMode)
#: The longest a hard-fail handshake may wait for a revocation fetch.
MAX_HARD_FAIL_WAIT: Final = timedelta(seconds=60)


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationPolicy:
    """What a certificate must satisfy beyond the SPIFFE rules (P-1..P-4).

    - ``max_ttl``: the longest allowed lifetime ``not_after - not_before`` of a leaf SVID,
      ours and peers' alike (P-1). ``None`` turns the check off.
    - ``max_age``: the longest allowed ``now - not_before`` of a leaf (P-2); off by default.
    - ``clock_skew``: tolerance when comparing ``now`` with validity windows (P-3).
    - ``revocation``: what an unknown revocation status means (P-4): ``"soft-fail"`` accepts,
      ``"hard-fail"`` rejects, ``"off"`` does not look.
    - ``hard_fail_wait``: how long a hard-fail handshake may wait for the prefetcher to
      fetch an unknown status before it rejects (``revocation_unknown``); 0 to 60 s.
    """

    max_ttl: timedelta | None = timedelta(hours=1)
    max_age: timedelta | None = None
    clock_skew: timedelta = timedelta(seconds=30)
    revocation: RevocationMode = "soft-fail"
    hard_fail_wait: timedelta = timedelta(seconds=2)

    def __post_init__(self) -> None:
        for name in ("max_ttl", "max_age"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, timedelta):
                raise ConfigError(f"policy {name} must be a timedelta or None, not {value!r}")
            if value <= timedelta(0):
                raise ConfigError(f"policy {name} must be positive, not {value}")
        if not isinstance(self.clock_skew, timedelta):
            raise ConfigError(f"policy clock_skew must be a timedelta, not {self.clock_skew!r}")
        if self.clock_skew < timedelta(0):
            raise ConfigError(f"policy clock_skew must not be negative, not {self.clock_skew}")
        if self.clock_skew > timedelta(hours=1):
            raise ConfigError(f"policy clock_skew {self.clock_skew} is over the 1h sanity bound")
        if not isinstance(self.hard_fail_wait, timedelta):
            raise ConfigError(
                f"policy hard_fail_wait must be a timedelta, not {self.hard_fail_wait!r}"
            )
        if not timedelta(0) <= self.hard_fail_wait <= MAX_HARD_FAIL_WAIT:
            raise ConfigError(
                f"policy hard_fail_wait must be between 0s and 60s, not {self.hard_fail_wait}"
            )
        if self.revocation not in REVOCATION_MODES:
            raise ConfigError(
                f"policy revocation must be one of {', '.join(REVOCATION_MODES)},"
                f" not {self.revocation!r}"
            )


DEFAULT_POLICY: Final = ValidationPolicy()
