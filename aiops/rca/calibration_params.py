"""Fitted by ``python -m bench.rca --fit``; do not edit by hand."""

# features: bias, top_score, margin, agreement; fitted on 287 simulated scenarios
WEIGHTS = (-1.546161, 5.539915, 2.332442, 1.635675)
