"""The benchmark tables' arithmetic (which phxq row a peer is compared with, which way a
ratio points, how n/a rows show) and bench_ceiling's stand-in servers. The figures
themselves live in bench/, never here."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from bench import bench_ceiling
from bench.report import FSYNC, INTERVAL, NONE, Row, Table, comparisons, fmt_ratio, ratio
from bench.report import render_table as render
from phxqctl import Client
from phxqd.local.journal import scan_segment


def enqueue_table() -> Table:
    t = Table("enqueue", "jobs/s", higher_is_better=True)
    t.add(Row("phxq", "always", FSYNC, samples=[1000, 900, 1100]))
    t.add(Row("phxq", "batch", INTERVAL, samples=[3000]))
    t.add(Row("RQ", "appendfsync always", FSYNC, samples=[500]))
    t.add(Row("RQ", "appendfsync everysec", INTERVAL, samples=[6000]))
    t.add(Row("tsp", "memory", NONE, na="no durable store"))
    return t


def test_ratio_above_one_means_phxq_ahead_for_rates_and_for_times() -> None:
    assert ratio(1000, 500, higher_is_better=True) == 2.0  # twice the jobs/s
    assert ratio(10, 20, higher_is_better=False) == 2.0  # half the ms
    assert ratio(0, 20, higher_is_better=False) is None


def test_ratio_words() -> None:
    assert fmt_ratio(2.0) == "2.00x ahead"
    assert fmt_ratio(0.5) == "0.50x behind"
    assert fmt_ratio(1.01) == "1.01x even"
    assert fmt_ratio(None) == "—"


def test_peer_is_compared_with_phxq_of_the_same_durability() -> None:
    cmp = dict((line, r) for r, line in comparisons([enqueue_table()]))
    assert cmp["enqueue: RQ (appendfsync always)"] == 2.0  # median 1000 vs 500
    assert cmp["enqueue: RQ (appendfsync everysec) vs phxq batch"] == 0.5  # 3000 vs 6000
    assert not any("tsp" in line for line in cmp)


def test_rendered_table_shows_medians_ratios_and_reasons() -> None:
    text = render(enqueue_table())
    lines = text.splitlines()
    assert lines[2].startswith("| phxq | always | 1,000 | 3: 900-1,100 | — |")
    assert "| RQ | appendfsync always | 500 | 1 | 2.00x ahead |" in text
    assert "0.50x behind (vs batch)" in text
    assert lines[-1] == "| tsp | memory | n/a: no durable store |  |  |"


def test_groups_compare_within_a_group_and_na_rows_show_once() -> None:
    t = Table("status", "ms", higher_is_better=False, digits=1, group_title="queued")
    for n, phxq_ms, huey_ms in (("100,000", 0.1, 10.0), ("1,000,000", 0.2, 100.0)):
        t.add(Row("phxq", "always", samples=[phxq_ms], group=n))
        t.add(Row("huey", "FULL", samples=[huey_ms], group=n))
        t.add(Row("nq", "files", NONE, na="a process per job", group=n))
    text = render(t)
    assert text.count("100.00x ahead") == 1 and text.count("500.00x ahead") == 1
    assert text.count("a process per job") == 1
    assert "| all | nq | files | n/a: a process per job |" in text


def test_na_row_shown_once_names_what_its_groups_share() -> None:
    t = Table("status", "ms", higher_is_better=False, group_title="queued, asked from")
    for n in ("100", "1,000"):
        t.add(Row("phxq", "always", samples=[1.0], group=f"{n}, command"))
        t.add(Row("Celery", "AOF", samples=[2.0], group=f"{n}, open client"))
        t.add(Row("Celery", "AOF", na="no such command", group=f"{n}, command"))
    text = render(t)
    assert text.count("no such command") == 1
    assert "| command | Celery | AOF | n/a: no such command |" in text


def test_the_ceiling_stand_ins_take_real_submits_and_journal_them(tmp_path: Path) -> None:
    """bench_ceiling's stand-in servers must speak phxq's protocol to the real client and
    (ideal, inline) write one journal record per job, or its ceiling means nothing."""
    ctx = mp.get_context("fork")
    for kind in ("floor", "ideal", "inline"):
        root = tmp_path / kind
        root.mkdir()
        ready = ctx.Event()
        server = ctx.Process(target=bench_ceiling.stand_in, args=(kind, root, ready))
        server.start()
        try:
            assert ready.wait(30)
            with Client(root / "sock") as c:
                jobs = [c.submit(["true"]) for _ in range(5)]
            assert all(j.status == "pending" for j in jobs)
            scan = scan_segment(root / "journal")
            assert scan.tail_problem is None
            assert len(scan.events) == (0 if kind == "floor" else 5)
        finally:
            server.kill()
            server.join()
