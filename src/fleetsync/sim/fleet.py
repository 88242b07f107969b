"""The simulated fleet: virtual clusters, their objects, tokens and churn."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from fleetsync.model import types as t
from fleetsync.sim.churn import Churn
from fleetsync.sim.mesh import MeshTraffic
from fleetsync.sim.rbac import RBAC_TYPES
from fleetsync.sim.store import ClusterState
from fleetsync.sim.workloads import ClusterBuilder

REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
ENVIRONMENTS = ("prod", "staging", "dev")


@dataclass(frozen=True)
class SimConfig:
    """Sizes and behaviour of a simulated fleet (the ``fleetsync sim`` flags)."""

    clusters: int = 3
    pods: int = 100
    namespaces: int = 3
    pods_per_service: int = 5
    churn: float = 0.0
    seed: int = 1
    history: int = 10_000
    istio: bool = True
    name_prefix: str = "c"


@dataclass
class SimCluster:
    name: str
    state: ClusterState
    builder: ClusterBuilder
    token: str
    labels: dict[str, str] = field(default_factory=dict)
    #: Whether its services are in an Istio mesh (they then export Istio's metrics).
    istio: bool = True
    mesh: MeshTraffic = field(init=False)

    def __post_init__(self) -> None:
        self.mesh = MeshTraffic(self.state, istio=self.istio)


class SimFleet:
    """All virtual clusters of one ``fleetsync sim`` process."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.clusters: dict[str, SimCluster] = {}
        for i in range(1, config.clusters + 1):
            name = f"{config.name_prefix}{i}"
            # Without Istio its CRDs are not installed: the Istio APIs answer 404, as on a real cluster.
            # Service accounts and RBAC are served (empty: only the admin token exists until some are
            # created), and Secrets (empty until some are created: no default type of the agent's).
            served = (*(t.ALL_TYPES if config.istio else t.KUBERNETES_TYPES), *RBAC_TYPES, t.SECRET)
            state = ClusterState(name, types=served, history_limit=config.history, seed=config.seed)
            region = REGIONS[(i - 1) % len(REGIONS)]
            builder = ClusterBuilder(state, seed=config.seed, region=region)
            builder.populate(pods=config.pods, namespaces=config.namespaces, pods_per_service=config.pods_per_service, istio=config.istio)
            token = "sim-" + hashlib.sha256(f"{config.seed}:{name}:token".encode()).hexdigest()[:32]
            labels = {"region": region, "env": ENVIRONMENTS[(i - 1) % len(ENVIRONMENTS)]}
            self.clusters[name] = SimCluster(name, state, builder, token, labels, istio=config.istio)
        self.churn = Churn([c.builder for c in self.clusters.values()], rate=config.churn, seed=config.seed)

    def total_objects(self) -> int:
        return sum(c.state.count(rt) for c in self.clusters.values() for rt in c.state.types)
