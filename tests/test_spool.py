"""The spool between the sources and the prepare stage: durable appends, one reader, a disk budget.

Per-sink cursors live in the prepared store now: tests/test_prepared.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import orjson
import pytest

from conftest import REPO, make_config
from test_service import SLACK, T0, slack_doc, start_worker  # noqa: F401 - start_worker is a fixture
from worker.errors import SpoolFull
from worker.spool import Spool

MiB = 1024 * 1024


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def open_spool(tmp_path, max_bytes=64 * MiB, clock=None) -> Spool:  # noqa: ANN001
    return Spool(tmp_path / "spool.sqlite", max_bytes=max_bytes, **({"clock": clock} if clock else {}))


def release(spool: Spool, first: int, last: int) -> None:
    """What the prepare stage does with entries it prepared: commit (here: an empty record)."""
    from worker.prepared import PreparedStore
    from worker.records import PreparedRecord

    store = PreparedStore(spool, sinks=["local"], max_bytes=MiB, dimensions=4)
    store.commit(PreparedRecord([], {}), spool_first=first, spool_last=last, received_at=0.0)
    store.close()


def body(n: int, size: int = 100) -> bytes:
    return orjson.dumps([{"n": n, "pad": "x" * size}])


def seqs(entries) -> list[int]:  # noqa: ANN001
    return [e.seq for e in entries]


def test_appended_entries_are_there_after_reopening(tmp_path):
    spool = open_spool(tmp_path)
    appended = [spool.append(SLACK, body(i), 1) for i in range(3)]
    spool.close()

    spool = open_spool(tmp_path)
    entries = spool.read(limit=10)
    assert seqs(entries) == appended
    assert [orjson.loads(e.body)[0]["n"] for e in entries] == [0, 1, 2]
    assert {e.collection for e in entries} == {SLACK} and {e.documents for e in entries} == {1}
    assert spool.bytes == sum(len(body(i)) for i in range(3))
    spool.close()


def test_an_acknowledged_append_survives_kill_9(tmp_path):
    """Once append() returns (the webhook then answers 200), a SIGKILL cannot lose the entry."""
    child = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from worker.spool import Spool
        spool = Spool(Path({str(tmp_path / "spool.sqlite")!r}), max_bytes=1 << 30)
        for n in range(50):
            seq = spool.append("c", b'[{{"n": %d}}]' % n, 1)
            print(seq, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO, stdout=subprocess.PIPE)
    try:
        acknowledged = [int(proc.stdout.readline()) for _ in range(20)]
    finally:
        proc.kill()  # SIGKILL: no close, no checkpoint; maybe mid-append of a later entry
        proc.wait()
        proc.stdout.close()

    spool = open_spool(tmp_path)
    held = seqs(spool.read(limit=100))
    assert held[:20] == acknowledged
    assert held == list(range(1, len(held) + 1))  # whatever else made it is whole and in order
    spool.close()


def test_entries_are_read_in_order_and_leave_with_their_prepared_record(tmp_path):
    clock = Clock()
    spool = open_spool(tmp_path, clock=clock)
    s = [spool.append(SLACK, body(i), 1) for i in range(4)]
    clock.now += 42
    assert seqs(spool.read(limit=2)) == s[:2] and spool.oldest_age_s() == pytest.approx(42)
    release(spool, s[0], s[1])
    assert seqs(spool.read(limit=10)) == s[2:]
    assert spool.depth() == 2 and spool.bytes == len(body(2)) + len(body(3))
    spool.close()

    spool = open_spool(tmp_path)  # what was released stays released
    assert seqs(spool.read(limit=10)) == s[2:] and spool.bytes == len(body(2)) + len(body(3))
    release(spool, s[2], s[3])
    assert spool.depth() == 0 and spool.bytes == 0 and spool.oldest_age_s() is None
    assert spool.append(SLACK, body(9), 1) > s[-1]  # sequence numbers never go back
    spool.close()


def test_over_its_budget_the_spool_refuses_until_sinks_catch_up(tmp_path):
    spool = open_spool(tmp_path, max_bytes=1 * MiB)
    first = spool.append(SLACK, body(0, 600_000), 1)
    with pytest.raises(SpoolFull) as refused:
        spool.append(SLACK, body(1, 600_000), 1)
    assert refused.value.retry_after_s and refused.value.retry_after_s > 0
    assert spool.depth() == 1  # nothing half-written

    release(spool, first, first)
    spool.append(SLACK, body(1, 600_000), 1)
    assert spool.depth() == 1


def test_one_request_bigger_than_the_whole_budget_still_gets_in_when_empty(tmp_path):
    """Otherwise a single 16 MB document would be refused forever and stall Estuary."""
    spool = open_spool(tmp_path, max_bytes=1 * MiB)
    spool.append(SLACK, body(0, 2 * MiB), 1)
    with pytest.raises(SpoolFull):
        spool.append(SLACK, body(1, 10), 1)


def test_the_budget_survives_a_restart(tmp_path):
    spool = open_spool(tmp_path, max_bytes=1 * MiB)
    spool.append(SLACK, body(0, 600_000), 1)
    spool.close()
    spool = open_spool(tmp_path, max_bytes=1 * MiB)
    with pytest.raises(SpoolFull):
        spool.append(SLACK, body(1, 600_000), 1)


# -- through the webhook ----------------------------------------------------------------------------

def test_webhook_answers_503_with_retry_after_while_the_spool_is_over_budget(start_worker, tmp_path):
    client, service = start_worker(make_config(tmp_path, spool={"max_bytes": MiB}), deliver=False)
    # ~600 KB, under the 1 MiB budget; the bulk is a field the binding ignores (cheap to embed)
    big = [slack_doc(f"20.{i}", f"message {i}", at=T0 + i, blocks_raw="b" * 60_000) for i in range(10)]
    assert client.post(SLACK, big).status_code == 200

    refused = client.post(SLACK, big[::-1])
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) > 0
    assert "budget" in refused.json()["reason"]
    assert client.status()["spool"]["depth"] == 1
    assert client.metrics()['memory_worker_requests_refused_total{status="503"}'] == 1

    service.start()  # the sink catches up; Estuary's retry of the same request now gets in
    client.wait_delivered()
    assert client.post(SLACK, big[::-1]).status_code == 200


def test_a_read_stops_at_its_byte_budget_but_always_returns_one_entry(tmp_path):
    """A prepare pass is embedded and committed whole, so it must not swallow 64 MiB of backlog."""
    spool = open_spool(tmp_path)
    s = [spool.append(SLACK, body(i, 400_000), 1) for i in range(4)]  # ~400 KB each
    assert seqs(spool.read(limit=64, max_bytes=1_000_000)) == s[:3]  # stops at the crossing
    assert seqs(spool.read(limit=2, max_bytes=1_000_000)) == s[:2]
    assert seqs(spool.read(limit=64, max_bytes=10)) == s[:1]
    assert seqs(spool.read(limit=64)) == s
    release(spool, s[0], s[2])
    assert seqs(spool.read(limit=64, max_bytes=1_000_000)) == s[3:]


# -- accept latency: checkpoints off the append path, background threads below the requests ------

def test_with_background_checkpoints_no_append_checkpoints_and_the_wal_is_still_folded(tmp_path):
    import sqlite3
    import time

    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 30, checkpoint_interval_s=0.05)
    try:
        assert spool._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for i in range(12):  # ~12 MiB: SQLite's automatic checkpoint would have run ~3 times
            spool.append(SLACK, body(i, size=MiB), 1)
        deadline = time.monotonic() + 10
        while spool.checkpoints() < 2:
            assert time.monotonic() < deadline, "the background checkpointer never ran"
            time.sleep(0.02)
        probe = sqlite3.connect(str(tmp_path / "spool.sqlite"))
        try:  # everything committed has been copied into the database file
            busy, log_frames, done = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            probe.close()
        assert busy == 0 and done == log_frames
    finally:
        spool.close()
    reopened = open_spool(tmp_path)
    assert len(reopened.read(limit=20)) == 12  # nothing a checkpoint touched was lost


def test_without_the_setting_sqlite_checkpoints_as_usual(tmp_path):
    spool = open_spool(tmp_path)
    assert spool._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    assert spool.checkpoints() == 0


def test_an_append_does_not_wait_for_a_reader(tmp_path):
    """The prepare loop reading bodies (or a status scrape counting) holds the reader only."""
    import threading

    spool = open_spool(tmp_path)
    with spool._read_lock:
        done = threading.Event()
        threading.Thread(target=lambda: (spool.append(SLACK, body(1), 1), done.set()), daemon=True).start()
        assert done.wait(5), "append waited for the reader"


def test_background_threads_run_below_the_request_threads(start_worker):
    """Model, prepare, sink and checkpoint threads at server.background_nice (10); the event
    loop and the request threads keep the process's priority."""
    import sys
    import threading

    from worker.priority import thread_nice

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread nice is Linux's")
    base = thread_nice(threading.get_native_id())
    if base >= 10:
        pytest.skip(f"the test process already runs at nice {base}")
    client, _ = start_worker()
    client.post(SLACK, [slack_doc("20.1", "wakes every loop", at=T0)])
    client.wait_delivered()
    by_name = {t.name: t.native_id for t in threading.enumerate()}
    for name in ("embed-inference", "embed-collator", "prepare", "sink-local", "spool-checkpoint"):
        assert thread_nice(by_name[name]) >= 10, name
    assert thread_nice(threading.main_thread().native_id) == base  # and so the request threads
