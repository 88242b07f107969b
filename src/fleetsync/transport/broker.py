"""The hub's protocol sessions for agents that reach it through a message broker.

A broker carries messages, not connections. Each agent connection therefore names
itself: every event it publishes carries a session id (the ``fssession`` CloudEvents
attribute), and the hub's answers carry it back. :class:`BrokerSessions` turns that
stream of events into the same :class:`~fleetsync.hub.session.Session` objects the gRPC
transport drives, one per (cluster, session id), each fed in arrival order by its own
task so that one slow cluster never holds up the others.

A session ends when the agent says goodbye, when the hub ends it (a rejection, a newer
connection of the same agent, a lost lease), or when nothing arrived for the hub's
inactivity timeout (an agent killed without a word). Late events of an ended session
are dropped: the agent has moved on to a new session and resumes there.

A broker delivers as fast as agents publish, whether or not the hub keeps up, so each
session's queue is bounded (``--broker-session-queue`` messages, ``--broker-session-bytes``):
an agent that floods past either is told so (``Reject{PROTOCOL}``) and its session ends;
it reconnects and resends what was not acknowledged. A well-behaved agent never gets
there: its unacknowledged messages are bounded by its window.

The cluster is the topic's (or subject's), which the broker's ACL ties to the agent's
broker credentials; a Hello that names another cluster is refused, so neither the
broker account nor the hub token alone lets one cluster write another's state.

**Several hub replicas on one broker.** Every replica receives every agent's events
(its own MQTT session, its own JetStream consumer), so exactly one of them must answer
each agent. A replica that sees a Hello of a session it does not know takes the
cluster's *broker lock* in the store (``broker/CLUSTER``, held by the replica and
renewed while it serves a session of that cluster); the replicas that cannot take it
ignore the session. The others' events of a session nobody here knows are ignored too
while another live replica holds the lock; if none does (this replica restarted, or
the holder's lock lapsed), the agent is told to connect again. If the holder dies, its
lock lapses after the lease TTL. A replica that left a Hello to the holder looks at the
lock once more a lease TTL later: if it has lapsed and nobody took it, the holder died
without answering, and the agent is told to connect again, so it says Hello to a live
replica then rather than at its own Hello timeout (30 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fleetsync.aio import cancel_and_wait
from fleetsync.hub.core import HubCore
from fleetsync.hub.session import Session, SessionClosed
from fleetsync.protocol import codec
from fleetsync.protocol import fleetsync_pb2 as pb
from fleetsync.transport import cloudevents

log = logging.getLogger(__name__)

#: Publishes one hub message to one agent session: (cluster, session id, message).
Publish = Callable[[str, str, pb.HubMessage], Awaitable[None]]
#: Called once an event has been handled (a broker ack, for brokers that want one).
Done = Callable[[], Awaitable[None]]

#: How many ended sessions are remembered (to drop their late events quietly).
_ENDED_KEPT = 10_000
HELLO = cloudevents.event_type("hello")


def broker_lock(cluster: str) -> str:
    """The store lock naming the replica that answers ``cluster``'s agent through a broker."""
    return f"broker/{cluster}"


@dataclass
class _Connection:
    cluster: str
    session_id: str
    session: Session
    queue: asyncio.Queue[tuple[bytes | None, Done | None]] = field(default_factory=asyncio.Queue)
    last_seen: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    #: Bytes of the payloads in ``queue``.
    queued_bytes: int = 0
    #: Ended for sending past the bounds: what still arrives is dropped.
    flooded: bool = False


async def _ack(done: Done | None) -> None:
    if done is None:
        return
    try:
        await done()
    except Exception as exc:  # the broker is away: it redelivers, and the session drops what it already has
        log.debug("cannot ack a broker message: %s", exc)


class BrokerSessions:
    """Sessions of one broker transport on one hub replica."""

    def __init__(self, core: HubCore, publish: Publish, *, transport: str) -> None:
        self.core = core
        self.publish = publish
        self.transport = transport
        self._live: dict[tuple[str, str], _Connection] = {}
        #: Recently ended sessions, and whether their agent was told so.
        self._ended: OrderedDict[tuple[str, str], bool] = OrderedDict()
        #: Recent sessions another replica serves.
        self._foreign: OrderedDict[tuple[str, str], None] = OrderedDict()
        #: Hellos left to the replica holding their cluster's broker lock, by when to look
        #: whether it answered (the lock still held) or died (the lock lapsed).
        self._left: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._expiry: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._live)

    async def start(self) -> None:
        if self._expiry is None:
            self._expiry = asyncio.create_task(self._expire_forever(), name=f"{self.transport}-session-expiry")

    async def stop(self) -> None:
        """End every session (as if every connection dropped) and stop."""
        if self._expiry is not None:
            await cancel_and_wait([self._expiry])
            self._expiry = None
        for key in list(self._live):
            await self._end(key)

    async def deliver(self, cluster: str, attributes: dict[str, str], payload: bytes, done: Done | None = None) -> None:
        """One event from ``cluster``'s topic. Never raises for bad input: it ends that session with a clear reason."""
        try:
            event = cloudevents.parse(attributes)
        except ValueError as exc:
            self.core.metrics.refused.labels("malformed").inc()
            log.warning("%s: dropped an event on cluster %s's topic: %s", self.transport, cluster, exc)
            await _ack(done)
            return
        key = (cluster, event.session)
        connection = self._live.get(key)
        if connection is None:
            if key in self._foreign:  # another replica serves it
                self._foreign.move_to_end(key)
                await _ack(done)
                return
            if key in self._ended and not event.goodbye:
                await self._tell_ended(key)
            if key in self._ended or event.goodbye:
                await _ack(done)
                return
            if not await self._ours(cluster, hello=event.type == HELLO):
                self._foreign[key] = None
                while len(self._foreign) > _ENDED_KEPT:
                    self._foreign.popitem(last=False)
                if event.type == HELLO:
                    self._left.pop(key, None)  # kept in the order they are due
                    self._left[key] = time.monotonic() + self.core.settings.lease_ttl
                    while len(self._left) > _ENDED_KEPT:
                        self._left.popitem(last=False)
                await _ack(done)
                return
            connection = self._open(cluster, event.session)
        connection.last_seen = time.monotonic()
        if connection.flooded or (not event.goodbye and (problem := self._overflow(connection, len(payload)))):
            if not connection.flooded:
                await self._flooded(connection, problem)
            await _ack(done)
            return
        connection.queued_bytes += 0 if event.goodbye else len(payload)
        connection.queue.put_nowait((None if event.goodbye else payload, done))

    def _overflow(self, connection: _Connection, size: int) -> str:
        """Why ``size`` more bytes may not be queued for ``connection`` ("" if they may)."""
        limits = self.core.settings.limits
        if connection.queue.qsize() >= limits.broker_session_queue:
            return f"{connection.queue.qsize()} messages of this session wait to be handled (the hub's --broker-session-queue)"
        if connection.queued_bytes + size > limits.broker_session_bytes:
            return f"{connection.queued_bytes + size} bytes of this session would wait to be handled, over the hub's --broker-session-bytes ({limits.broker_session_bytes})"
        return ""

    async def _flooded(self, connection: _Connection, problem: str) -> None:
        """The agent sends faster than its session is handled, past the bounds: end the session, saying so."""
        key = (connection.cluster, connection.session_id)
        connection.flooded = True
        self.core.metrics.refused.labels("flooded").inc()
        log.warning("%s: cluster %s's session %s: %s; ending it", self.transport, key[0], key[1], problem)
        reject = pb.Reject(reason=pb.PROTOCOL, message=f"{problem}; the session is ended: connect again")
        try:
            await self.publish(key[0], key[1], pb.HubMessage(reject=reject))
        except Exception as exc:
            log.debug("%s: cannot tell cluster %s that its session is flooded: %s", self.transport, key[0], exc)
        self._schedule_end(key)

    async def _ours(self, cluster: str, *, hello: bool) -> bool:
        """Whether this replica serves a new session of ``cluster`` (see the module docstring)."""
        store, hub_id, now = self.core.store, self.core.settings.hub_id, self.core.clock()
        try:
            if hello:
                return await store.try_lock(broker_lock(cluster), holder=hub_id, now=now, ttl=self.core.settings.lease_ttl)
            return await store.lock_holder(broker_lock(cluster), now=now) in (None, hub_id)
        except Exception as exc:  # the store is away: answer nothing; the agent retries
            log.warning("%s: cannot tell whether this replica serves cluster %s: %s", self.transport, cluster, exc)
            return False

    async def _renew_locks(self) -> None:
        """Keep the broker lock of every cluster served here; a session whose lock another replica took ends."""
        store, hub_id = self.core.store, self.core.settings.hub_id
        for cluster in sorted({c for c, _ in self._live}):
            try:
                held = await store.try_lock(broker_lock(cluster), holder=hub_id, now=self.core.clock(), ttl=self.core.settings.lease_ttl)
            except Exception as exc:
                log.warning("%s: cannot renew the broker lock of cluster %s: %s", self.transport, cluster, exc)
                continue
            if not held:
                log.warning("%s: another hub replica serves cluster %s now; ending its sessions here", self.transport, cluster)
                for key in [k for k in self._live if k[0] == cluster]:
                    await self._end(key)

    async def _redirect_orphaned_hellos(self) -> None:
        """Hellos left to a lock holder that has died since: tell their agents to connect again.

        Each one is looked at once, a lease TTL after it came: by then a live holder has
        renewed the lock, and a dead one's has lapsed. A session the holder served and ended
        meanwhile gets the answer too, harmlessly: its agent has moved on to another session
        and ignores it."""
        now = time.monotonic()
        while self._left:
            key, due = next(iter(self._left.items()))
            if due > now:
                return  # in arrival order: the rest are due later
            del self._left[key]
            try:
                holder = await self.core.store.lock_holder(broker_lock(key[0]), now=self.core.clock())
            except Exception as exc:  # the agent's own Hello timeout still applies
                log.debug("%s: cannot look at the broker lock of cluster %s: %s", self.transport, key[0], exc)
                continue
            if holder is not None or key in self._live:
                continue
            log.info("%s: the replica holding cluster %s's broker lock stopped; telling its agent to connect again", self.transport, key[0])
            message = "the hub replica that took this session stopped before answering; connect again"
            try:
                await self.publish(key[0], key[1], pb.HubMessage(reject=pb.Reject(reason=pb.PROTOCOL, message=message)))
            except Exception as exc:
                log.debug("%s: cannot tell cluster %s to connect again: %s", self.transport, key[0], exc)

    def _open(self, cluster: str, session_id: str) -> _Connection:
        key = (cluster, session_id)

        async def send(message: object) -> None:
            assert isinstance(message, pb.HubMessage)
            try:
                await self.publish(cluster, session_id, message)
            except Exception as exc:  # the broker is gone: so is this session (the agent will say Hello again)
                log.warning("%s: cannot answer cluster %s (session %s): %s", self.transport, cluster, session_id, exc)
                self._schedule_end(key)

        async def end() -> None:
            self._schedule_end(key)

        session = Session(self.core, send, peer=f"{self.transport}:{cluster}/{session_id}", end=end)
        connection = _Connection(cluster, session_id, session)
        connection.task = asyncio.create_task(self._feed(connection), name=f"{self.transport}-session-{cluster}")
        self._live[key] = connection
        return connection

    async def _feed(self, connection: _Connection) -> None:
        while True:
            payload, done = await connection.queue.get()
            connection.queued_bytes -= len(payload or b"")
            try:
                if payload is None:  # goodbye
                    log.info("%s: cluster %s's agent closed session %s", self.transport, connection.cluster, connection.session_id)
                    self._schedule_end((connection.cluster, connection.session_id))
                    return
                await self._handle(connection, payload)
                payload = None  # not held while the session waits for room: see Session.room
                await connection.session.room()  # before the ack: the broker holds the next messages meanwhile
            except SessionClosed:
                self._schedule_end((connection.cluster, connection.session_id))
                return
            except Exception:
                log.exception("%s: session of cluster %s failed", self.transport, connection.cluster)
                self._schedule_end((connection.cluster, connection.session_id))
                return
            finally:
                await _ack(done)
            del payload, done  # not held while the next one is awaited (a FULL chunk per quiet agent)

    async def _handle(self, connection: _Connection, payload: bytes) -> None:
        session = connection.session
        try:
            message = codec.decode_agent_message(payload)
        except codec.CodecError as exc:
            await session.reject(pb.PROTOCOL, str(exc))
            return
        if message.WhichOneof("message") == "hello" and message.hello.cluster_id != connection.cluster:
            await session.reject(
                pb.PERMISSION_DENIED, f"Hello for cluster {message.hello.cluster_id!r} arrived on cluster {connection.cluster!r}'s topic", event=False
            )
        await session.handle(message)

    async def _tell_ended(self, key: tuple[str, str]) -> None:
        """The first late event of an ended session gets an answer, so that an agent that
        did not notice (it was paused, or the broker held its messages) reconnects now."""
        if self._ended[key]:
            return
        self._ended[key] = True
        reject = pb.Reject(reason=pb.PROTOCOL, message="this session has ended on the hub; connect again")
        try:
            await self.publish(key[0], key[1], pb.HubMessage(reject=reject))
        except Exception as exc:
            log.debug("%s: cannot tell cluster %s that session %s ended: %s", self.transport, key[0], key[1], exc)

    def _schedule_end(self, key: tuple[str, str]) -> None:
        if key in self._live:
            self.core.keep_until_done(asyncio.ensure_future(self._end(key)))

    async def _end(self, key: tuple[str, str]) -> None:
        connection = self._live.pop(key, None)
        if connection is None:
            return
        self._ended[key] = False
        while len(self._ended) > _ENDED_KEPT:
            self._ended.popitem(last=False)
        task = connection.task
        if task is not None and task is not asyncio.current_task():
            await cancel_and_wait([task])
        await connection.session.close()
        if not any(c == key[0] for c, _ in self._live):  # the next session of the cluster may go to any replica
            try:
                await self.core.store.unlock(broker_lock(key[0]), holder=self.core.settings.hub_id)
            except Exception as exc:  # it lapses by itself
                log.debug("%s: cannot release the broker lock of cluster %s: %s", self.transport, key[0], exc)

    async def _expire_forever(self) -> None:
        timeout = self.core.settings.inactivity_timeout
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            if now - renewed >= self.core.settings.lease_ttl / 3:
                renewed = now
                await self._renew_locks()
            await self._redirect_orphaned_hellos()
            for key, connection in list(self._live.items()):
                if now - connection.last_seen > timeout:
                    log.info("%s: nothing from cluster %s's session %s for %.0fs; ending it", self.transport, key[0], key[1], timeout)
                    await self._end(key)
