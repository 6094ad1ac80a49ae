"""``devart demo``: watch the AIOps loop work in minutes.

It runs a control plane and the AIOps service of its own (on ``DEVART_HOME/demo``, or the
``DATABASE_URL`` given), feeds a small traced workload (``svc0 -> svc1 -> svc2``, simulated) through
the real OTLP receiver (``POST /v1/traces``), injects a fault after a baseline, and prints the
incident and its root-cause analysis as the API returns them. The detector settings of
:func:`demo_settings` make that take minutes: steps of a couple of seconds and a warm-up as long as
the baseline. They are a demo setting, not the production default (60 s steps, a two-hour warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import httpx

from agents.sdk import eventloop
from control_plane.cli_common import CliError, Exit, command, emit, positive_int
from control_plane.settings import Settings

if TYPE_CHECKING:
    from aiops.detection import ConformalSettings
    from aiops.rca.worker import RcaWorkerSettings
    from aiops.settings import AiopsSettings

_NS = 1_000_000_000
_SERVICES = ("svc0", "svc1", "svc2")
_PIPELINE_ROUNDS = 10  # proposed -> preflight -> dry-run -> its end under the policy takes a few steps


def register(sub: argparse._SubParsersAction) -> None:
    from aiops.simulation import FAULT_KINDS

    demo = command(sub, "demo", run=_run,
                   help="see the AIOps loop in minutes: traced workload, a fault after a baseline, "
                        "the incident and its root cause as they appear")
    demo.add_argument("--step", type=positive_int, default=2, help="seconds per signal step (default 2)")
    demo.add_argument("--baseline-steps", type=positive_int, default=120,
                      help="steps of normal traffic before the live part, also the detectors' warm-up (default 120)")
    demo.add_argument("--fault-after", type=positive_int, default=10,
                      help="live steps of normal traffic before the fault starts (default 10)")
    demo.add_argument("--fault", choices=FAULT_KINDS, default="db_slowdown", help="what goes wrong (default db_slowdown)")
    demo.add_argument("--service", choices=_SERVICES, default="svc2", help="where it goes wrong (default svc2)")
    demo.add_argument("--traces-per-step", type=positive_int, default=40, help="traces per step (default 40)")
    demo.add_argument("--max-steps", type=positive_int, default=120,
                      help="live steps to wait for the incident and its analysis before giving up (default 120)")


@dataclass(frozen=True)
class DemoSettings:
    """Detection and analysis tuned to show an incident and its cause within minutes; demo only."""

    aiops: AiopsSettings
    detector: ConformalSettings
    rca: RcaWorkerSettings


def demo_settings(step_s: int, baseline_steps: int) -> DemoSettings:
    from aiops.detection import ConformalSettings
    from aiops.rca.worker import RcaWorkerSettings
    from aiops.settings import AiopsSettings

    baseline_s = float(step_s * baseline_steps)
    return DemoSettings(
        # a step is read two steps after it ends: the demo's exports of a step can be delayed by the
        # warm-up and the analysis sharing its process, and a step read before its spans are all in
        # looks like a drop in traffic or latency
        aiops=AiopsSettings(signal_step_s=step_s, incident_lag_s=2.0 * step_s,
                            incident_warmup_steps=baseline_steps, incident_correlation_window_s=30.0 * step_s,
                            incident_min_anomalous_steps=3,
                            incident_excerpt_points=10),
        # stricter than the default: the simulated workload has a few hundred series-steps before
        # the fault, and the demo should show the fault's incident, not a chance alert before it
        detector=ConformalSettings(alert_p=0.0002),
        # analysed 10 steps after its start, against the baseline traffic just before it
        rca=RcaWorkerSettings(lead_s=2.0 * step_s, settle_s=10.0 * step_s, gap_s=2.0 * step_s,
                              baseline_s=baseline_s, sweep_interval_s=2.0 * step_s),
    )


def _run(args: argparse.Namespace) -> int:
    settings = Settings()
    return eventloop.run(_demo(args, settings), settings.event_loop)


def _say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


async def _demo(args: argparse.Namespace, base: Settings) -> int:
    from agents.sdk.telemetry import TelemetrySettings
    from aiops.service import AiopsService
    from aiops.simulation import Fault, TraceGenerator, chain
    from control_plane.api.app import create_app
    from control_plane.auth import create_token, revoke_token
    from control_plane.service import ControlPlane
    from control_plane.serving import serve_in_process

    # demo data stays out of the installation's database
    settings = base.model_copy(update={"home": base.home / "demo"}) if base.database_url is None else base
    demo = demo_settings(args.step, args.baseline_steps)
    step_ns = args.step * _NS
    generator = TraceGenerator(chain(len(_SERVICES)), seed=7)
    fault = Fault(args.fault, args.service)

    async with ControlPlane(settings, workers=False, aiops=demo.aiops, telemetry=TelemetrySettings(enabled=False)) as cp, \
            serve_in_process(create_app(control_plane=cp)) as base_url:
        async with cp.owner_connection() as conn:
            token_id, token = await create_token(conn, name=f"demo-{uuid4().hex[:8]}", role="admin",
                                                 created_by="devart demo")
        try:
            async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"},
                                         timeout=30.0) as api:
                first_live = time.time_ns() // step_ns * step_ns
                _say(f"demo API {base_url}; sending {args.baseline_steps} steps of {args.step} s of baseline traffic "
                     f"({' -> '.join(_SERVICES)}) through POST /v1/traces")
                for offset in range(0, args.baseline_steps, 10):
                    n = min(10, args.baseline_steps - offset)
                    start = first_live - (args.baseline_steps - offset) * step_ns
                    await _export(api, generator.generate(args.traces_per_step * n, start, n * step_ns))
                live_from = await _catch_up(api, args, generator, first_live, step_ns)
                async with AiopsService(demo.aiops, pool=cp.loops_pool, detector_settings=demo.detector,
                                        rca_settings=demo.rca) as service:
                    service.start()
                    found = await _live(api, args, generator, fault, live_from, step_ns)
                found["remediations"] = await _remediations(api, cp, found["incident"]["id"])
        finally:
            async with cp.owner_connection() as conn:
                await revoke_token(conn, token_id)
    emit(args, found, "")
    return 0


async def _catch_up(api: httpx.AsyncClient, args: argparse.Namespace, generator: Any, cursor: int,
                    step_ns: int) -> int:
    """Normal traffic for the steps that passed while the baseline was sent; returns the first live step."""
    while cursor + step_ns <= time.time_ns():
        await _export(api, generator.generate(args.traces_per_step, cursor, step_ns))
        cursor += step_ns
    return cursor


async def _export(api: httpx.AsyncClient, spans: list[Any]) -> None:
    from aiops.traces.otlp import otlp_json

    response = await api.post("/v1/traces", json=otlp_json(spans))
    if response.status_code != 200:
        raise CliError(f"the receiver refused the demo's spans: {response.status_code} {response.text[:200]}",
                       Exit.SERVER_ERROR)


async def _live(api: httpx.AsyncClient, args: argparse.Namespace, generator: Any, fault: Any, first_live: int,
                step_ns: int) -> dict[str, Any]:
    """Live traffic, one step ahead of the clock; returns the incident and its analysis once both are in.

    Incidents already in the database (a ``DATABASE_URL`` with history) are not the demo's: they are
    left out rather than reported as opened before the fault. An incident that opens before the fault
    is told as a false alarm and is never the demo's result, even when the fault's anomalies join it."""
    earlier = {incident["id"] for incident in (await api.get("/api/v1/incidents")).json()["items"]}
    seen: dict[str, dict[str, Any]] = {}
    for i in range(args.max_steps):
        start = first_live + i * step_ns
        faulty = i >= args.fault_after
        if i == args.fault_after:
            _say(f"fault injected: {args.fault} on {args.service}")
        await _export(api, generator.generate(args.traces_per_step, start, step_ns, fault if faulty else None))
        await asyncio.sleep(max(0.0, (start + step_ns - time.time_ns()) / _NS))  # the workload's own clock
        for incident in (await api.get("/api/v1/incidents")).json()["items"]:
            if incident["id"] in earlier:
                continue
            if incident["id"] not in seen:
                seen[incident["id"]] = {"incident": incident, "after_fault": faulty}
                when = "after the fault" if faulty else "BEFORE the fault (a false alarm)"
                _say(f"incident {incident['id']} opened {when}: {incident['title']} "
                     f"(services {', '.join(incident['services'])}, severity {incident['severity']:.2f})")
            found = seen[incident["id"]]
            if "rca" in found:
                continue
            rca = await api.get(f"/api/v1/incidents/{incident['id']}/rca")
            if rca.status_code == 200 and rca.json()["status"] not in ("pending", "running"):
                found["rca"] = rca.json()
                _describe_rca(found["rca"])
                detail = (await api.get(f"/api/v1/incidents/{incident['id']}")).json()
                found["incident"] = detail
                for anomaly in detail.get("anomalies", [])[:5]:
                    _say(f"  anomaly: {anomaly['service']} {anomaly['operation']} {anomaly['signal']} "
                         f"{anomaly['direction']}")
                if found.pop("after_fault"):
                    return found
    raise CliError(f"no incident with an analysis within {args.max_steps} live steps", Exit.FAILED)


async def _remediations(api: httpx.AsyncClient, cp: Any, incident_id: str) -> list[dict[str, Any]]:
    """Run the remediation pipeline until it stops moving and show what it proposed for the incident.

    The policy decides how far a proposal goes: under the default (everything ``suggest``) it stops
    after its preflight and dry-run, and nothing is applied."""
    for _ in range(_PIPELINE_ROUNDS):
        if not await cp.remediation.run_once():
            break
    listed = await api.get("/api/v1/remediations", params={"incident_id": incident_id})
    items: list[dict[str, Any]] = listed.json()["items"]
    if not items:
        _say("no remediation proposed: the policy turns every recommended action off")
    for item in items:
        _say(f"remediation proposed: {item['action']} {item['target']} (mode {item['mode']}): "
             f"{item['state']}, {item['state_reason']}")
    return items


def _describe_rca(rca: dict[str, Any]) -> None:
    result = rca.get("result") or {}
    _say(f"root-cause analysis {rca['status']}: {result.get('summary') or result.get('reason') or ''}")
    for rank, cause in enumerate(result.get("causes", [])[:3], start=1):
        _say(f"  {rank}. {cause['service']} ({cause.get('category')}, confidence {cause.get('confidence', 0):.2f})")
