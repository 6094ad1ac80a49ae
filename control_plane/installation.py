"""The installation's identity: one id per database, and the broker prefix derived from it.

Two installations that share a broker (two `devart up` on one machine, staging and production on
one cluster) must never consume each other's tasks. Unless ``DEVART_BROKER_PREFIX`` names one, every
exchange and queue is prefixed with a digest of this database's installation id and name, so each
database gets names of its own. A copy of a database (``CREATE DATABASE ... TEMPLATE``) gets a new
name and so a new prefix; a restored backup keeps its identity, as it is the same installation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Installation:
    id: str
    database: str

    @property
    def broker_prefix(self) -> str:
        digest = hashlib.sha256(f"{self.id}/{self.database}".encode()).hexdigest()[:10]
        return f"i{digest}."


async def load_installation(conn: asyncpg.Connection) -> Installation:
    row = await conn.fetchrow("SELECT id::text AS id, current_database() AS database FROM installation")
    if row is None:
        raise RuntimeError("the installation table is empty: the database was not migrated by devart")
    return Installation(id=row["id"], database=row["database"])
