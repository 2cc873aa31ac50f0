"""``memory-worker run``: the HTTP API and the sink loops, through a real HTTP client.

Most tests serve the real Starlette app with uvicorn on 127.0.0.1 (ephemeral port) in a
background thread, wired like :func:`worker.service.serve` but sharing the session's model.
Shutdown tests run ``memory-worker run`` as a subprocess and send it real signals.

The helpers at the top (document builders, :class:`Client`, :func:`serving`,
:class:`WorkerProcess`) are shared with ``test_intake.py`` and ``test_crash.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from conftest import REPO, flow_uuid, make_config

WEBHOOK_TOKEN = "hook-secret"
QUERY_TOKEN = "query-secret"
HOOK = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
QUERY = {"Authorization": f"Bearer {QUERY_TOKEN}"}
SLACK = "sophia-ai/slack-messages-enriched"
GONG = "sophia-ai/gong-calls-enriched"
GITHUB = "sophia-ai/github-enriched"
DELIVERY_DEADLINE_S = 120.0  # only a guard against hanging forever; never asserted on


# -- documents as Estuary sends them -------------------------------------------------------------

T0 = 1_795_000_000.0  # 2026-11-18T11:06:40Z: a publish time well in the past


def slack_doc(ts: str, text: str | None, *, at: float, op: str = "u", channel: str = "C024BE91L",
              **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"_meta": {"uuid": flow_uuid(at), "op": op}, "channel_id": channel, "ts": ts}
    if op != "d":
        doc.update(channel_name="deal-acme", user_name="leo", permalink=f"https://x.example/{ts}")
        if text is not None:
            doc["text"] = text
    doc.update(extra)
    return doc


def publish_clock(doc: dict) -> tuple[int, int]:
    """Flow's version order (shared/reference/estuary.md): ``(uuid.time, clock_seq >> 10)``."""
    u = uuid.UUID(doc["_meta"]["uuid"])
    return u.time, u.clock_seq >> 10


def slack_id(ts: str, channel: str = "C024BE91L") -> str:
    return f"slack:{channel}/{ts}"


def github_doc(doc_id: str, body: str | None, *, at: float, op: str = "u", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"_meta": {"uuid": flow_uuid(at), "op": op}, "id": doc_id}
    if op != "d":
        doc.update(kind="issue", repo="sophia-ai/ai-memory", number=412, title=f"Issue {doc_id}",
                   body=body, url=f"https://github.com/sophia-ai/ai-memory/issues/{doc_id}")
    doc.update(extra)
    return doc


def long_body(topic: str, paragraphs: int) -> str:
    """Markdown long enough to need several 256-token chunks."""
    return "\n\n".join(f"## Part {i}\n" + " ".join(f"{topic} detail {i}-{j} about latency, retries and the "
                                                   "webhook spool." for j in range(12))
                       for i in range(paragraphs))


# -- HTTP client --------------------------------------------------------------------------------

class Client:
    """Talks to a running worker the way Estuary and AI Memory V2 do."""

    def __init__(self, base_url: str, admin_url: str | None = None) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=60.0)
        #: The admin listener: /metrics, /estuary/status, /estuary/schema, the console.
        self.admin = httpx.Client(base_url=admin_url or base_url, timeout=60.0)

    def post(self, collection: str, docs: Sequence[dict] | bytes, *,
             headers: dict[str, str] | None = None) -> httpx.Response:
        """One webhook request: POST, application/json, Content-Length, a JSON array body."""
        body = docs if isinstance(docs, bytes) else orjson.dumps(list(docs))
        return self.http.post(f"/estuary/webhook/{collection}", content=body,
                              headers={"Content-Type": "application/json",
                                       **(HOOK if headers is None else headers)})

    def status(self) -> dict[str, Any]:
        r = self.admin.get("/estuary/status")
        r.raise_for_status()
        return r.json()

    def wait_delivered(self) -> dict[str, Any]:
        """Poll /estuary/status until every sink has confirmed every spooled entry."""
        deadline = time.monotonic() + DELIVERY_DEADLINE_S
        while True:
            status = self.status()
            if all(s["behind_entries"] == 0 for s in status["sinks"].values()):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"sinks never caught up: {status}")
            time.sleep(0.05)

    def query(self, text: str, *, k: int = 5, filter: dict | None = None,
              headers: dict[str, str] | None = None) -> httpx.Response:
        payload: dict[str, Any] = {"text": text, "k": k}
        if filter is not None:
            payload["filter"] = filter
        return self.http.post("/query", json=payload, headers=QUERY if headers is None else headers)

    def metrics(self) -> dict[str, float]:
        r = self.admin.get("/metrics")
        r.raise_for_status()
        return parse_prometheus(r.text)

    def close(self) -> None:
        self.http.close()
        self.admin.close()


def parse_prometheus(text: str) -> dict[str, float]:
    """``{'name{label="v"}': value}`` for every sample line of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


# -- the in-process server -----------------------------------------------------------------------

@contextlib.contextmanager
def serving(service, *, deliver: bool = True) -> Iterator[Client]:  # noqa: ANN001
    """Serve ``service`` with uvicorn on an ephemeral 127.0.0.1 port, as ``serve()`` does.

    ``deliver=False`` leaves the sink loops stopped (entries stay spooled until
    ``service.start()``), which makes spool depth and lag observable without racing them.
    """
    import uvicorn

    from worker.service import listen

    public, admin = listen("127.0.0.1", 0), listen("127.0.0.1", 0)
    admin_port = admin.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(service.app(admin_port), log_level="warning", access_log=False,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [public, admin]}, daemon=True)
    if deliver:
        service.start()
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    client = Client(f"http://127.0.0.1:{public.getsockname()[1]}", f"http://127.0.0.1:{admin_port}")
    try:
        yield client
    finally:
        client.close()
        server.should_exit = True
        thread.join(30)
        if all(loop.ident is not None for loop in service.loops):  # started
            service.drain(30)
        service.close()
        public.close()
        admin.close()


@pytest.fixture
def start_worker(service_factory):
    """``start_worker(config=None, deliver=True) -> (Client, Service)``, stopped at teardown."""
    stack = contextlib.ExitStack()

    def start(config=None, *, deliver: bool = True):  # noqa: ANN001, ANN202
        service = service_factory(config)
        return stack.enter_context(serving(service, deliver=deliver)), service

    with stack:
        yield start


def rows_of(service, doc_id: str | None = None) -> list[dict]:  # noqa: ANN001
    rows = service.rt.sinks["local"].rows()
    return [r for r in rows if doc_id is None or r["doc_id"] == doc_id]


def texts_of(service, doc_id: str) -> list[str]:  # noqa: ANN001
    return [r["text"] for r in sorted(rows_of(service, doc_id), key=lambda r: r["chunk_index"])]


def local_rows(tmp_path: Path) -> list[dict]:
    """The local store's rows, read with a fresh handle (the worker process is gone)."""
    from worker.sinks.local import LocalSink

    sink = LocalSink(tmp_path / "lancedb")
    try:
        return sink.rows()
    finally:
        sink.close()


# -- the worker as a subprocess ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, *, port: int, name: str = "worker.yaml", **overrides: Any) -> Path:
    """A YAML config like :func:`conftest.make_config`, serving on ``port``."""
    config = make_config(tmp_path, **overrides)  # validates the overrides
    data = {
        "model": config.model,
        "models_dir": str(config.models_dir),
        "state_dir": str(config.state_dir),
        "bindings": [b.model_dump(exclude_defaults=True) for b in config.bindings],
        "embedding": {"device": "cpu", "max_wait_ms": 5, "backend": "torch"},
        "server": {"webhook_token": WEBHOOK_TOKEN, "query_token": QUERY_TOKEN, "port": port,
                   "host": "127.0.0.1", "admin_port": free_port(), **overrides.get("server", {})},
        "spool": overrides.get("spool", {}),
        "sinks": {"local": {"path": str(config.sinks.local.path)}},
        "log_level": "info",
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


class WorkerProcess:
    """``memory-worker run --config FILE`` in a subprocess, its log in ``tmp_path``."""

    START_DEADLINE_S = 120.0

    def __init__(self, config: Path, port: int, log_path: Path) -> None:
        self.config = config
        admin_port = yaml.safe_load(config.read_text())["server"].get("admin_port", 9011)
        self.client = Client(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}")
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "run", "--config", str(self.config)],
                                     cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + self.START_DEADLINE_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.TransportError):
                if self.client.http.get("/healthz", timeout=2).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise AssertionError(f"worker never became healthy:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, exactly like a crash or an OOM kill."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout_s: float) -> int:
        """SIGTERM and wait; returns the exit code (raises if it outlives ``timeout_s``)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.client.close()


# -- ordering, duplicates, deletes ----------------------------------------------------------------

def test_newest_version_wins_across_requests_whatever_the_arrival_order(start_worker):
    client, service = start_worker()
    newer = slack_doc("1.1", "Edited: Acme signs the 3-year renewal", at=T0 + 60)
    older = slack_doc("1.1", "Acme is still deciding", at=T0)
    assert client.post(SLACK, [newer]).status_code == 200
    client.wait_delivered()
    assert client.post(SLACK, [older]).status_code == 200  # a late, older version
    client.wait_delivered()

    [row] = rows_of(service, slack_id("1.1"))
    assert "3-year renewal" in row["text"]
    assert row["published_at"] == pytest.approx(T0 + 60)


def test_newest_version_wins_within_one_request(start_worker):
    client, service = start_worker()
    versions = [slack_doc("2.2", f"version {n} of the message", at=T0 + n) for n in (1, 3, 2)]
    assert client.post(SLACK, versions).json()["accepted"] == 3
    client.wait_delivered()
    assert [r["text"].endswith("version 3 of the message") for r in rows_of(service, slack_id("2.2"))] == [True]


def test_replayed_requests_change_nothing(start_worker):
    """Estuary resends whole transactions after a failure: duplicates are normal."""
    client, service = start_worker()
    batch = [slack_doc(f"3.{i}", f"message {i} about the Acme deal", at=T0 + i) for i in range(5)]
    batch.append(github_doc("I_dup", long_body("dup", 6), at=T0 + 10))
    assert client.post(SLACK, batch[:5]).status_code == 200
    assert client.post(GITHUB, batch[5:]).status_code == 200
    client.wait_delivered()
    before = rows_of(service)
    upserts = client.metrics()['memory_worker_sink_upserts_total{sink="local"}']

    for _ in range(2):
        assert client.post(SLACK, batch[:5]).status_code == 200
        assert client.post(GITHUB, batch[5:]).status_code == 200
    client.wait_delivered()

    assert rows_of(service) == before
    assert len({r["id"] for r in before}) == len(before) > 6
    assert client.metrics()['memory_worker_sink_upserts_total{sink="local"}'] == upserts


def test_delete_removes_every_chunk_and_a_late_older_version_cannot_resurrect(start_worker):
    client, service = start_worker()
    doc_id = "github:I_del"
    client.post(GITHUB, [github_doc("I_del", long_body("original", 8), at=T0)])
    client.wait_delivered()
    assert len(rows_of(service, doc_id)) > 1

    client.post(GITHUB, [github_doc("I_del", None, at=T0 + 20, op="d")])
    client.wait_delivered()
    assert rows_of(service, doc_id) == []

    client.post(GITHUB, [github_doc("I_del", "an edit made before the delete", at=T0 + 10)])
    client.wait_delivered()
    assert rows_of(service, doc_id) == []

    client.post(GITHUB, [github_doc("I_del", "re-created after the delete", at=T0 + 30)])
    client.wait_delivered()
    assert texts_of(service, doc_id)[0].endswith("re-created after the delete")
    assert len(rows_of(service, doc_id)) == 1


def test_delete_and_recreate_in_one_request_keeps_the_newest(start_worker):
    client, service = start_worker()
    batch = [slack_doc("4.4", "first", at=T0), slack_doc("4.4", None, at=T0 + 1, op="d"),
             slack_doc("4.4", "second life of the message", at=T0 + 2),
             slack_doc("4.5", "will be deleted", at=T0), slack_doc("4.5", None, at=T0 + 3, op="d")]
    client.post(SLACK, batch)
    client.wait_delivered()
    assert [t.endswith("second life of the message") for t in texts_of(service, slack_id("4.4"))] == [True]
    assert rows_of(service, slack_id("4.5")) == []


def test_a_shorter_new_version_leaves_no_stale_chunks(start_worker):
    client, service = start_worker()
    client.post(GITHUB, [github_doc("I_shrink", long_body("long", 10), at=T0)])
    client.wait_delivered()
    assert len(rows_of(service, "github:I_shrink")) >= 3

    client.post(GITHUB, [github_doc("I_shrink", "Now a one-line body.", at=T0 + 5)])
    client.wait_delivered()
    rows = rows_of(service, "github:I_shrink")
    assert [(r["id"], r["chunk_count"]) for r in rows] == [("github:I_shrink#0", 1)]


# -- status, metrics, schema, probes --------------------------------------------------------------

def test_status_reports_spool_depth_lag_and_sink_positions(start_worker):
    client, service = start_worker(deliver=False)
    empty = client.status()
    assert empty["spool"]["depth"] == 0 and empty["spool"]["oldest_age_s"] is None
    assert empty["model"]["id"] == "all-minilm-l6-v2" and empty["model"]["dimensions"] == 384
    assert empty["uptime_s"] >= 0 and empty["draining"] is False

    seqs = [client.post(SLACK, [slack_doc(f"5.{i}", f"pending message {i}", at=T0 + i)]).json()["seq"]
            for i in range(3)]
    pending = client.status()
    assert pending["spool"]["depth"] == 3 and pending["spool"]["bytes"] > 0
    assert pending["spool"]["oldest_age_s"] is not None
    local = pending["sinks"]["local"]
    assert local["behind_entries"] == 3 and local["delivered_seq"] == 0 and local["lag_s"] is not None

    service.start()
    done = client.wait_delivered()
    assert done["spool"]["depth"] == 0 and done["spool"]["bytes"] == 0
    assert done["sinks"]["local"]["delivered_seq"] == max(seqs)
    assert done["sinks"]["local"]["last_error"] is None
    assert done["engine"]["chunks"] >= 3


def test_a_failing_sink_shows_in_status_and_metrics_then_recovers(start_worker):
    from worker.errors import SinkUnavailable

    client, service = start_worker(deliver=False)
    sink = service.rt.sinks["local"]
    real_upsert, recovered, attempts = sink.upsert, threading.Event(), []

    def upsert(records):  # noqa: ANN001, ANN202 - the store is down until the test says so
        attempts.append(len(records))
        if not recovered.is_set():
            raise SinkUnavailable("local store unavailable (test)")
        return real_upsert(records)

    sink.upsert = upsert
    client.post(SLACK, [slack_doc("6.1", "survives a sink outage", at=T0)])
    service.start()
    deadline = time.monotonic() + DELIVERY_DEADLINE_S
    while (failing := client.status()["sinks"]["local"])["last_error"] is None:
        assert time.monotonic() < deadline, "the failure never showed in /estuary/status"
        time.sleep(0.01)
    assert "local store unavailable" in failing["last_error"] and failing["behind_entries"] == 1
    assert client.metrics()['memory_worker_sink_errors_total{sink="local"}'] >= 1
    assert rows_of(service) == []

    recovered.set()
    status = client.wait_delivered()
    assert status["sinks"]["local"]["last_error"] is None  # cleared by the successful pass
    assert len(rows_of(service, slack_id("6.1"))) == 1
    assert len(attempts) >= 2


def test_metrics_counters_move_with_traffic(start_worker):
    client, service = start_worker()
    before = client.metrics()
    docs = [slack_doc(f"7.{i}", f"metrics message {i}", at=time.time() - 30) for i in range(4)]
    docs.append({"_meta": {"uuid": flow_uuid(T0), "op": "u"}, "channel_id": "C1"})  # no ts: invalid
    client.post(SLACK, docs)
    client.wait_delivered()
    client.post(SLACK, [slack_doc("7.0", None, at=time.time(), op="d")])
    client.wait_delivered()
    client.post(SLACK, b"{}")  # refused: 400
    after = client.metrics()

    def moved(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    c = 'collection="sophia-ai/slack-messages-enriched"'
    assert moved(f"memory_worker_documents_received_total{{{c}}}") == 6
    assert moved(f"memory_worker_documents_accepted_total{{{c}}}") == 5
    assert moved('memory_worker_documents_dead_lettered_total{stage="validate"}') == 1
    assert moved('memory_worker_requests_refused_total{status="400"}') == 1
    assert moved("memory_worker_chunks_embedded_total") >= 4
    assert moved("memory_worker_tokens_embedded_total") > moved("memory_worker_chunks_embedded_total")
    assert moved("memory_worker_embedding_batches_total") >= 1
    assert moved("memory_worker_embedding_seconds_total") > 0
    assert moved('memory_worker_sink_upserts_total{sink="local"}') == 4
    assert moved('memory_worker_sink_deletes_total{sink="local"}') == 1
    assert moved('memory_worker_end_to_end_lag_seconds_count{sink="local"}') == 4
    # published 30 s ago, so every observation is in a bucket at or above 30 s
    assert after['memory_worker_end_to_end_lag_seconds_bucket{le="10.0",sink="local"}'] == 0
    assert after["memory_worker_spool_entries"] == 0 and after["memory_worker_spool_bytes"] == 0
    assert after['memory_worker_sink_behind_entries{sink="local"}'] == 0
    text = client.admin.get("/metrics").text
    assert "# TYPE memory_worker_sink_retries_total counter" in text


def test_a_record_the_sink_refuses_is_dead_lettered_and_counted(start_worker):
    from worker.sinks.base import UpsertOutcome

    client, service = start_worker(deliver=False)
    sink = service.rt.sinks["local"]
    real_upsert = sink.upsert

    def upsert(records):  # noqa: ANN001, ANN202 - the store refuses one record for good
        refused = [r for r in records if r.doc_id == slack_id("13.2")]
        outcome = real_upsert([r for r in records if r not in refused])
        return UpsertOutcome(outcome.written, {r.id: "metadata too large (test)" for r in refused})

    sink.upsert = upsert
    client.post(SLACK, [slack_doc("13.1", "kept", at=T0), slack_doc("13.2", "refused", at=T0)])
    service.start()
    status = client.wait_delivered()

    assert [r["doc_id"] for r in rows_of(service)] == [slack_id("13.1")]
    assert status["dead_letters"] == 1
    [entry] = service.rt.dead_letters.list()
    assert entry.stage == "sink:local" and "metadata too large" in entry.reason
    assert client.metrics()['memory_worker_documents_dead_lettered_total{stage="sink:local"}'] == 1


def test_spool_gauges_show_undelivered_entries(start_worker):
    client, service = start_worker(deliver=False)
    body = orjson.dumps([slack_doc("8.1", "waiting in the spool", at=T0)])
    client.post(SLACK, body)
    m = client.metrics()
    assert m["memory_worker_spool_entries"] == 1
    assert m["memory_worker_spool_bytes"] == len(body)
    assert m['memory_worker_sink_behind_entries{sink="local"}'] == 1


def test_schema_describes_each_bound_collection(start_worker):
    client, _ = start_worker()
    schema = client.admin.get("/estuary/schema").json()
    assert set(schema) == {SLACK, GONG, GITHUB}
    assert set(schema[SLACK]["required"]) >= {"_meta", "channel_id", "ts"}
    assert schema[GONG]["required"] == ["_meta", "call_id"]
    assert schema[GITHUB]["properties"]["_meta"]["properties"]["op"] == {"enum": ["c", "u", "d"]}


def test_health_and_readiness_and_draining(start_worker):
    client, service = start_worker()
    assert client.http.get("/healthz").status_code == 200
    ready = client.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["spool"] is True
    assert ready.json()["parked"] == {}

    assert service.drain(30)
    assert client.http.get("/healthz").status_code == 200
    assert client.http.get("/readyz").status_code == 503
    refused = client.post(SLACK, [slack_doc("9.1", "sent while draining", at=T0)])
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
    assert client.status()["spool"]["depth"] == 0


# -- POST /query --------------------------------------------------------------------------------

def _seed_for_query(client: Client) -> None:
    client.post(SLACK, [slack_doc("10.1", "Acme asked for the SOC 2 report before signing", at=T0),
                        slack_doc("10.2", "Lunch order for Friday: pizza", at=T0 + 100)])
    client.post(GITHUB, [github_doc("I_q", "SOC 2 audit evidence export fails with a timeout", at=T0 + 200)])
    client.wait_delivered()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic cXVlcnktc2VjcmV0"},
                                     {"Authorization": "Bearer wrong"}, HOOK])
def test_query_needs_the_query_token(start_worker, headers):
    client, _ = start_worker()
    assert client.query("SOC 2", headers=headers).status_code == 401
    assert client.query("SOC 2").status_code == 200


def test_query_filters_by_source_collection_and_publish_time(start_worker):
    client, _ = start_worker()
    _seed_for_query(client)
    hits = client.query("SOC 2 report", k=10).json()["results"]
    assert {h["doc_id"] for h in hits} == {slack_id("10.1"), slack_id("10.2"), "github:I_q"}
    assert hits[0]["score"] >= hits[-1]["score"]

    def ids(f: dict) -> set[str]:
        r = client.query("SOC 2 report", k=10, filter=f)
        assert r.status_code == 200, r.text
        return {h["doc_id"] for h in r.json()["results"]}

    assert ids({"source": "github"}) == {"github:I_q"}
    assert ids({"collection": SLACK}) == {slack_id("10.1"), slack_id("10.2")}
    assert ids({"published_after": T0 + 50}) == {slack_id("10.2"), "github:I_q"}
    assert ids({"published_before": "2026-11-18T11:07:00Z", "source": "slack"}) == {slack_id("10.1")}


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"text": ""}', b'{"text": "x", "k": 0}',
                                  b'{"text": "x", "filter": {"no_such_field": "me"}}',
                                  b'{"text": "x", "filter": {"published_after": "yesterday"}}'])
def test_query_rejects_bad_requests_with_a_reason(start_worker, body):
    client, _ = start_worker()
    r = client.http.post("/query", content=body, headers=QUERY)
    assert r.status_code == 400 and r.json()["reason"]


def test_query_answers_like_the_cli(start_worker, tmp_path, capsys):
    from worker.cli import main

    client, _ = start_worker()
    _seed_for_query(client)
    config = write_config(tmp_path, port=free_port())
    assert main(["query", "--config", str(config), "--json", "--k", "3", "SOC 2 report"]) == 0
    cli = orjson.loads(capsys.readouterr().out)
    assert client.query("SOC 2 report", k=3).json() == cli
    assert cli["group"] == "document" and cli["mode"] == "hybrid" and len(cli["results"]) == 3


# -- graceful shutdown (a real process, real signals) ---------------------------------------------

def post_until_refused(client: Client, first: int) -> tuple[list[dict], str]:
    """Keep posting during a shutdown until refused; returns (documents accepted, how refused)."""
    accepted = []
    for n in range(first, first + 100_000):
        doc = slack_doc(f"11.{n}", f"posted during shutdown {n}", at=T0 + n)
        try:
            r = client.post(SLACK, [doc])
        except httpx.TransportError:
            return accepted, "connection refused"  # already gone: Estuary retries later
        if r.status_code == 200:  # the signal handler had not run yet: this must survive too
            accepted.append(doc)
            continue
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0, r.text
        return accepted, "503"
    raise AssertionError("never refused")


def test_sigterm_drains_refuses_new_posts_and_loses_nothing(tmp_path):
    from conftest import load_stream

    timeout_s = 20.0
    port = free_port()
    config = write_config(tmp_path, port=port, server={"shutdown_timeout_s": timeout_s})
    worker = WorkerProcess(config, port, tmp_path / "worker.log").start()
    try:
        messages = load_stream(SLACK)
        r = worker.client.post(SLACK, messages)
        assert r.status_code == 200 and r.json()["accepted"] == len(messages)

        # A request in flight at SIGTERM: headers and half the body sent, the rest after.
        slow = [slack_doc("12.1", "in flight when the signal came", at=T0)]
        body = orjson.dumps(slow)
        half_sent, signalled, in_flight = threading.Event(), threading.Event(), {}

        def upload() -> Iterator[bytes]:
            yield body[:20]
            half_sent.set()
            signalled.wait(30)
            yield body[20:]

        def send() -> None:
            with httpx.Client(base_url=worker.client.base_url, timeout=60) as http:
                in_flight["response"] = http.post(
                    f"/estuary/webhook/{SLACK}", content=upload(),
                    headers={**HOOK, "Content-Type": "application/json", "Content-Length": str(len(body))})

        sender = threading.Thread(target=send)
        sender.start()
        half_sent.wait(30)
        time.sleep(0.3)  # the handler has started reading the body
        worker.proc.send_signal(signal.SIGTERM)
        accepted, _ = post_until_refused(worker.client, 0)
        signalled.set()
        sender.join(30)
        assert in_flight["response"].status_code == 200, in_flight["response"].text
        accepted += slow
        assert worker.proc.wait(timeout=timeout_s) == 0, worker.log()

        worker.start()  # same state dir: whatever was accepted and not delivered is still spooled
        worker.client.wait_delivered()
        assert worker.stop(timeout_s=timeout_s) == 0, worker.log()
    finally:
        worker.close()

    live = {}
    for doc in [*messages, *accepted]:  # the newest version of each key, deletes applied
        key = slack_id(doc["ts"], doc["channel_id"])
        if key not in live or publish_clock(doc) >= publish_clock(live[key]):
            live[key] = doc
    expected = {k for k, d in live.items() if d["_meta"]["op"] != "d" and d.get("text", "").strip()}
    assert {r["doc_id"] for r in local_rows(tmp_path)} == expected


def test_sigterm_during_a_long_pass_still_exits_in_time_and_redelivers(tmp_path, stream_cache):
    """A pass longer than the budget is abandoned unconfirmed; the next start redoes it."""
    from conftest import load_stream, seed_cache

    timeout_s = 3.0
    port = free_port()
    config = write_config(tmp_path, port=port, server={"shutdown_timeout_s": timeout_s})
    worker = WorkerProcess(config, port, tmp_path / "worker.log").start()
    try:
        calls = load_stream(GONG)  # hundreds of long chunks: many seconds of model time
        assert worker.client.post(GONG, calls).status_code == 200
        deadline = time.monotonic() + DELIVERY_DEADLINE_S
        while worker.client.status()["engine"]["batches"] == 0:  # the pass is embedding now
            assert time.monotonic() < deadline
            time.sleep(0.01)

        worker.proc.send_signal(signal.SIGTERM)
        accepted, _ = post_until_refused(worker.client, 0)
        assert worker.proc.wait(timeout=timeout_s) == 0, worker.log()
        # on this hardware the pass outlives the budget; on a GPU it may simply finish first
        assert "sink pass still running" in worker.log() or 'msg="drained"' in worker.log()

        # Restart with the vectors a previous run would have cached, so redelivery costs
        # chunking and writes only (the cache is a cache: vectors are the same either way).
        state = tmp_path / "state"
        for leftover in state.glob("embeddings.sqlite*"):
            leftover.unlink()
        seed_cache(stream_cache, state)
        worker.start()
        worker.client.wait_delivered()
        assert worker.stop(timeout_s=20) == 0, worker.log()
    finally:
        worker.close()

    stored = {r["doc_id"] for r in local_rows(tmp_path)}
    assert stored == {f"gong:{c['call_id']}" for c in calls} | {slack_id(d["ts"]) for d in accepted}
