"""The store after SIGKILLs and restarts equals the store without them.

The sample stream is posted to a ``memory-worker run`` subprocess the way Estuary delivers it
(serial requests, one binding per request, cut at about 1 MiB) while the process is killed with
SIGKILL at random moments (seeded) and restarted on the same state dir. Whatever did not get a
200 is sent again, exactly as Estuary retries. The final store must equal the stream applied once
into a fresh store (``indexed_stream``): same ids, text and metadata, vectors within 1e-5; no
lost, duplicate or stale chunks.

Restarts start with the session's warm embedding cache (what a restarted worker finds on disk),
so the kills land in spool appends, sink writes, ledger and cursor commits rather than in a
minute of model time.
"""

from __future__ import annotations

import random
import threading
import uuid
from dataclasses import dataclass

import httpx
import numpy as np
import orjson

from conftest import COLLECTIONS, load_stream, seed_cache
from test_service import WorkerProcess, free_port, local_rows, write_config
from worker.deadletter import DeadLetterStore

SEED = 20261125
KILLS = 5
ESTUARY_REQUEST_BYTES = 1024 * 1024


@dataclass
class Request:
    collection: str
    docs: list[dict]


def publish_time(doc: dict) -> int:
    return uuid.UUID(doc["_meta"]["uuid"]).time


def estuary_requests(max_bytes: int = ESTUARY_REQUEST_BYTES) -> list[Request]:
    """The stream as the webhook connector sends it.

    Each file keeps its delivery order; files interleave by publish time (a merge, so the
    deliberately late, older GitHub version stays late). A request holds consecutive documents
    of one binding; the size check runs before appending, so a body can pass ``max_bytes`` by one
    document.
    """
    queues = {c: load_stream(c) for c in COLLECTIONS}
    requests: list[Request] = []
    size = 0
    while any(queues.values()):
        collection = min((c for c in queues if queues[c]), key=lambda c: publish_time(queues[c][0]))
        doc = queues[collection].pop(0)
        if not requests or requests[-1].collection != collection or size >= max_bytes:
            requests.append(Request(collection, []))
            size = 2
        requests[-1].docs.append(doc)
        size += len(orjson.dumps(doc)) + 1
    return requests


def test_the_stream_is_split_like_estuary_does():
    requests = estuary_requests()
    assert sum(len(r.docs) for r in requests) == sum(len(load_stream(c)) for c in COLLECTIONS)
    assert all(a.collection != b.collection for a, b in zip(requests, requests[1:]))
    for collection in COLLECTIONS:  # each collection's own delivery order is kept
        sent = [d for r in requests if r.collection == collection for d in r.docs]
        assert sent == load_stream(collection)


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path, stream_cache, indexed_stream):
    rng = random.Random(SEED)
    requests = estuary_requests()
    # Kills are spread over the stream: a short random delay after posting a random request,
    # so they land in intake, in sink passes over the backlog, and (the last) after the last post.
    kill_at = sorted(rng.sample(range(len(requests)), KILLS - 1))
    port = free_port()
    # Small passes: many sink-write / ledger / cursor commits for the kills to land between.
    config = write_config(tmp_path, port=port, spool={"batch_entries": 3},
                          server={"shutdown_timeout_s": 30})
    seed_cache(stream_cache, tmp_path / "state")
    worker = WorkerProcess(config, port, tmp_path / "worker.log")
    acknowledged: list[int] = []
    kills: list[tuple[int, int]] = []  # (requests acknowledged, entries undelivered at restart)
    killer: threading.Timer | None = None

    def restart() -> None:
        killer.join()
        worker.start()
        kills.append((len(acknowledged), worker.client.status()["sinks"]["local"]["behind_entries"]))

    try:
        worker.start()
        i = 0
        # A kill point passed while another kill was pending still kills, during delivery.
        while i < len(requests) or killer is not None or kill_at:
            if killer is None and kill_at and i >= kill_at[0]:
                kill_at.pop(0)
                killer = threading.Timer(rng.uniform(0.0, 0.05), worker.kill)
                killer.start()
            if killer is not None and (i == len(requests) or not killer.is_alive()):
                restart()
                killer = None
                continue
            try:
                r = worker.client.post(requests[i].collection, requests[i].docs)
            except httpx.TransportError:
                assert killer is not None, "the worker went away on its own:\n" + worker.log()
                restart()  # killed mid-request: no 200, so Estuary sends it again
                killer = None
                continue
            assert r.status_code == 200, r.text
            acknowledged.append(i)
            i += 1
        killer = threading.Timer(rng.uniform(0.0, 1.0), worker.kill)  # during the last passes
        killer.start()
        restart()
        killer = None

        worker.client.wait_delivered()
        assert worker.stop(timeout_s=30) == 0, worker.log()
    finally:
        if killer is not None:
            killer.cancel()
        worker.close()

    print("kills (acknowledged, undelivered at restart):", kills)
    assert len(kills) == KILLS
    assert acknowledged == list(range(len(requests))), kills
    got, want = local_rows(tmp_path), indexed_stream.sink.rows()
    assert [r["id"] for r in got] == [r["id"] for r in want], kills  # none lost, duplicated, stale
    for g, w in zip(got, want):
        gv, wv = np.asarray(g.pop("vector")), np.asarray(w.pop("vector"))
        assert g == w, (g["id"], kills)
        assert np.allclose(gv, wv, atol=1e-5), (g["id"], kills)

    def rejected(store) -> set[tuple]:  # noqa: ANN001 - a resent request may file a document twice
        return {(e.collection, e.key, e.reason) for e in store.list()}

    dead_letters = DeadLetterStore(tmp_path / "state" / "dead_letters.sqlite")
    try:
        assert rejected(dead_letters) == rejected(indexed_stream.runtime.dead_letters)
    finally:
        dead_letters.close()
