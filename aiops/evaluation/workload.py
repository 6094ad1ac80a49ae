"""A small simulated multi-service workload producing RED series (rate, error ratio, p95 latency).

Three services call each other: ``gateway`` -> ``orders`` (80% of requests) -> ``db`` (two queries per
call). Traffic follows a daily cycle. Each step aggregates simulated requests: counts are Poisson,
errors binomial (a callee's error fails its caller), latencies log-normal per service plus the time
spent in callees, and p95 is taken over ``_LATENCY_SAMPLES`` sampled requests of the step (traffic
never falls below that many requests per step).

Faults are injected for a window: a service gets slow, starts erroring, or gateway traffic drops.
A fault is labelled on every series it visibly changes: the faulty service and its callers for
latency and errors, every service's rate for a traffic drop.
"""

from __future__ import annotations

import numpy as np

from aiops.evaluation.series import AnomalyWindow, LabelledSeries

STEP_S = 60.0
_T0 = 1_767_225_600.0
_LATENCY_SAMPLES = 200
_SERVICES = ("gateway", "orders", "db")
_CALLERS = {"gateway": (), "orders": ("gateway",), "db": ("orders", "gateway")}
_MEDIAN_S = {"gateway": 0.01, "orders": 0.02, "db": 0.004}
_BASE_ERROR = {"gateway": 0.001, "orders": 0.002, "db": 0.0005}
_ORDERS_SHARE = 0.8
_DB_QUERIES = 2


def simulate(rng: np.random.Generator, name: str, days: int = 3, faults: int = 3) -> list[LabelledSeries]:
    """RED series of every service over ``days`` days of one-minute steps with ``faults`` faults."""
    n = int(days * 86400 / STEP_S)
    ts = _T0 + STEP_S * np.arange(n)
    phase = 2.0 * np.pi * ts / 86400.0
    rate = rng.uniform(20, 80) * (0.65 - 0.35 * np.cos(phase) + 0.1 * np.sin(2 * phase))
    slow = {s: np.ones(n) for s in _SERVICES}
    error = {s: np.full(n, _BASE_ERROR[s]) for s in _SERVICES}
    labels: dict[str, list[AnomalyWindow]] = {
        f"{s}.{sig}": [] for s in _SERVICES for sig in ("rate", "errors", "p95")
    }
    slot = (n - n // days) // faults
    for k in range(faults):
        start = n // days + k * slot + int(rng.integers(0, slot - 120))
        end = start + int(rng.integers(10, 61))
        window = slice(start, end)
        kind = ("slow", "errors", "traffic_drop")[k % 3]
        target = _SERVICES[int(rng.integers(0, 3))]
        if kind == "slow":
            slow[target][window] = rng.uniform(3.0, 6.0)
            hit = [f"{s}.p95" for s in (target, *_CALLERS[target])]
        elif kind == "errors":
            error[target][window] = rng.uniform(0.05, 0.2)
            hit = [f"{s}.errors" for s in (target, *_CALLERS[target])]
        else:
            rate[window] *= rng.uniform(0.2, 0.4)
            hit = [f"{s}.rate" for s in _SERVICES]
        for key in hit:
            labels[key].append(AnomalyWindow(float(ts[start]), float(ts[end - 1]), kind))
    requests = {"gateway": rng.poisson(rate * STEP_S)}
    requests["orders"] = rng.binomial(requests["gateway"], _ORDERS_SHARE)
    requests["db"] = _DB_QUERIES * requests["orders"]
    # Probability that one request fails, itself or in a callee it waits for.
    fail_db = error["db"]
    fail_orders = 1.0 - (1.0 - error["orders"]) * (1.0 - fail_db) ** _DB_QUERIES
    fail_gateway = 1.0 - (1.0 - error["gateway"]) * (1.0 - _ORDERS_SHARE * fail_orders)
    failure = {"gateway": fail_gateway, "orders": fail_orders, "db": fail_db}
    own = {
        s: _MEDIAN_S[s] * slow[s][:, None] * rng.lognormal(0.0, 0.4, (n, _LATENCY_SAMPLES)) for s in _SERVICES
    }
    latency = {"db": own["db"]}
    latency["orders"] = (
        own["orders"]
        + own["db"]
        + _MEDIAN_S["db"] * slow["db"][:, None] * rng.lognormal(0.0, 0.4, (n, _LATENCY_SAMPLES))
    )
    calls = rng.random((n, _LATENCY_SAMPLES)) < _ORDERS_SHARE
    latency["gateway"] = own["gateway"] + np.where(calls, latency["orders"], 0.0)
    out = []
    for s in _SERVICES:
        count = requests[s]
        errors = rng.binomial(count, failure[s])
        signals = {
            "rate": count / STEP_S,
            "errors": errors / np.maximum(count, 1),
            "p95": np.percentile(latency[s], 95, axis=1),
        }
        for sig, values in signals.items():
            key = f"{s}.{sig}"
            out.append(
                LabelledSeries(
                    f"{name}.{key}", f"red_{sig}", ts, np.asarray(values, float), tuple(labels[key]), STEP_S
                )
            )
    return out
