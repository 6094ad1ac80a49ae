"""Fitted by ``python -m bench.real --fit`` (or ``bench.rca --fit``); do not edit by hand."""

# features: bias, top_score, margin, agreement; fitted on 29 real nezha-ob dev faults and 287 simulated scenarios
WEIGHTS = (-1.420486, 6.290928, 0.714922, 2.362346)
