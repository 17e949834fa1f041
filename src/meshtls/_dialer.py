"""The dialer pool's I/O, and the node's message links both ways.

Theory of operation. A `Dialer` belongs to one node and runs under its nursery (`run`, a
nursery of its own). For each pooled peer it runs one *keeper* task, which alone dials
that peer, so a dial is single-flight by construction. The keeper asks `_pool.keeper_step`
what to do, dials with `meshtls._stream.connect` (authorized against the peer's configured
SPIFFE id, bounded by ``[mesh] dial_timeout``), and runs the connection under
`Rotation.track` (listener ``peer:<id>``: its deadline, and closure when revoked or
untrusted) as a client message link (`_channel.run_link`). The state after each event
comes from `_pool` (`dial_started`, `dial_failed`, `connected`, `link_ended`).

Rotation: a little before a pooled link must close (`_pool.replace_at`), the keeper dials
a replacement; once it is up, and outlives the old one, sends go to it and the old link is
left to finish (make-before-break). Otherwise the old link is drained at its deadline and
the peer redialled at once. A link closed because the peer's certificate was revoked is
redialled at once too: a renewed peer passes, the revoked one keeps failing and backs off.

Inbound: `serve_inbound` is the mesh listener's handler. It runs a server message link and
registers it under the peer's verified id, so `send` can answer a peer that only dialled
us. Senders (`send`) never dial: they ask `_pool.decide`, then use a link, wait on
`_changed` (any change of any peer or inbound link), or raise `SendError`.

Errors: whatever goes wrong with one peer (a dial, a link, a bug while serving it) ends
that peer's link only, counted with its reason; a keeper never dies of it. Every failed
send raises `SendError` to its caller.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, NoReturn

import trio

from ._authorize import authorize_id
from ._boundary import describe_error
from ._channel import ChannelSettings, Inbox, Link, LinkEnd, run_link
from ._config import Address, MeshSettings, PeerSettings, format_address
from ._errors import HandshakeError, SendError
from ._logs import event
from ._metrics import MeshMetrics
from ._pool import (
    Dial,
    Fail,
    PeerState,
    PeerStatus,
    Use,
    backoff,
    connected,
    decide,
    dial_failed,
    dial_started,
    keeper_step,
    link_ended,
    new_peer,
    replace_at,
    replacement_failed,
    replacement_started,
)
from ._spiffeid import SpiffeId
from ._stream import MeshStream, Observer, OurRole, connect

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._prefetch import Revocations
    from ._rotation import Rotation

__all__ = ["Dialer", "channel_settings"]

logger = logging.getLogger("meshtls")
#: How long a replaced link stays open for the sends begun on it before the swap.
RETIRE_GRACE: Final = 1.0


def channel_settings(mesh: MeshSettings) -> ChannelSettings:
    """A link's settings from ``[mesh]`` (the inbox size and send timeout stay the node's)."""
    return ChannelSettings(
        max_message_size=mesh.max_message_size,
        keepalive_interval=mesh.keepalive_interval.total_seconds(),
        keepalive_timeout=mesh.keepalive_timeout.total_seconds(),
        upgrade_timeout=mesh.upgrade_timeout.total_seconds(),
    )


class _DialFailedError(Exception):
    """A dial that gave no link; its message is the peer's ``last_error``."""


class _Slot:
    """One message link a keeper runs: its stream, and the `Link` once it is up. It is the
    `task_status` of `run_link` (``started`` sets `up`); `done` is set when it has ended,
    `reason` then says why (the pool's word: ``drained``, ``revoked``, or the link's)."""

    __slots__ = ("done", "end", "link", "reason", "replaced", "stream", "up")

    def __init__(self, stream: MeshStream) -> None:
        self.stream = stream
        self.link: Link | None = None
        self.up = trio.Event()
        self.done = trio.Event()
        self.end: LinkEnd | None = None
        self.reason = "broken"
        self.replaced = False

    def started(self, value: Link | None = None) -> None:
        self.link = value
        self.up.set()


class _Peer:
    """One pooled peer: its keeper's state, its pooled link, and the keeper's scope."""

    __slots__ = ("address", "id", "link", "removed", "scope", "state", "wall_since")

    def __init__(self, peer_id: SpiffeId, address: Address, now: float, wall: datetime) -> None:
        self.id = peer_id
        self.address = address
        self.state = new_peer(now)
        self.wall_since = wall
        self.link: Link | None = None
        self.scope = trio.CancelScope()
        self.removed = False


def _classify(slot: _Slot) -> str:
    """Why a link ended, in the pool's words (see `_pool.RECONNECT_NOW`)."""
    stream = slot.stream
    if stream.end == "rejected":  # closed by the node: revoked, untrusted, a reload
        return "revoked" if stream.end_reason == "revoked" else "rejected"
    if stream.end == "timeout" and stream.end_reason == "deadline":
        return "drained"
    if slot.replaced:
        return "replaced"
    if slot.end is not None:
        return "closed" if slot.end.clean else slot.end.reason
    return "broken"


class Dialer:
    """The dialer pool and the message links of one node (see the module docstring).

    Owned by the node, which passes its rotation (identity, tracking, policy), its
    revocation statuses, its clock (certificate time), its `Observer` (handshake and
    connection metrics), the `Inbox` incoming messages go to, ``[mesh]``, the
    `MeshMetrics`, the rng of the backoff's jitter, and the key-exchange `groups` every
    dial offers (``[tls] groups``; None: the engine's default).
    """

    def __init__(
        self,
        *,
        rotation: Rotation,
        revocations: Revocations,
        clock: Callable[[], datetime],
        observer: Observer,
        inbox: Inbox,
        mesh: MeshSettings,
        metrics: MeshMetrics,
        rng: random.Random | None = None,
        groups: str | None = None,
    ) -> None:
        self._rotation = rotation
        self._groups = groups
        self._revocations = revocations
        self._clock = clock
        self._observer = observer
        self.inbox = inbox
        self.mesh = mesh
        self.settings = channel_settings(mesh)
        self._metrics = metrics
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._peers: dict[SpiffeId, _Peer] = {}
        self._inbound: dict[SpiffeId, list[Link]] = {}
        self._changed = trio.Event()
        #: Places for dials in flight (``[mesh] max_dials``), taken in turn (FIFO).
        self._dials = trio.CapacityLimiter(mesh.max_dials)
        self._nursery: trio.Nursery | None = None
        self._closed = False

    # ------------------------------------------------------------ what the node reads

    def statuses(self) -> list[PeerStatus]:
        """Every pooled peer, in the order added, with dates on the node's clock."""
        now, wall = trio.current_time(), self._clock()
        found = []
        for peer in self._peers.values():
            state = peer.state
            retry = None
            if state.phase == "backing_off" and state.retry_at is not None:
                retry = wall + timedelta(seconds=max(0.0, state.retry_at - now))
            found.append(
                PeerStatus(
                    id=peer.id,
                    address=format_address(peer.address),
                    state=state.phase,
                    since=peer.wall_since,
                    last_error=state.last_error,
                    retry_at=retry,
                    dials=state.dials,
                    failures=state.failures,
                    connected_total=state.connected_total,
                )
            )
        return found

    def inbound_peers(self) -> list[SpiffeId]:
        """The ids with a live inbound message link now."""
        return [peer for peer, links in self._inbound.items() if links]

    # ------------------------------------------------------------ the pool

    async def run(
        self, peers: Sequence[PeerSettings], *, task_status: trio.TaskStatus[None]
    ) -> NoReturn:
        """Keep a link to each of `peers`, and to each peer added later, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for item in peers:
                    self.add(item.id, item.address)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._closed = True  # stopped: `add` refuses, never a peer without a keeper
        raise AssertionError("unreachable")  # pragma: no cover

    @property
    def running(self) -> bool:
        """Whether peers can be added: started, and not stopped for a drain."""
        return self._nursery is not None and not self._closed

    def add(self, peer_id: SpiffeId, address: Address) -> None:
        """Start keeping a link to `peer_id` at `address`. Raises `ValueError` if it is
        pooled already, `RuntimeError` if the pool does not run (yet, or any more)."""
        if self._nursery is None or self._closed:
            raise RuntimeError("the dialer pool is not running (not started, or draining)")
        if peer_id in self._peers:
            raise ValueError(f"{peer_id} is already a pooled peer")
        peer = _Peer(peer_id, address, trio.current_time(), self._clock())
        self._nursery.start_soon(self._keep, peer, name=f"meshtls keeper {peer_id}")
        self._peers[peer_id] = peer  # only once its keeper is on its way
        self._metrics.peer_added(str(peer_id))
        self._pulse()

    def address_of(self, peer_id: SpiffeId) -> Address | None:
        """Where `peer_id` is dialled; None if it is not pooled."""
        peer = self._peers.get(peer_id)
        return None if peer is None else peer.address

    def remove(self, peer_id: SpiffeId) -> bool:
        """Stop keeping `peer_id`: its keeper and its links end (a send in flight on them
        raises). Returns whether it was pooled."""
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return False
        peer.removed = True
        self._metrics.forget(str(peer_id))
        self._stop(peer)
        self._pulse()
        return True

    def _stop(self, peer: _Peer) -> None:
        """End `peer`'s keeper: its link closed on purpose first (bounded by
        ``keepalive_timeout``), at once when it has none."""
        link = peer.link
        if link is None or link.closed or self._nursery is None:
            peer.scope.cancel()
        else:
            self._nursery.start_soon(self._close_then_stop, peer, link)

    async def _close_then_stop(self, peer: _Peer, link: Link) -> None:
        """Close `link` and wait for it to hand over the message it may hold (acknowledged
        already), bounded by twice ``keepalive_timeout``; then end the keeper."""
        try:
            with trio.move_on_after(2 * self.mesh.keepalive_timeout.total_seconds()):
                await link.aclose()
        finally:
            peer.scope.cancel()  # a replacement dial in flight, say

    def close(self) -> None:
        """Stop the pool for a drain: no more dials; every pooled and inbound link is closed
        on purpose (a WebSocket close, bounded by ``keepalive_timeout``), so the drain ends
        once they have, and their peers read a clean end. Calling it again does nothing."""
        if self._closed or self._nursery is None:
            return
        self._closed = True
        for peer in self._peers.values():
            self._stop(peer)
        for links in self._inbound.values():
            for link in links:
                self._nursery.start_soon(link.aclose)
        self._pulse()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _set(self, peer: _Peer, state: PeerState) -> None:
        if state.since != peer.state.since or state.phase != peer.state.phase:
            peer.wall_since = self._clock()
        self._log_change(peer, peer.state, state)
        peer.state = state
        if not peer.removed:  # a removed peer's series are gone: never make them again
            self._metrics.peer_connected(str(peer.id), state.phase == "connected")
        self._pulse()

    def _log_change(self, peer: _Peer, old: PeerState, new: PeerState) -> None:
        """One line per event: a link made, and the first failure of a streak (the
        retries after it show in ``/status`` and the metrics, not in the log)."""
        if peer.removed:
            return
        if new.phase == "connected" and old.phase != "connected":
            event(
                logger,
                logging.INFO,
                "peer connected",
                peer=str(peer.id),
                address=format_address(peer.address),
                after_failures=old.attempt or None,
            )
        elif new.phase == "backing_off" and new.attempt == 1:
            event(
                logger,
                logging.WARNING,
                "peer unavailable, retrying with backoff",
                peer=str(peer.id),
                address=format_address(peer.address),
                error=new.last_error,
            )

    async def _keep(self, peer: _Peer) -> None:
        """The keeper of one peer (see the module docstring); ends when the peer is removed."""
        with peer.scope:
            while not (self._closed or peer.removed):
                step = keeper_step(peer.state, trio.current_time())
                if not isinstance(step, Dial):
                    await trio.sleep_until(step.until)
                    continue
                self._set(peer, dial_started(peer.state, trio.current_time()))
                try:
                    reason, failure = await self._hold(peer)
                except Exception as exc:  # a bug: that peer backs off, the node goes on
                    event(logger, logging.ERROR, "keeper failed", exc_info=exc, peer=str(peer.id))
                    reason, failure = None, f"internal error: {describe_error(exc)}"
                peer.link = None
                delay = self._backoff(peer.state.attempt)
                if reason is None:
                    self._dialed(peer, ok=False)
                    self._set(peer, dial_failed(peer.state, trio.current_time(), failure, delay))
                else:
                    self._set(peer, link_ended(peer.state, trio.current_time(), reason, delay))

    def _dialed(self, peer: _Peer, *, ok: bool) -> None:
        if not peer.removed:
            self._metrics.dialed(str(peer.id), ok=ok)

    def _backoff(self, attempt: int) -> float:
        return backoff(
            attempt,
            initial=self.mesh.backoff_initial.total_seconds(),
            cap=self.mesh.backoff_max.total_seconds(),
            rng=self._rng,
        )

    async def _dial(self, peer: _Peer) -> MeshStream:
        """One verified connection to `peer`, within ``dial_timeout``; else `_DialFailedError`."""
        host, port = peer.address
        rotation = self._rotation
        timeout = self.mesh.dial_timeout.total_seconds()
        with trio.move_on_after(timeout):
            try:
                return await connect(
                    host,
                    port,
                    source=rotation,
                    authorize=authorize_id(peer.id),
                    policy=rotation.current_policy,
                    revocation=self._revocations,
                    clock=self._clock,
                    observer=self._observer,
                    groups=self._groups,
                )
            except HandshakeError as exc:
                raise _DialFailedError(str(exc)) from exc
            except OSError as exc:
                raise _DialFailedError(f"connect failed: {exc.strerror or exc}") from exc
        raise _DialFailedError(f"dial_timeout: no verified connection within {timeout:g}s")

    async def _open(self, peer: _Peer, links: trio.Nursery) -> _Slot:
        """Dial `peer` and start a client link in `links`; the slot once its link is up.
        Raises `_DialFailedError` if either fails.

        The dial waits for one of the pool's ``max_dials`` places (in turn) and holds it
        from the TCP connect to the end of the WebSocket upgrade: a node joining a large
        mesh runs a few dials at a time, each quick, instead of all at once, each slowed
        by all the others until their upgrades time out and are redialled. The wait for a
        place counts against no dial's timeouts (a sender's own deadline still runs)."""
        async with self._dials:
            stream = await self._dial(peer)
            slot = _Slot(stream)
            links.start_soon(self._run_slot, peer, slot)
            await slot.up.wait()
        if slot.link is None:
            await slot.done.wait()
            detail = slot.end.detail if slot.end is not None else None
            raise _DialFailedError(
                f"link failed: {slot.reason}" + (f": {detail}" if detail else "")
            )
        self._dialed(peer, ok=True)
        return slot

    async def _hold(self, peer: _Peer) -> tuple[str | None, str]:
        """Dial `peer`, hold its link (and replace it before it must close) until the pooled
        link ends. Returns why it ended, or None and why no link was made."""
        async with trio.open_nursery() as links:
            try:
                slot = await self._open(peer, links)
            except _DialFailedError as exc:
                return None, str(exc)
            while True:
                peer.link = slot.link
                now = trio.current_time()
                self._set(peer, connected(peer.state, now))
                closes_at = slot.stream.closes_at
                replace = float("inf")
                if closes_at is not None:
                    left = (closes_at - self._clock()).total_seconds()
                    replace = replace_at(now, now + left)
                with trio.move_on_at(replace):
                    await slot.done.wait()
                if slot.done.is_set():
                    break
                new = await self._replacement(peer, slot, links)
                if new is None:
                    await slot.done.wait()
                    break
                slot.replaced = True
                links.start_soon(self._retire, slot)
                slot = new
            links.cancel_scope.cancel()  # links replaced and not yet finished: none normally
            return slot.reason, ""

    async def _replacement(self, peer: _Peer, old: _Slot, links: trio.Nursery) -> _Slot | None:
        """A new link to `peer` that outlives `old`, made before `old` must close; None
        when it cannot be made or would close no later (no certificate rotated yet)."""
        self._set(peer, replacement_started(peer.state))
        try:
            new = await self._open(peer, links)
        except _DialFailedError as exc:
            self._dialed(peer, ok=False)
            self._set(peer, replacement_failed(peer.state, str(exc)))
            event(
                logger, logging.INFO, "link replacement failed", peer=str(peer.id), error=str(exc)
            )
            return None
        before, after = old.stream.closes_at, new.stream.closes_at
        if before is not None and after is not None and after <= before:
            assert new.link is not None
            await new.link.aclose()  # no later than the old one: of no use
            return None
        return new

    async def _retire(self, old: _Slot) -> None:
        """Close a replaced link on purpose, once the sends begun on it before the swap
        have had a moment to get their acknowledgement (else it drains at its deadline)."""
        closes_at = old.stream.closes_at
        grace = RETIRE_GRACE
        if closes_at is not None:
            grace = min(grace, max(0.0, (closes_at - self._clock()).total_seconds() / 2))
        await trio.sleep(grace)
        if old.link is not None:
            await old.link.aclose()

    async def _run_slot(self, peer: _Peer, slot: _Slot) -> None:
        """Run one client link under the rotation's tracking; set `slot.done` at its end."""
        try:
            with self._rotation.track(slot.stream, "client", listener=f"peer:{peer.id}"):
                slot.end = await run_link(
                    slot.stream,
                    role="client",
                    inbox=self.inbox,
                    settings=self.settings,
                    observer=self,
                    task_status=slot,
                )
        except Exception as exc:  # one peer's fault is that peer's alone
            event(logger, logging.ERROR, "message link failed", exc_info=exc, peer=str(peer.id))
            slot.end = LinkEnd(clean=False, reason="internal_error")
        finally:
            slot.stream.abort()  # closed already, normally; else reset, never a clean end
            slot.reason = _classify(slot)
            if slot.link is not None:  # one that never came up is a failed dial
                self._metrics.link_ended("client", slot.reason)
            slot.up.set()
            slot.done.set()
            self._pulse()

    # ------------------------------------------------------------ inbound links

    async def serve_inbound(self, stream: MeshStream) -> None:
        """The mesh listener's handler: a server message link with a verified peer,
        registered for `send` while it lives."""
        peer_id = stream.peer.spiffe_id
        slot = _Slot(stream)
        try:
            slot.end = await run_link(
                stream,
                role="server",
                inbox=self.inbox,
                settings=self.settings,
                observer=self,
                task_status=_Register(self, peer_id, slot),
            )
        except Exception as exc:  # one peer's fault is that peer's alone
            event(logger, logging.ERROR, "message link failed", exc_info=exc, peer=str(peer_id))
            slot.end = LinkEnd(clean=False, reason="internal_error")
        finally:
            links = self._inbound.get(peer_id, [])
            if slot.link in links:
                links.remove(slot.link)
            if not links:
                self._inbound.pop(peer_id, None)
            slot.reason = _classify(slot)
            self._metrics.link_ended("server", slot.reason)  # a failed upgrade too
            self._pulse()

    def _registered(self, peer_id: SpiffeId, link: Link) -> None:
        self._inbound.setdefault(peer_id, []).append(link)
        self._pulse()

    def _inbound_link(self, peer_id: SpiffeId) -> Link | None:
        for link in reversed(self._inbound.get(peer_id, [])):
            if not link.closed:
                return link
        return None

    # ------------------------------------------------------------ sending

    async def send(
        self,
        peer_id: SpiffeId,
        message: bytes | str,
        timeout: float | None,  # noqa: ASYNC109 - default [mesh] send_timeout
    ) -> None:
        """Send `message` to `peer_id`; return once the peer node has queued it.

        Waits for the pool's link (a dial in flight, or a retry due in time) at most
        `timeout` seconds (default ``[mesh] send_timeout``), the peer's ack included.
        Raises `SendError`: ``unknown_peer`` (neither pooled nor linked to us),
        ``unavailable`` (the next retry is after the deadline, or the node is draining),
        ``timeout``, or the link's
        own (``closed``, ``too_large``).
        """
        seconds = self.mesh.send_timeout.total_seconds() if timeout is None else timeout
        deadline = trio.current_time() + seconds
        while True:
            if self._closed:
                self._metrics.send_failed("unavailable")
                raise SendError("unavailable", str(peer_id), "the node is draining")
            peer = self._peers.get(peer_id)
            inbound = self._inbound_link(peer_id)
            now = trio.current_time()
            decision = decide(
                None if peer is None else peer.state,
                inbound=inbound is not None,
                now=now,
                deadline=deadline,
            )
            if isinstance(decision, Fail):
                self._metrics.send_failed(decision.reason)
                raise SendError(decision.reason, str(peer_id))
            link = None
            if isinstance(decision, Use):
                link = inbound if decision.via == "inbound" else peer.link if peer else None
            if link is None or link.closed:  # wait: the keeper's next change, or the deadline
                if now >= deadline:
                    self._metrics.send_failed("timeout")
                    raise SendError("timeout", str(peer_id))
                changed = self._changed
                with trio.move_on_at(deadline):
                    await changed.wait()
                continue
            with trio.move_on_at(deadline):
                await link.send(message)
                return
            self._metrics.send_failed("timeout")
            raise SendError("timeout", str(peer_id))

    # ------------------------------------------------------------ ChannelObserver

    def message_sent(self, size: int) -> None:
        self._metrics.message_sent()

    def message_received(self, size: int) -> None:
        self._metrics.message_received()

    def send_failed(self, reason: str) -> None:
        self._metrics.send_failed(reason)

    def link_ended(self, role: OurRole, end: LinkEnd) -> None:
        """Counted by the dialer itself, in the pool's words (`_classify`)."""


class _Register:
    """The `task_status` of an inbound link: registers the link once it is up."""

    __slots__ = ("_dialer", "_peer", "_slot")

    def __init__(self, dialer: Dialer, peer: SpiffeId, slot: _Slot) -> None:
        self._dialer, self._peer, self._slot = dialer, peer, slot

    def started(self, value: Link | None = None) -> None:
        self._slot.started(value)
        if value is not None:
            self._dialer._registered(self._peer, value)
