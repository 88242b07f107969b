"""What every store engine provides to the hub (one contract, one test suite for all engines).

Bodies are opaque: the store keeps the agent's compressed bytes and the few
extracted fields queries need, and never parses an object. Every change to an
object gets the next value of one global, monotonic revision (``rev``): the hub's
resourceVersion for List/Watch. The change log is kept for a window; reads of
changes older than :meth:`Store.oldest_rev` must be answered with 410 by the API.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

EventType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """One object of one cluster, as stored."""

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
        return f"{self.namespace}/{self.name}"


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

    def __post_init__(self) -> None:
        if self.full_end and self.full_seq is None:
            raise ValueError("full_end needs the full_seq of the FULL that ends")
        for o in self.upserts:
            if o.cluster != self.cluster or o.type != self.type:
                raise ValueError(f"upsert of {o.cluster}/{o.type}/{o.key} in a bundle of {self.cluster}/{self.type}")


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log. For DELETED, ``obj`` is the last state before deletion."""

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


class StoreUnavailable(Exception):
    """The store could not be written at all (locked past the busy timeout, disk full, the
    database unreachable or restarting): nothing in what was being written is at fault, and
    the same write may succeed later."""


class GateExists(Exception):
    """A gate created with ``create=True`` exists already."""


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


class WorkExists(Exception):
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
    """Who may write a cluster: ``holder`` (agent_id) until ``expires_at``."""

    cluster: str
    holder: str
    incarnation: str
    hub_id: str
    expires_at: float
    connected: bool  # False: the holder disconnected and the lease is in its grace period


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

    async def add_token(self, *, name: str, role: str, token_hash: str, types: Sequence[str] = ()) -> None: ...

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        """The token with this hash, or None."""

    async def tokens(self) -> list[TokenRecord]:
        """Every token (what it is for, never its secret), by name then role."""

    async def delete_tokens(self, name: str, role: str | None = None) -> int:
        """Delete the tokens of ``name`` (of ``role`` only, if given); how many there were."""

    # ---- feature gates (seed 004) ------------------------------------------------------

    async def gates(self, *, since: int | None = None) -> list[GateRecord]:
        """Gates by key: the live ones; with ``since``, every gate written after that revision,
        tombstones too (``since=0``: every gate ever set, as agents reconcile with)."""

    async def gate(self, key: str) -> GateRecord | None:
        """The live gate ``key``, or None."""

    async def set_gate(self, key: str, enabled: bool, *, by: str, now: float, create: bool = False) -> GateRecord:
        """Set a gate (a new revision); with ``create``, raise GateExists if it is live already."""

    async def delete_gate(self, key: str, *, by: str, now: float) -> GateRecord | None:
        """Delete a live gate (a tombstone with a new revision); None if it was not live."""

    async def set_gates_applied(self, cluster: str, revision: int, *, now: float) -> None:
        """Record the gate revision ``cluster``'s agent reports its local config reflects."""

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

    async def leases(self) -> list[Lease]: ...

    async def acquire_lease(self, cluster: str, *, holder: str, incarnation: str, hub_id: str, now: float, ttl: float) -> LeaseResult:
        """Take or renew the cluster's lease. Granted if there is none, it expired, or ``holder``
        already holds it (connected or in grace: the same agent_id may reclaim)."""

    async def renew_leases(self, leases: Sequence[tuple[str, str, str]], *, hub_id: str, now: float, ttl: float) -> list[str]:
        """:meth:`acquire_lease` for many ``(cluster, holder, incarnation)`` at once, in one
        transaction (a replica renews all its agents' leases together); returns the clusters
        whose lease another holder has now, by name."""

    async def release_lease(self, cluster: str, *, holder: str, incarnation: str, now: float, grace: float) -> None:
        """The holder (this incarnation of it) disconnected: keep the lease for ``grace`` seconds for
        the same agent_id only. A late close of an older incarnation's session changes nothing."""

    # ---- streams and apply -------------------------------------------------------------

    async def streams(self, cluster: str | None) -> list[StreamRecord]:
        """The streams of ``cluster`` (None: of every cluster), by cluster then type."""

    async def apply_batch(self, writes: Sequence[BundleWrite]) -> int:
        """Apply bundles, of one stream or many, in ONE transaction (group commit) and return the
        store's revision after it. Each is applied as if alone and in the order given (a stream's
        bundles keep their order); revisions are assigned in that order, gap-free and, across
        hub replicas sharing the store, in commit order. If anything fails, nothing is written."""

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
    ) -> list[ObjectRecord]:
        """Objects of ``type`` (one cluster or all), ordered by (cluster, namespace, name),
        strictly after the ``after`` (cluster, namespace, name) cursor; ``limit`` 0 = all;
        with ``labels``, only objects that have every one of these labels with that value
        (a label selector's equalities, filtered in the database)."""

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

    async def events(self, *, cluster: str | None = None, reason: str | None = None, after: int | None = None, limit: int = 100) -> list[EventRecord]:
        """Events in id order: with ``after``, the first ``limit`` with a larger id; without, the newest ``limit``."""
