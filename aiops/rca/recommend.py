"""From the evidence of a cause to its category and the remediations worth proposing."""

from __future__ import annotations

from aiops.rca.model import Category, Evidence, Recommendation

_TRAFFIC_SURGE = 1.5


def categorise(
    *, views: dict[str, float], inbound_share: float, traffic_ratio: float, datastore: bool
) -> Category:
    """The category of a blamed service, from which views blamed it and how.

    A recent change wins; then traffic growth, time spent waiting to reach the service (network),
    a datastore, errors or changed call structure (code), and plain self-time growth (resources).
    """
    latency = views.get("latency", 0.0)
    behaviour = max(views.get("errors", 0.0), views.get("structure", 0.0), views.get("truncation", 0.0))
    if views.get("change", 0.0) > 0:
        return "configuration/deployment change"
    if traffic_ratio >= _TRAFFIC_SURGE and latency >= behaviour:
        return "capacity/traffic"
    if inbound_share >= 0.5 and latency >= behaviour:
        return "infrastructure/resource"
    if datastore:
        return "dependency"
    if behaviour > latency:
        return "application code"
    return "infrastructure/resource"


def recommend(service: str, category: Category, evidence: Evidence) -> tuple[Recommendation, ...]:
    """Remediations in the order worth trying; the remediation policy decides what actually runs."""
    recs: list[Recommendation] = []
    if category == "configuration/deployment change":
        detail = evidence.changes[0].detail if evidence.changes else "the recent change"
        recs.append(Recommendation("rollback", service, f"degraded right after {detail}"))
    elif category == "capacity/traffic":
        recs.append(Recommendation("scale", service, "self time grew with the request rate"))
    elif category == "infrastructure/resource":
        if evidence.instance:
            recs.append(
                Recommendation(
                    "delete_pod", evidence.instance, "one pod is abnormal far more often than its peers"
                )
            )
        recs.append(
            Recommendation("restart", service, "self time or time to reach it grew without a code change")
        )
    elif category == "application code" and evidence.changes:
        recs.append(Recommendation("rollback", service, "behaviour changed after a recent change"))
    recs.append(Recommendation("notify", service, f"suspected root cause ({category})"))
    return tuple(recs)
