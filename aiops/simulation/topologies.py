"""Service call graphs the simulator runs traces through: a chain, a web shop and seeded random graphs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class Call:
    """One outgoing call of an operation to another operation (``"service:operation"``)."""

    target: str
    asynchronous: bool = False
    retries: int = 0


@dataclass(frozen=True, slots=True)
class Operation:
    """An operation served by one service: its own (self) time distribution and its outgoing calls.

    ``stages`` run one after another; the calls inside one stage run in parallel.
    """

    service: str
    name: str
    median_ms: float
    sigma: float
    stages: tuple[tuple[Call, ...], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.service}:{self.name}"


@dataclass(frozen=True)
class ServiceGraph:
    """A named set of operations with entry points (requests pick one uniformly); ``tiers`` marks
    db/cache/queue services."""

    name: str
    entries: tuple[str, ...]
    operations: dict[str, Operation]
    tiers: dict[str, str] = field(default_factory=dict)

    @property
    def entry(self) -> str:
        return self.entries[0]

    @property
    def services(self) -> list[str]:
        return sorted({op.service for op in self.operations.values()})

    def callees(self, service: str) -> set[str]:
        """Services ``service`` calls directly."""
        return {
            self.operations[call.target].service
            for op in self.operations.values()
            if op.service == service
            for stage in op.stages
            for call in stage
        }

    def edges(self) -> list[tuple[str, str]]:
        """Service-level call edges (caller, callee)."""
        return sorted({(s, c) for s in self.services for c in self.callees(s)})


def _graph(
    name: str, entries: tuple[str, ...], ops: list[Operation], tiers: dict[str, str] | None = None
) -> ServiceGraph:
    table = {op.key: op for op in ops}
    for op in ops:
        for stage in op.stages:
            for call in stage:
                if call.target not in table:
                    raise ValueError(f"graph {name}: {op.key} calls unknown operation {call.target}")
    return ServiceGraph(name=name, entries=entries, operations=table, tiers=tiers or {})


def chain(length: int = 5) -> ServiceGraph:
    """``svc0 -> svc1 -> ... -> svc{length-1}``, each doing some work before and after its call."""
    ops = []
    for i in range(length):
        stages = ((Call(f"svc{i + 1}:handle"),),) if i + 1 < length else ()
        ops.append(Operation(f"svc{i}", "handle", median_ms=2.0 + i, sigma=0.35, stages=stages))
    return _graph("chain", ("svc0:handle",), ops)


def web_shop() -> ServiceGraph:
    """A fan-out shop: frontend -> cart/catalog/checkout -> payment/shipping/db/cache/queue."""
    ops = [
        Operation(
            "frontend",
            "GET /",
            3.0,
            0.3,
            (
                (Call("catalog:ListProducts"), Call("cart:GetCart"), Call("ads:GetAds")),
                (Call("recommendation:List"),),
            ),
        ),
        Operation("frontend", "POST /checkout", 4.0, 0.3, ((Call("checkout:PlaceOrder"),),)),
        Operation("catalog", "ListProducts", 2.0, 0.4, ((Call("cache:GET"),), (Call("postgres:SELECT"),))),
        Operation("cart", "GetCart", 1.5, 0.4, ((Call("cache:GET", retries=1),),)),
        Operation("ads", "GetAds", 1.2, 0.5),
        Operation("recommendation", "List", 2.5, 0.4, ((Call("catalog:ListProducts"),),)),
        Operation(
            "checkout",
            "PlaceOrder",
            3.0,
            0.35,
            (
                (Call("cart:GetCart", retries=1),),
                (Call("payment:Charge", retries=1), Call("shipping:Quote")),
                (Call("postgres:INSERT"),),
                (Call("queue:publish", asynchronous=True),),
            ),
        ),
        Operation("payment", "Charge", 6.0, 0.4),
        Operation("shipping", "Quote", 2.0, 0.4, ((Call("postgres:SELECT"),),)),
        Operation("postgres", "SELECT", 1.0, 0.5),
        Operation("postgres", "INSERT", 1.5, 0.5),
        Operation("cache", "GET", 0.3, 0.4),
        Operation("queue", "publish", 0.4, 0.3, ((Call("email:Send"),),)),
        Operation("email", "Send", 5.0, 0.4),
    ]
    return _graph(
        "web_shop",
        ("frontend:GET /", "frontend:POST /checkout"),
        ops,
        {"postgres": "db", "cache": "cache", "queue": "queue"},
    )


def random_graph(seed: int, services: int = 10) -> ServiceGraph:
    """A layered microservice DAG drawn from ``seed``: each service calls 0-3 services deeper down."""
    rng = np.random.default_rng(seed)
    names = [f"ms{i}" for i in range(services)]
    ops = []
    for i, name in enumerate(names):
        later = names[i + 1 :]
        fan = int(min(len(later), rng.integers(1, 4))) if later else 0
        if i > 0 and later and rng.random() < 0.25:
            fan = 0
        targets = list(rng.choice(later, size=fan, replace=False)) if fan else []
        if i == 0 and later and names[1] not in targets:
            targets = [names[1], *targets[: max(0, fan - 1)]]
        stages: list[tuple[Call, ...]] = []
        while targets:
            width = int(rng.integers(1, 3))
            stages.append(tuple(Call(f"{t}:op", retries=int(rng.random() < 0.3)) for t in targets[:width]))
            targets = targets[width:]
        ops.append(
            Operation(name, "op", float(rng.uniform(0.8, 5.0)), float(rng.uniform(0.25, 0.5)), tuple(stages))
        )
    reachable = {names[0]}
    for op in ops:
        if op.service in reachable:
            reachable |= {c.target.split(":")[0] for st in op.stages for c in st}
    return _graph(f"random_{seed}", (f"{names[0]}:op",), [op for op in ops if op.service in reachable])


def by_name(name: str, seed: int = 0) -> ServiceGraph:
    """``chain``, ``web_shop`` or ``random`` (seeded by ``seed``)."""
    if name == "chain":
        return chain()
    if name == "web_shop":
        return web_shop()
    if name == "random":
        return random_graph(seed)
    raise ValueError(f"topology: unknown name {name!r} (chain, web_shop, random)")


TOPOLOGIES = ("chain", "web_shop", "random")
