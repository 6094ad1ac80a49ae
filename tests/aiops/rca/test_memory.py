"""Similar-incident memory on real Postgres with pgvector."""

from __future__ import annotations

import asyncpg
import numpy as np
import pytest

from aiops.embeddings import HashingEmbedder
from aiops.rca import analyze
from aiops.rca.memory import incident_signature, remember, similar
from aiops.simulation import make_scenario


async def _signature(topology: str, kind: str, seed: int) -> tuple[str, str, str]:
    scenario = make_scenario(topology, kind, seed, n_traces=120, strip_status=True)  # type: ignore[arg-type]
    result = analyze(scenario.incident, scenario.baseline, changes=scenario.changes)
    top = result.causes[0]
    return incident_signature(result), top.service, top.category


async def test_a_new_incident_retrieves_the_past_incident_of_the_same_kind(db: asyncpg.Pool) -> None:
    embedder = HashingEmbedder(384)
    cpu_sig, cpu_service, cpu_category = await _signature("web_shop", "network", 1)
    dep_sig, dep_service, dep_category = await _signature("web_shop", "deployment", 2)
    vectors = await embedder.embed([cpu_sig, dep_sig])
    await remember(
        db,
        incident_id="inc-1",
        signature=cpu_sig,
        embedding=vectors[0],
        cause_service=cpu_service,
        category=cpu_category,
        remediation="restart",
    )
    await remember(
        db,
        incident_id="inc-2",
        signature=dep_sig,
        embedding=vectors[1],
        cause_service=dep_service,
        category=dep_category,
        remediation="rollback",
    )
    new_sig, _, _ = await _signature("web_shop", "network", 5)
    found = await similar(db, (await embedder.embed([new_sig]))[0], k=2)
    assert [f.incident_id for f in found] == ["inc-1", "inc-2"], (new_sig, cpu_sig, dep_sig)
    assert found[0].distance < found[1].distance
    assert found[0].remediation == "restart" and found[0].category == cpu_category


async def test_the_index_is_hnsw_with_cosine_ops(db: asyncpg.Pool) -> None:
    definition = await db.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'rca_memory_embedding'")
    assert "hnsw" in definition and "vector_cosine_ops" in definition


async def test_bad_vectors_and_arguments_name_the_field(db: asyncpg.Pool) -> None:
    with pytest.raises(ValueError, match="embedding: expected 384 values, got 3"):
        await similar(db, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="k: must be between"):
        await similar(db, np.ones(384), k=0)
    with pytest.raises(ValueError, match="incident_id"):
        await remember(
            db,
            incident_id="",
            signature="s",
            embedding=np.ones(384),
            cause_service="a",
            category="dependency",
        )
    with pytest.raises(asyncpg.CheckViolationError):
        await remember(
            db, incident_id="i", signature="s", embedding=np.ones(384), cause_service="a", category="nope"
        )  # type: ignore[arg-type]
