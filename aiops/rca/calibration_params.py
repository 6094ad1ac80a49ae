"""Fitted by ``python -m bench.real --fit`` (or ``bench.rca --fit``); do not edit by hand."""

# features: bias, top_score, margin, agreement; fitted on 29 real nezha-ob dev faults and 287 simulated scenarios
WEIGHTS = (-1.524660, 6.037354, 1.080271, 2.199326)
