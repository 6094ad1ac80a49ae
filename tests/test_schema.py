import asyncpg

from schema.runner import available, migrate


async def test_migrations_are_numbered_and_idempotent(database_url: str) -> None:
    assert [m.version for m in available()] == sorted({m.version for m in available()})
    conn = await asyncpg.connect(database_url)
    try:
        assert await migrate(conn) == []  # the template already has them all
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(available())
        assert await conn.fetchval("SELECT extname FROM pg_extension WHERE extname = 'vector'") == "vector"
    finally:
        await conn.close()
