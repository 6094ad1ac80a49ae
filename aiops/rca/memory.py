"""Similar-incident memory: confirmed causes stored with an embedding of their signature in
Postgres (pgvector, table ``rca_memory``), retrieved by cosine distance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import numpy as np

from aiops.rca.model import Category, OperationStats, RcaResult

EMBEDDING_DIM = 384


@dataclass(frozen=True, slots=True)
class SimilarIncident:
    """A past incident and how close its signature is (cosine distance, 0 = same direction)."""

    incident_id: str
    signature: str
    summary: str
    cause_service: str
    category: Category
    remediation: str
    created_at: datetime
    distance: float


def _vector_literal(embedding: Sequence[float] | np.ndarray) -> str:
    values = np.asarray(embedding, dtype=np.float64).ravel()
    if values.size != EMBEDDING_DIM:
        raise ValueError(f"embedding: expected {EMBEDDING_DIM} values, got {values.size}")
    if not np.all(np.isfinite(values)):
        raise ValueError("embedding: values must be finite")
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def incident_signature(result: RcaResult) -> str:
    """Text describing the fault's shape: the top cause's category, which views fired, how its
    operations moved and through which kind of span, then the services involved. Ids and times are
    left out and the shape comes first, so faults of the same kind embed close even on other services."""
    if not result.causes:
        return f"insufficient data: {result.reason}"
    top = result.causes[0]
    fired = [name for name, value in sorted(top.evidence.views.items()) if value > 0.05]
    shape: list[str] = []
    for op in top.evidence.operations[:3]:
        where = "waiting on the service" if "(wait beyond callee)" in op.operation else f"{op.kind} span"
        moves = _moves(op)
        if moves:
            shape.append(f"{', '.join(moves)} in {where}")
    lines = [
        f"category {top.category}",
        f"signals {' '.join(fired) or 'none'}",
        *shape,
        *(f"recent {change.kind} change" for change in top.evidence.changes),
        f"cause {top.service}; also suspected {' '.join(c.service for c in result.causes[1:3]) or 'none'}",
    ]
    return "\n".join(lines)


def _moves(op: OperationStats) -> list[str]:
    moves = []
    if op.exclusive_p50_after > 1.5 * op.exclusive_p50_before:
        moves.append("self time up")
    elif op.exclusive_p50_after < 0.67 * op.exclusive_p50_before:
        moves.append("self time down")
    if op.p95_after > 1.5 * op.p95_before:
        moves.append("tail latency up")
    if op.count_after > 1.5 * op.count_before:
        moves.append("calls up")
    elif op.count_after < 0.67 * op.count_before:
        moves.append("calls down")
    if op.error_ratio_after > op.error_ratio_before + 0.02:
        moves.append("errors up")
    return moves


async def remember(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    incident_id: str,
    signature: str,
    embedding: Sequence[float] | np.ndarray,
    cause_service: str,
    category: Category,
    summary: str = "",
    remediation: str = "",
) -> int:
    """Store a confirmed incident; returns the new row id."""
    if not incident_id:
        raise ValueError("incident_id: must not be empty")
    if not cause_service:
        raise ValueError("cause_service: must not be empty")
    return await conn.fetchval(
        """
        INSERT INTO rca_memory (incident_id, signature, summary, cause_service, category, remediation, embedding)
        VALUES ($1, $2, $3, $4, $5, $6, $7::vector)
        RETURNING id
        """,
        incident_id,
        signature,
        summary,
        cause_service,
        category,
        remediation,
        _vector_literal(embedding),
    )


async def similar(
    conn: asyncpg.Connection | asyncpg.Pool, embedding: Sequence[float] | np.ndarray, k: int = 5
) -> list[SimilarIncident]:
    """The ``k`` stored incidents nearest to ``embedding`` by cosine distance, nearest first."""
    if not 1 <= k <= 100:
        raise ValueError(f"k: must be between 1 and 100, got {k}")
    rows = await conn.fetch(
        """
        SELECT incident_id, signature, summary, cause_service, category, remediation, created_at,
               embedding <=> $1::vector AS distance
        FROM rca_memory
        ORDER BY embedding <=> $1::vector
        LIMIT $2
        """,
        _vector_literal(embedding),
        k,
    )
    return [
        SimilarIncident(
            incident_id=r["incident_id"],
            signature=r["signature"],
            summary=r["summary"],
            cause_service=r["cause_service"],
            category=r["category"],
            remediation=r["remediation"],
            created_at=r["created_at"],
            distance=float(r["distance"]),
        )
        for r in rows
    ]
