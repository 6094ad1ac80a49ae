"""Every table in the public schema is under forced row-level security with a policy per command.

This enumerates the tables the migrations create, so a table added later without its
``devart_secure_table(...)`` call (docs/rls.md) fails here.
"""

import asyncpg

COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}
APPEND_ONLY = {"audit_log"}


async def test_every_table_has_forced_rls_and_a_policy_per_command(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            """SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY c.relname"""
        )
        policies = await conn.fetch(
            """SELECT c.relname, p.polcmd::text AS polcmd, 'authenticated'::regrole::oid = ANY (p.polroles) AS for_requests
               FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"""
        )
    finally:
        await conn.close()
    assert len(tables) > 40
    problems = []
    for table in tables:
        name = table["relname"]
        if not (table["relrowsecurity"] and table["relforcerowsecurity"]):
            problems.append(f"{name}: row-level security not enabled and forced")
        commands = {p["polcmd"] for p in policies if p["relname"] == name and p["for_requests"]}
        for code, command in COMMANDS.items():
            if name in APPEND_ONLY and command in ("UPDATE", "DELETE"):
                if any(p["relname"] == name and p["polcmd"] in (code, "*") for p in policies):
                    problems.append(f"{name}: append-only, yet has a {command} policy")
            elif code not in commands:
                problems.append(f"{name}: no {command} policy for authenticated")
    assert not problems, "\n".join(problems)
