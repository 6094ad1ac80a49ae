"""Per-event cost of the proof-of-delivery check, beside what the events consumer already pays.

    python -m bench.proofs [--events 256] [--rounds 20]

CPU only, in this process: a batch of task events (started, a log event of five lines, succeeded,
in turn, each for its own attempt, each with its agent's proof) is decoded, its signatures checked
and its proofs checked, each step timed over the whole batch, the three steps alternating round by
round so they see the same machine load. The relay's side is timed the same way: deriving a task
message's delivery secret against signing it. Prints the best, the median and the p99 per event
(µs) of each step over the rounds (the best is the least disturbed by other load), and the load
averages before and after.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.sdk.messages import EVENT_ADAPTER, LogLine, TaskLog, TaskMessage, TaskStarted, TaskSucceeded
from agents.sdk.trust import MessageSigner, delivery_proof, event_signature_valid, sign_event
from bench.options import settings_parser
from bench.percentiles import p50_p99
from control_plane.agent_keys import DeliverySecrets, EventVerifier


class ProofsBenchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVART_BENCH_", extra="ignore", cli_parse_args=False)

    events: int = Field(default=256, ge=3, description="task events per batch (the events consumer's default batch)")
    rounds: int = Field(default=50, ge=1, description="rounds; every step runs once per round")


def _per_event_us(step: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    step()
    return (time.perf_counter() - started) * 1e6 / count


def run(settings: ProofsBenchSettings) -> dict[str, tuple[float, float, float]]:
    deliveries = DeliverySecrets(secrets.token_bytes(32))
    verifier = EventVerifier(deliveries)
    agent_id, event_key = "bench-agent-host-1234-abcd", secrets.token_bytes(32)
    now = datetime.now(UTC)
    events = []
    for i in range(settings.events):
        task_id = uuid.uuid4()
        common = {"agent_id": agent_id, "task_id": task_id, "attempt": 1, "seq": 0,
                  "proof": delivery_proof(deliveries.secret(task_id, 1), agent_id)}
        if i % 3 == 0:
            events.append(TaskStarted(**common, pool_id="pool-0123456789ab"))
        elif i % 3 == 1:
            events.append(TaskLog(**common, lines=[LogLine(seq=n, ts=now, text=f"line {n} of the build output")
                                                   for n in range(5)]))
        else:
            events.append(TaskSucceeded(**common, started_at=now, result={"exit_code": 0}))
    bodies = [e.model_dump_json().encode() for e in events]
    signatures = [sign_event(event_key, b) for b in bodies]
    signer = MessageSigner(MessageSigner.generate())
    messages = [TaskMessage(task_id=e.task_id, attempt=1, type="shell", input={"command": ["make", "test"]},
                            timeout_s=60, pool_id="pool-0123456789ab").model_dump_json().encode() for e in events]
    n = len(events)
    steps: dict[str, Callable[[], object]] = {
        "consumer: decode (pydantic)": lambda: [EVENT_ADAPTER.validate_json(b) for b in bodies],
        "consumer: agent signature (HMAC)": lambda: [event_signature_valid(event_key, b, s)
                                                     for b, s in zip(bodies, signatures, strict=True)],
        "consumer: proof of delivery": lambda: verifier.undelivered(events),
        "relay: sign a task message (Ed25519)": lambda: [signer.sign(m) for m in messages],
        "relay: delivery secret of a task message": lambda: [deliveries.header(m) for m in messages],
    }
    assert verifier.undelivered(events) == {}, "every proof must hold"
    took: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(settings.rounds):
        for name, step in steps.items():
            took[name].append(_per_event_us(step, n))
    return {name: (min(values), *p50_p99(values)) for name, values in took.items()}


def main(argv: list[str] | None = None) -> None:
    args = vars(settings_parser(ProofsBenchSettings, prog="python -m bench.proofs", doc=__doc__).parse_args(argv))
    settings = ProofsBenchSettings(**args)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = run(settings)
    print(f"{settings.events} events per batch, {settings.rounds} rounds; µs per event (best / median / p99 of the rounds)")
    for name, (best, p50, p99) in results.items():
        print(f"{name:44s} {best:8.2f} / {p50:8.2f} / {p99:8.2f}")
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
