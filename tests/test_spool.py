"""The spool between the webhook and the sinks: durable appends, per-sink cursors, a disk budget."""

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


def open_spool(tmp_path, sinks=("local", "pinecone"), max_bytes=64 * MiB, clock=None) -> Spool:  # noqa: ANN001
    return Spool(tmp_path / "spool.sqlite", sinks=list(sinks), max_bytes=max_bytes,
                 **({"clock": clock} if clock else {}))


def body(n: int, size: int = 100) -> bytes:
    return orjson.dumps([{"n": n, "pad": "x" * size}])


def seqs(entries) -> list[int]:  # noqa: ANN001
    return [e.seq for e in entries]


def test_appended_entries_are_there_after_reopening(tmp_path):
    spool = open_spool(tmp_path)
    appended = [spool.append(SLACK, body(i), 1) for i in range(3)]
    spool.close()

    spool = open_spool(tmp_path)
    entries = spool.read("local", limit=10)
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
        spool = Spool(Path({str(tmp_path / "spool.sqlite")!r}), sinks=["local"], max_bytes=1 << 30)
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

    spool = open_spool(tmp_path, sinks=["local"])
    held = seqs(spool.read("local", limit=100))
    assert held[:20] == acknowledged
    assert held == list(range(1, len(held) + 1))  # whatever else made it is whole and in order
    spool.close()


def test_each_sink_has_its_own_cursor(tmp_path):
    spool = open_spool(tmp_path)
    s = [spool.append(SLACK, body(i), 1) for i in range(4)]
    spool.confirm("local", s[2])

    assert seqs(spool.read("local", limit=10)) == s[3:]
    assert seqs(spool.read("pinecone", limit=10)) == s
    assert seqs(spool.read("pinecone", limit=2)) == s[:2]
    positions = {p.sink: p for p in spool.positions()}
    assert (positions["local"].delivered_seq, positions["local"].behind_entries) == (s[2], 1)
    assert (positions["pinecone"].delivered_seq, positions["pinecone"].behind_entries) == (0, 4)
    spool.close()

    spool = open_spool(tmp_path)  # cursors are durable too
    assert seqs(spool.read("local", limit=10)) == s[3:]
    assert seqs(spool.read("pinecone", limit=10)) == s
    spool.close()


def test_an_entry_is_deleted_only_once_every_sink_confirmed_it(tmp_path):
    spool = open_spool(tmp_path)
    s = [spool.append(SLACK, body(i), 1) for i in range(3)]
    spool.confirm("local", s[-1])
    assert spool.depth() == 3  # pinecone still needs all three

    spool.confirm("pinecone", s[0])
    assert spool.depth() == 2 and spool.bytes == len(body(1)) + len(body(2))
    spool.confirm("pinecone", s[-1])
    assert spool.depth() == 0 and spool.bytes == 0 and spool.oldest_age_s() is None


def test_a_cursor_never_moves_backwards(tmp_path):
    spool = open_spool(tmp_path)
    s = [spool.append(SLACK, body(i), 1) for i in range(3)]
    spool.confirm("local", s[2])
    spool.confirm("local", s[0])  # a stale confirmation (e.g. a slow pass finishing late)
    assert {p.sink: p.delivered_seq for p in spool.positions()}["local"] == s[2]
    assert spool.read("local", limit=10) == []


def test_a_sink_added_later_gets_what_the_spool_still_holds(tmp_path):
    spool = open_spool(tmp_path, sinks=["local"])
    s = [spool.append(SLACK, body(i), 1) for i in range(3)]
    spool.confirm("local", s[0])
    spool.close()

    spool = open_spool(tmp_path, sinks=["local", "weaviate"])
    assert seqs(spool.read("weaviate", limit=10)) == s[1:]
    assert seqs(spool.read("local", limit=10)) == s[1:]
    spool.close()


def test_a_removed_sink_does_not_hold_entries_forever(tmp_path):
    spool = open_spool(tmp_path, sinks=["local", "pinecone"])
    s = [spool.append(SLACK, body(i), 1) for i in range(2)]
    spool.close()

    spool = open_spool(tmp_path, sinks=["local"])  # pinecone taken out of the config
    spool.confirm("local", s[-1])
    assert spool.depth() == 0


def test_errors_show_per_sink_until_the_next_confirmation(tmp_path):
    clock = Clock()
    spool = open_spool(tmp_path, clock=clock)
    seq = spool.append(SLACK, body(0), 1)
    clock.now += 42
    spool.record_error("pinecone", "SinkUnavailable: 503 from the index")
    positions = {p.sink: p for p in spool.positions()}
    assert positions["pinecone"].last_error == "SinkUnavailable: 503 from the index"
    assert positions["pinecone"].error_at == clock.now
    assert positions["pinecone"].oldest_undelivered_age_s == pytest.approx(42)
    assert spool.oldest_age_s() == pytest.approx(42)
    assert positions["local"].last_error is None

    spool.confirm("pinecone", seq)
    positions = {p.sink: p for p in spool.positions()}
    assert positions["pinecone"].last_error is None
    assert positions["pinecone"].oldest_undelivered_age_s is None


def test_over_its_budget_the_spool_refuses_until_sinks_catch_up(tmp_path):
    spool = open_spool(tmp_path, sinks=["local"], max_bytes=1 * MiB)
    first = spool.append(SLACK, body(0, 600_000), 1)
    with pytest.raises(SpoolFull) as refused:
        spool.append(SLACK, body(1, 600_000), 1)
    assert refused.value.retry_after_s and refused.value.retry_after_s > 0
    assert spool.depth() == 1  # nothing half-written

    spool.confirm("local", first)
    spool.append(SLACK, body(1, 600_000), 1)
    assert spool.depth() == 1


def test_one_request_bigger_than_the_whole_budget_still_gets_in_when_empty(tmp_path):
    """Otherwise a single 16 MB document would be refused forever and stall Estuary."""
    spool = open_spool(tmp_path, sinks=["local"], max_bytes=1 * MiB)
    spool.append(SLACK, body(0, 2 * MiB), 1)
    with pytest.raises(SpoolFull):
        spool.append(SLACK, body(1, 10), 1)


def test_the_budget_survives_a_restart(tmp_path):
    spool = open_spool(tmp_path, sinks=["local"], max_bytes=1 * MiB)
    spool.append(SLACK, body(0, 600_000), 1)
    spool.close()
    spool = open_spool(tmp_path, sinks=["local"], max_bytes=1 * MiB)
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


def test_a_failed_confirm_leaves_no_open_transaction_behind(tmp_path):
    """If confirm() fails midway (disk full, I/O error), later appends must still commit."""
    import sqlite3

    spool = open_spool(tmp_path, sinks=["local"])
    seq = spool.append(SLACK, body(0), 1)
    # Make the DELETE inside confirm() fail, as a full disk would.
    spool._conn.execute("CREATE TRIGGER fail_delete BEFORE DELETE ON entries "
                        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
    with pytest.raises(sqlite3.DatabaseError):
        spool.confirm("local", seq)
    spool._conn.execute("DROP TRIGGER fail_delete")
    appended = spool.append(SLACK, body(1), 1)

    other = sqlite3.connect(str(tmp_path / "spool.sqlite"))  # what a restart would find
    try:
        held = [r[0] for r in other.execute("SELECT seq FROM entries ORDER BY seq")]
        cursor = other.execute("SELECT seq FROM cursors WHERE sink = 'local'").fetchone()[0]
    finally:
        other.close()
    assert held == [seq, appended]
    assert cursor == 0  # the failed confirm did not half-apply


def test_a_read_stops_at_its_byte_budget_but_always_returns_one_entry(tmp_path):
    """A sink pass is written and confirmed whole, so it must not swallow 64 MiB of backlog."""
    spool = open_spool(tmp_path, sinks=["local"])
    s = [spool.append(SLACK, body(i, 400_000), 1) for i in range(4)]  # ~400 KB each
    assert seqs(spool.read("local", limit=64, max_bytes=1_000_000)) == s[:3]  # stops at the crossing
    assert seqs(spool.read("local", limit=2, max_bytes=1_000_000)) == s[:2]
    assert seqs(spool.read("local", limit=64, max_bytes=10)) == s[:1]
    assert seqs(spool.read("local", limit=64)) == s
    spool.confirm("local", s[2])
    assert seqs(spool.read("local", limit=64, max_bytes=1_000_000)) == s[3:]
