"""kill -9 the daemon while clients submit and jobs run; every acknowledged job survives.

Each cycle starts the daemon on the same state dir, lets four clients submit (one job per
request, and small batches) while two workers run jobs, and kills it with SIGKILL once a
randomly drawn number of submits has been acknowledged, so the kill lands while requests,
fsyncs, job starts and job ends are all in flight. `make torture` runs 500 cycles.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

from phxqctl import Client, PhxqError
from phxqctl.errors import DaemonUnreachable
from phxqd.model import JobSpec
from tests.conftest import Daemon, until

CYCLES = int(os.environ.get("PHXQ_TORTURE_CYCLES", "20"))


def test_kill9_under_load_loses_no_acknowledged_job(tmp_path: Path) -> None:
    rng = random.Random(os.environ.get("PHXQ_TORTURE_SEED", "phxq"))
    d = Daemon(tmp_path)
    d.config.write_text("snapshot_bytes = 65536\nsegment_bytes = 32768\n")
    acked: set[int] = set()
    highest_seen = 0
    for cycle in range(CYCLES):
        d.start()
        check_consistent(d, acked, highest_seen, cycle)
        target = rng.randint(1, 150)
        load = Load(d.socket, target)
        threads = [threading.Thread(target=load.client, args=(b,)) for b in (1, 1, 1, 5)]
        for t in threads:
            t.start()
        assert load.reached.wait(60), f"cycle {cycle}: clients stalled\n{d.logtext()}"
        load.killed.set()
        d.kill9()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        assert load.errors == [], f"cycle {cycle}: a client failed before the kill"
        assert len(load.acked) >= target
        assert len(load.acked) == len(set(load.acked)), "an id was handed out twice"
        assert not acked & set(load.acked), "an id was reused"
        acked.update(load.acked)
        highest_seen = max(acked)
    d.start()
    check_consistent(d, acked, highest_seen, CYCLES)
    d.stop()


class Load:
    """Clients that submit until the daemon dies; `reached` fires at `target` acks."""

    def __init__(self, socket: Path, target: int) -> None:
        self.socket, self.target = socket, target
        self.acked: list[int] = []
        self.lock = threading.Lock()
        self.reached = threading.Event()
        #: set just before the daemon is killed: an error before it is a failure
        self.killed = threading.Event()
        self.errors: list[Exception] = []

    def client(self, batch: int) -> None:
        try:
            with Client(self.socket) as c:
                while True:
                    specs = [JobSpec(argv=["true"], max_retries=1) for _ in range(batch)]
                    results = c.submit_batch(specs)
                    with self.lock:
                        self.acked.extend(r.job.id for r in results)
                        if len(self.acked) >= self.target:
                            self.reached.set()
        except (DaemonUnreachable, OSError) as e:
            if not self.killed.is_set():  # only the kill may end a client
                self.errors.append(e)
        except PhxqError as e:  # a refusal, or a reply that makes no sense: never right
            self.errors.append(e)


def check_consistent(d: Daemon, acked: set[int], highest: int, cycle: int) -> None:
    with Client(d.socket) as c:
        c.pause()  # hold still, so that `list` and `status` describe the same moment
        until(lambda: c.status()["counts"]["running"] == 0, what="running jobs to end")
        jobs = c.list(limit=10**9)
        status = c.status()
        present = {j.id for j in jobs}
        missing = acked - present
        assert not missing, f"cycle {cycle}: acknowledged jobs lost: {sorted(missing)[:10]}"
        assert len(present) == len(jobs) == status["total"]
        assert sum(status["counts"].values()) == status["total"]
        for st in ("completed", "running", "pending", "retrying", "failed"):
            assert status["counts"][st] == sum(1 for j in jobs if j.status == st), st
        assert all(j.status != "failed" or j.error for j in jobs)
        probe = c.submit(["true"])
        assert probe.id > max([highest, *present - {probe.id}]), "ids must never go back"
        acked.add(probe.id)
        c.resume()
