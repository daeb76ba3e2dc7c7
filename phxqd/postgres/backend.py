"""`PostgresBackend`: the queue kept in PostgreSQL, shared by any number of phxqd nodes.

It implements backend.Backend (see that module for the rules) with these choices:

- a request is one transaction, answered once committed (`synchronous_commit` on: the
  commit is in the WAL on disk, the promise the journal keeps locally);
- claims: `claimable()` claims a batch, sized by this node's free slots, in one short
  transaction (`SELECT ... FOR UPDATE SKIP LOCKED`, then `node` and `claim` set); `claim()`
  hands them out one by one. No transaction is open while a job runs. A queue with a
  concurrency limit is claimed under a lock on its `phxq_queues` row, counting the jobs
  claimed by every node, so the limit holds across the cluster;
- facts (`report`, `progress`) are queued and written in batches by the writer task, each
  fenced by (node, claim): an attempt the cluster has given up on (this node lost its
  lease) changes nothing when its outcome arrives late; it is logged and dropped.
  Waiters are told once a fact is committed;
- the nodes hear of each other's changes through LISTEN/NOTIFY (notices.py) on a
  connection of its own, re-opened when it drops, and poll besides (a lost notification
  costs time, never a job);
- liveness (node.py): every node heartbeats; one at a time (an advisory lock) reaps the
  nodes whose lease ran out; a node that cannot reach PostgreSQL for half its lease stops
  its jobs and claims nothing until it can again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import secrets
import select
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec
import psycopg
import psycopg.errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from phxqd import joblogs
from phxqd.backend import SHUTDOWN, Begun, Ending, Health, Summary
from phxqd.feed import Feed, job_event
from phxqd.model import FINISHED, STATUSES, Job, JobSpec, Progress, SubmitResult, new_job
from phxqd.notice import Notice
from phxqd.postgres import notices, rows, schedule_rows, schema
from phxqd.protocol import Refused
from phxqd.rates import Bucket, parse_rate
from phxqd.schedules import fire_key, run_key
from phxqd.schedules_model import Fired, Schedule, ScheduleSpec
from phxqd.settings import Settings
from phxqd.stats import Stats

log = logging.getLogger("phxqd")

#: the stop reason of jobs stopped because this node lost contact with PostgreSQL
LOST_CONTACT = "phxqd lost contact with PostgreSQL"
#: subtracted from a due retry's place: it goes before every pending job of its priority
RETRY_FIRST = 1 << 62
#: seconds between looks at the queue without a notification (the fallback)
POLL = 1.0
#: seconds of work a node claims ahead per worker, by how long its last jobs ran (a
#: moving average): quick jobs are claimed many at once (one claim and one write per
#: batch, not per job, and the slots never wait for a claim's commit), slow ones one per
#: free worker. A job submitted at a higher priority waits behind at most about this.
AHEAD = 0.05
#: seconds the writer lets facts gather while this node runs jobs, unless a claim is
#: asked or LINGER_ENDS ends are in: their ends then share one transaction and one WAL
#: flush (group commit). Nobody is told of an end before its commit, so a waiter sees a
#: job end up to this much later; the slots never wait for it.
LINGER = 0.01
#: ends that are enough for a transaction (the writer lingers no longer)
LINGER_ENDS = 16
#: the most jobs claimed ahead per worker (AHEAD bounds it first for all but the
#: quickest jobs)
MAX_AHEAD = 128
#: seconds: the least a transaction of a node may wait on the node (see `_configure`)
IDLE_IN_TRANSACTION_MIN = 1.0
#: what PostgreSQL answers when an operator has made it refuse phxq's work for now (a
#: database set read-only, as a standby is or for maintenance; privileges revoked): a
#: request is refused, and nothing of it is done (see `_refusing`)
REFUSING = (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege)
#: seconds a request waits for a connection while this node is cut off from PostgreSQL
#: (see `_connection_wait`)
CUT_OFF_WAIT = 1.0
#: the share of the lease the reaper waits for a lock before it tries again at the next
#: beat (see `_reap`): under the heartbeat's own limit (a third of the lease)
REAP_LOCK_WAIT = 1 / 6
#: the server version from which `idle_session_timeout` exists (see `open`)
IDLE_SESSION_TIMEOUT_SINCE = 140000
#: the advisory lock of the reaper (one node at a time reaps)
REAPER_LOCK = 0x70687872
#: bytes of an attempt's log kept with its outcome (for `logs` on other hosts)
LOG_TAIL = 64 * 1024
WAITING = "('pending', 'retrying')"
LIVE = "('pending', 'running', 'retrying')"
FINISHED_SQL = "('completed', 'failed', 'cancelled')"
#: `rows.JOB_COLUMNS` of the table `j`
J_COLUMNS = ", ".join(f"j.{c.strip()}" for c in rows.JOB_COLUMNS.split(","))
#: what a claim returns of each job: `rows.JOB_COLUMNS`, then `ord` and `claim`
CLAIMED_COLUMNS = J_COLUMNS + ", j.ord, j.claim"
#: what the ends' statement returns besides, when a `wait` here watches (see `_write`)
RETURNED = ", " + J_COLUMNS

#: a submit without dependencies, one statement (see `_submit_one_statement`): the ids
#: drawn in the order of the specs, the rows inserted unless their key has a live job,
#: and the new ids told on the channel as ranges in payloads of at most MAX_PAYLOAD
#: (what notices.encode makes); a row per spec: its id and whether it was inserted
SUBMIT_SQL = (
    "WITH u AS MATERIALIZED ("
    " SELECT nextval('phxq_jobs_id_seq') AS id, nextval('phxq_order') AS ord, u.q AS queue,"
    " u.p AS priority, u.r AS run_at, u.k AS key, u.n AS retries,"
    " decode(u.s, 'base64') AS spec, u.l AS label, u.i"
    " FROM ROWS FROM (json_to_recordset(%s::json) AS (q text, p int, r float8, k text,"
    " n int, s text, l text)) WITH ORDINALITY AS u(q, p, r, k, n, s, l, i)),"
    " ins AS (INSERT INTO phxq_jobs (id, queue, priority, status, created_at, run_at, ord,"
    " key, max_retries, blocked, spec, label)"
    " SELECT id, queue, priority, 'pending', %s, run_at, ord, key, retries, false, spec,"
    " label FROM u"
    " ON CONFLICT (key) WHERE key IS NOT NULL AND status IN " + LIVE + " DO NOTHING"
    " RETURNING id),"
    " r AS (SELECT min(id) AS lo, max(id) AS hi FROM"
    " (SELECT id, id - row_number() OVER (ORDER BY id) AS g FROM ins) x GROUP BY g),"
    " t AS (SELECT lo, CASE WHEN lo = hi THEN lo::text ELSE lo || '-' || hi END AS txt"
    " FROM r),"
    " p AS (SELECT pg_notify(%s, 'n ' || string_agg(txt, ',' ORDER BY lo)) FROM"
    f" (SELECT lo, txt, sum(length(txt) + 1) OVER (ORDER BY lo) / {notices.MAX_PAYLOAD}"
    " AS part FROM t) y GROUP BY part)"
    " SELECT u.id, ins.id IS NOT NULL, (SELECT count(*) FROM p)"
    " FROM u LEFT JOIN ins ON ins.id = u.id ORDER BY u.i"
)


class _Row(msgspec.Struct):
    """A new job's row as SUBMIT_SQL reads it (one JSON object; `s`, bytes, goes as
    base64): one JSON text costs far less to send than seven arrays, which psycopg builds
    element by element in Python (a batch of 1,000: 17.0 against 24.3 ms, 8 rounds)."""

    q: str
    p: int
    r: float
    k: str | None
    n: int
    s: bytes
    l: str | None  # noqa: E741


_rows_json = msgspec.json.Encoder()


class _BeginRow(msgspec.Struct):
    """A start as the writer's statement reads it (`json_to_recordset`): one JSON text
    costs far less to send than an array per column, which psycopg dumps element by
    element in Python (the arrays of the starts and ends were the most of psycopg's
    time in the writer)."""

    id: int
    node: int
    claim: int
    at: float
    pid: int | None
    ps: float | None


class _EndRow(msgspec.Struct):
    """An end as the writer's statement reads it (see _BeginRow); bytes go as base64."""

    id: int
    node: int
    claim: int
    status: str | None
    at: float
    exit_code: int | None
    error: str | None
    run_at: float | None
    result: bytes | None
    delta: int
    place: bool
    progress: bytes | None
    tail: bytes | None
    began: bool
    began_at: float | None
    pid: int | None
    ps: float | None


def _ids_literal(ids: Iterable[int]) -> str:
    """An array literal of job ids (`{1,2,3}`): built here, not dumped by psycopg."""
    return "{" + ",".join(map(str, ids)) + "}"


def _first_of_each_key(specs: Sequence[JobSpec]) -> tuple[dict[str, int], list[int]]:
    """The specs of a batch that each make a new job: all but those whose key an earlier
    spec of the batch has (they get that spec's job). (key -> index of its first spec,
    the indexes of the specs that make jobs, in order.)"""
    first_of_key: dict[str, int] = {}
    fresh: list[int] = []
    for i, spec in enumerate(specs):
        if spec.key is not None:
            if spec.key in first_of_key:
                continue
            first_of_key[spec.key] = i
        fresh.append(i)
    return first_of_key, fresh


@dataclass
class Held:
    """A job this node claimed: the claim that fences its facts."""

    job: Job
    node: int
    claim: int


@dataclass
class Begin:
    id: int
    node: int
    claim: int
    at: float
    pid: int | None
    pid_started: float | None


@dataclass
class End:
    """How a claim ends. `status` None: given back untouched (the claim released)."""

    id: int
    node: int
    claim: int
    queue: str
    status: str | None
    at: float
    exit_code: int | None = None
    error: str | None = None
    run_at: float | None = None
    result: bytes | None = None
    attempts_delta: int = 0
    #: to the back of the line (requeued) or the front of retries
    new_place: bool = False
    progress: bytes | None = None
    ran: bool = False
    started_at: float | None = None


@dataclass
class Facts:
    """What the writer has yet to write."""

    begins: list[Begin] = field(default_factory=list)
    ends: list[End] = field(default_factory=list)
    #: job id -> (node, claim, progress) not yet checkpointed
    progress: dict[int, tuple[int, int, Progress]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.begins or self.ends)


@dataclass(eq=False)
class Watch:
    """A `wait` under way: the jobs it waits on, and those told ended since it looked."""

    ids: set[int]
    told: set[int] = field(default_factory=set)
    event: anyio.Event = field(default_factory=anyio.Event)
    #: of the jobs told, those whose row came with the telling (this node's writer
    #: returned it from the transaction that ended them): not read again
    rows: dict[int, Job] = field(default_factory=dict)

    def tell(self, ids: Sequence[int], rows: dict[int, Job] | None = None) -> None:
        hit = self.ids.intersection(ids)
        if hit:
            self.told |= hit
            if rows:
                self.rows.update((i, rows[i]) for i in hit if i in rows)
            self.event.set()


def _dropped(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle pooled connection has something to read: PostgreSQL sends a closing
    word before it closes a connection (a restart, pg_terminate_backend), and an idle
    autocommit connection is sent nothing else but rare notices. One select(2), no round
    trip; such a connection is not trusted with a statement that commits as it is sent."""
    if conn.closed or conn.broken:
        return True
    try:
        ready, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return True
    return bool(ready)


class PostgresBackend:
    def __init__(
        self,
        uri: str,
        settings: Settings,
        lease: float = 30.0,
        rng: random.Random | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.uri = uri
        self.settings = settings
        self.stats = stats or Stats()
        self.feed = Feed()
        self.lease = lease
        self.wake = Notice()
        self._rng = rng or random.Random()
        #: the application_name of this process's sessions, kept in its nodes' rows: the
        #: reaper ends the sessions of a node past its lease by it (see `_reap`)
        self.session = f"phxqd {os.getpid()} {secrets.token_hex(8)}"
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] = (
            AsyncConnectionPool(
                uri,
                min_size=1,
                max_size=8,
                open=False,
                timeout=10.0,
                kwargs={"autocommit": True, "application_name": self.session},
                configure=self._configure,
            )
        )
        self.host = socket.gethostname()
        self.node = 0
        #: every node id this process has had (it rejoins as a new node after losing its
        #: lease): the logs of jobs they ran are here
        self._lives: set[int] = set()
        #: asks the dispatcher to stop jobs it runs (cancel from another node, lost lease);
        #: set by whoever builds the backend and the dispatcher
        self.stopper: Callable[[list[int], str], object] | None = None
        #: tells this node's Scheduler that the schedules changed (on another node, or
        #: notifications were missed); set by whoever builds the backend and the Scheduler
        self.schedules_told: Callable[[], object] | None = None
        #: claimed in claimable(), handed out by claim()
        self._batch: deque[Held] = deque()
        #: handed to the dispatcher and not yet ended
        self._handed: dict[int, Held] = {}
        #: given back unstarted: handed out again before any other (still claimed)
        self._returned: deque[Held] = deque()
        self._facts = Facts()
        self._facts_ready = anyio.Event()
        #: cuts the writer's lingering short (a claim asked, enough ends, a settle)
        self._hurry = anyio.Event()
        self._written = anyio.Event()
        self._writing = False
        #: claimable() asked the writer for a batch; set when that claim is done
        self._claim_asked = False
        #: a transaction that claimed jobs failed without telling whether it committed
        #: (the connection dropped during the commit): see `_give_back_in_doubt`
        self._in_doubt = False
        self._claimed = anyio.Event()
        self._closing = False
        self._waiters: dict[int, anyio.Event] = {}
        #: the jobs the write under way ends, and those heard ended meanwhile (told
        #: once the write is back: see `_heard`)
        self._telling: set[int] = set()
        self._deferred: list[int] = []
        self._watches: set[Watch] = set()
        #: what the cluster's queue settings were when last read
        self._paused_all = False
        self._paused: set[str] = set()
        self._limits: dict[str, int] = {}
        #: start rates set at run time: queue -> (per second, burst)
        self._rates_set: dict[str, tuple[float, int]] = {}
        #: when a queue held back by its rate has a start again (a claim looks then)
        self._next_token: float | None = None
        #: whether a claim may find something (a notification came, the last one was full)
        self._dirty = True
        #: a queue setting changed since the last claim read them (a notification `w`)
        self._settings_told = True
        self._settings_read = 0.0
        self._next_poll = 0.0
        self._next_delayed: float | None = None
        #: monotonic time of the last heartbeat PostgreSQL answered (sent at)
        self._contact = time.monotonic()
        self._cut_off = False
        self._error: str | None = None
        #: the last reaping waited out its lock wait (said once, until one goes through)
        self._reap_blocked = False
        #: ending a lost node's sessions was refused (said once)
        self._sessions_refused = False
        self._durability = "synchronous_commit=on"
        self._transactions = 0
        self._listening = False
        #: how long this node's last jobs ran (a moving average; see `_free`)
        self._quick = 1.0
        #: job events to read and publish (see `_publisher`)
        self._to_publish: deque[tuple[str, list[int], float]] = deque()
        self._publish_ready = anyio.Event()

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Every connection commits durably whatever the server's default: an
        acknowledged change must survive a crash of PostgreSQL's host.

        And PostgreSQL ends a transaction of this node's that waits on the node longer than
        half its lease (`idle_in_transaction_session_timeout`): a node frozen inside one
        (SIGSTOP, a paused VM, a swap storm) kept the locks it took, its heartbeat's lock on
        its own row among them, and the reaper's UPDATE of that row then waited as long as
        the node was frozen: its jobs were never retried elsewhere (a test_postgres_cluster
        run failed so once, its node stopped while it held the row). Ended by the server,
        the frozen node finds its connection gone when it wakes, and rejoins as a new node."""
        cur = await conn.execute("SHOW synchronous_commit")
        row = await cur.fetchone()
        if row is not None and row[0] in ("off", "local"):
            await conn.execute("SET synchronous_commit = on")
        await conn.execute(f"SET idle_in_transaction_session_timeout = {self._idle_ms()}")

    def _idle_ms(self) -> int:
        """How long PostgreSQL lets a session of this node's wait on it holding locks."""
        return int(max(self.lease / 2, IDLE_IN_TRANSACTION_MIN) * 1000)

    # ------------------------------------------------------------------ life
    async def open(self) -> None:
        """Migrate the schema and register this node (before `run`).

        The migration holds a session-level lock between its statements, where
        `idle_in_transaction_session_timeout` does not reach: a node frozen there (its
        start-up) kept every other node from starting until it woke. So that connection
        is also ended by PostgreSQL once idle for half the lease (`idle_session_timeout`,
        PostgreSQL 14 and later); the woken node then finds it gone and fails to start,
        as it would had PostgreSQL restarted (its service manager starts it again)."""
        async with await psycopg.AsyncConnection.connect(
            self.uri, autocommit=True, application_name=self.session
        ) as conn:
            await self._configure(conn)
            if conn.info.server_version >= IDLE_SESSION_TIMEOUT_SINCE:
                await conn.execute(f"SET idle_session_timeout = {self._idle_ms()}")
            await schema.migrate(conn)
            await self._register(conn)
        await self._pool.open(wait=True, timeout=30.0)
        self._contact = time.monotonic()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        if not self.node:
            await self.open()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._writer)
            tg.start_soon(self._listener)
            tg.start_soon(self._heartbeat)
            task_status.started()

    async def recover_host(self, kill_leftover: Callable[[Job], None]) -> int:
        """Jobs that earlier daemons on this host and state dir left claimed: kill what is
        left of them, then fail the attempts (retried by policy) or release the claims."""
        n = 0
        async with self._tx() as conn:
            cur = await conn.execute(
                "UPDATE phxq_nodes SET gone = 'stopped' WHERE host = %s AND state_dir = %s"
                " AND id <> %s AND gone IS DISTINCT FROM 'stopped' RETURNING id",
                (self.host, str(self.settings.state_dir), self.node),
            )
            old = [r[0] for r in await cur.fetchall()]
            if old:
                n = await self._fail_claims(conn, old, "phxqd stopped while it ran", kill_leftover)
        return n

    async def close(self) -> None:
        """Give back what is claimed and not started, write every fact, leave the cluster."""
        self._closing = True
        self._give_back([*self._batch, *self._returned])
        self._batch.clear()
        self._returned.clear()
        with anyio.move_on_after(max(self.lease, 5.0)):
            await self.settle()
        with contextlib.suppress(psycopg.Error):
            async with self._pool.connection() as conn:
                await conn.execute(
                    "UPDATE phxq_nodes SET gone = 'stopped' WHERE id = %s", (self.node,)
                )
        await self._pool.close()

    def _give_back(self, held: Sequence[Held]) -> None:
        """Release claims this node will not hand out (unstarted: the jobs keep their
        place in line), through the writer. Fenced by (node, claim): nothing happens to a
        job whose claim was freed or taken over meanwhile."""
        if held:
            now = time.time()
            self._facts.ends.extend(
                End(h.job.id, h.node, h.claim, h.job.queue, None, now) for h in held
            )
            self._facts_ready.set()

    async def settle(self) -> None:
        """Return once every fact reported so far is written (or given up on)."""
        while self._facts or self._writing:
            if self._written.is_set():  # shared by every caller waiting at once
                self._written = anyio.Event()
            self._facts_ready.set()
            self._hurry.set()
            await self._written.wait()

    # --------------------------------------------------------------- helpers
    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[psycopg.AsyncConnection[tuple[Any, ...]]]:
        async with self._pool.connection() as conn, conn.transaction():
            yield conn
        self._transactions += 1

    async def _request(
        self,
        func: Callable[[psycopg.AsyncConnection[Any]], Any],
        pipeline: bool = False,
        single: bool = False,
    ) -> Any:
        """Run a request's transaction: again after a deadlock, or after a connection that
        broke before the commit was sent (a pooled connection PostgreSQL dropped, a
        restart: nothing was done, so trying again is safe); refused when PostgreSQL cannot
        be reached. A commit cut off on its way is the one case that cannot be known:
        the refusal then says the change may have been made.

        `single`: `func` sends one statement, its own transaction (autocommit): sending it
        is committing, so the connection is first looked at for a word from the server
        (PostgreSQL tells the connections it closes): one it dropped is not used."""
        broken = 0
        for attempt in range(20):
            committing = False
            try:
                async with self._pool.connection(self._connection_wait()) as conn:
                    if single:
                        if _dropped(conn):
                            await conn.close()
                            broken += 1
                            continue
                        committing = True
                        result = await func(conn)
                        self._transactions += 1
                        return result
                    # pipeline: what `func` sends without reading it goes with the next
                    # statement it reads, or with the commit (fewer round trips; errors
                    # then surface later, so only for transactions that expect none)
                    async with (
                        conn.pipeline() if pipeline else contextlib.nullcontext(),
                        conn.transaction(),
                    ):
                        result = await func(conn)
                        committing = True
                    self._transactions += 1
                    return result
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                await anyio.sleep(0.005 * (attempt + 1) * self._rng.random())
            except PoolTimeout as e:
                # before OperationalError, which it is: no connection for the pool's
                # whole timeout is PostgreSQL out of reach, not a broken connection to
                # try again (ten more timeouts kept a request waiting 100 s)
                self._error = str(e).strip()
                raise Refused("refused", f"PostgreSQL cannot be reached ({e})") from e
            except REFUSING as e:
                raise self._refusing(e) from e
            except psycopg.OperationalError as e:
                self._error = str(e).strip()
                if not committing and broken < 10:
                    broken += 1
                    continue
                maybe = "; if this was a change, it may or may not have been made"
                raise Refused(
                    "refused",
                    f"PostgreSQL cannot be reached ({self._error})" + (maybe if committing else ""),
                ) from e
        raise Refused("refused", "PostgreSQL kept reporting deadlocks; try again")

    def _refusing(self, e: psycopg.Error) -> Refused:
        """What PostgreSQL refused the way an operator makes it (see REFUSING), as a
        refusal: a one-line error for the client, not an internal error with a traceback,
        and for the scheduler a store that fails for a while, not a bug that ends phxqd."""
        self._error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return Refused("refused", f"PostgreSQL refused it ({self._error}); nothing was done")

    def _connection_wait(self) -> float | None:
        """How long a request waits for a connection: the pool's 10 s, or CUT_OFF_WAIT
        while the heartbeat has had no answer for half the lease (`_cut_off`). Every
        request during an outage otherwise waited the whole 10 s to be refused
        (`phxqctl status` among them); the heartbeat keeps trying meanwhile, and a
        request still gets a connection the pool has, or makes one within that second."""
        return CUT_OFF_WAIT if self._cut_off else None

    async def _notify(self, conn: psycopg.AsyncConnection[Any], payloads: list[str]) -> None:
        if payloads:
            await conn.execute(
                "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) p", (notices.CHANNEL, payloads)
            )

    # -------------------------------------------------------------- requests
    async def submit(self, specs: list[JobSpec], now: float) -> list[SubmitResult]:
        if any(s.after for s in specs):

            async def tx(conn: psycopg.AsyncConnection[Any]) -> list[SubmitResult]:
                return await self._submit(conn, specs, now)

            # dependencies are read under a share lock first: in pipeline mode, BEGIN with
            # that read, the ids' draw, the insert, the notification with the commit
            results: list[SubmitResult] = await self._request(tx, pipeline=True)
        else:
            results = await self._submit_one_statement(specs, now)
        new = [r.job for r in results if not r.deduplicated]
        for job in new:
            self.stats.jobs["submitted", job.queue] += 1
        return results

    async def _submit_one_statement(self, specs: list[JobSpec], now: float) -> list[SubmitResult]:
        """Jobs without dependencies, in one statement that commits by itself (autocommit):
        the ids' draw, the insert, the notification and the commit are one round trip, and
        the answer comes once the commit is durable. A lone submit's cost is then one
        round trip and one WAL flush (three round trips cost it twice that; docs/
        benchmarks.md); concurrent submitters still share flushes (PostgreSQL's group
        commit). A key whose live job another submit holds is read after the commit; if
        that job ended meanwhile, its specs are submitted again (nothing of theirs was
        written)."""
        first_of_key, fresh = _first_of_each_key(specs)
        made: dict[int, SubmitResult] = {}
        for _ in range(20):
            inserted, lost = await self._insert_one_statement([specs[i] for i in fresh], now)
            for i, job in zip(fresh, inserted, strict=True):
                if job is not None:
                    made[i] = SubmitResult(job, False)
            lost_keys = [specs[fresh[k]].key for k in lost]
            if not lost_keys:
                break

            async def q(
                conn: psycopg.AsyncConnection[Any], keys: list[str | None] = lost_keys
            ) -> list[Job]:
                cur = await conn.execute(
                    f"SELECT {rows.JOB_COLUMNS} FROM phxq_jobs WHERE key = ANY(%s)"
                    " AND status IN " + LIVE,
                    (keys,),
                )
                return [rows.job_from_row(r) for r in await cur.fetchall()]

            existing = {j.key: j for j in await self._read(q) if j.key}
            again: list[int] = []
            for k in lost:
                i = fresh[k]
                job = existing.get(specs[i].key)
                if job is None:  # its live job ended between the insert and the look
                    again.append(i)
                else:
                    made[i] = SubmitResult(job, True)
            fresh = again
            if not fresh:
                break
        else:
            raise Refused("refused", "the live jobs of keys kept ending meanwhile; try again")
        results: list[SubmitResult] = []
        for i, spec in enumerate(specs):
            if i in made:
                results.append(made[i])
            else:
                assert spec.key is not None
                first = made[first_of_key[spec.key]]
                results.append(SubmitResult(first.job, True))
        return results

    async def _insert_one_statement(
        self, specs: list[JobSpec], now: float
    ) -> tuple[list[Job | None], list[int]]:
        """Insert `specs` (keys distinct) in one autocommit statement: each spec's new job,
        or None and its index among the lost ones when its key has a live job."""
        queues = self.settings.queues
        jobs: list[Job] = []
        new: list[_Row] = []
        for spec in specs:
            retries, backoff = rows.defaults(spec, queues)
            job = new_job(spec, 0, now, retries, backoff)
            jobs.append(job)
            new.append(
                _Row(
                    spec.queue,
                    spec.priority,
                    job.run_at,
                    spec.key,
                    retries,
                    rows.spec_bytes(spec, backoff),
                    spec.label,
                )
            )
        text = _rows_json.encode(new).decode()

        async def statement(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(SUBMIT_SQL, (text, now, notices.CHANNEL), binary=True)
            return await cur.fetchall()

        got: list[tuple[Any, ...]] = await self._request(statement, single=True)
        out: list[Job | None] = []
        lost: list[int] = []
        for k, (job, (job_id, fresh, _)) in enumerate(zip(jobs, got, strict=True)):
            if fresh:
                out.append(msgspec.structs.replace(job, id=job_id))
            else:
                out.append(None)
                lost.append(k)
        return out, lost

    async def _submit(
        self, conn: psycopg.AsyncConnection[Any], specs: list[JobSpec], now: float
    ) -> list[SubmitResult]:
        deps = sorted({d for s in specs for d in s.after})
        status_of: dict[int, str] = {}
        if deps:
            cur = await conn.execute(
                "SELECT id, status FROM phxq_jobs WHERE id = ANY(%s) ORDER BY id FOR SHARE",
                (deps,),
            )
            status_of = dict(await cur.fetchall())
            for spec in specs:
                for dep in spec.after:
                    st = status_of.get(dep)
                    if st is None:
                        raise Refused("not_found", f"no job {dep} (named in --after)")
                    if st in ("failed", "cancelled"):
                        raise Refused("refused", f"job {dep} (named in --after) is {st}")
        first_of_key, fresh = _first_of_each_key(specs)
        cur = await conn.execute(
            "SELECT nextval('phxq_jobs_id_seq'), nextval('phxq_order') FROM generate_series(1, %s)",
            (len(fresh),),
        )
        numbers = await cur.fetchall()
        queues = self.settings.queues
        jobs: dict[int, Job] = {}
        cols: list[list[Any]] = [[] for _ in range(12)]
        for i, (job_id, order) in zip(fresh, numbers, strict=True):
            spec = specs[i]
            retries, backoff = rows.defaults(spec, queues)
            job = jobs[i] = new_job(spec, job_id, now, retries, backoff)
            after = job.after
            blocked = any(status_of.get(d) != "completed" for d in after or ())
            for col, value in zip(
                cols,
                (
                    job_id,
                    spec.queue,
                    spec.priority,
                    job.run_at,
                    order,
                    spec.key,
                    retries,
                    "{" + ",".join(map(str, after)) + "}" if after else None,
                    blocked,
                    rows.spec_bytes(spec, backoff),
                    now,
                    spec.label,
                ),
                strict=True,
            ):
                col.append(value)
        cur = await conn.execute(
            "INSERT INTO phxq_jobs (id, queue, priority, status, created_at, run_at, ord, key,"
            " max_retries, after, blocked, spec, label)"
            " SELECT u.id, u.queue, u.priority, 'pending', u.now, u.run_at, u.ord, u.key,"
            " u.retries, u.after::bigint[], u.blocked, u.spec, u.label"
            " FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::float8[], %s::bigint[],"
            " %s::text[], %s::int[], %s::text[], %s::bool[], %s::bytea[], %s::float8[],"
            " %s::text[])"
            " AS u(id, queue, priority, run_at, ord, key, retries, after, blocked, spec, now,"
            " label)"
            " ON CONFLICT (key) WHERE key IS NOT NULL AND status IN " + LIVE + " DO NOTHING"
            " RETURNING id",
            cols,
        )
        inserted = {r[0] for r in await cur.fetchall()}
        existing: dict[str, Job] = {}
        lost = [specs[i].key for i in fresh if jobs[i].id not in inserted]
        if lost:
            cur = await conn.execute(
                f"SELECT {rows.JOB_COLUMNS} FROM phxq_jobs WHERE key = ANY(%s)"
                " AND status IN " + LIVE,
                (lost,),
            )
            existing = {j.key: j for j in map(rows.job_from_row, await cur.fetchall()) if j.key}
            if len(existing) < len(lost):
                # the live job of a key ended between the insert and the look: again
                raise psycopg.errors.SerializationFailure("a key's job ended meanwhile")
        results: list[SubmitResult] = []
        for i, spec in enumerate(specs):
            if i in jobs and jobs[i].id in inserted:
                results.append(SubmitResult(jobs[i], False))
            else:
                assert spec.key is not None
                first = jobs[first_of_key[spec.key]]
                if first.id in inserted:
                    results.append(SubmitResult(first, True))
                else:
                    results.append(SubmitResult(existing[spec.key], True))
        await self._notify(conn, notices.encode("n", sorted(inserted)))
        return results

    async def cancel(self, ids: list[int], now: float) -> list[int]:
        async def tx(conn: psycopg.AsyncConnection[Any]) -> list[int]:
            cur = await conn.execute(
                "SELECT id, status, node FROM phxq_jobs WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                (list(ids),),
            )
            found = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
            for i in ids:
                if i not in found:
                    raise Refused("not_found", f"no job {i}")
                if found[i][0] in FINISHED:
                    raise Refused("refused", f"job {i} is already {found[i][0]}")
            unclaimed = [
                i
                for i, (_, node) in found.items()
                if node is None or (node == self.node and i not in self._handed)
            ]
            running = [i for i in ids if i not in unclaimed]
            if unclaimed:
                await conn.execute(
                    "UPDATE phxq_jobs SET status = 'cancelled', finished_at = %s,"
                    " error = 'cancelled', node = NULL, blocked = false, pid = NULL"
                    " WHERE id = ANY(%s)",
                    (now, unclaimed),
                )
                cascaded = await self._cascade(conn, {"cancelled": unclaimed}, now)
                await self._notify(conn, notices.encode("x", unclaimed + cascaded))
            elsewhere: dict[int, list[int]] = {}
            for i in running:
                elsewhere.setdefault(found[i][1], []).append(i)
            if running:
                await conn.execute(
                    "UPDATE phxq_jobs SET cancel = true WHERE id = ANY(%s)", (running,)
                )
                for node, its in elsewhere.items():
                    await self._notify(conn, notices.encode("K", its, node))
            return running

        # Claimed here and not handed out: kept from claim() while the transaction runs
        # (handed out meanwhile, one would start after its cancel committed); the
        # transaction cancels them as waiting jobs.
        wanted = set(ids)
        mine = [h for h in [*self._batch, *self._returned] if h.job.id in wanted]
        if mine:
            self._batch = deque(h for h in self._batch if h.job.id not in wanted)
            self._returned = deque(h for h in self._returned if h.job.id not in wanted)
        try:
            running: list[int] = await self._request(tx)
        except BaseException:
            # Refused as a whole (an id unknown or finished), PostgreSQL out of reach, or
            # the request cancelled: they were not cancelled, and held here unseen they
            # would never run anywhere while this node lives. Given back; fenced by their
            # claim, which a cancel that committed after all (a commit cut off) has freed.
            self._give_back(mine)
            raise
        return running

    async def retry(self, ids: list[int], now: float) -> list[Job]:
        async def tx(conn: psycopg.AsyncConnection[Any]) -> list[Job]:
            wanted = list(dict.fromkeys(ids))
            cur = await conn.execute(
                f"SELECT {rows.JOB_COLUMNS} FROM phxq_jobs WHERE id = ANY(%s) ORDER BY id"
                " FOR UPDATE",
                (wanted,),
            )
            found = {j.id: j for j in map(rows.job_from_row, await cur.fetchall())}
            keys: dict[str, int] = {}
            for i in wanted:
                job = found.get(i)
                if job is None:
                    raise Refused("not_found", f"no job {i}")
                if job.status not in ("failed", "cancelled"):
                    raise Refused(
                        "refused",
                        f"job {i} is {job.status}: only failed or cancelled jobs can be retried",
                    )
                if job.key is not None:
                    if job.key in keys:
                        raise Refused(
                            "refused",
                            f"job {i}: key {job.key!r} is live in job {keys[job.key]};"
                            " one live job per key",
                        )
                    keys[job.key] = i
            if keys:
                cur = await conn.execute(
                    "SELECT key, id FROM phxq_jobs WHERE key = ANY(%s) AND status IN " + LIVE,
                    (list(keys),),
                )
                for key, holder in await cur.fetchall():
                    raise Refused(
                        "refused",
                        f"job {keys[key]}: key {key!r} is live in job {holder};"
                        " one live job per key",
                    )
            await self._check_deps(conn, [found[i] for i in wanted])
            await self._requeue(conn, wanted, now)
            return await self._jobs(conn, wanted)

        return list(await self._request(tx))

    async def _check_deps(self, conn: psycopg.AsyncConnection[Any], jobs: list[Job]) -> None:
        deps = sorted({d for j in jobs for d in j.after or ()})
        if not deps:
            return
        cur = await conn.execute(
            "SELECT id, status FROM phxq_jobs WHERE id = ANY(%s) ORDER BY id FOR SHARE", (deps,)
        )
        status_of = dict(await cur.fetchall())
        for job in jobs:
            for d in job.after or ():
                if status_of.get(d) in ("failed", "cancelled"):
                    raise Refused(
                        "refused",
                        f"job {job.id} runs after job {d}, which is {status_of[d]}: "
                        f"retry job {d} first",
                    )

    async def _requeue(
        self, conn: psycopg.AsyncConnection[Any], ids: list[int], now: float
    ) -> None:
        """Finished jobs back to pending with a fresh retry budget, at the back of the line
        (blocked again if a job they run after has not completed)."""
        try:
            await conn.execute(
                "UPDATE phxq_jobs j SET status = 'pending', attempts = 0, finished_at = NULL,"
                " exit_code = NULL, error = NULL, pid = NULL, run_at = %s, cancel = false,"
                " ord = nextval('phxq_order'), blocked = EXISTS (SELECT 1 FROM phxq_jobs d"
                "   WHERE d.id = ANY(j.after) AND d.status <> 'completed')"
                " WHERE j.id = ANY(%s)",
                (now, ids),
            )
        except psycopg.errors.UniqueViolation as e:
            raise Refused("refused", "a key of these jobs is live in another job") from e
        await self._notify(conn, notices.encode("n", ids))

    async def retry_failed(self, queue: str | None, now: float) -> int:
        async def tx(conn: psycopg.AsyncConnection[Any]) -> int:
            cur = await conn.execute(
                "SELECT j.id, j.key FROM phxq_jobs j WHERE j.status = 'failed'"
                " AND (%s::text IS NULL OR j.queue = %s)"
                " AND NOT EXISTS (SELECT 1 FROM phxq_jobs d WHERE d.id = ANY(j.after)"
                "   AND d.status IN ('failed', 'cancelled'))"
                " AND (j.key IS NULL OR NOT EXISTS (SELECT 1 FROM phxq_jobs k"
                "   WHERE k.key = j.key AND k.status IN " + LIVE + "))"
                " ORDER BY j.id FOR UPDATE",
                (queue, queue),
            )
            ids: list[int] = []
            newest: dict[str, int] = {}
            for job_id, key in await cur.fetchall():
                if key is None:
                    ids.append(job_id)
                else:
                    newest[key] = job_id
            ids.extend(newest.values())
            if ids:
                await self._requeue(conn, sorted(ids), now)
            return len(ids)

        return int(await self._request(tx))

    async def clear(self, status: str | None, queue: str | None) -> list[int]:
        if status is not None and status not in FINISHED:
            raise Refused(
                "usage",
                "clear forgets finished jobs only: --status must be one "
                f"of {', '.join(sorted(FINISHED))}",
            )
        wanted = sorted(FINISHED) if status is None else [status]

        async def tx(conn: psycopg.AsyncConnection[Any]) -> list[int]:
            cur = await conn.execute(
                "DELETE FROM phxq_jobs WHERE status = ANY(%s) AND (%s::text IS NULL OR queue = %s)"
                " RETURNING id",
                (wanted, queue, queue),
            )
            ids = sorted(r[0] for r in await cur.fetchall())
            await self._notify(conn, notices.encode("k", ids))
            return ids

        return await self._forget(tx)

    async def forget_finished_before(self, cutoff: float) -> list[int]:
        async def tx(conn: psycopg.AsyncConnection[Any]) -> list[int]:
            cur = await conn.execute(
                "DELETE FROM phxq_jobs WHERE status IN " + FINISHED_SQL + " AND finished_at < %s"
                " RETURNING id",
                (cutoff,),
            )
            ids = sorted(r[0] for r in await cur.fetchall())
            await self._notify(conn, notices.encode("k", ids))
            return ids

        return await self._forget(tx)

    async def _forget(self, tx: Callable[[psycopg.AsyncConnection[Any]], Any]) -> list[int]:
        """Run a transaction that deletes jobs; the ids it deleted, their logs here
        removed. (A commit that does not return, cut off or cancelled, is heard by the
        listener as every node hears it: `_remove_logs`.)"""
        ids = list(await self._request(tx))
        await joblogs.forget(self.settings.logs_dir, ids)
        return ids

    async def _queue_change(self, sql: str, args: Sequence[Any]) -> None:
        async def tx(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(sql, args)
            await self._notify(conn, ["w"])
            await self._read_settings(conn)

        await self._request(tx)
        self._dirty = True
        self.wake.set()

    async def set_rate(self, queue: str, per_second: float | None, burst: int) -> None:
        await self._queue_change(
            "INSERT INTO phxq_queues (queue, rate, burst) VALUES (%s, %s, %s)"
            " ON CONFLICT (queue) DO UPDATE SET rate = excluded.rate, burst = excluded.burst",
            (queue, per_second, None if per_second is None else burst),
        )

    async def set_limit(self, queue: str, concurrency: int | None) -> None:
        await self._queue_change(
            "INSERT INTO phxq_queues (queue, concurrency) VALUES (%s, %s)"
            " ON CONFLICT (queue) DO UPDATE SET concurrency = excluded.concurrency",
            (queue, concurrency),
        )

    async def pause(self, queue: str | None) -> None:
        if queue is None:
            await self._queue_change("UPDATE phxq_cluster SET paused_all = true", ())
        else:
            await self._queue_change(
                "INSERT INTO phxq_queues (queue, paused) VALUES (%s, true)"
                " ON CONFLICT (queue) DO UPDATE SET paused = true",
                (queue,),
            )

    async def resume(self, queue: str | None) -> None:
        if queue is None:
            await self._queue_change(
                "UPDATE phxq_cluster SET paused_all = false;"
                " UPDATE phxq_queues SET paused = false WHERE paused",
                (),
            )
        else:
            await self._queue_change(
                "UPDATE phxq_queues SET paused = false WHERE queue = %s", (queue,)
            )

    async def _read_settings(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._settings_read = time.monotonic()
        # both sent before either is read: one round trip in pipeline mode
        all_cur = await conn.execute("SELECT paused_all FROM phxq_cluster")
        cur = await conn.execute("SELECT queue, paused, concurrency, rate, burst FROM phxq_queues")
        row = await all_cur.fetchone()
        self._paused_all = bool(row and row[0])
        paused: set[str] = set()
        limits: dict[str, int] = {}
        rates: dict[str, tuple[float, int]] = {}
        for queue, is_paused, concurrency, rate, burst in await cur.fetchall():
            if is_paused:
                paused.add(queue)
            if concurrency is not None:
                limits[queue] = concurrency
            if rate is not None:
                rates[queue] = (rate, burst or 1)
        self._paused, self._limits, self._rates_set = paused, limits, rates

    def _rates(self) -> dict[str, tuple[float, int]]:
        """The start rates in force: run time over the config file's `[queues.NAME]`."""
        config = {
            q: (parse_rate(c.rate), c.burst or 1) for q, c in self.settings.queues.items() if c.rate
        }
        return {**config, **self._rates_set}

    @staticmethod
    def _bucket(rate: tuple[float, int], row: tuple[Any, ...] | None, now: float) -> Bucket:
        """A queue's shared bucket from its row (bucket_rate, bucket_burst, tokens,
        tokens_at): full when it has none yet or was counted under another rate."""
        if row is not None and row[2] is not None and (row[0], row[1]) == rate:
            return Bucket(rate[0], rate[1], float(row[2]), float(row[3]))
        return Bucket.full(rate[0], rate[1], now)

    # --------------------------------------------------------------- running
    def _depth(self) -> int:
        """Jobs per worker this node holds: AHEAD seconds of work by its last jobs' run
        time, 1 to MAX_AHEAD. At 8 (what a lane takes at once), and still at 32 for
        no-op callables, the slots ran dry while a claim's commit was on its way
        (docs/benchmarks.md, "PostgreSQL end to end, again")."""
        return min(MAX_AHEAD, max(1, int(AHEAD / max(self._quick, 1e-6))))

    def _free(self) -> int:
        """Jobs to claim now: up to `_depth` per worker, less what this node holds."""
        held = len(self._handed) + len(self._batch) + len(self._returned)
        return self.settings.workers * self._depth() - held

    async def claimable(self) -> None:
        """Ask the writer for a batch for this node's free slots (see `_claim`), when a
        claim may find something: a notification said so, the last batch was full, a
        delayed job is due, or the poll interval has passed; and only once what is left of
        the last batch is under half of what this node can take. The writer claims in the
        transaction that records the last starts and ends (one commit for both) and wakes
        the dispatcher when jobs came; this waits for it only while nothing is left to
        hand out."""
        now = time.time()
        if self._cut_off or self._closing or self._free() <= 0:
            return
        if (len(self._batch) + len(self._returned)) * 2 >= self.settings.workers * self._depth():
            return
        if self._paused_all and not self._settings_told and time.monotonic() < self._next_poll:
            return  # nothing may start until a resume, which is told (w)
        due = any(t is not None and t <= now for t in (self._next_delayed, self._next_token))
        if not (self._dirty or due or time.monotonic() >= self._next_poll):
            return
        self._dirty = False
        self._next_poll = time.monotonic() + POLL
        self._claim_asked = True
        done = self._claimed
        self._facts_ready.set()
        self._hurry.set()
        if not (self._batch or self._returned):
            await done.wait()

    def _claim_wanted(self) -> int:
        """Jobs the writer's next transaction claims (0: none asked, or no room)."""
        if not self._claim_asked or self._cut_off or self._closing:
            return 0
        return max(self._free(), 0)

    def _claim_landed(self, node: int, want: int, claimed: list[Held]) -> None:
        """The jobs a committed claim got: this node's to hand out (or given back, when it
        lost its lease or its contact with PostgreSQL while they were claimed)."""
        if want and len(claimed) >= want:
            self._dirty = True  # there may be more
        if node != self.node:
            claimed = []  # claims of a node the cluster gave up on: freed by the reaper
        elif self._cut_off or self._closing:
            for h in claimed:
                self._facts.ends.append(End(h.job.id, h.node, h.claim, h.job.queue, None, 0.0))
            claimed = []
        self._batch.extend(claimed)
        if want:
            # jobs came, or the next delayed one's time changed: the dispatcher looks again
            self.wake.set()

    async def _claim(self, conn: psycopg.AsyncConnection[Any], want: int, now: float) -> list[Held]:
        """Claim up to `want` jobs in the caller's transaction, in the order they are due.

        While no queue has a limit or a rate (as last read), in one statement sent with
        the settings' read (in pipeline mode: no round trip of its own). Otherwise the
        queues with one are claimed under a lock on their `phxq_queues` row, which holds
        the count of what every node claimed (limit) and the token bucket every node's
        claims take from (rate)."""
        # The settings are read again when a notification told of a change (or may have
        # been missed), and once per poll interval; the statement heeds them regardless
        read = self._settings_told or time.monotonic() >= self._settings_read + POLL
        self._settings_told = False
        node = self.node
        config = {q: c.concurrency for q, c in self.settings.queues.items() if c.concurrency}
        if config or self._limits or self._rates():
            got = await self._claim_limited(conn, want, now)
        else:
            # This node's row is locked first: a reaper declaring this node lost meanwhile
            # either went first (then nothing is claimed) or waits for this claim to
            # commit and then frees what it claimed. No claim is ever left to a node taken
            # for dead. Queues paused, limited or rated are left out by the statement
            # itself: a setting another node committed just now is heeded.
            cur = await conn.execute(
                "WITH me AS (SELECT id FROM phxq_nodes WHERE id = %s AND gone IS NULL"
                "   FOR SHARE),"
                " c AS (SELECT j.id FROM phxq_jobs j WHERE EXISTS (SELECT 1 FROM me)"
                " AND NOT (SELECT paused_all FROM phxq_cluster)"
                " AND j.node IS NULL AND NOT j.blocked AND j.status IN " + WAITING + ""
                " AND j.run_at <= %s"
                " AND NOT EXISTS (SELECT 1 FROM phxq_queues q WHERE q.queue = j.queue"
                "   AND (q.paused OR q.concurrency IS NOT NULL OR q.rate IS NOT NULL))"
                " ORDER BY j.priority DESC, j.ord LIMIT %s FOR UPDATE SKIP LOCKED)"
                " UPDATE phxq_jobs j SET node = %s, claim = j.claim + 1 FROM c WHERE j.id = c.id"
                " RETURNING " + CLAIMED_COLUMNS,
                (node, now, want, node),
            )
            if read:
                await self._read_settings(conn)
            got = list(await cur.fetchall())
            self._next_token = None
        if len(got) < want:
            cur = await conn.execute(
                "SELECT min(run_at) FROM phxq_jobs WHERE node IS NULL AND NOT blocked"
                " AND status IN " + WAITING + " AND run_at > %s",
                (now,),
            )
            row = await cur.fetchone()
            self._next_delayed = row[0] if row else None
        # rows: JOB_COLUMNS, ord, claim
        got.sort(key=lambda r: (-r[2], r[-2]))
        return [Held(rows.job_from_row(r[:-2]), node, r[-1]) for r in got]

    async def _claim_limited(
        self, conn: psycopg.AsyncConnection[Any], want: int, now: float
    ) -> list[tuple[Any, ...]]:
        """`_claim` when some queue has a limit or a rate: rows as its statement returns."""
        await self._read_settings(conn)
        if self._paused_all:
            return []
        config = {q: c.concurrency for q, c in self.settings.queues.items() if c.concurrency}
        limits = {**config, **self._limits}
        rates = self._rates()
        excluded = sorted(self._paused | set(limits) | set(rates))
        cur = await conn.execute(
            "SELECT id, priority, ord, queue FROM phxq_jobs"
            " WHERE node IS NULL AND NOT blocked AND status IN " + WAITING + " AND run_at <= %s"
            " AND NOT (queue = ANY(%s)) ORDER BY priority DESC, ord LIMIT %s"
            " FOR UPDATE SKIP LOCKED",
            (now, excluded, want),
        )
        found = list(await cur.fetchall())
        limited = sorted(q for q in set(limits) | set(rates) if q not in self._paused)
        buckets: dict[str, Bucket] = {}
        self._next_token = None
        if limited:
            await conn.execute(
                "INSERT INTO phxq_queues (queue) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING",
                (limited,),
            )
            cur = await conn.execute(
                "SELECT queue, bucket_rate, bucket_burst, tokens, tokens_at FROM phxq_queues"
                " WHERE queue = ANY(%s) ORDER BY queue FOR UPDATE",
                (limited,),
            )
            for q, *bucket_row in await cur.fetchall():
                if q in rates:
                    buckets[q] = self._bucket(rates[q], tuple(bucket_row), now)
            cur = await conn.execute(
                "SELECT queue, count(*) FROM phxq_jobs WHERE node IS NOT NULL"
                " AND queue = ANY(%s) GROUP BY queue",
                (limited,),
            )
            busy = dict(await cur.fetchall())
            for q in limited:
                room = want
                if q in limits:
                    room = min(limits[q] - busy.get(q, 0), room)
                bucket = buckets.get(q)
                if bucket is not None:
                    if not bucket.can_take(now):
                        at = bucket.ready_at(now)
                        self._next_token = min(self._next_token or at, at)
                    room = min(int(bucket.tokens), room)
                if room <= 0:
                    continue
                cur = await conn.execute(
                    "SELECT id, priority, ord, queue FROM phxq_jobs WHERE queue = %s"
                    " AND node IS NULL AND NOT blocked AND status IN "
                    + WAITING
                    + " AND run_at <= %s ORDER BY priority DESC, ord LIMIT %s"
                    " FOR UPDATE SKIP LOCKED",
                    (q, now, room),
                )
                found += await cur.fetchall()
        found.sort(key=lambda r: (-r[1], r[2]))
        chosen = found[:want]
        if not chosen:
            return []
        # This node's row, locked: see `_claim`
        cur = await conn.execute(
            "SELECT 1 FROM phxq_nodes WHERE id = %s AND gone IS NULL FOR SHARE", (self.node,)
        )
        if await cur.fetchone() is None:
            return []
        cur = await conn.execute(
            "UPDATE phxq_jobs j SET node = %s, claim = j.claim + 1 WHERE j.id = ANY(%s)"
            " RETURNING " + CLAIMED_COLUMNS,
            (self.node, [r[0] for r in chosen]),
        )
        claimed = list(await cur.fetchall())
        if buckets:
            await self._take_tokens(conn, buckets, [r[3] for r in chosen], now)
        return claimed

    async def _take_tokens(
        self,
        conn: psycopg.AsyncConnection[Any],
        buckets: dict[str, Bucket],
        queues: list[str],
        now: float,
    ) -> None:
        """A token per job claimed from a rated queue, written back to the locked rows."""
        for q in queues:
            bucket = buckets.get(q)
            if bucket is not None:
                bucket.take(now)
        for bucket in buckets.values():
            if not bucket.can_take(now):
                at = bucket.ready_at(now)
                self._next_token = min(self._next_token or at, at)
        await conn.execute(
            "UPDATE phxq_queues q SET bucket_rate = u.rate, bucket_burst = u.burst,"
            " tokens = u.tokens, tokens_at = u.at FROM unnest(%s::text[], %s::float8[],"
            " %s::int[], %s::float8[], %s::float8[]) AS u(queue, rate, burst, tokens, at)"
            " WHERE q.queue = u.queue",
            (
                list(buckets),
                [b.per_second for b in buckets.values()],
                [b.burst for b in buckets.values()],
                [b.tokens for b in buckets.values()],
                [b.at for b in buckets.values()],
            ),
        )

    def paused(self, queue: str) -> bool:
        return self._paused_all or queue in self._paused

    def claim(self, now: float) -> Job | None:
        for h in list(self._returned):
            if not self.paused(h.job.queue):
                self._returned.remove(h)
                return self._hand(h)
        if self._cut_off:
            return None
        while self._batch:
            h = self._batch.popleft()
            if self.paused(h.job.queue):  # paused since it was claimed: given back
                self._facts.ends.append(End(h.job.id, h.node, h.claim, h.job.queue, None, now))
                self._facts_ready.set()
                continue
            return self._hand(h)
        return None

    def _hand(self, h: Held) -> Job:
        self._handed[h.job.id] = h
        return h.job

    def next_wakeup(self) -> float | None:
        """The next time a claim may find something. Times already past are left out: the
        claimable() of the dispatcher's round just heeded them, or it was held back by
        what wakes the dispatcher when it changes (a slot freed, a resume told, a claim
        landed, contact again). Returned, they made it spin (80% of a core while its
        workers were busy, every submit's round while paused); with none left, it looks
        again in a poll interval."""
        now = time.time()
        poll = now + max(self._next_poll - time.monotonic(), 0.0)
        ahead = [
            t for t in (self._next_delayed, self._next_token, poll) if t is not None and t > now
        ]
        return min(ahead) if ahead else now + POLL

    def report(self, begun: list[Begun], ended: list[Ending]) -> None:
        facts = self._facts
        for b in begun:
            h = self._handed.get(b.job.id)
            if h is None:
                continue
            job = h.job
            job.status, job.attempts, job.started_at = "running", job.attempts + 1, b.at
            job.pid, job.pid_started = b.pid, b.pid_started
            job.exit_code = job.error = job.progress = job.result = None
            facts.begins.append(Begin(job.id, h.node, h.claim, b.at, b.pid, b.pid_started))
            self.stats.jobs["started", job.queue] += 1
        now = time.time()
        for e in ended:
            h = self._handed.pop(e.job.id, None)
            if h is None:
                continue
            job = h.job
            pending = facts.progress.pop(job.id, None)
            progress = rows.encode(pending[2]) if pending else None
            end = End(job.id, h.node, h.claim, job.queue, None, now, progress=progress)
            if e.started:
                end.ran, end.started_at = True, job.started_at
                took = max(now - (job.started_at or now), 0.0)
                self._quick += (took - self._quick) / 8
                if e.cancelled and e.stop_reason == SHUTDOWN:
                    end.status, end.attempts_delta, end.new_place = "pending", -1, True
                elif e.cancelled and e.stop_reason != LOST_CONTACT:
                    end.status, end.error = "cancelled", e.error or "cancelled"
                else:
                    error = e.error if not e.cancelled else LOST_CONTACT + " while it ran"
                    status, end.error, end.run_at = rows.outcome(
                        job, e.exit_code, error, now, self._rng, e.retryable
                    )
                    end.status, end.exit_code = status, e.exit_code
                    end.new_place = status == "retrying"
                    if status == "completed" and e.result is not None:
                        end.result = rows.encode(e.result)
            elif e.stop_reason is None:  # never ran: it goes to another worker, here
                self._returned.append(h)
                continue
            elif e.stop_reason not in (SHUTDOWN, LOST_CONTACT):
                end.status, end.error = "cancelled", e.stop_reason
            facts.ends.append(end)
        if begun or ended:
            self._facts_ready.set()
            if len(facts.ends) >= LINGER_ENDS:
                self._hurry.set()

    def progress(
        self, job_id: int, attempt: int, make: Callable[[Progress | None], Progress]
    ) -> bool:
        h = self._handed.get(job_id)
        if h is None or h.job.status != "running" or h.job.attempts != attempt:
            return False
        job = h.job
        new = make(job.progress)
        job.progress = new
        if job_id not in self._facts.progress:
            self._facts_ready.set()  # the writer checkpoints it (at most once a second)
        self._facts.progress[job_id] = (h.node, h.claim, new)
        if self.feed.active:
            self.feed.publish([job_event("progress", job, time.time(), new)])
        return True

    # ---------------------------------------------------------------- writer
    async def _writer(self) -> None:
        """Writes the queued facts, a batch per transaction, fenced by (node, claim), and
        claims the batch claimable() asked for in the same transaction (one commit, and in
        pipeline mode two round trips, for both). A batch PostgreSQL does not take is kept
        and tried again: facts are never lost while phxqd runs (and those of an attempt
        the cluster gave up on are dropped)."""
        last_progress = 0.0
        while True:
            if not self._facts and not self._claim_asked:
                with anyio.move_on_after(1.0 if self._facts.progress else 3600):
                    await self._facts_ready.wait()
                self._facts_ready = anyio.Event()
            if self._in_doubt:
                try:
                    await self._give_back_in_doubt()
                except psycopg.Error as e:
                    self._error = str(e).strip()
                    log.warning("cannot look for jobs claimed in doubt yet: %s", self._error)
                    await anyio.sleep(0.2)
                    continue
            if self._handed and not self._claim_asked and not self._closing:
                # Jobs still run here: their ends (and starts) are on their way. A
                # moment's wait lets them go in this transaction: one commit, one WAL
                # flush and one set of notifications per batch, not per job or two
                self._hurry = anyio.Event()
                if len(self._facts.ends) < LINGER_ENDS:
                    with anyio.move_on_after(LINGER):
                        await self._hurry.wait()
            facts = self._facts
            checkpoint = time.monotonic() - last_progress >= 1.0
            want = self._claim_wanted()
            done, self._claimed, self._claim_asked = self._claimed, anyio.Event(), False
            if not facts and not (checkpoint and facts.progress) and not want:
                done.set()
                continue
            self._facts = Facts(progress={} if checkpoint else facts.progress)
            if checkpoint:
                last_progress = time.monotonic()
            else:
                facts.progress = {}
            self._writing = True
            node = self.node
            if self._watches:
                self._telling = {x.id for x in facts.ends}
            try:
                claimed = await self._write(facts, want)
                self._claim_landed(node, want, claimed)
            except psycopg.Error as e:
                self._error = str(e).strip()
                log.warning("cannot record job starts and ends or claim jobs yet: %s", self._error)
                self._facts.begins[:0] = facts.begins
                self._facts.ends[:0] = facts.ends
                for k, v in facts.progress.items():
                    self._facts.progress.setdefault(k, v)
                if want:
                    self._dirty = self._in_doubt = True
                await anyio.sleep(0.2)
            finally:
                self._writing = False
                self._telling = set()
                deferred, self._deferred = self._deferred, []
                self._tell(deferred)
                self._written.set()
                done.set()

    async def _give_back_in_doubt(self) -> None:
        """Give back the jobs a failed transaction may have claimed after all.

        A connection dropped (a restart of PostgreSQL, pg_terminate_backend) while the
        commit was on its way leaves the claim unknown here: if it was made, its jobs are
        this node's, unstarted, and no reaper frees them while this node lives, so they
        would wait for ever. They are the rows claimed by this node, still waiting, that
        it does not know of; their release goes through the writer as any give-back,
        fenced by the claim. Found by the cluster test that cuts every connection and
        restarts PostgreSQL under load (a job left pending, 1 run in 2 pairs)."""
        async with self._tx() as conn:
            cur = await conn.execute(
                "SELECT id, claim, queue FROM phxq_jobs WHERE node = %s AND status IN " + WAITING,
                (self.node,),
            )
            rows = await cur.fetchall()
        # what this node knows of, read after the query: a job handed out meanwhile (or
        # begun and ended, its facts not written yet) is in one of these, never given back
        known = {h.job.id for h in (*self._batch, *self._returned, *self._handed.values())}
        known.update(x.id for x in self._facts.begins)
        known.update(x.id for x in self._facts.ends)
        strays = [(i, c, q) for i, c, q in rows if i not in known]
        if strays:
            log.warning(
                "giving back %d job(s) a claim cut off during its commit got after all: %s",
                len(strays),
                ", ".join(str(i) for i, _, _ in strays[:10]),
            )
        now = time.time()
        self._facts.ends.extend(End(i, self.node, c, q, None, now) for i, c, q in strays)
        self._in_doubt = False

    async def _write(self, facts: Facts, want: int) -> list[Held]:
        """One transaction in pipeline mode: the starts, progress and ends, the release of
        the jobs waiting on those completed, and the claim, sent together (one round
        trip); then the cascade of failures if any, the notifications and the commit."""
        # the last 64 KiB of logs just written (in the page cache): read here, a thread
        # per batch cost more than the reads
        tails = self._tails([e.id for e in facts.ends if e.ran])
        now = time.time()
        ended: list[tuple[int, str]] = []
        claimed: list[Held] = []
        # the jobs a `wait` here waits on: their rows come back with their end (the wait
        # then reads nothing: it read each batch of ends once more, a transaction a batch)
        watches = list(self._watches)
        ended_rows: dict[int, Job] = {}
        async with self._pool.connection() as conn, conn.pipeline(), conn.transaction():
            payloads: list[str] = []
            if not facts.ends and not want:
                # Starts and progress alone need not wait for the disk: a start lost by a
                # crash of PostgreSQL is told again by the job's end (fenced by its claim)
                await conn.execute("SET LOCAL synchronous_commit = off")
            begun_cur = ended_cur = released_cur = None
            # A job that began and ended since the last write (a quick one) is written once,
            # by its end: one row version, not two
            ending = {(x.id, x.node, x.claim): x for x in facts.ends if x.ran}
            began = {(x.id, x.node, x.claim): x for x in facts.begins}
            with_end = [began.get((x.id, x.node, x.claim)) if x.ran else None for x in facts.ends]
            alone = [x for k, x in began.items() if k not in ending]
            if alone:
                begun_cur = await conn.execute(
                    "UPDATE phxq_jobs j SET status = 'running', attempts = j.attempts + 1,"
                    " started_at = u.at, pid = u.pid, pid_started = u.ps, exit_code = NULL,"
                    " error = NULL, progress = NULL, result = NULL, log_tail = NULL,"
                    " ran_on = u.node, ran_host = %s"
                    " FROM json_to_recordset(%s::json) AS u(id bigint, node bigint,"
                    " claim bigint, at float8, pid int, ps float8)"
                    " WHERE j.id = ANY(%s::bigint[]) AND j.id = u.id AND j.node = u.node"
                    " AND j.claim = u.claim RETURNING j.id",
                    (
                        self.host,
                        _rows_json.encode(
                            [
                                _BeginRow(x.id, x.node, x.claim, x.at, x.pid, x.pid_started)
                                for x in alone
                            ]
                        ).decode(),
                        _ids_literal(x.id for x in alone),
                    ),
                )
            if facts.progress:
                p = list(facts.progress.items())
                await conn.execute(
                    "UPDATE phxq_jobs j SET progress = u.p FROM unnest(%s::bigint[],"
                    " %s::bigint[], %s::bigint[], %s::bytea[]) AS u(id, node, claim, p)"
                    " WHERE j.id = u.id AND j.node = u.node AND j.claim = u.claim"
                    " AND j.status = 'running'",
                    (
                        [k for k, _ in p],
                        [v[0] for _, v in p],
                        [v[1] for _, v in p],
                        [rows.encode(v[2]) for _, v in p],
                    ),
                )
            if facts.ends:
                e = facts.ends
                ended_cur = await conn.execute(
                    # u.began: the attempt's start too (what the starts' statement sets,
                    # unless the end sets it). The rows go as one JSON text (see _EndRow);
                    # the ids besides as an array, which tells the planner how few rows
                    # it looks up (json_to_recordset is guessed at 100: a scan of the table)
                    "UPDATE phxq_jobs j SET status = coalesce(u.status, j.status),"
                    " finished_at = CASE WHEN u.status IN " + FINISHED_SQL + " THEN u.at"
                    "   ELSE j.finished_at END,"
                    " exit_code = CASE WHEN u.status IS NOT NULL THEN u.exit_code"
                    "   WHEN u.began THEN NULL ELSE j.exit_code END,"
                    " error = CASE WHEN u.status IS NOT NULL THEN u.error"
                    "   WHEN u.began THEN NULL ELSE j.error END,"
                    " run_at = coalesce(u.run_at, j.run_at), result = decode(u.result, 'base64'),"
                    " pid = CASE WHEN u.status IS NOT NULL THEN NULL"
                    "   WHEN u.began THEN u.pid ELSE j.pid END,"
                    " pid_started = CASE WHEN u.status IS NOT NULL THEN NULL"
                    "   WHEN u.began THEN u.ps ELSE j.pid_started END,"
                    " started_at = CASE WHEN u.began THEN u.began_at ELSE j.started_at END,"
                    " ran_on = CASE WHEN u.began THEN u.node ELSE j.ran_on END,"
                    " ran_host = CASE WHEN u.began THEN %s ELSE j.ran_host END,"
                    " node = NULL, cancel = false,"
                    " attempts = j.attempts + u.delta + CASE WHEN u.began THEN 1 ELSE 0 END,"
                    " progress = coalesce(decode(u.progress, 'base64'), CASE WHEN u.began"
                    "   THEN NULL ELSE j.progress END),"
                    " log_tail = coalesce(decode(u.tail, 'base64'), CASE WHEN u.began THEN NULL"
                    "   ELSE j.log_tail END),"
                    " ord = CASE WHEN u.place THEN nextval('phxq_order')"
                    "   - CASE WHEN u.status = 'retrying' THEN %s ELSE 0 END ELSE j.ord END"
                    " FROM json_to_recordset(%s::json) AS u(id bigint, node bigint, claim bigint,"
                    " status text, at float8, exit_code int, error text, run_at float8,"
                    " result text, delta int, place bool, progress text, tail text, began bool,"
                    " began_at float8, pid int, ps float8)"
                    " WHERE j.id = ANY(%s::bigint[]) AND j.id = u.id AND j.node = u.node"
                    " AND j.claim = u.claim"
                    " RETURNING j.id, j.status, u.began" + (RETURNED if watches else ""),
                    (
                        self.host,
                        RETRY_FIRST,
                        _rows_json.encode(
                            [
                                _EndRow(
                                    x.id,
                                    x.node,
                                    x.claim,
                                    x.status,
                                    x.at,
                                    x.exit_code,
                                    x.error,
                                    x.run_at,
                                    x.result,
                                    x.attempts_delta,
                                    x.new_place,
                                    x.progress,
                                    tails.get(x.id),
                                    w is not None,
                                    w.at if w else None,
                                    w.pid if w else None,
                                    w.pid_started if w else None,
                                )
                                for x, w in zip(e, with_end, strict=True)
                            ]
                        ).decode(),
                        _ids_literal(x.id for x in e),
                    ),
                )
                completed = [x.id for x in e if x.status == "completed"]
                if completed:
                    released_cur = await self._release_dependents(conn, completed)
            if want:
                claimed = await self._claim(conn, want, time.time())
            started: set[int] = set()
            if begun_cur is not None:
                started = {r[0] for r in await begun_cur.fetchall()}
                self._dropped("start", [x for x in alone if x.id not in started])
            if ended_cur is not None:
                rows_ended = await ended_cur.fetchall()
                ended = [(r[0], r[1]) for r in rows_ended]
                if watches:
                    # looked up in each wait's set: a set of all of them, made at every
                    # write, cost a write time in proportion to the jobs waited on (100 µs
                    # for one wait on 3,000 jobs, in a cProfile of the daemon)
                    ended_rows = {
                        r[0]: rows.job_from_row(r[3:])
                        for r in rows_ended
                        if r[1] in FINISHED and any(r[0] in w.ids for w in watches)
                    }
                started |= {r[0] for r in rows_ended if r[2]}
                applied = {i for i, _ in ended}
                self._dropped("outcome", [x for x in facts.ends if x.id not in applied])
            payloads += notices.encode("s", sorted(started))
            if ended_cur is not None:
                payloads += await self._after_ends(conn, ended, now, released=True)
            if released_cur is not None:
                payloads += notices.encode("n", [r[0] for r in await released_cur.fetchall()])
            await self._notify(conn, payloads)
        self._transactions += 1
        self._error = None
        by_id = {x.id: x for x in facts.ends}
        for job_id, status in ended:
            end = by_id[job_id]
            kind = {"retrying": "retried", "pending": None}.get(status, status)
            if kind is not None and end.status is not None:
                self.stats.jobs[kind, end.queue] += 1
            if status in ("completed", "failed") and end.started_at is not None:
                self.stats.ended(end.at, max(end.at - end.started_at, 0.0))
        self._tell([i for i, st in ended if st in FINISHED], ended_rows)
        if ended:
            self._dirty = True
            self.wake.set()
        return claimed

    def _dropped(self, what: str, late: Sequence[Begin | End]) -> None:
        for x in late:
            log.warning(
                "job %d: dropping the %s of claim %d by node %d: the cluster gave up on that"
                " attempt (its node lost its lease)",
                x.id,
                what,
                x.claim,
                x.node,
            )

    def _tails(self, ids: list[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for job_id in ids:
            path = self.settings.logs_dir / f"{job_id}.log"
            with contextlib.suppress(OSError), open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(size - LOG_TAIL, 0))
                out[job_id] = f.read()
        return out

    async def _after_ends(
        self,
        conn: psycopg.AsyncConnection[Any],
        ended: list[tuple[int, str]],
        now: float,
        released: bool = False,
    ) -> list[str]:
        """In the finishing transaction: release the jobs waiting on the completed (unless
        `released`: the caller did), cancel those waiting on the failed and cancelled; the
        notifications that tell it."""
        by: dict[str, list[int]] = {}
        for i, st in ended:
            by.setdefault(st, []).append(i)
        payloads: list[str] = []
        for st, kind in (
            ("completed", "c"),
            ("failed", "f"),
            ("cancelled", "x"),
            ("retrying", "r"),
            ("pending", "n"),
        ):
            payloads += notices.encode(kind, by.get(st, []))
        if not released and by.get("completed"):
            cur = await self._release_dependents(conn, by["completed"])
            payloads += notices.encode("n", [r[0] for r in await cur.fetchall()])
        dead: dict[str, list[int]] = {st: by[st] for st in ("failed", "cancelled") if st in by}
        payloads += notices.encode("x", await self._cascade(conn, dead, now))
        return payloads

    async def _release_dependents(
        self, conn: psycopg.AsyncConnection[Any], completed: list[int]
    ) -> psycopg.AsyncCursor[Any]:
        """The jobs waiting on `completed` whose every dependency has completed, no longer
        blocked: the cursor of their ids. Both statements are sent without waiting (in
        pipeline mode, with the ends that completed them): the second one depends on
        nothing the first one returns. (`completed` may name jobs whose end was fenced
        off: the second statement checks what PostgreSQL holds.)"""
        # Locked first, checked in a later statement: its snapshot then sees every
        # dependency committed before the lock was had (two jobs that one waits on,
        # ending at once on two nodes, cannot both miss the other's end).
        await conn.execute(
            "SELECT id FROM phxq_jobs WHERE blocked AND after && %s::bigint[]"
            " AND status IN " + WAITING + " ORDER BY id FOR UPDATE",
            (completed,),
        )
        return await conn.execute(
            "UPDATE phxq_jobs j SET blocked = false, ord = nextval('phxq_order')"
            " WHERE j.blocked AND j.after && %s::bigint[] AND j.status IN " + WAITING + ""
            " AND NOT EXISTS (SELECT 1 FROM phxq_jobs d"
            "   WHERE d.id = ANY(j.after) AND d.status <> 'completed') RETURNING j.id",
            (completed,),
        )

    async def _cascade(
        self, conn: psycopg.AsyncConnection[Any], dead: dict[str, list[int]], now: float
    ) -> list[int]:
        """Cancel the jobs waiting on jobs that failed or were cancelled, and those
        waiting on them, and so on."""
        out: list[int] = []
        for st, ids in dead.items():
            frontier, status = ids, st
            while frontier:
                cur = await conn.execute(
                    "UPDATE phxq_jobs j SET status = 'cancelled', finished_at = %s,"
                    " blocked = false, error = 'job ' || (SELECT min(x) FROM unnest(j.after) x"
                    "   WHERE x = ANY(%s)) || ', which it runs after, ' || %s"
                    " WHERE j.blocked AND j.after && %s::bigint[] AND j.status IN "
                    + WAITING
                    + " RETURNING j.id",
                    (now, frontier, status, frontier),
                )
                frontier, status = [r[0] for r in await cur.fetchall()], "cancelled"
                out += frontier
        return out

    # ------------------------------------------------------ notifications
    async def _listener(self) -> None:
        """LISTEN on a connection of its own; re-opened when it drops (after which every
        node looks again at once: notifications sent meanwhile are lost)."""
        delay = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.uri, autocommit=True, application_name=self.session
                ) as conn:
                    await conn.execute(f"LISTEN {notices.CHANNEL}")
                    self._listening = True
                    delay = 0.1
                    self._heard_gap()
                    while True:
                        async for n in conn.notifies(timeout=max(self.lease / 3, 0.2)):
                            self._heard(n.payload)
                        # quiet for a while: make sure the connection is still there
                        await conn.execute("SELECT 1")
            except psycopg.Error as e:
                if self._listening:
                    log.warning("lost the LISTEN connection (%s); opening it again", e)
                self._listening = False
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _heard_gap(self) -> None:
        """Notifications may have been missed: look at everything again."""
        self._dirty = True
        self._settings_told = True
        self.wake.set()
        for event in self._waiters.values():  # the waiters look again
            event.set()
        self._waiters.clear()
        for watch in self._watches:
            watch.tell(list(watch.ids))
        if self.schedules_told is not None:
            self.schedules_told()

    def _heard(self, payload: str) -> None:
        n = notices.decode(payload)
        if n is None:
            return
        if n.kind == "K":
            if n.node == self.node:
                self._cancel_asked(n.ids)
            return
        if n.kind == "S":
            if self.schedules_told is not None:
                self.schedules_told()
            return
        if n.kind in ("n", "w", "c", "f", "x", "r", "q"):
            self._dirty = True
            self.wake.set()
        if n.kind == "w":
            self._settings_told = True
            return
        if n.kind == "k":
            self._remove_logs(n.ids)
        if n.kind in notices.ENDED:
            ids = n.ids
            if self._telling:
                # this node's writer tells them itself once it is back from the commit,
                # with their rows (see `_write`): told here first, a `wait` read them
                self._deferred += [i for i in ids if i in self._telling]
                ids = [i for i in ids if i not in self._telling]
            self._tell(ids)
        if self.feed.active and n.kind in notices.KINDS:
            self._publish_soon(notices.KINDS[n.kind], n.ids)

    def _cancel_asked(self, ids: list[int]) -> None:
        """Another node cancelled jobs this one holds: those running are stopped (the
        dispatcher reports how they ended); those claimed and not handed out yet end here,
        without having run."""
        wanted = set(ids)
        waiting = [h for h in [*self._batch, *self._returned] if h.job.id in wanted]
        if waiting:
            self._batch = deque(h for h in self._batch if h.job.id not in wanted)
            self._returned = deque(h for h in self._returned if h.job.id not in wanted)
            now = time.time()
            for h in waiting:
                self._facts.ends.append(
                    End(h.job.id, h.node, h.claim, h.job.queue, "cancelled", now, error="cancelled")
                )
            self._facts_ready.set()
        running = [i for i in ids if i in self._handed]
        if running and self.stopper is not None:
            self.stopper(running, "cancelled")

    def _remove_logs(self, ids: list[int]) -> None:
        """Jobs cleared by any node: their logs here go too (job ids are the cluster's)."""
        logs: Path = self.settings.logs_dir
        for job_id in ids:
            with contextlib.suppress(OSError):
                (logs / f"{job_id}.log").unlink()

    def _publish_soon(self, kind: str, ids: list[int]) -> None:
        self._to_publish.append((kind, ids, time.time()))
        self._publish_ready.set()

    async def _publisher(self) -> None:
        """Job events for the feed, read after the change that a notification told of."""
        while True:
            while not self._to_publish:
                await self._publish_ready.wait()
                self._publish_ready = anyio.Event()
            batch = list(self._to_publish)
            self._to_publish.clear()
            ids = sorted({i for _, its, _ in batch for i in its})
            try:
                async with self._pool.connection() as conn:
                    jobs = {j.id: j for j in await self._jobs(conn, ids)}
            except psycopg.Error:
                continue
            self.feed.publish(
                [job_event(kind, jobs[i], at) for kind, its, at in batch for i in its if i in jobs]
            )

    def _tell(self, ids: list[int], rows: dict[int, Job] | None = None) -> None:
        for job_id in ids:
            event = self._waiters.pop(job_id, None)
            if event is not None:
                event.set()
        for watch in self._watches:
            watch.tell(ids, rows)

    # -------------------------------------------------------------- liveness
    async def _heartbeat(self) -> None:
        """Tell the cluster this node lives; reap the nodes that do not (one at a time);
        stop this node's jobs when PostgreSQL has not answered for half the lease."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._publisher)
            period = max(self.lease / 6, 0.05)
            while True:
                sent = time.monotonic()
                try:
                    with anyio.fail_after(self.lease / 3):
                        await self._beat()
                    self._contact = sent
                    self._error = None
                    if self._cut_off:
                        log.warning("in contact with PostgreSQL again: claiming jobs again")
                        self._cut_off = False
                        self._dirty = True
                        self.wake.set()
                except (psycopg.Error, TimeoutError) as e:
                    self._error = str(e).strip() or "PostgreSQL did not answer"
                silent = time.monotonic() - self._contact
                if silent > self.lease / 2 and not self._cut_off:
                    self._cut_off = True
                    log.error(
                        "no answer from PostgreSQL for %.1fs (lease %gs): stopping this node's"
                        " %d job(s) and claiming none until it answers",
                        silent,
                        self.lease,
                        len(self._handed),
                    )
                    for h in [*self._batch, *self._returned]:
                        self._facts.ends.append(
                            End(h.job.id, h.node, h.claim, h.job.queue, None, time.time())
                        )
                    self._batch.clear()
                    self._returned.clear()
                    if self.stopper is not None and self._handed:
                        self.stopper(list(self._handed), LOST_CONTACT)
                await anyio.sleep(period)

    async def _beat(self) -> None:
        async with self._tx() as conn:
            cur = await conn.execute(
                "UPDATE phxq_nodes SET heartbeat_at = now() WHERE id = %s RETURNING gone",
                (self.node,),
            )
            row = await cur.fetchone()
            if row is None or row[0] is not None:
                await self._lost_lease(conn)
                return
            cur = await conn.execute(
                "SELECT id FROM phxq_jobs WHERE node = %s AND cancel", (self.node,)
            )
            self._cancel_asked([r[0] for r in await cur.fetchall()])
            if self._waiters:
                cur = await conn.execute(
                    "SELECT id FROM phxq_jobs WHERE id = ANY(%s) AND status NOT IN " + FINISHED_SQL,
                    (list(self._waiters),),
                )
                going = {r[0] for r in await cur.fetchall()}
                self._tell([i for i in self._waiters if i not in going])
            cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (REAPER_LOCK,))
            row = await cur.fetchone()
            if row is not None and row[0]:
                await self._reap(conn)

    async def _lost_lease(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The cluster declared this node lost (it was silent past its lease): its claims
        are void. Stop what still runs here and go on as a new node."""
        log.error("this node was declared lost by the cluster: stopping its jobs, rejoining")
        if self.stopper is not None and self._handed:
            self.stopper(list(self._handed), LOST_CONTACT)
        self._batch.clear()
        self._returned.clear()
        await self._register(conn)

    async def _register(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Join the cluster as a new node (at start, and again after losing the lease:
        the claims of the old node id are void, so its facts stay fenced off)."""
        cur = await conn.execute(
            "INSERT INTO phxq_nodes (host, pid, state_dir, started_at, lease, session)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (
                self.host,
                os.getpid(),
                str(self.settings.state_dir),
                time.time(),
                self.lease,
                self.session,
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        self.node = int(row[0])
        self._lives.add(self.node)

    async def _reap(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Declare the nodes past their lease lost and fail or release their claims; in a
        savepoint that waits on no lock longer than REAP_LOCK_WAIT of the lease, so that
        a lock it cannot have delays the reaping to the next beat, never the heartbeat.

        A frozen node (SIGSTOP, a paused VM) may hold locks on its own row and on jobs it
        was claiming: PostgreSQL ends its transaction once idle for half the lease
        (`_configure`), but not one the node was sending as a pipeline (the session stays
        "active", waiting for the rest), and the reaper's UPDATE then waited for as long
        as the node was frozen, failing the reaper's own heartbeat meanwhile (its node
        took itself for cut off). So the sessions of nodes past their lease are ended
        first (`pg_terminate_backend`, found by the application_name their row keeps):
        their transactions roll back, their locks go. A woken node finds its connections
        closed and rejoins as a new node, as after any lost lease."""
        try:
            async with conn.transaction():  # a savepoint
                await conn.execute(
                    f"SET LOCAL lock_timeout = {int(self.lease * REAP_LOCK_WAIT * 1000)}"
                )
                await self._end_sessions_of_lost(conn)
                await self._reap_lost(conn)
        except psycopg.errors.LockNotAvailable:
            if not self._reap_blocked:
                log.warning("reaping waits: a lock it needs is held (tried again each beat)")
            self._reap_blocked = True
            return
        self._reap_blocked = False

    async def _end_sessions_of_lost(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            async with conn.transaction():  # a savepoint: a refusal ends only this
                await conn.execute(
                    "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a"
                    " JOIN phxq_nodes n ON a.application_name = n.session"
                    " WHERE n.gone IS NULL AND n.session IS NOT NULL"
                    " AND n.heartbeat_at < now() - make_interval(secs => n.lease)"
                    " AND a.pid <> pg_backend_pid()"
                )
        except psycopg.errors.InsufficientPrivilege as e:
            # (another role's sessions: left to idle_in_transaction_session_timeout)
            if not self._sessions_refused:
                log.warning("cannot end the sessions of a node past its lease: %s", e)
            self._sessions_refused = True

    async def _reap_lost(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute(
            "UPDATE phxq_nodes SET gone = 'lost' WHERE gone IS NULL"
            " AND heartbeat_at < now() - make_interval(secs => lease) RETURNING id, host"
        )
        lost = list(await cur.fetchall())
        # claims of nodes already gone (a safety net: none should be left)
        cur = await conn.execute(
            "SELECT DISTINCT j.node, coalesce(n.host, '?') FROM phxq_jobs j"
            " LEFT JOIN phxq_nodes n ON n.id = j.node WHERE j.node IS NOT NULL"
            " AND (n.id IS NULL OR n.gone IS NOT NULL)"
        )
        lost += await cur.fetchall()
        if not lost:
            return
        for node, host in lost:
            log.warning(
                "node %d on %s stopped answering: its jobs are retried elsewhere", node, host
            )
        await self._fail_claims(
            conn, [r[0] for r in lost], "its node stopped answering while it ran", None
        )
        await conn.execute(
            "DELETE FROM phxq_nodes WHERE gone IS NOT NULL"
            " AND heartbeat_at < now() - interval '7 days'"
        )

    async def _fail_claims(
        self,
        conn: psycopg.AsyncConnection[Any],
        nodes: list[int],
        why: str,
        kill_leftover: Callable[[Job], None] | None,
    ) -> int:
        """The claims of nodes that are gone: attempts that ran fail (retried by policy;
        cancelled if a cancel was asked), claims that did not run are released."""
        cur = await conn.execute(
            f"SELECT {rows.JOB_COLUMNS}, cancel FROM phxq_jobs WHERE node = ANY(%s)"
            " ORDER BY id FOR UPDATE",
            (nodes,),
        )
        found = await cur.fetchall()
        now = time.time()
        ended: list[tuple[int, str]] = []
        for r in found:
            job, cancel = rows.job_from_row(r[:-1]), r[-1]
            status: str | None
            error: str | None
            run_at: float | None
            if job.status != "running":
                status, error, run_at = (
                    ("cancelled", "cancelled", None) if cancel else (None, None, None)
                )
            else:
                if kill_leftover is not None:
                    kill_leftover(job)
                if cancel:
                    status, error, run_at = "cancelled", "cancelled", None
                else:
                    status, error, run_at = rows.outcome(job, None, why, now, self._rng)
            await conn.execute(
                "UPDATE phxq_jobs SET node = NULL, cancel = false, pid = NULL, pid_started = NULL,"
                " status = coalesce(%s, status), error = coalesce(%s, error),"
                " run_at = coalesce(%s, run_at),"
                " finished_at = CASE WHEN %s IN " + FINISHED_SQL + " THEN %s ELSE finished_at END,"
                " ord = CASE WHEN %s = 'retrying' THEN nextval('phxq_order') - %s ELSE ord END"
                " WHERE id = %s",
                (status, error, run_at, status, now, status, RETRY_FIRST, job.id),
            )
            ended.append((job.id, status or job.status))
        payloads = await self._after_ends(conn, ended, now)
        payloads += notices.encode("n", [i for i, st in ended if st in ("pending", "retrying")])
        await self._notify(conn, payloads)
        return sum(1 for r in found if r[3] == "running")

    # --------------------------------------------------------------- queries
    async def _jobs(self, conn: psycopg.AsyncConnection[Any], ids: list[int]) -> list[Job]:
        cur = await conn.execute(
            f"SELECT {rows.JOB_COLUMNS} FROM phxq_jobs WHERE id = ANY(%s) ORDER BY id", (ids,)
        )
        return [rows.job_from_row(r) for r in await cur.fetchall()]

    async def _read(self, func: Callable[[psycopg.AsyncConnection[Any]], Any]) -> Any:
        """A query, asked again on another connection if the one it got had broken."""
        for broken in range(10):
            try:
                async with self._pool.connection(self._connection_wait()) as conn:
                    return await func(conn)
            except PoolTimeout as e:  # (an OperationalError: see _request)
                self._error = str(e).strip()
                raise Refused("refused", f"PostgreSQL cannot be reached ({e})") from e
            except REFUSING as e:
                raise self._refusing(e) from e
            except psycopg.OperationalError as e:
                self._error = str(e).strip()
                if broken == 9:
                    raise Refused("refused", f"PostgreSQL cannot be reached ({self._error})") from e
        raise AssertionError("unreachable")

    async def find(self, job_id: int) -> Job | None:
        async def q(conn: psycopg.AsyncConnection[Any]) -> list[Job]:
            return await self._jobs(conn, [job_id])

        found: list[Job] = await self._read(q)
        return found[0] if found else None

    async def get(self, job_id: int) -> Job:
        job = await self.find(job_id)
        if job is None:
            raise Refused("not_found", f"no job {job_id}")
        return job

    async def select(
        self,
        status: str | None,
        queue: str | None,
        limit: int,
        *,
        before: int | None = None,
        label: str | None = None,
        key: str | None = None,
    ) -> list[Job]:
        limit = max(limit, 0)

        async def q(conn: psycopg.AsyncConnection[Any]) -> list[Job]:
            # newest first from the cursor down the primary key: a page never walks the table
            cur = await conn.execute(
                f"SELECT {rows.JOB_COLUMNS} FROM phxq_jobs WHERE (%s::text IS NULL OR status = %s)"
                " AND (%s::text IS NULL OR queue = %s) AND (%s::bigint IS NULL OR id < %s)"
                " AND (%s::text IS NULL OR label = %s) AND (%s::text IS NULL OR key = %s)"
                " ORDER BY id DESC LIMIT %s",
                [status, status, queue, queue, before, before, label, label, key, key, limit],
            )
            return [rows.job_from_row(r) for r in await cur.fetchall()]

        return list(await self._read(q))

    async def summary(self) -> Summary:
        async def q(conn: psycopg.AsyncConnection[Any]) -> Summary:
            cur = await conn.execute(
                "SELECT queue, status, count(*) FROM phxq_jobs GROUP BY queue, status"
            )
            counts = dict.fromkeys(STATUSES, 0)
            queues: dict[str, dict[str, int]] = {}
            total = 0
            for queue, status, n in await cur.fetchall():
                counts[status] += n
                total += n
                queues.setdefault(queue, dict.fromkeys(STATUSES, 0))[status] = n
            cur = await conn.execute(
                "SELECT queue, count(*) FROM phxq_jobs WHERE node IS NOT NULL GROUP BY queue"
            )
            busy = {q: int(n) for q, n in await cur.fetchall()}
            await self._read_settings(conn)
            rates = self._rates()
            next_start: dict[str, float] = {}
            if rates:
                cur = await conn.execute(
                    "SELECT queue, bucket_rate, bucket_burst, tokens, tokens_at FROM phxq_queues"
                    " WHERE queue = ANY(%s)",
                    (list(rates),),
                )
                now = time.time()
                for q, *bucket_row in await cur.fetchall():
                    bucket = self._bucket(rates[q], tuple(bucket_row), now)
                    if not bucket.can_take(now):
                        next_start[q] = bucket.ready_at(now)
            return Summary(
                counts,
                queues,
                total,
                sorted(self._paused),
                self._paused_all,
                dict(self._limits),
                busy,
                rates,
                next_start,
                sorted(self._rates_set),
            )

        summary: Summary = await self._read(q)
        return summary

    # ------------------------------------------------------------- schedules
    # A schedule is a row of phxq_schedules. Every node runs a Scheduler; at a fire time
    # each tries `fire`, which locks the row and checks its last fire: the first node
    # records the time and submits the job in that transaction, the others are refused
    # ("fired already"). A change is told to every node's Scheduler (notification `S`).
    async def _schedule_row(
        self, conn: psycopg.AsyncConnection[Any], name: str, lock: bool = False
    ) -> Schedule | None:
        cur = await conn.execute(
            f"SELECT {schedule_rows.COLUMNS} FROM phxq_schedules WHERE name = %s"
            + (" FOR UPDATE" if lock else ""),
            (name,),
        )
        row = await cur.fetchone()
        return None if row is None else schedule_rows.schedule_from_row(row)

    async def _save_schedule(self, conn: psycopg.AsyncConnection[Any], s: Schedule) -> None:
        await conn.execute(
            "INSERT INTO phxq_schedules (name, spec, anchor, source, paused, last_fire,"
            " last_job, last_fired_at, fired, missed)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, anchor = excluded.anchor,"
            " source = excluded.source, paused = excluded.paused,"
            " last_fire = excluded.last_fire, last_job = excluded.last_job,"
            " last_fired_at = excluded.last_fired_at, fired = excluded.fired,"
            " missed = excluded.missed",
            (
                s.spec.name,
                schedule_rows.spec_bytes(s.spec),
                s.anchor,
                s.source,
                s.paused,
                s.last_fire,
                s.last_job,
                s.last_fired_at,
                s.fired,
                s.missed,
            ),
        )

    async def set_schedule(self, spec: ScheduleSpec, now: float, source: str) -> Schedule:
        async def tx(conn: psycopg.AsyncConnection[Any]) -> Schedule:
            old = await self._schedule_row(conn, spec.name, lock=True)
            new = schedule_rows.replaced(old, spec, now, source)
            if new is None:
                assert old is not None
                return old
            await self._save_schedule(conn, new)
            await self._notify(conn, ["S"])
            return new

        s: Schedule = await self._request(tx)
        return s

    async def remove_schedule(self, name: str, source: str) -> None:
        async def tx(conn: psycopg.AsyncConnection[Any]) -> None:
            found = await self._schedule_row(conn, name, lock=True)
            schedule_rows.check_remove(found, name, source)
            await conn.execute("DELETE FROM phxq_schedules WHERE name = %s", (name,))
            await self._notify(conn, ["S"])

        await self._request(tx)

    async def pause_schedule(self, name: str, paused: bool) -> Schedule:
        async def tx(conn: psycopg.AsyncConnection[Any]) -> Schedule:
            s = await self._schedule_row(conn, name, lock=True)
            if s is None:
                raise Refused("not_found", f"no schedule {name!r}")
            if s.paused != paused:
                await conn.execute(
                    "UPDATE phxq_schedules SET paused = %s WHERE name = %s", (paused, name)
                )
                s.paused = paused
                await self._notify(conn, ["S"])
            return s

        s: Schedule = await self._request(tx)
        return s

    async def schedules(self) -> list[Schedule]:
        async def q(conn: psycopg.AsyncConnection[Any]) -> list[Schedule]:
            cur = await conn.execute(
                f"SELECT {schedule_rows.COLUMNS} FROM phxq_schedules ORDER BY name"
            )
            return [schedule_rows.schedule_from_row(r) for r in await cur.fetchall()]

        return list(await self._read(q))

    async def get_schedule(self, name: str) -> Schedule | None:
        async def q(conn: psycopg.AsyncConnection[Any]) -> Schedule | None:
            return await self._schedule_row(conn, name)

        s: Schedule | None = await self._read(q)
        return s

    async def fire(
        self,
        name: str,
        times: list[float],
        now: float,
        missed: int,
        run: bool = True,
        manual: bool = False,
    ) -> Fired:
        """See backend.Backend.fire. The row is locked first (`FOR UPDATE` reads the
        newest committed version after waiting), so the check of its last fire and the
        write of the new one are one compare-and-set: of the nodes that fire one time at
        once, one submits, the others are refused."""

        async def record(
            conn: psycopg.AsyncConnection[Any],
            last_fire: float | None,
            missed: int,
            job: Job | None = None,
            fired: int = 0,
        ) -> None:
            await conn.execute(
                "UPDATE phxq_schedules SET last_fire = coalesce(%s, last_fire),"
                " missed = missed + %s, fired = fired + %s,"
                " last_job = coalesce(%s, last_job), last_fired_at = coalesce(%s, last_fired_at)"
                " WHERE name = %s",
                (
                    last_fire,
                    missed,
                    fired,
                    None if job is None else job.id,
                    None if job is None else now,
                    name,
                ),
            )

        async def tx(conn: psycopg.AsyncConnection[Any]) -> tuple[Fired, list[Job]]:
            s = await self._schedule_row(conn, name, lock=True)
            if s is None:
                raise Refused("not_found", f"no schedule {name!r}")
            at = times
            if not manual and s.last_fire is not None and at and at[0] <= s.last_fire:
                raise Refused("refused", f"schedule {name!r} fired at {at[0]!r} already")
            if s.paused and not manual:
                # paused on another node after this one's Scheduler looked: nothing
                # fires, nothing is recorded (the resume counts the times as missed)
                return Fired(skipped="the schedule is paused"), []
            if manual:
                at = [now]
            if not at:
                return Fired(), []
            if not run and not manual:
                await record(conn, at[-1], missed + len(at))
                return Fired(skipped="missed"), []
            if s.last_job is not None and not manual:
                cur = await conn.execute(
                    "SELECT status FROM phxq_jobs WHERE id = %s", (s.last_job,)
                )
                row = await cur.fetchone()
                if row is not None and row[0] not in FINISHED:
                    if s.spec.overlap == "queue":
                        return Fired(blocked_by=s.last_job), []
                    if s.spec.overlap == "skip":
                        await record(conn, at[-1], missed + len(at))
                        why = f"job {s.last_job} of the previous firing is still {row[0]}"
                        return Fired(skipped=why), []
            key = run_key if manual else fire_key
            specs = [msgspec.structs.replace(s.spec.job, key=key(name, t)) for t in at]
            results = await self._submit(conn, specs, now)
            made = [r.job for r in results if not r.deduplicated]
            await record(
                conn,
                None if manual else at[-1],
                missed,
                made[-1] if made else None,
                len(made),
            )
            if not made:
                return Fired(job=results[-1].job, deduplicated=True), []
            return Fired(job=made[-1], jobs=made), made

        fired, made = await self._request(tx)
        for job in made:
            self.stats.jobs["submitted", job.queue] += 1
        if made:
            self._dirty = True
            self.wake.set()
        result: Fired = fired
        return result

    def health(self, count_files: bool = False) -> Health:
        return Health(
            "postgresql",
            self._error is None and not self._cut_off,
            self._error,
            self._durability,
            self._transactions,
            0,
            0,
            None,
        )

    async def wait(self, ids: list[int], timeout: float | None) -> list[Job]:
        # Watched before the first read: an end told between the read and the wait is
        # not missed (it was, and the wait then lasted a poll)
        watch = Watch(set(ids))
        self._watches.add(watch)
        try:
            return await self._wait(ids, watch, timeout)
        finally:
            self._watches.discard(watch)

    async def _wait(self, ids: list[int], watch: Watch, timeout: float | None) -> list[Job]:
        def read(wanted: set[int]) -> Callable[[psycopg.AsyncConnection[Any]], Any]:
            return lambda conn: self._jobs(conn, sorted(wanted))

        jobs: list[Job] = await self._read(read(set(ids)))
        by_id = {j.id: j for j in jobs}
        for i in ids:
            if i not in by_id:
                raise Refused("not_found", f"no job {i}")
        going = {j.id for j in jobs if not j.finished}
        watch.ids = going
        with anyio.move_on_after(timeout if timeout is not None else float("inf")):
            while going:
                # only the jobs told ended are read again (a wait for 10,000 jobs read
                # every one still going at each end); all of them after a quiet poll
                told = watch.told & going
                if not told:
                    watch.told, watch.event = set(), anyio.Event()
                    with anyio.move_on_after(POLL * 5) as quiet:
                        await watch.event.wait()
                    told = set(going) if quiet.cancelled_caught else watch.told & going
                    if not told:
                        continue  # told again of what was read already
                came = {i: j for i, j in watch.rows.items() if i in told}
                watch.told, watch.event, watch.rows = set(), anyio.Event(), {}
                rest = told - came.keys()
                fresh: list[Job] = list(came.values())
                if rest:
                    fresh += await self._read(read(rest))
                for i in told - {j.id for j in fresh}:  # cleared meanwhile
                    by_id.pop(i, None)
                    going.discard(i)
                by_id.update((j.id, j) for j in fresh)
                going -= {j.id for j in fresh if j.finished}
        with contextlib.suppress(Refused):
            if going:
                by_id.update((j.id, j) for j in await self._read(read(going)))
        return [by_id[i] for i in ids if i in by_id]

    async def log_elsewhere(self, job_id: int) -> tuple[str, bytes] | None:
        async def q(conn: psycopg.AsyncConnection[Any]) -> tuple[Any, ...] | None:
            cur = await conn.execute(
                "SELECT ran_on, ran_host, log_tail FROM phxq_jobs WHERE id = %s", (job_id,)
            )
            row: tuple[Any, ...] | None = await cur.fetchone()
            return row

        row = await self._read(q)
        if row is None or row[0] is None or row[0] in self._lives:
            return None
        ran_on, host, tail = row
        return f"{host} (node {ran_on})", bytes(tail or b"")

    def ended(self, job_id: int) -> anyio.Event:
        return self._waiters.setdefault(job_id, anyio.Event())
