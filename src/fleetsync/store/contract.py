"""What every store engine provides to the hub (one contract, one test suite for all engines).

Bodies are opaque: the store keeps the agent's compressed bytes and the few
extracted fields queries need, and never parses an object. Every change to an
object gets the next value of one global, monotonic revision (``rev``): the hub's
resourceVersion for List/Watch. The change log is kept for a window; reads of
changes older than :meth:`Store.oldest_rev` must be answered with 410 by the API.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from fleetsync.errors import FleetsyncError
from fleetsync.model.objects import object_key

EventType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(slots=True)
class ObjectRecord:
    """One object of one cluster, as stored. Treat it as immutable: it is not frozen only
    because a frozen dataclass's ``__init__`` costs 3-4 times as much, and the hub makes one
    for every object an agent sends and every change a watch reads (a million in a
    1,000-cluster initial sync)."""

    cluster: str
    type: str  # group/version/Kind, e.g. "v1/Pod"
    namespace: str
    name: str
    uid: str
    resource_version: str  # the cluster's, informational
    hash: int  # xxh3-64 of the canonical JSON body (unsigned 64-bit)
    labels: Mapping[str, str]
    owner: str
    body: bytes  # as the agent sent it
    compression: int  # fleetsync_pb2.Compression value of ``body``
    incarnation: str = ""  # the agent incarnation that last wrote it
    rev: int = 0  # the hub revision of its last change (set by the store)

    @property
    def key(self) -> str:
        return object_key(self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class BundleWrite:
    """One bundle (or FULL chunk) of one stream, as the hub asks a store to apply it.

    - ``upserts``: objects whose hash differs from the stored one get a new rev and a
      change-log entry (ADDED or MODIFIED); equal ones change nothing;
    - ``deletes``: keys ("namespace/name") removed, each with a DELETED entry;
    - ``full_seq``: this is part of FULL ``full_seq``: the upserted rows are marked with it;
    - ``full_end``: the FULL is complete: every object of (cluster, type) not marked
      with ``full_seq`` is deleted (with DELETED entries);
    - ``move_to``: set the stream position to (incarnation, seq) in the same transaction.
    """

    cluster: str
    type: str
    incarnation: str
    seq: int
    upserts: Sequence[ObjectRecord] = ()
    deletes: Sequence[str] = ()
    full_seq: int | None = None
    full_end: bool = False
    move_to: tuple[str, int] | None = None
    now: float = 0.0
    #: The lease epoch of the session that sends it: the store applies the bundle only if the
    #: cluster's lease still has this epoch (checked in the batch's transaction); 0: not fenced
    #: (a pull refresh, which holds no lease).
    epoch: int = 0

    def __post_init__(self) -> None:
        if self.full_end and self.full_seq is None:
            raise ValueError("full_end needs the full_seq of the FULL that ends")
        for o in self.upserts:
            if o.cluster != self.cluster or o.type != self.type:
                raise ValueError(f"upsert of {o.cluster}/{o.type}/{o.key} in a bundle of {self.cluster}/{self.type}")


class Applied(int):
    """What :meth:`Store.apply_batch` returns: the store's revision after the batch (an ``int``,
    as it always was), which also tells, in ``changes``, how many revisions (change-log entries)
    each write of the batch took, in the order given: 0 for one that changed nothing. A caller
    that must report what its write changed (a pull refresh) learns it from the plan the store
    applied, not by reading the store again."""

    changes: tuple[int, ...]

    def __new__(cls, rev: int, changes: Sequence[int] = ()) -> Applied:
        applied = super().__new__(cls, rev)
        applied.changes = tuple(changes)
        return applied


@dataclass(slots=True)
class Change:
    """One entry of the change log. For DELETED, ``obj`` is the last state before deletion.
    Immutable by convention (not frozen: see :class:`ObjectRecord`)."""

    rev: int
    type: EventType
    obj: ObjectRecord


@dataclass(frozen=True, slots=True)
class ClusterRecord:
    name: str
    agent_id: str = ""
    incarnation: str = ""
    status: str = "never"  # never | active | inactive
    metadata: Mapping[str, str] = field(default_factory=dict)
    connected_at: float = 0.0
    last_seen: float = 0.0
    hub_id: str = ""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What a token is for: role ``agent`` writes cluster ``name``; ``read``/``admin`` are API clients."""

    name: str
    role: str
    #: Types an agent token may write ("group/version/Kind"); empty: every type the hub knows.
    types: tuple[str, ...] = ()
    #: What an agent token may do beyond writing its own cluster's state and status (see
    #: :data:`GRANTS`); empty by default: least authority.
    grants: tuple[str, ...] = ()
    #: What a read token may see (None: everything; see :class:`ReadScope`).
    scope: ReadScope | None = None


@dataclass(frozen=True, slots=True)
class ReadScope:
    """The part of the fleet a read token may see (``fleetsync token create --clusters ...``).

    A cluster is in scope if it is named in ``clusters`` or its admin-set labels match
    ``cluster_selector`` (either, when both are given; neither: every cluster). With
    ``namespaces``, only namespaced objects of those namespaces; with ``types``
    ("group/version/Kind"), only those types. Kept as data here: the API compiles it
    (``fleetsync.model.scope``), the store keeps it as JSON next to the token.
    """

    clusters: tuple[str, ...] = ()
    cluster_selector: str = ""
    namespaces: tuple[str, ...] = ()
    types: tuple[str, ...] = ()


#: Grants an agent token may carry: ``gates``: its agent's local gate changes are written to
#: the fleet's gates (seed 004's hook); without it the hub refuses them.
GRANTS = ("gates",)


@dataclass(frozen=True, slots=True)
class GateRecord:
    """A cluster-wide feature gate (seed 004): ``feature.*`` key -> enabled, with who set it when.

    ``revision`` orders every gate write (deletes too) across hub replicas: the last write
    wins, and an agent reconciles from the revision it has. A deleted gate is kept as a
    tombstone (``deleted``) so that the unset reaches agents that were away.
    """

    key: str
    enabled: bool
    updated_at: float
    updated_by: str
    revision: int
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class GateChange:
    """One entry of the gate history, newest last by ``id``: who changed which gate when, old -> new
    (True, False, or None: unset).

    ``cluster`` "": a write of the fleet's gate (an admin's through the API, or an agent's local
    change taken into the fleet's gates; ``revision`` is the gate revision it got). Otherwise a
    change of that cluster's own value, as its agent reported it (a local change, taken into the
    fleet's gates or not: in ``maas`` deployments, or without the ``gates`` grant, the cluster's
    value differs from the fleet's); ``revision`` is 0."""

    id: int
    key: str
    cluster: str
    old: bool | None
    new: bool | None
    by: str
    at: float
    revision: int


@dataclass(frozen=True, slots=True)
class ClusterGateValue:
    """A cluster's own value of a gate, as its agent last reported it (a local change): True,
    False, or None (unset in its local config)."""

    cluster: str
    key: str
    enabled: bool | None
    updated_at: float


class StoreUnavailable(FleetsyncError):
    """The store could not be written at all (locked past the busy timeout, disk full, the
    database unreachable or restarting): nothing in what was being written is at fault, and
    the same write may succeed later."""


class LeaseLost(FleetsyncError):
    """Bundles of a batch were sent by sessions whose lease epoch is no longer the cluster's
    (another session, on this replica or another, was granted the cluster since): nothing of
    the batch was written. ``fenced`` holds the indexes of those bundles in the batch; the
    others may be applied again without them."""

    def __init__(self, fenced: Sequence[int], message: str) -> None:
        super().__init__(message)
        self.fenced = tuple(fenced)

    def __reduce__(self) -> tuple[type[LeaseLost], tuple[tuple[int, ...], str]]:
        # raised in the SQLite batch writer's process and pickled back to the hub
        return (LeaseLost, (self.fenced, str(self)))


class GateExists(FleetsyncError):
    """A gate created with ``create=True`` exists already."""


class GateConflict(FleetsyncError):
    """A gate write ``based_on`` a revision was refused: someone else wrote the gate after it
    (a stale resend must not undo a later write). ``current`` is the gate as it is now."""

    def __init__(self, current: GateRecord) -> None:
        super().__init__(f"gate {current.key} was written at revision {current.revision} by {current.updated_by}")
        self.current = current


@dataclass(frozen=True, slots=True)
class WorkRecord:
    """A work (manifests for clusters chosen by a placement), as the API validated it.

    ``spec`` is the work's spec as JSON bytes (placement and manifests), stored as given.
    ``revision`` orders every work write across replicas (one counter for all works);
    ``generation`` is the revision of the last write that changed ``spec``, so it only ever
    grows, even when a work is deleted and created again under the same name, and a
    cluster's status says which spec it describes.
    """

    name: str
    spec: bytes
    generation: int
    revision: int
    created_at: float
    updated_at: float
    updated_by: str


class WorkExists(FleetsyncError):
    """A work created with ``create=True`` exists already."""


@dataclass(frozen=True, slots=True)
class WorkStatusRecord:
    """What one cluster's agent last reported of one work: the generation it applied and a JSON
    list of per-manifest results (``[{"manifest", "condition", "message"}]``). The rows of a
    cluster are also the inventory of what the agent applied there: what to remove when the
    work goes away or no longer targets the cluster."""

    work: str
    cluster: str
    generation: int
    manifests: bytes
    updated_at: float


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A cluster-level event (connected, inactive, resync finished, ...), kept for a window."""

    time: float
    cluster: str
    reason: str  # CamelCase, like Kubernetes event reasons: Connected, GapDetected, ...
    message: str
    type: str = ""  # the resource type it concerns, if any
    hub_id: str = ""
    id: int = 0  # assigned by the store, increasing


@dataclass(frozen=True, slots=True)
class StreamRecord:
    cluster: str
    type: str
    incarnation: str
    seq: int
    error: str = ""  # the type failed to list: the last known state is kept
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Lease:
    """Who may write a cluster: ``holder`` (agent_id) until ``expires_at``.

    ``epoch`` grows by one with every grant (never with a renewal): it names the session
    that holds the cluster, and every write of that session is fenced by it, so a replica
    that was paused or cut off cannot write once another session holds the cluster.
    """

    cluster: str
    holder: str
    incarnation: str
    hub_id: str
    expires_at: float
    connected: bool  # False: the holder disconnected and the lease is in its grace period
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class RefreshTarget:
    """A cluster the refresh scheduler visits every ``interval`` seconds (seed 003).

    ``push``: its agent streams state; a refresh is a digest resync of every type.
    ``pull``: no agent connects; the hub fetches ``url`` (an agent's ``--serve-state``)
    and applies what it gets as FULL bundles.
    """

    cluster: str
    mode: str  # push | pull
    url: str
    interval: float
    next_refresh_at: float


@dataclass(frozen=True, slots=True)
class ClusterDeletion:
    """What :meth:`Store.delete_cluster` removed."""

    #: Objects removed, each through the change log (a ``DELETED`` change of its last state).
    objects: int
    #: Its agent tokens revoked.
    tokens: int
    #: The store's revision after the deletion (its last ``DELETED`` change).
    rev: int
    #: Whether the hub knew anything of the cluster (a row, objects, labels, a refresh target, tokens).
    found: bool


@dataclass(frozen=True, slots=True)
class LeaseResult:
    granted: bool
    lease: Lease  # the lease now in force (ours if granted, the other holder's if not)


class Store(Protocol):
    async def open(self) -> None:
        """Connect and apply migrations (idempotent; of several replicas opening at once, each
        migration is applied by one). Raises RuntimeError with a readable message when the
        database cannot be reached or is newer than this fleetsync."""

    async def schema_version(self) -> int:
        """The number of migrations applied."""

    async def close(self) -> None: ...

    # ---- notifications (how several hub replicas learn of each other's writes) -----------

    def listen(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(channel, payload)`` on every notification, from this process or, when
        the engine is shared, from any hub replica: ``changes`` (payload: the revision after a
        commit), ``events`` (the newest event id), and whatever :meth:`notify` sends.
        Delivery is best effort: readers also poll, rarely."""

    async def notify(self, channel: str, payload: str) -> None:
        """Send ``payload`` on ``channel`` to every listener of every replica (this one included)."""

    # ---- tokens (only hashes are stored) -----------------------------------------------

    async def add_token(
        self, *, name: str, role: str, token_hash: str, types: Sequence[str] = (), grants: Sequence[str] = (), scope: ReadScope | None = None
    ) -> None:
        """Store a token's hash with what it is for (``scope``: a read token's, kept exactly as given)."""

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token with this hash, or None."""

    async def tokens(self) -> list[TokenRecord]:
        """Every token (what it is for, never its secret), by name then role."""

    async def delete_tokens(self, name: str, role: str | None = None) -> int:
        """Delete the tokens of ``name`` (of ``role`` only, if given); how many there were."""

    async def set_token_grants(self, name: str, grants: Sequence[str]) -> int:
        """Make ``grants`` exactly what every agent token of cluster ``name`` may do beyond its
        cluster (no new secret to hand out); how many tokens there were."""

    # ---- feature gates (seed 004) ------------------------------------------------------

    async def gates(self, *, since: int | None = None) -> list[GateRecord]:
        """Gates by key: the live ones; with ``since``, every gate written after that revision,
        tombstones too (``since=0``: every gate ever set, as agents reconcile with)."""

    async def gate(self, key: str) -> GateRecord | None:
        """The live gate ``key``, or None."""

    async def set_gate(self, key: str, enabled: bool, *, by: str, now: float, create: bool = False, based_on: int | None = None) -> GateRecord:
        """Set a gate (a new revision); with ``create``, raise GateExists if it is live already.
        With ``based_on``, in the same transaction: raise GateConflict (nothing written) if the
        gate, live or a tombstone, was last written after that revision by someone other than ``by``."""

    async def delete_gate(self, key: str, *, by: str, now: float, based_on: int | None = None) -> GateRecord | None:
        """Delete a live gate (a tombstone with a new revision); None if it was not live.
        ``based_on`` as for :meth:`set_gate`."""

    async def set_gates_applied(self, cluster: str, revision: int, *, now: float) -> None:
        """Record the gate revision ``cluster``'s agent reports its local config reflects."""

    async def report_cluster_gate(self, cluster: str, key: str, enabled: bool | None, *, old: bool | None, by: str, now: float) -> GateChange | None:
        """Record ``cluster``'s own value of gate ``key`` (None: unset) as its agent reported it,
        and, in the same transaction, a history entry ``old`` -> ``enabled`` when they differ
        (``old``: what the hub knew the cluster held, which the caller works out; None: unset or
        not known). The entry is returned; None when there was no change (a resend)."""

    async def cluster_gate_values(self, *, key: str | None = None, cluster: str | None = None) -> list[ClusterGateValue]:
        """The clusters' own gate values as reported (of ``key``, of ``cluster`` only, if given), by key then cluster."""

    async def gate_history(self, *, key: str | None = None, cluster: str | None = None, limit: int = 100) -> list[GateChange]:
        """The newest ``limit`` gate history entries, newest first (of ``key``, of ``cluster``'s own
        values if given; ``cluster=""``: the fleet's writes only). :meth:`set_gate` and
        :meth:`delete_gate` record theirs in their own transaction; the history keeps the newest
        ``gate_history_keep`` entries (the engine's setting)."""

    async def gates_applied(self) -> dict[str, int]:
        """cluster -> the gate revision its agent last reported applied."""

    # ---- works (specs flowing down) --------------------------------------------------------

    async def works(self) -> list[WorkRecord]:
        """Every work, by name."""

    async def work(self, name: str) -> WorkRecord | None:
        """The work ``name``, or None."""

    async def put_work(self, name: str, spec: bytes, *, by: str, now: float, create: bool = False) -> WorkRecord:
        """Create or replace a work. A write whose ``spec`` equals the stored one changes nothing
        and returns the stored record; any other write takes a new revision, and, when the spec
        differs or the work is new, that revision as its generation. With ``create``, raise
        WorkExists if the work exists."""

    async def delete_work(self, name: str) -> bool:
        """Delete a work (its status rows stay: they say what the agents must remove); False if
        there was none."""

    async def work_statuses(self, *, work: str | None = None, cluster: str | None = None) -> list[WorkStatusRecord]:
        """Status rows, by work then cluster, of one work and/or one cluster (None: all)."""

    async def set_work_status(self, record: WorkStatusRecord) -> None:
        """Create or replace the status of (work, cluster)."""

    async def delete_work_status(self, work: str, cluster: str) -> None:
        """Forget (work, cluster): the agent removed what it had applied (a no-op if absent)."""

    # ---- hub settings (runtime configuration every replica reads) ----------------------------

    async def hub_settings(self) -> dict[str, str]:
        """Every hub setting that is set (e.g. ``deployment-type``)."""

    async def set_hub_setting(self, key: str, value: str | None) -> None:
        """Set a hub setting; None unsets it."""

    # ---- reported types (discovery data an agent sent; the hub serves these types) ---------

    async def reported_types(self) -> dict[str, dict[str, str]]:
        """cluster -> type (group/version/Kind) -> its discovery data as its agent last reported
        it (a JSON object, see :mod:`fleetsync.model.typeinfo`), for every cluster that reported any."""

    async def set_reported_types(self, cluster: str, types: Mapping[str, str], *, now: float) -> None:
        """Replace, in one transaction, the types ``cluster``'s agent serves (type -> JSON info);
        ``{}`` forgets them all."""

    # ---- cluster labels (set by an admin; what placement and clusterSelector match) --------

    async def cluster_labels(self, name: str | None = None) -> dict[str, dict[str, str]]:
        """cluster -> its admin-set labels, for every cluster that has any (or ``name`` only)."""

    async def label_cluster(self, name: str, *, add: Mapping[str, str], remove: Sequence[str], now: float) -> dict[str, str]:
        """Set ``add`` and remove the keys ``remove`` of ``name``'s labels in one transaction (two
        admins labelling at once lose neither's change); returns its labels now. The cluster need
        not have connected yet."""

    # ---- clusters and leases -----------------------------------------------------------

    async def upsert_cluster(self, record: ClusterRecord) -> None: ...

    async def set_cluster_status(self, name: str, *, status: str, now: float) -> None: ...

    async def touch_cluster(self, name: str, *, now: float) -> None:
        """Record that a message from the cluster's agent arrived (last_seen)."""

    async def clusters(self) -> list[ClusterRecord]: ...

    async def cluster(self, name: str) -> ClusterRecord | None: ...

    async def expire_clusters(self, *, cutoff: float) -> list[str]:
        """Set every ``active`` cluster last seen before ``cutoff`` to ``inactive``, atomically (so of
        several hub replicas exactly one sees each transition); returns their names. Pull
        clusters are left alone: their liveness is whether their refreshes succeed."""

    async def delete_cluster(self, name: str) -> ClusterDeletion:
        """Forget cluster ``name`` in one transaction: its agent tokens (so its agent is refused from
        now on), its lease (so a bundle of a session still open is fenced out: LeaseLost), its
        streams, labels, applied gate revision, work statuses and refresh target, its row, and
        every object of it, each through the change log as a ``DELETED`` change carrying its last
        state (so fleet-wide watchers see it go). Events stay: they are the fleet's history."""

    async def leases(self) -> list[Lease]: ...

    async def acquire_lease(
        self, cluster: str, *, holder: str, incarnation: str, hub_id: str, now: float, ttl: float, silent_before: float = -math.inf
    ) -> LeaseResult:
        """Take the cluster's lease for a new session, by :func:`fleetsync.store.leasing.may_take`:
        granted if there is none, it expired, or ``holder`` holds it and its session is gone
        (disconnected, the same incarnation reconnecting, or the cluster not seen since
        ``silent_before``). A grant takes the next epoch of the cluster."""

    async def renew_leases(self, leases: Sequence[tuple[str, int]], *, hub_id: str, now: float, ttl: float) -> list[str]:
        """Renew many ``(cluster, epoch)`` leases at once, in one transaction (a replica renews all
        its agents' leases together), each only if the cluster's lease still has that epoch;
        returns the clusters whose lease another session holds now, by name."""

    async def release_lease(self, cluster: str, *, holder: str, incarnation: str, now: float, grace: float) -> None:
        """The holder (this incarnation of it) disconnected: keep the lease for ``grace`` seconds for
        the same agent_id only. A late close of an older incarnation's session changes nothing."""

    # ---- streams and apply -------------------------------------------------------------

    async def streams(self, cluster: str | None) -> list[StreamRecord]:
        """The streams of ``cluster`` (None: of every cluster), by cluster then type."""

    async def apply_batch(self, writes: Sequence[BundleWrite]) -> Applied:
        """Apply bundles, of one stream or many, in ONE transaction (group commit) and return the
        store's revision after it, with how many changes each write made (:class:`Applied`). Each is applied as if alone and in the order given (a stream's
        bundles keep their order); revisions are assigned in that order, gap-free and, across
        hub replicas sharing the store, in commit order. If anything fails, nothing is written.

        Fencing: one set-based check in the same transaction compares the ``epoch`` of every
        fenced bundle with its cluster's lease; if any differs, :class:`LeaseLost` names them."""

    async def apply_bundle(
        self,
        cluster: str,
        type: str,  # noqa: A002
        *,
        incarnation: str,
        seq: int,
        upserts: Sequence[ObjectRecord],
        deletes: Sequence[str],
        full_seq: int | None,
        full_end: bool,
        move_to: tuple[str, int] | None,
        now: float,
    ) -> int:
        """One :class:`BundleWrite` as a batch of its own (see :meth:`apply_batch`)."""

    async def set_stream_error(self, cluster: str, type: str, error: str, *, now: float) -> None:  # noqa: A002
        """Record (or clear, with "") a type's list error; its objects are kept."""

    async def object_hashes(self, cluster: str, type: str) -> dict[str, int]:  # noqa: A002
        """key -> hash of every object of (cluster, type): what a digest is compared with."""

    # ---- reads -------------------------------------------------------------------------

    async def get_object(self, cluster: str, type: str, namespace: str, name: str) -> ObjectRecord | None:  # noqa: A002
        ...

    async def list_objects(
        self,
        type: str,  # noqa: A002
        *,
        cluster: str | None = None,
        namespace: str | None = None,
        after: tuple[str, str, str] | None = None,
        limit: int = 0,
        labels: Mapping[str, str] | None = None,
        clusters: Collection[str] | None = None,
        namespaces: Collection[str] | None = None,
    ) -> list[ObjectRecord]:
        """Objects of ``type`` (one cluster or all), ordered by (cluster, namespace, name),
        strictly after the ``after`` (cluster, namespace, name) cursor; ``limit`` 0 = all;
        with ``labels``, only objects that have every one of these labels with that value
        (a label selector's equalities, filtered in the database); with ``clusters`` or
        ``namespaces``, only objects of those clusters and namespaces (a token's read
        scope, filtered in the database through the index: an empty set selects nothing)."""

    async def counts_by_cluster(self) -> dict[str, dict[str, int]]:
        """cluster -> type -> objects held, for every cluster that has any (one query for a fleet)."""

    async def counts(self, cluster: str) -> dict[str, int]:
        """type -> number of objects, for one cluster."""

    async def current_rev(self) -> int: ...

    async def oldest_rev(self) -> int:
        """The oldest revision whose successors are all still in the change log."""

    async def changes_since(self, rev: int, *, limit: int = 1000) -> list[Change]:
        """Change-log entries with rev > ``rev``, in rev order."""

    async def trim_changes(self, *, keep: int) -> None:
        """Drop the oldest change-log entries beyond the newest ``keep``."""

    # ---- refresh scheduling and locks ------------------------------------------------------

    async def set_refresh(self, cluster: str, *, mode: str, url: str = "", interval: float, next_refresh_at: float) -> None:
        """Register or update a refresh target; an earlier ``next_refresh_at`` already set is kept."""

    async def remove_refresh(self, cluster: str) -> bool:
        """Stop refreshing ``cluster``; False if it was not a target."""

    async def refresh_targets(self, cluster: str | None = None) -> list[RefreshTarget]:
        """Every refresh target by cluster, or ``cluster``'s alone."""

    async def claim_due_refreshes(self, *, hub_id: str, now: float, limit: int = 100) -> list[RefreshTarget]:
        """The targets due at ``now`` (pull ones, and push ones whose agent is connected to
        ``hub_id``), their next time moved to ``now + interval`` in the same statement: of
        several replicas claiming at once, each due target goes to exactly one."""

    async def postpone_refresh(self, cluster: str, *, until: float) -> None:
        """Move ``cluster``'s next refresh to ``until`` unless it is later already: a refresh
        that starts late (its claim queued behind others) counts its interval from its start."""

    async def try_lock(self, name: str, *, holder: str, now: float, ttl: float) -> bool:
        """Take lock ``name`` until ``now + ttl`` unless someone else holds it unexpired; the
        holder itself renews it this way (use a holder name per attempt where that matters)."""

    async def lock_holder(self, name: str, *, now: float) -> str | None:
        """Who holds ``name`` unexpired at ``now``, if anyone."""

    async def unlock(self, name: str, *, holder: str) -> None:
        """Release ``name`` if ``holder`` holds it."""

    # ---- events ----------------------------------------------------------------------

    async def add_events(self, events: Sequence[EventRecord]) -> None:
        """Append events (their ids are assigned in order); the oldest beyond the store's window are dropped."""

    async def events(
        self, *, cluster: str | None = None, reason: str | None = None, after: int | None = None, limit: int = 100, clusters: Collection[str] | None = None
    ) -> list[EventRecord]:
        """Events in id order: with ``after``, the first ``limit`` with a larger id; without, the newest ``limit``;
        with ``clusters``, only events of those clusters (a token's read scope; an empty set selects nothing)."""
