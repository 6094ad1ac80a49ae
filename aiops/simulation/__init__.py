"""A trace simulator with fault injection, producing labelled RCA scenarios."""

from aiops.simulation.faults import FAULT_KINDS, Fault, FaultKind
from aiops.simulation.generator import GeneratorOptions, TraceGenerator
from aiops.simulation.scenarios import Scenario, make_scenario
from aiops.simulation.topologies import (
    TOPOLOGIES,
    Call,
    Operation,
    ServiceGraph,
    by_name,
    chain,
    random_graph,
    web_shop,
)

__all__ = [
    "FAULT_KINDS",
    "TOPOLOGIES",
    "Call",
    "Fault",
    "FaultKind",
    "GeneratorOptions",
    "Operation",
    "Scenario",
    "ServiceGraph",
    "TraceGenerator",
    "by_name",
    "chain",
    "make_scenario",
    "random_graph",
    "web_shop",
]
