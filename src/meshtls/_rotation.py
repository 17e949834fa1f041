"""Rotation: which identity a node uses, and the connections that depend on it.

Theory of operation. A live source publishes `Identity` values (our SVID and the bundles
we trust) into its cell; `Rotation.follow` judges each one, in this order, and goes on
whatever the value holds:

1. The bundles, on their own merit. An update carries the full state (B-7): its bundle
   set replaces ours, a domain it lacks included, unless some domain's
   ``spiffe_sequence`` goes back (B-4): then the bundle change is refused and the old set
   stays.
2. Our SVID, checked as a peer would check it: `verify_svid` against the bundles that
   step 1 left in force, with the node's policy and clock (so a lifetime over ``max_ttl``
   is ``ttl_exceeded``). A refused SVID leaves the active one in place *beside the new
   bundles*. An unchanged SVID that no longer verifies against new bundles stays as well
   (there is no other to present), and that is logged and counted.
3. The TLS contexts of the result are built, once per value (`Identity.contexts`), before
   it is swapped in: a handshake never builds any. If the TLS library refuses a new SVID,
   the old one is kept with the new bundles; if it refuses the bundles, the update is
   refused whole.
4. The result is swapped in, and new handshakes use it at once. When the bundles changed,
   each live connection whose verified root is gone from its own domain's bundle is
   cancelled and counted as ``untrusted_chain`` (B-7).

Each refusal is one log line and one ``certificate_validation_failures_total{reason}``; a
source that publishes the same refused SVID again is neither logged nor counted again.
Hostile certificates reach this room too (a notAfter of 9999 overflows date arithmetic
once a skew is added), so every judgement runs inside `meshtls._boundary.mapped`: an
exception of any type refuses that part of the update, never the task.

Live connections. Every verified connection of the node runs in `track`, inside a cancel
scope whose deadline is `DRAIN_MARGIN` before the earlier of the peer's and our own
``not_after``, announced on the stream as ``closes_at``: nothing outlives its
credentials, and a handler knows from the start when its connection will end.

Reload. The node's listeners judge peers through a `Gate` each (an authorizer whose rule
the node swaps) and read `Rotation.policy` at every handshake, so a reload's new rules
apply to the next handshake at once. `recheck` then judges every live connection again,
as a handshake now would (the chain against the bundles in force, under the policy in
force, then its listener's gate), and closes those that fail: each is counted
(``peer_verification_failures_total{reason}``) and logged with its listener, peer
address and SPIFFE id. That recheck leaves revocation out: `close_revoked` closes the
live connections through a certificate the revocation prefetcher found revoked (same
reset, count and line), and `live_chains` tells the prefetcher which chains to keep warm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final, NoReturn

import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ._authorize import Authorizer
from ._boundary import describe_error, mapped
from ._bundle import BundleSet
from ._errors import MeshError, Reason, VerificationError
from ._identity import Identity, NoIdentityError
from ._logs import event
from ._metrics import CERTIFICATE_REASONS, NodeMetrics
from ._policy import ValidationPolicy
from ._revocation import RevocationTarget, chain_targets
from ._sources import IdentityCell
from ._stream import MeshStream, OurRole
from ._svid import Role, VerifiedPeer, X509Svid, verify_svid

logger = logging.getLogger("meshtls")

Clock = Callable[[], datetime]
#: How long before a credential's expiry its connections are closed.
DRAIN_MARGIN: Final = timedelta(seconds=5)
#: Reasons that only say our SVID's dates do not cover now: readiness judges those itself.
_DATE_REASONS: Final = frozenset({"expired", "not_yet_valid"})


def _malformed(description: str) -> VerificationError:
    return VerificationError("malformed_certificate", description)


class Gate:
    """Who may pass one listener: an `Authorizer` whose rule the node swaps on reload.

    A listener holds the gate, never the rule itself, so a new ``rule`` applies to the
    next handshake at once. Calling it raises as the rule does.
    """

    __slots__ = ("rule",)

    def __init__(self, rule: Authorizer) -> None:
        self.rule = rule

    def __call__(self, peer: VerifiedPeer) -> None:
        self.rule(peer)

    def __repr__(self) -> str:
        return f"Gate({self.rule!r})"


@dataclass(frozen=True, slots=True)
class ClosedConnection:
    """A live connection that `Rotation.recheck` closed, and why."""

    listener: str
    peer: str  # its address, host:port
    spiffe_id: str
    reason: Reason
    detail: str


def _peer_address(stream: MeshStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except (OSError, ValueError):  # closed already, or not an IP socket
        return "-"
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class _Live:
    """One tracked connection: its stream, its cancel scope, our role, its listener's name
    and the gate (if any) it passed, which `Rotation.recheck` asks again."""

    __slots__ = ("gate", "listener", "role", "scope", "stream")

    def __init__(
        self,
        stream: MeshStream,
        scope: trio.CancelScope,
        role: OurRole,
        listener: str,
        gate: Authorizer | None,
    ) -> None:
        self.stream = stream
        self.scope = scope
        self.role = role
        self.listener = listener
        self.gate = gate


class Rotation:
    """The active identity of one node, judged update by update. An `IdentitySource`.

    Owned by the node: it hands over the source's first identity (`begin`), runs `follow`
    on the source's cell, and passes `refused` to the source as its ``on_invalid``.
    `metrics` receives the rotations, the refusals and the connections closed for a root
    that left; `clock` gives certificate time; `policy` is what our own SVID must pass;
    `groups` (``[tls] groups``; None: the engine's default) names the TLS contexts built
    for each identity before it becomes active, so no handshake builds them.
    """

    def __init__(
        self,
        *,
        policy: ValidationPolicy,
        metrics: NodeMetrics,
        clock: Clock,
        groups: str | None = None,
    ) -> None:
        #: The policy our SVID and every handshake of the node are judged by; the node
        #: replaces it on reload, and listeners read it through `current_policy`.
        self.policy = policy
        #: The key-exchange groups the node's handshakes use (``[tls] groups``): each
        #: identity's contexts for them are built before it is swapped in.
        self.groups = groups
        self._metrics = metrics
        self._clock = clock
        self._active: Identity | None = None
        #: Why peers holding our bundles would refuse the active SVID now, apart from its
        #: dates (readiness judges those at each probe); None while it verifies.
        self.svid_problem: VerificationError | None = None
        self._last_refusal: tuple[object, ...] | None = None
        self._changed = trio.Event()
        self._live: set[_Live] = set()
        self._live_changed = trio.Event()

    # ------------------------------------------------------------ the active identity

    def identity(self) -> Identity:
        """The active identity. Raises `NoIdentityError` before `begin`."""
        if self._active is None:
            raise NoIdentityError("the node has no identity yet")
        return self._active

    def begin(self, first: Identity) -> None:
        """Make a source's first identity active, if our SVID passes as a peer would judge it.

        Raises `VerificationError` with the reason when it does not, or when the TLS library
        refuses it: a node must not start with an identity its peers would refuse.
        """
        problem = self._verify(first.svid, first.bundles)
        if problem is not None:
            raise problem
        first.contexts(self.groups)
        self._swap(first)

    async def follow(self, cell: IdentityCell, generation: int) -> NoReturn:
        """Judge every identity `cell` publishes after `generation`, until cancelled."""
        while True:
            generation, update = await cell.wait_newer(generation)
            self.apply(update)

    def apply(self, update: Identity) -> bool:
        """Judge `update` in the order of the theory above; swap in what passes.

        Returns True when something new was swapped in. Never raises for the update's
        contents: each refusal is logged and counted.
        """
        active = self.identity()
        bundles = self._judge_bundles(active.bundles, update.bundles)
        svid = self._judge_svid(active.svid, update.svid, bundles, bundles is not active.bundles)
        if svid is active.svid and bundles is active.bundles:
            self._pulse()
            return False
        candidate = update if svid is update.svid and bundles is update.bundles else None
        chosen = self._built(candidate or Identity(svid, bundles, update.crls), active)
        if chosen is None:
            self._pulse()
            return False
        self._swap(chosen)
        return True

    def current_policy(self) -> ValidationPolicy:
        """`policy` as a callable for listeners (`serve(policy=rotation.current_policy)`)."""
        return self.policy

    def passes(self, svid: X509Svid, policy: ValidationPolicy) -> VerificationError | None:
        """Whether our `svid` passes `policy` against the bundles in force (None) or not."""
        return self._verify(svid, self.identity().bundles, policy)

    def refused(self, reason: Reason, detail: str) -> None:
        """A source refused an update before publishing it (it has logged it): count it."""
        self._count(reason)
        self._pulse()

    async def changed(self) -> None:
        """Wait for the next identity event: a swap, or a refused update."""
        await self._changed.wait()

    # ------------------------------------------------------------ judging

    def _verify(
        self, svid: X509Svid, bundles: BundleSet, policy: ValidationPolicy | None = None
    ) -> VerificationError | None:
        """Our SVID as a peer would check it (under `policy`, default: ours); the refusal,
        or None when it passes."""
        try:
            with mapped(_malformed):
                judged_by = policy or self.policy
                svid.check(bundles, policy=judged_by, now=self._clock())  # never P-4
        except VerificationError as exc:
            return exc
        except MeshError as exc:
            return _malformed(str(exc))
        return None

    def _judge_bundles(self, active: BundleSet, new: BundleSet) -> BundleSet:
        """The bundle set in force after this update: `new` (B-7), unless it rolls back (B-4)."""
        if new is active:
            return active
        try:
            with mapped(_malformed):
                if new == active:
                    return active  # the same contents: keep the value whose contexts exist
                return active.replaced_by(new)
        except MeshError as exc:
            self._refuse("malformed_certificate", f"bundle update refused: {exc}", ("bundles", new))
            return active

    def _judge_svid(
        self, active: X509Svid, new: X509Svid, bundles: BundleSet, bundles_changed: bool
    ) -> X509Svid:
        """The SVID in force after this update: `new` if it passes against `bundles`."""
        same = new is active or new.chain == active.chain
        if same and not bundles_changed:
            return active
        problem = self._verify(active if same else new, bundles)
        if problem is None:
            return active if same else new
        if same:
            detail = f"our SVID {active.spiffe_id} does not verify against the new bundles"
        else:
            detail = f"our new SVID {new.spiffe_id} is refused, keeping the current one"
        self._refuse(problem.reason, f"{detail}: {problem.detail}", (new.chain, problem.reason))
        return active

    def _built(self, candidate: Identity, active: Identity) -> Identity | None:
        """`candidate` with its contexts built; else the old SVID beside its bundles; else None."""
        try:
            candidate.contexts(self.groups)
        except VerificationError as exc:
            self._refuse(exc.reason, str(exc), (candidate.svid.chain, "tls"))
        else:
            return candidate
        if candidate.svid is active.svid or candidate.bundles is active.bundles:
            return None
        return self._built(Identity(active.svid, candidate.bundles, candidate.crls), active)

    def _refuse(self, reason: Reason, detail: str, key: tuple[object, ...]) -> None:
        if key == self._last_refusal:
            return  # the same refusal again: logged and counted already
        self._last_refusal = key
        event(logger, logging.WARNING, "identity update rejected", reason=reason, detail=detail)
        self._count(reason)

    def _count(self, reason: Reason) -> None:
        self._metrics.certificate_invalid(
            reason if reason in CERTIFICATE_REASONS else "malformed_certificate"
        )

    def _judge_active(self) -> None:
        """Set `svid_problem`: the active SVID against the active bundles and policy."""
        active = self.identity()
        problem = self._verify(active.svid, active.bundles)
        dated = problem is not None and problem.reason in _DATE_REASONS
        self.svid_problem = None if dated else problem

    def _swap(self, new: Identity) -> None:
        previous, self._active = self._active, new
        self._judge_active()
        svid = new.svid
        self._metrics.set_certificate(svid.not_before, svid.not_after)
        if previous is not None:
            self._metrics.rotated()
            event(
                logger,
                logging.INFO,
                "identity rotated",
                id=svid.spiffe_id,
                not_after=svid.not_after,
                svid="kept" if svid is previous.svid else "new",
                trust_domains=[str(td) for td in new.bundles],
            )
            if new.bundles is not previous.bundles:
                self._close_untrusted(new.bundles)
        self._pulse()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ------------------------------------------------------------ live connections

    def deadline(self, stream: MeshStream) -> datetime:
        """When `stream` will be closed: a drain margin before the first expiry involved.
        Both dates are clamped already (`VerifiedPeer.not_after`, `X509Svid.not_after`)."""
        ours = self.identity().svid.not_after
        return min(stream.peer.not_after, ours) - DRAIN_MARGIN

    @contextmanager
    def track(
        self,
        stream: MeshStream,
        role: OurRole,
        *,
        listener: str = "",
        gate: Authorizer | None = None,
    ) -> Iterator[None]:
        """Run a verified connection under its deadline and the node's trust checks.

        `listener` names the node's listener or tunnel the connection belongs to
        (``"mesh"``, ``"expose:127.0.0.1:8600"``), for `live_by_listener` and `recheck`.
        `gate` is the rule the peer passed (its listener's `Gate`), which `recheck` asks
        again. The deadline is announced on the stream as ``stream.closes_at`` first, so the
        handler can finish what it is sending before then: no cut by surprise. A connection
        closed at its deadline ends as ``timeout`` (its access line says so: no line of its own).
        """
        stream.closes_at = self.deadline(stream)
        seconds = (stream.closes_at - self._clock()).total_seconds()
        with trio.CancelScope(deadline=trio.current_time() + seconds) as scope:
            entry = _Live(stream, scope, role, listener, gate)
            self._live.add(entry)
            try:
                yield
            finally:
                self._live.discard(entry)
                self._live_changed.set()
                self._live_changed = trio.Event()
        if scope.cancelled_caught and trio.current_time() >= scope.deadline:
            stream.end, stream.end_reason = "timeout", "deadline"

    def _close_untrusted(self, bundles: BundleSet) -> None:
        """Cancel the live connections whose root is gone from their domain's bundle (B-7)."""
        for entry in list(self._live):
            peer = entry.stream.peer
            bundle = bundles.get(peer.spiffe_id.trust_domain)
            root = peer.chain[-1].public_bytes(Encoding.DER)
            if bundle is None or root not in bundle.authority_ders:
                self._cut(
                    entry,
                    "closing a connection whose root left the bundle",
                    reason="untrusted_chain",
                    peer=entry.stream.address,
                )

    def _cut(
        self, entry: _Live, what: str, *, reason: Reason, peer: str, detail: str | None = None
    ) -> None:
        """Close a live connection for `reason` (a reset: `MeshStream.reject`), count it, and
        log it as `what`: the one line of that connection's end, so it carries what its
        access line would have (bytes each way), and no access line follows."""
        stream = entry.stream
        event(
            logger,
            logging.WARNING,
            what,
            listener=entry.listener or None,
            peer=peer,
            spiffe_id=str(stream.peer.spiffe_id),
            role=entry.role,
            reason=reason,
            received_bytes=stream.bytes_received,
            sent_bytes=stream.bytes_sent,
            detail=detail,
        )
        stream.reject(reason)
        self._metrics.peer_rejected(reason)
        entry.scope.cancel()

    def recheck(self) -> list[ClosedConnection]:
        """Judge every live connection again, as a handshake would be judged now; close
        (cancel) each that fails, count it and log it. Returns those closed.

        A connection is judged on its chain (bundles and `policy` in force, the clock now),
        then on the gate it was tracked with (none: the chain alone). Whatever a rule
        raises closes that connection only (fail closed, as in a handshake).
        """
        self._judge_active()  # our own SVID too, under the policy in force
        bundles = self.identity().bundles
        now = self._clock()
        closed: list[ClosedConnection] = []
        for entry in list(self._live):
            if entry.scope.cancel_called:
                continue
            problem = self._rejudge(entry, bundles, now)
            if problem is None:
                continue
            peer = entry.stream.peer
            gone = ClosedConnection(
                entry.listener,
                _peer_address(entry.stream),
                str(peer.spiffe_id),
                problem.reason,
                problem.detail,
            )
            self._cut(
                entry,
                "closing a live connection whose peer no longer passes",
                reason=problem.reason,
                peer=gone.peer,
                detail=gone.detail,
            )
            closed.append(gone)
        return closed

    def _rejudge(self, entry: _Live, bundles: BundleSet, now: datetime) -> VerificationError | None:
        peer, gate = entry.stream.peer, entry.gate
        role: Role = "client" if entry.role == "server" else "server"  # the PEER's role
        try:
            with mapped(_malformed):
                # P-4 is `close_revoked`'s, driven by the revocation prefetcher: a reload
                # does not turn an unknown status into a closed connection.
                unrevoked = replace(self.policy, revocation="off")
                verify_svid(peer.chain, bundles, policy=unrevoked, now=now, role=role)
        except VerificationError as exc:
            return exc
        except MeshError as exc:
            return _malformed(str(exc))
        if gate is None:
            return None
        try:
            gate(peer)
        except VerificationError as exc:
            return exc
        except Exception as exc:  # a broken rule refuses, as in a handshake
            return VerificationError(
                "unauthorized", f"the authorizer failed ({describe_error(exc)})"
            )
        return None

    def live_chains(self) -> list[Sequence[x509.Certificate]]:
        """The verified chains (leaf first, root last) of the tracked live connections, for
        the revocation prefetcher to keep their statuses warm (duplicates once)."""
        chains: dict[tuple[x509.Certificate, ...], None] = {}
        for entry in self._live:
            if not entry.scope.cancel_called:
                chains[entry.stream.peer.chain] = None
        return list(chains)

    def close_revoked(self, target: RevocationTarget) -> int:
        """Close every live connection whose peer chain holds `target`'s certificate (its
        leaf or an intermediate, matched by issuer key and serial): P-4 on live
        connections, called when a status turns ``revoked``. Each is reset (the peer reads
        an error, never a clean end), counted as ``revoked`` and logged on one line.
        Returns how many were closed."""
        closed = 0
        for entry in list(self._live):
            if entry.scope.cancel_called:
                continue
            chain = entry.stream.peer.chain
            found = next((t for t in chain_targets(chain) if t.ref == target.ref), None)
            if found is None:
                continue
            index = chain.index(found.certificate)
            where = "leaf" if index == 0 else f"certificate {index}"
            self._cut(
                entry,
                "closing a live connection whose certificate was revoked",
                reason="revoked",
                peer=_peer_address(entry.stream),
                detail=f"{where} (serial {target.ref.serial:#x}) was revoked",
            )
            closed += 1
        return closed

    def cut_live(self) -> int:
        """Mark every live connection as cut off (`MeshStream.cut_off`), so that closing it
        resets it: for a node that stops before they finished. Returns how many."""
        for entry in self._live:
            entry.stream.cut_off()
        return len(self._live)

    @property
    def live_connections(self) -> int:
        return len(self._live)

    def live_by_listener(self) -> dict[str, int]:
        """How many tracked connections each listener has now (listeners with none left out)."""
        counts: dict[str, int] = {}
        for entry in self._live:
            counts[entry.listener] = counts.get(entry.listener, 0) + 1
        return counts

    async def drained(self) -> None:
        """Wait until no tracked connection is left."""
        while self._live:
            await self._live_changed.wait()
