"""``memory-worker migrate`` end to end: a running service answers queries through every step.

Two migrations, with the real model and the local LanceDB store: 256-token chunks → 128-token
chunks (same vectors per text, different chunks), and mean pooling → CLS pooling of the same
weights (``models/all-minilm-l6-v2-cls.yaml``: another vector space, same dimension, the case
that silently mixes spaces when nothing keeps generations apart).
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import yaml

from tests.conftest import REPO, load_stream
from tests.test_service import QUERY_TOKEN, WEBHOOK_TOKEN, free_port, serving, slack_doc, slack_id
from worker import migrate
from worker.config import load_config
from worker.migration import open_registry
from worker.sinks.local import LocalSink

GONG = "sophia-ai/gong-calls-enriched"
SLACK = "sophia-ai/slack-messages-enriched"
QUESTIONS = ["which customer wants failover copies kept in Europe?", "pricing for research ops",
             "who asked about SSO and audit logs?", "deploy rollback incident"]


def write_yaml(tmp_path: Path, name: str, **overrides) -> Path:  # noqa: ANN003
    data = {
        "model": "all-minilm-l6-v2", "models_dir": str(REPO / "models"), "state_dir": str(tmp_path / "state"),
        "bindings": [{"collection": GONG, "preset": "gong_call"}, {"collection": SLACK, "preset": "slack_message"}],
        "embedding": {"device": "cpu", "max_wait_ms": 5, "backend": "torch"},
        "server": {"webhook_token": WEBHOOK_TOKEN, "query_token": QUERY_TOKEN, "port": free_port(),
                   "admin_port": free_port()},
        "spool": {"poll_interval_s": 0.02},
        "sinks": {"local": {"path": str(tmp_path / "lancedb")}},
    }
    data.update(overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


NEW_CONFIGS = {
    "chunking": {"chunking": {"max_tokens": 128, "overlap_tokens": 16}},
    "pooling": {"model": "all-minilm-l6-v2-cls"},
}


def table_rows(tmp_path: Path, table: str) -> dict[str, dict]:
    sink = LocalSink(tmp_path / "lancedb", table=table)
    try:
        return {r["id"]: r for r in sink.rows()}
    finally:
        sink.close()


def tables(tmp_path: Path, registry) -> dict[str, str]:  # noqa: ANN001
    """generation id → its LanceDB table."""
    return {g.id: g.targets.get("local", {}).get("table", "chunks") for g in registry.generations()}


class QueryLoop(threading.Thread):
    """AI Memory V2 asking questions over and over; every answer is kept."""

    def __init__(self, client) -> None:  # noqa: ANN001
        super().__init__(daemon=True)
        self.client = client
        self.answers: list[tuple[int, dict]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            r = self.client.query(QUESTIONS[n % len(QUESTIONS)], k=3)
            self.answers.append((r.status_code, r.json()))
            n += 1

    def generations(self) -> set[str]:
        return {body.get("generation") for _, body in self.answers}


def wait_for(predicate, what: str, timeout_s: float = 240.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("change", sorted(NEW_CONFIGS))
def test_queries_never_fail_or_mix_through_every_step(change, tmp_path, service_factory):
    old_path = write_yaml(tmp_path, "old.yaml")
    new_path = write_yaml(tmp_path, "new.yaml", **NEW_CONFIGS[change])
    old_cfg, new_cfg = load_config(old_path, {}), load_config(new_path, {})
    service = service_factory(old_cfg)
    live: list[str] = []
    with serving(service) as client:
        assert client.post(GONG, load_stream(GONG)).status_code == 200
        assert client.post(SLACK, load_stream(SLACK)).status_code == 200
        client.wait_delivered()
        loop = QueryLoop(client)
        loop.start()
        t0 = time.time()

        def post_live(i: int) -> None:  # new documents only: every answer can be checked at the end
            ts = f"{1800000000 + i}.000100"
            doc = slack_doc(ts, f"live message {i} about failover copies in Europe and audit logs",
                            at=t0 + i)
            assert client.post(SLACK, [doc]).status_code == 200
            live.append(slack_id(ts))

        registry = open_registry(Path(old_cfg.state_dir))
        old_gen = registry.serving()
        post_live(0)
        plan = migrate.plan(new_cfg, {})
        assert plan["changes"] and plan["cost"]["chunks"] > 0
        m = migrate.start(new_cfg, {})
        assert (m.old, m.phase) == (old_gen, "dual_write")
        post_live(1)
        # the service's follower backfills (it holds the lease); `backfill` shows its progress
        done = migrate.backfill(new_cfg, {}, progress=False)
        assert done["cursor"] >= m.start_head
        post_live(2)
        client.wait_delivered()
        wait_for(lambda: (registry.cursor(m.new) or 0) >= service.rt.docstore.head(), "dual-write to catch up")
        # verify: the same questions through both generations, each with its own model and targets
        asked = [q for q in orjson.loads((REPO / "examples" / "queries.json").read_bytes())
                 if q["collection"] in (GONG, SLACK)]
        (tmp_path / "queries.json").write_bytes(orjson.dumps(asked))
        report = migrate.verify(new_cfg, {}, tmp_path / "queries.json", k=3, sink=None, modes=["vector"])
        assert (report["old"]["generation"], report["new"]["generation"]) == (old_gen, m.new)
        [old_run], [new_run] = report["old"]["runs"], report["new"]["runs"]
        assert old_run["recall"] > 0.3 and 0.0 <= new_run["recall"] <= 1.0
        if change == "chunking":  # same model: smaller chunks find about as much
            assert new_run["recall"] >= old_run["recall"] - 0.2
        migrate.switch(new_cfg, {})
        wait_for(lambda: any(b.get("generation") == m.new for _, b in loop.answers[-3:]), "queries on new")
        post_live(3)
        migrate.rollback(new_cfg, {})
        wait_for(lambda: all(b.get("generation") == old_gen for _, b in loop.answers[-2:]), "queries on old")
        migrate.switch(new_cfg, {})
        post_live(4)
        client.wait_delivered()
        wait_for(lambda: (registry.cursor(m.new) or 0) >= service.rt.docstore.head(), "dual-write to catch up")
        with pytest.raises(Exception, match="primary"):  # the old generation is this service's primary
            migrate.finish(new_cfg, {}, after_s=0)
        migrate.rollback(new_cfg, {})  # finish waits; the migration is back to dual-write
        migrate.switch(new_cfg, {})
        time.sleep(0.5)
        loop.stop.set()
        loop.join(60)
    answers = list(loop.answers)

    # the service restarts on the new config (a rolling restart): the roles swap, and the old
    # generation is now the one fed from the store, so a rollback still serves it fresh
    if change == "pooling":  # the session's shared model is the old one: load the new one
        from worker.metrics import Metrics
        from worker.runtime import build_service

        service = build_service(new_cfg, {}, metrics=Metrics())
    else:
        service = service_factory(new_cfg)
    assert service.rt.generation.id == m.new
    with serving(service) as client:
        loop = QueryLoop(client)
        loop.start()
        post_live(5)
        client.wait_delivered()
        wait_for(lambda: (registry.cursor(old_gen) or 0) >= service.rt.docstore.head(), "old to follow")
        migrate.rollback(new_cfg, {})
        wait_for(lambda: all(b.get("generation") == old_gen for _, b in loop.answers[-2:]), "queries on old")
        migrate.switch(new_cfg, {})
        wait_for(lambda: any(b.get("generation") == m.new for _, b in loop.answers[-2:]), "queries on new")
        names = tables(tmp_path, registry)
        old_rows, new_rows = table_rows(tmp_path, names[old_gen]), table_rows(tmp_path, names[m.new])
        # finish: the old generation's table is dropped; queries go on from the new one
        out = migrate.finish(new_cfg, {}, after_s=0)
        assert out["dropped"] is True
        wait_for(lambda: not service.generations.others, "the service to let the old generation go")
        assert client.query(QUESTIONS[0]).json()["generation"] == m.new
        loop.stop.set()
        loop.join(60)
    answers += loop.answers

    # 0 errors, and every answer from exactly one generation, whose table holds its chunks
    assert answers and all(code == 200 for code, _ in answers), [b for c, b in answers if c != 200][:3]
    assert {b.get("generation") for _, b in answers} == {old_gen, m.new}
    for _, body in answers:
        rows = old_rows if body["generation"] == old_gen else new_rows
        for result in body["results"]:
            for chunk in result["chunks"]:
                assert chunk["id"] in rows and rows[chunk["id"]]["text"] == chunk["text"], \
                    (body["generation"], chunk["id"])
    # both generations hold every live document (dual-write both ways until finish)
    for rows in (old_rows, new_rows):
        assert set(live) <= {r["doc_id"] for r in rows.values()}
    if change == "chunking":
        assert len(new_rows) > len(old_rows)  # 128-token chunks: more of them
    else:
        shared = [i for i in old_rows if i in new_rows]
        assert shared and all(not _close(old_rows[i]["vector"], new_rows[i]["vector"]) for i in shared)
    assert names[old_gen] not in LocalSink(tmp_path / "lancedb")._db.list_tables().tables
    assert registry.migration() is None and registry.serving() == m.new
    registry.close()


def _close(a, b) -> bool:  # noqa: ANN001
    import numpy as np

    return bool(np.allclose(np.asarray(a), np.asarray(b), atol=1e-4))


def test_a_config_of_an_unknown_generation_is_refused(tmp_path, runtime_factory):
    """Writing another model's vectors (or other chunks) into the serving targets is the
    silent mix this prevents."""
    from worker.errors import ConfigError

    old = load_config(write_yaml(tmp_path, "old.yaml"), {})
    runtime_factory(old)
    new = load_config(write_yaml(tmp_path, "new.yaml", chunking={"max_tokens": 128, "overlap_tokens": 16}), {})
    with pytest.raises(ConfigError, match="migrate plan"):
        runtime_factory(new)


def test_adding_removing_or_remapping_a_binding_keeps_the_generation(tmp_path, runtime_factory):
    """Only what changes stored vectors or chunks makes a new generation: a new collection, a
    dropped one or a fixed text mapping writes into the serving targets, a privacy change of a
    binding both configs have does not."""
    from worker.errors import ConfigError

    tickets = {"collection": "acme/tickets", "source": "tickets", "key": ["/id"], "text": ["/body"]}
    first = runtime_factory(load_config(write_yaml(tmp_path, "a.yaml"), {}))
    serving = first.generation.id
    bindings = [{"collection": GONG, "preset": "gong_call"}, {"collection": SLACK, "preset": "slack_message"}]
    same = {
        "added": bindings + [tickets],
        "removed": bindings[:1] + [tickets],
        "remapped": bindings[:1] + [{**tickets, "text": ["/body", "/description"]}],
    }
    for name, b in same.items():
        rt = runtime_factory(load_config(write_yaml(tmp_path, f"{name}.yaml", bindings=b), {}))
        assert rt.generation.id == serving, name
        assert rt.config.sinks.local.table == "chunks", name  # the configured (serving) target
    registry = open_registry(tmp_path / "state")
    assert set(registry.generation(serving).parts["bindings"]) == {GONG, SLACK, "acme/tickets"}
    assert [e for e in registry.events(50) if e[1] == "extend"]  # recorded once, when tickets came
    registry.close()

    private = {**tickets, "privacy": {"default_action": "redact"}}
    with pytest.raises(ConfigError, match="migrate plan"):
        runtime_factory(load_config(write_yaml(tmp_path, "private.yaml", bindings=bindings + [private]), {}))


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def popen_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "worker.cli", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def load_files(config: Path) -> None:
    for collection, name in ((GONG, "gong-calls-enriched.jsonl"), (SLACK, "slack-messages-enriched.jsonl")):
        r = run_cli("reindex", "--config", str(config), "--collection", collection,
                    str(REPO / "examples" / "stream" / name), "--quiet")
        assert r.returncode == 0, r.stderr


def test_kill_9_during_backfill_and_switch_then_resume_exactly(tmp_path):
    old = write_yaml(tmp_path, "old.yaml")
    new = write_yaml(tmp_path, "new.yaml", chunking={"max_tokens": 128, "overlap_tokens": 16})
    load_files(old)
    assert run_cli("migrate", "start", "--config", str(new)).returncode == 0
    registry = open_registry(tmp_path / "state")
    m = registry.migration()
    rng = random.Random(14)
    kills = 0
    for _ in range(6):  # kill -9 the backfill at random instants, model load and pages alike
        proc = popen_cli("migrate", "backfill", "--config", str(new), "--quiet")
        time.sleep(rng.uniform(3.0, 12.0))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.wait()
        if (registry.cursor(m.new) or 0) >= m.start_head:
            break
    assert kills >= 1
    r = run_cli("migrate", "backfill", "--config", str(new), "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    assert registry.cursor(m.new) == m.start_head
    for delay in (0.5, 2.0, 4.0):  # and the switch
        proc = popen_cli("migrate", "switch", "--config", str(new))
        time.sleep(delay)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        phase, serving = registry.migration().phase, registry.serving()
        assert phase in ("dual_write", "switching", "switched")
        assert serving == (m.new if phase == "switched" else m.old)
    assert run_cli("migrate", "switch", "--config", str(new)).returncode == 0
    assert (registry.migration().phase, registry.serving()) == ("switched", m.new)

    # exact: the resumed backfill equals a clean rebuild of the same generation from the store
    killed = table_rows(tmp_path, tables(tmp_path, registry)[m.new])
    clean_cfg = write_yaml(tmp_path, "clean.yaml", chunking={"max_tokens": 128, "overlap_tokens": 16},
                           sinks={"local": {"path": str(tmp_path / "clean")}})
    assert run_cli("reindex", "--from-store", "--config", str(clean_cfg), "--quiet").returncode == 0
    sink = LocalSink(tmp_path / "clean", table=tables(tmp_path, registry)[m.new])
    clean = {r["id"]: r for r in sink.rows()}
    sink.close()
    registry.close()
    assert killed.keys() == clean.keys() and killed
    for i, row in clean.items():
        assert killed[i]["text"] == row["text"] and _close(killed[i]["vector"], row["vector"])


def test_a_rebuild_from_the_document_store_equals_one_from_the_original_files(tmp_path):
    files = write_yaml(tmp_path, "files.yaml")
    load_files(files)
    rebuilt = write_yaml(tmp_path, "rebuilt.yaml", sinks={"local": {"path": str(tmp_path / "rebuilt")}})
    r = run_cli("reindex", "--from-store", "--config", str(rebuilt), "--json")
    assert r.returncode == 0, r.stderr
    assert orjson.loads(r.stdout.strip().splitlines()[-1])["written"] > 0
    original = table_rows(tmp_path, "chunks")
    sink = LocalSink(tmp_path / "rebuilt")
    from_store = {r["id"]: r for r in sink.rows()}
    sink.close()
    assert original.keys() == from_store.keys() and original
    for i, row in original.items():
        other = from_store[i]
        assert {k: v for k, v in row.items() if k != "vector"} == {k: v for k, v in other.items() if k != "vector"}
        assert _close(row["vector"], other["vector"])
    # the deletes in the stream are tombstones in the store, and stay deleted in the rebuild
    from worker.docstore import DocumentStore

    store = DocumentStore(tmp_path / "state" / "documents.sqlite")
    tombstones = {row.doc_id for row in store.iter_all() if row.deleted}
    store.close()
    assert tombstones and not tombstones & {r["doc_id"] for r in from_store.values()}


def test_a_migration_on_the_pinecone_and_weaviate_emulators(tmp_path):
    """Each generation in its own Pinecone namespace and Weaviate collection; the Weaviate alias
    follows switch and rollback; finish drops the old namespace and collection."""
    from tests.emulators.pinecone import PineconeEmulator
    from tests.emulators.weaviate import WeaviateEmulator
    from worker.runtime import build_retriever, build_runtime

    try:
        from pinecone._internal.http_client import get_budget_registry

        get_budget_registry()._reset()  # the SDK's per-host budget is process-global
    except (ImportError, AttributeError):
        pass
    with PineconeEmulator(seed=3) as pc, WeaviateEmulator(seed=3) as wv:
        host = pc.create_index("memory", 384, "cosine")
        sinks = {"pinecone": {"api_key": "test-key", "index": "memory", "index_host": host,
                              "controller_host": pc.control_url, "timeout_s": 2.0},
                 "weaviate": {"url": wv.url, "grpc_host": "127.0.0.1", "grpc_port": wv.grpc_port,
                              "collection": "MemoryChunk", "alias": "Memory", "timeout_s": 2.0}}
        retry = {"max_attempts": 8, "max_elapsed_s": 30, "initial_backoff_s": 0.01, "max_backoff_s": 0.05}
        old_cfg = load_config(write_yaml(tmp_path, "old.yaml", sinks=sinks, retry=retry), {})
        new_cfg = load_config(write_yaml(tmp_path, "new.yaml", sinks=sinks, retry=retry,
                                         chunking={"max_tokens": 128, "overlap_tokens": 16}), {})
        rt = build_runtime(old_cfg, {})
        try:
            docs, _ = rt.pipeline.validate(GONG, load_stream(GONG))
            rt.pipeline.apply(docs)
        finally:
            rt.close()
        old_ids = set(pc.vectors("memory"))
        m = migrate.start(new_cfg, {})
        migrate.backfill(new_cfg, {}, progress=False)
        ns = f"__{m.new}"
        new_ids = set(pc.vectors("memory", ns))
        assert new_ids and len(new_ids) > len(old_ids)  # smaller chunks, in their own namespace
        assert set(pc.vectors("memory")) == old_ids  # the old namespace is untouched
        assert len(wv.objects(f"MemoryChunk_{m.new}")) == len(new_ids)
        migrate.switch(new_cfg, {})
        assert wv.aliases() == {"Memory": f"MemoryChunk_{m.new}"}
        for sink, ids in (("pinecone", new_ids), ("weaviate", None)):
            retriever = build_retriever(old_cfg, {}, sink=sink)  # any config: it reads the serving one
            answer = retriever.search(migrate_request(sink))
            for s in retriever.sinks.values():
                s.close()
            assert answer.results
            if ids is not None:
                assert {c.id for r in answer.results for c in r.chunks} <= ids
        migrate.rollback(new_cfg, {})
        assert wv.aliases() == {"Memory": "MemoryChunk"}
        migrate.switch(new_cfg, {})
        assert migrate.finish(new_cfg, {}, after_s=0)["dropped"] is True
        assert pc.vectors("memory") == {} and set(pc.vectors("memory", ns)) == new_ids
        assert wv.objects("MemoryChunk") == {} and wv.objects(f"MemoryChunk_{m.new}")
        assert wv.aliases() == {"Memory": f"MemoryChunk_{m.new}"}


def migrate_request(sink: str):  # noqa: ANN201
    from worker.query import parse_request

    return parse_request({"text": QUESTIONS[0], "k": 3, "sink": sink, "mode": "vector"})
