"""The PostgreSQL schema of phxq and its migrations.

Migrations are numbered SQL scripts applied in order, each in its own transaction, and
recorded in `phxq_schema`. Every node runs `migrate` at start-up; several starting at once
take turns through a session advisory lock, so each migration runs exactly once. A
database migrated by a newer phxqd (a version this one does not know) is refused: an old
node must not work on rows whose meaning it does not know.

Why the jobs table is shaped as it is (see docs/scale-out.md for the autovacuum settings):
- the columns a claim, a limit, a key or a dependency looks at are columns, with partial
  indexes over the rows they concern (the ready jobs, the claimed jobs, the live keys, the
  blocked jobs); what only the runner needs (argv, env, cwd, call, ...) is one msgpack
  value, `spec`, written once;
- `node` and `claim` fence every start and outcome: a claim sets `node` to the claiming
  node and adds one to `claim`; a fact is applied only where both still match, so a late
  outcome of an attempt the cluster gave up on (its node lost its lease) changes nothing;
- `ord` is the FIFO position within a priority: new jobs and requeued ones take the next
  value of `phxq_order`, a due retry that value minus 2^62 (retries go first), as in the
  local backend.
"""

from __future__ import annotations

import psycopg

#: the advisory lock key of migrations (any constant: "phxq" in ASCII)
MIGRATION_LOCK = 0x70687871

MIGRATIONS: list[str] = [
    # 1: the whole schema of the first release
    """
    CREATE TABLE phxq_nodes (
        id bigserial PRIMARY KEY,
        host text NOT NULL,
        pid integer NOT NULL,
        state_dir text NOT NULL,
        started_at double precision NOT NULL,
        heartbeat_at timestamptz NOT NULL DEFAULT now(),
        lease double precision NOT NULL,
        -- NULL while it lives; 'stopped' (a clean stop) or 'lost' (its lease ran out)
        gone text
    );

    CREATE TABLE phxq_cluster (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        paused_all boolean NOT NULL DEFAULT false
    );
    INSERT INTO phxq_cluster DEFAULT VALUES;

    -- queues with a setting made at run time (pause, `queue set`)
    CREATE TABLE phxq_queues (
        queue text PRIMARY KEY,
        paused boolean NOT NULL DEFAULT false,
        concurrency integer
    );

    CREATE SEQUENCE phxq_order;

    CREATE TABLE phxq_jobs (
        id bigserial PRIMARY KEY,
        queue text NOT NULL,
        priority integer NOT NULL,
        status text NOT NULL,
        created_at double precision NOT NULL,
        run_at double precision NOT NULL,
        ord bigint NOT NULL,
        key text,
        label text,
        max_retries integer NOT NULL,
        after bigint[],
        blocked boolean NOT NULL DEFAULT false,
        spec bytea NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        started_at double precision,
        finished_at double precision,
        exit_code integer,
        error text,
        pid integer,
        pid_started double precision,
        progress bytea,
        result bytea,
        node bigint,
        claim bigint NOT NULL DEFAULT 0,
        cancel boolean NOT NULL DEFAULT false,
        ran_on bigint,
        ran_host text,
        log_tail bytea
    ) WITH (
        autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_insert_scale_factor = 0.05,
        autovacuum_analyze_scale_factor = 0.02,
        autovacuum_vacuum_cost_delay = 1
    );

    CREATE INDEX phxq_jobs_ready ON phxq_jobs (priority DESC, ord)
        WHERE node IS NULL AND NOT blocked AND status IN ('pending', 'retrying');
    CREATE INDEX phxq_jobs_ready_queue ON phxq_jobs (queue, priority DESC, ord)
        WHERE node IS NULL AND NOT blocked AND status IN ('pending', 'retrying');
    CREATE INDEX phxq_jobs_claimed ON phxq_jobs (node, queue) WHERE node IS NOT NULL;
    CREATE UNIQUE INDEX phxq_jobs_live_key ON phxq_jobs (key)
        WHERE key IS NOT NULL AND status IN ('pending', 'running', 'retrying');
    CREATE INDEX phxq_jobs_blocked ON phxq_jobs USING gin (after) WHERE blocked;
    CREATE INDEX phxq_jobs_label ON phxq_jobs (label, id DESC) WHERE label IS NOT NULL;
    CREATE INDEX phxq_jobs_key ON phxq_jobs (key, id DESC) WHERE key IS NOT NULL;
    CREATE INDEX phxq_jobs_finished ON phxq_jobs (finished_at)
        WHERE status IN ('completed', 'failed', 'cancelled');
    """,
    # 2: schedules, and queue start rates held across the cluster
    """
    -- `rate`, `burst`: the start rate set at run time (NULL: the config's, if any);
    -- the token bucket the claims share: `tokens` at `tokens_at`, counted under
    -- `bucket_rate` and `bucket_burst` (a new rate starts a full bucket)
    ALTER TABLE phxq_queues
        ADD COLUMN rate double precision,
        ADD COLUMN burst integer,
        ADD COLUMN bucket_rate double precision,
        ADD COLUMN bucket_burst integer,
        ADD COLUMN tokens double precision,
        ADD COLUMN tokens_at double precision;

    -- one row per schedule; `last_fire` is the guard of a firing (each fire time fires
    -- once, on whichever node locks the row first)
    CREATE TABLE phxq_schedules (
        name text PRIMARY KEY,
        spec bytea NOT NULL,
        anchor double precision NOT NULL,
        source text NOT NULL,
        paused boolean NOT NULL DEFAULT false,
        last_fire double precision,
        last_job bigint,
        last_fired_at double precision,
        fired integer NOT NULL DEFAULT 0,
        missed integer NOT NULL DEFAULT 0
    );
    """,
    # 3: each node's sessions, named (the application_name of its connections): the
    # reaper ends those of a node past its lease, whose locks would otherwise be held
    # for as long as it is frozen
    """
    ALTER TABLE phxq_nodes ADD COLUMN session text;
    """,
]

#: the version a database is at once every migration here has run
VERSION = len(MIGRATIONS)


class SchemaError(Exception):
    """The database's schema is one this phxqd cannot work with."""


async def migrate(conn: psycopg.AsyncConnection[object]) -> int:
    """Bring the schema to `VERSION`; the version it was at before. `conn` in autocommit."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS phxq_schema ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM phxq_schema")
        row = await cur.fetchone()
        before = int(row[0]) if row else 0  # type: ignore[index]
        if before > VERSION:
            raise SchemaError(
                f"the database's phxq schema is at version {before}, newer than this phxqd "
                f"knows ({VERSION}): upgrade phxqd on this host"
            )
        for version in range(before + 1, VERSION + 1):
            async with conn.transaction():
                await conn.execute(MIGRATIONS[version - 1].encode())
                await conn.execute("INSERT INTO phxq_schema (version) VALUES (%s)", (version,))
        return before
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


async def migrate_uri(uri: str) -> int:
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        return await migrate(conn)
