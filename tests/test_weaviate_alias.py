"""Weaviate collection aliases (index generations), through the real ``weaviate-client``.

What a user relies on: readers querying an alias get the objects of the collection it points at;
repointing swaps the whole answer at once, with no error and no mixed answer in between; pointing
again (after a crash or a lost answer) changes nothing; a collection an alias still serves cannot be
dropped; a server without aliases is refused with its version named. The emulator's ``/v1/aliases``
is checked against the server's wire contract (weaviate v1.33.0, cited in the emulator).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.emulators.weaviate import SERVER_VERSION, WeaviateEmulator
from tests.test_sinks_weaviate import FAST, Sleeps, handmade, raw_client
from worker.config import RetryConfig
from worker.errors import ConfigError, SinkMismatch
from worker.records import QueryFilter, VectorRecord
from worker.sinks.weaviate import WeaviateSink, WeaviateSinkConfig
from worker.sinks.weaviate_alias import supports_aliases

OLD = "MemoryChunk"
NEW = "MemoryChunk_g1a2b3c4d"
ALIAS = "MemoryServing"
DIMS = 8


@pytest.fixture
def emu() -> Iterator[WeaviateEmulator]:
    with WeaviateEmulator(seed=11) as emulator:
        yield emulator


@pytest.fixture
def make_sink(emu):
    built: list[WeaviateSink] = []

    def make(collection: str = OLD, *, target: WeaviateEmulator | None = None,
             retry: RetryConfig = FAST, sleep=None, timeout_s: float = 2.0) -> WeaviateSink:
        server = target or emu
        sink = WeaviateSink(WeaviateSinkConfig(url=server.url, grpc_port=server.grpc_port,
                                               collection=collection, timeout_s=timeout_s),
                            retry, sleep=sleep if sleep is not None else Sleeps())
        built.append(sink)
        return sink

    yield make
    for sink in built:
        sink.close()


def generation(make_sink, collection: str, source: str, docs: int = 3) -> list[VectorRecord]:
    """A generation collection holding ``docs`` documents of ``source`` (2 chunks each)."""
    sink = make_sink(collection)
    sink.ensure(DIMS, "cosine")
    records = [r for i in range(docs)
               for r in handmade(f"{source}-{i}", 2, DIMS, seed=i, source=source)]
    assert sink.upsert(records).written == len(records)
    return records


def writes(emu: WeaviateEmulator) -> list[str]:
    return [r.method for r in emu.requests if r.op in ("aliases_create", "aliases_update",
                                                        "aliases_delete")]


def test_query_through_the_alias_returns_the_target_collections_objects(emu, make_sink):
    old = generation(make_sink, OLD, "gong")
    generation(make_sink, NEW, "slack")
    admin = make_sink(OLD)
    admin.point_alias(ALIAS, OLD)

    assert admin.alias_target(ALIAS) == OLD
    reader = make_sink(ALIAS)  # a reader configured with the alias, as external readers are
    hits = reader.query(np.ones(DIMS, np.float32), 100, QueryFilter())
    assert sorted(h.id for h in hits) == sorted(r.id for r in old)
    client = raw_client(emu)
    try:
        answer = client.collections.use(ALIAS).query.fetch_objects(limit=100)
        assert {o.collection for o in answer.objects} == {OLD}
        assert len(answer.objects) == len(old)
    finally:
        client.close()


def test_writes_through_the_alias_land_in_its_target(emu, make_sink):
    generation(make_sink, OLD, "gong", docs=1)
    generation(make_sink, NEW, "slack", docs=1)
    make_sink(OLD).point_alias(ALIAS, NEW)

    extra = handmade("written-via-alias", 2, DIMS, seed=9, source="github")
    writer = make_sink(ALIAS)
    assert writer.upsert(extra).written == 2
    assert {r.uuid for r in extra} <= set(emu.objects(NEW))
    assert not {r.uuid for r in extra} & set(emu.objects(OLD))
    writer.delete_document(extra[0].doc_id)
    assert not {r.uuid for r in extra} & set(emu.objects(NEW))


def test_repointing_is_atomic_for_readers(emu, make_sink):
    generation(make_sink, OLD, "gong")
    generation(make_sink, NEW, "slack")
    admin = make_sink(OLD)
    admin.point_alias(ALIAS, OLD)
    reader = make_sink(ALIAS)
    answers: list[set[str]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                hits = reader.query(np.ones(DIMS, np.float32), 100, QueryFilter())
                answers.append({h.source for h in hits})
            except BaseException as exc:  # noqa: BLE001 - the assertion below reports it
                errors.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in range(12):
            wanted = NEW if i % 2 == 0 else OLD
            admin.point_alias(ALIAS, wanted)
            assert admin.alias_target(ALIAS) == wanted
            time.sleep(0.02)  # let the reader get answers from each target
    finally:
        stop.set()
        thread.join(30)
    assert errors == []
    assert answers and all(len(sources) == 1 for sources in answers), \
        [s for s in answers if len(s) != 1][:3]
    assert {"gong"} in answers and {"slack"} in answers
    assert reader.query(np.ones(DIMS, np.float32), 100, QueryFilter())[0].source == "gong"
    assert "DELETE" not in writes(emu)  # a repoint is one update, never drop-and-create


def test_pointing_again_changes_nothing(emu, make_sink):
    generation(make_sink, OLD, "gong", docs=1)
    admin = make_sink(OLD)
    admin.point_alias(ALIAS, OLD)
    assert writes(emu) == ["POST"]

    admin.point_alias(ALIAS, OLD)
    admin.point_alias(ALIAS[0].lower() + ALIAS[1:], OLD[0].lower() + OLD[1:])  # server spelling
    assert writes(emu) == ["POST"]
    assert emu.aliases() == {ALIAS: OLD}


def test_a_create_whose_answer_was_lost_is_finished_by_the_retry(emu, make_sink):
    """The first create lands but its answer times out; the retry meets "alias already exists"
    and must read that as done, not as a failure."""
    generation(make_sink, OLD, "gong", docs=1)
    emu.faults.add("aliases_create", "deadline", times=1, stall_s=0.8, then_apply=True)
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # outlast the stalled request, so it lands first
        slept.append(seconds)
        time.sleep(2.0)

    admin = make_sink(OLD, sleep=sleep, timeout_s=0.4)
    admin.point_alias(ALIAS, OLD)

    assert admin.alias_target(ALIAS) == OLD
    creates = emu.calls("aliases_create")
    assert len(creates) == 2 and creates[1].status == 422
    assert len(slept) == 1


def test_point_alias_refuses_names_that_cannot_work(emu, make_sink):
    generation(make_sink, OLD, "gong", docs=1)
    generation(make_sink, NEW, "slack", docs=1)
    admin = make_sink(OLD)

    with pytest.raises(ConfigError, match="name of collection"):
        admin.point_alias(NEW, OLD)
    with pytest.raises(ConfigError, match="does not exist"):
        admin.point_alias(ALIAS, "MemoryChunk_gmissing")
    admin.point_alias(ALIAS, OLD)
    with pytest.raises(ConfigError, match="is an alias"):
        admin.point_alias("Other", ALIAS)
    with pytest.raises(ConfigError, match="differs only in case"):
        admin.point_alias(ALIAS.upper(), NEW)
    assert emu.aliases() == {ALIAS: OLD}


def test_a_served_collection_cannot_be_dropped(emu, make_sink):
    generation(make_sink, OLD, "gong", docs=1)
    generation(make_sink, NEW, "slack", docs=1)
    admin = make_sink(OLD)
    admin.point_alias(ALIAS, NEW)

    with pytest.raises(ConfigError, match=ALIAS):
        admin.drop_collection(NEW)
    with pytest.raises(ConfigError, match="is an alias"):
        admin.drop_collection(ALIAS)  # Weaviate would answer 200 and delete nothing
    assert emu.objects(NEW) and emu.calls("schema_delete") == []

    admin.drop_collection(OLD)  # nothing points there: the old generation goes
    assert emu.objects(OLD) == {} and admin.alias_target(ALIAS) == NEW
    admin.drop_collection(OLD)  # already gone: fine
    admin.drop_alias(ALIAS)
    admin.drop_alias(ALIAS)  # already gone: fine
    assert admin.alias_target(ALIAS) is None
    admin.drop_collection(NEW)
    assert emu.objects(NEW) == {}


@pytest.mark.parametrize("version", ["1.31.2", "1.27.0"])
def test_a_server_without_aliases_is_refused_with_its_version(make_sink, version):
    with WeaviateEmulator(version=version) as old_server:
        sleeps = Sleeps()
        admin = make_sink(OLD, target=old_server, sleep=sleeps)
        admin.ensure(DIMS, "cosine")
        for call in (lambda: admin.point_alias(ALIAS, OLD), lambda: admin.alias_target(ALIAS),
                     lambda: admin.drop_alias(ALIAS)):
            with pytest.raises(SinkMismatch) as caught:
                call()
            assert version in str(caught.value) and "1.32" in str(caught.value)
            assert "upgrade" in str(caught.value)
        assert sleeps == []  # a fatal error is not retried
        assert not [r for r in old_server.requests if r.op.startswith("aliases_")]
        admin.drop_collection(OLD)  # no aliases can exist there, so nothing guards the drop
        assert old_server.objects(OLD) == {} and not raw_exists(old_server, OLD)


def raw_exists(emu: WeaviateEmulator, name: str) -> bool:
    client = raw_client(emu)
    try:
        return client.collections.exists(name)
    finally:
        client.close()


def test_supports_aliases_reads_server_versions():
    assert supports_aliases("1.32.0") and supports_aliases("1.33.0-rc.1") and supports_aliases("2.0.1")
    assert supports_aliases("1.31.9") is False and supports_aliases("v1.9.0") is False
    assert supports_aliases("") is None and supports_aliases("dev") is None


# -- the emulator's wire contract (weaviate v1.33.0) --------------------------------------------


def test_emulator_speaks_the_alias_endpoints_like_the_server(emu, make_sink):
    generation(make_sink, OLD, "gong", docs=1)
    generation(make_sink, NEW, "slack", docs=1)
    http = httpx.Client(base_url=f"{emu.url}/v1")
    try:
        created = http.post("/aliases", json={"alias": "memoryServing", "class": "memoryChunk"})
        assert (created.status_code, created.json()) == (200, {"alias": ALIAS, "class": OLD})
        refusals = [
            ({"alias": ALIAS, "class": NEW}, f"create alias: {ALIAS}, alias already exists"),
            ({"alias": ALIAS.lower(), "class": NEW}, "create alias: Memoryserving, alias already exists"),
            ({"alias": NEW, "class": OLD}, f"create alias: class {NEW} already exists"),
            ({"alias": "Other", "class": "Missing"}, "class does not exist"),
            ({"alias": "bad-name!", "class": OLD}, "is not a valid alias name"),
        ]
        for body, message in refusals:
            answer = http.post("/aliases", json=body)
            assert answer.status_code == 422, body
            assert message in answer.json()["error"][0]["message"]

        assert http.get("/aliases/memoryServing").json() == {"alias": ALIAS, "class": OLD}
        missing = http.get("/aliases/Nope")
        assert (missing.status_code, missing.content) == (404, b"")
        assert http.get("/aliases").json() == {"aliases": [{"alias": ALIAS, "class": OLD}]}
        assert http.get("/aliases", params={"class": NEW}).json() == {"aliases": []}
        assert http.get("/aliases", params={"class": "Missing"}).json() == {"aliases": []}

        moved = http.put(f"/aliases/{ALIAS}", json={"class": NEW})
        assert (moved.status_code, moved.json()) == (200, {"alias": ALIAS, "class": NEW})
        assert http.put("/aliases/Nope", json={"class": NEW}).status_code == 404
        assert http.put(f"/aliases/{OLD}", json={"class": NEW}).status_code == 404  # a collection
        assert http.put(f"/aliases/{ALIAS}", json={"class": "Missing"}).status_code == 422

        # collection management does not resolve aliases; reading the schema does
        assert http.get(f"/schema/{ALIAS}").json()["class"] == NEW
        clash = http.post("/schema", json={"class": ALIAS, "vectorizer": "none"})
        assert clash.status_code == 422
        assert f"alias name {ALIAS} already exists" in clash.json()["error"][0]["message"]
        assert http.delete(f"/schema/{ALIAS}").status_code == 200
        assert emu.objects(NEW)

        assert http.delete(f"/aliases/{ALIAS}").status_code == 204
        assert http.delete(f"/aliases/{ALIAS}").status_code == 404
    finally:
        http.close()


def test_emulator_keeps_aliases_of_a_deleted_collection(emu, make_sink):
    generation(make_sink, NEW, "slack", docs=1)
    admin = make_sink(NEW)
    admin.point_alias(ALIAS, NEW)
    client = raw_client(emu)
    try:
        client.collections.delete(NEW)  # deleting a collection does not delete its aliases
        assert client.alias.get(alias_name=ALIAS).collection == NEW
        with pytest.raises(Exception, match=f"could not find class {NEW}"):
            client.collections.use(ALIAS).query.fetch_objects()
    finally:
        client.close()


def test_emulator_version_is_configurable():
    assert supports_aliases(SERVER_VERSION)
    with WeaviateEmulator(version="1.31.0") as old_server:
        meta = httpx.get(f"{old_server.url}/v1/meta").json()
        assert meta["version"] == "1.31.0"
        assert httpx.get(f"{old_server.url}/v1/aliases").status_code == 404  # no such path yet
