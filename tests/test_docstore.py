"""The document store and the generation fingerprint: pure, no model."""

from __future__ import annotations

import gzip
import hashlib

import orjson
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_config
from worker.docstore import DocumentStore, StoreWrite
from worker.generation import diff_parts, generation_of, generation_targets, targeted
from worker.modelspec import load_spec


def doc(key: str, version: int, text: str = "", *, deleted: bool = False) -> StoreWrite:
    body = {"_meta": {"op": "d" if deleted else "u"}, "key": key, "text": text}
    return StoreWrite("c", key, version, deleted, body)


def test_the_newest_version_wins_and_a_late_older_one_is_ignored(tmp_path):
    store = DocumentStore(tmp_path / "d.sqlite")
    assert store.put_many([doc("a", 2, "two"), doc("b", 1, "b")]) == 2
    assert store.put_many([doc("a", 1, "one")]) == 0  # older: ignored
    assert store.get("c", "a").document["text"] == "two"
    store.put_many([doc("a", 3, deleted=True)])
    row = store.get("c", "a")
    assert row.deleted and row.version == 3  # the tombstone is kept
    assert store.stats().documents == 1 and store.stats().deleted == 1


def test_every_write_takes_a_new_change_number_even_an_equal_redelivery(tmp_path):
    """A follower at seq N has seen the newest state of every row with seq <= N."""
    store = DocumentStore(tmp_path / "d.sqlite")
    store.put_many([doc("a", 1), doc("b", 1)])
    head = store.head()
    store.put_many([doc("a", 1)])
    changed = store.changes(head)
    assert [r.doc_id for r in changed] == ["a"] and changed[0].seq == head + 1
    assert [r.doc_id for r in store.changes(0)] == ["b", "a"]  # one row per key, in change order
    assert store.min_seq(["a", "b"]) == store.get("c", "b").seq


def test_export_round_trips_as_json_lines_and_parquet(tmp_path):
    store = DocumentStore(tmp_path / "d.sqlite")
    store.put_many([doc("a", 1, "x" * 1000), doc("b", 2, deleted=True)])
    assert store.export(tmp_path / "e.jsonl.gz") == 2
    lines = [orjson.loads(line) for line in gzip.open(tmp_path / "e.jsonl.gz").read().splitlines()]
    assert [(r["collection"], r["document"]["key"]) for r in lines] == [("c", "a"), ("c", "b")]
    assert store.export(tmp_path / "e.parquet", fmt="parquet") == 2
    table = pq.read_table(tmp_path / "e.parquet").to_pylist()
    assert orjson.loads(table[0]["document"])["text"] == "x" * 1000
    stats = store.stats()
    assert stats.compressed_bytes < stats.raw_bytes  # zstd


def spec(name: str = "all-minilm-l6-v2"):  # noqa: ANN201
    return load_spec(name, models_dir=None, env={})


@pytest.mark.parametrize("change", [
    {"chunking": {"max_tokens": 128, "overlap_tokens": 16}},
    {"bindings": [{"collection": "sophia-ai/gong-calls-enriched", "preset": "gong_call",
                   "privacy": {"default_action": "pseudonymize"}}],
     "privacy": {"pseudonym_secret": "one-secret-value"}},
])
def test_what_changes_stored_vectors_or_text_changes_the_generation(tmp_path, change):
    base = make_config(tmp_path)
    assert generation_of(make_config(tmp_path, **change), spec()).id != generation_of(base, spec()).id


def test_the_model_and_the_pseudonym_secret_change_it_and_sink_settings_do_not(tmp_path):
    base = make_config(tmp_path)
    assert generation_of(base, spec("all-minilm-l6-v2-cls")).id != generation_of(base, spec()).id
    other_path = make_config(tmp_path, sinks={"local": {"path": str(tmp_path / "elsewhere")}},
                             server={"port": 9999, "admin_port": 9998})
    assert generation_of(other_path, spec()).id == generation_of(base, spec()).id
    bind = [{"collection": "sophia-ai/gong-calls-enriched", "preset": "gong_call",
             "privacy": {"default_action": "pseudonymize"}}]
    one = make_config(tmp_path, bindings=bind, privacy={"pseudonym_secret": "secret-number-one"})
    two = make_config(tmp_path, bindings=bind, privacy={"pseudonym_secret": "secret-number-two"})
    g1, g2 = generation_of(one, spec()), generation_of(two, spec())
    assert g1.id != g2.id
    assert "secret-number-one" not in orjson.dumps(g1.parts).decode()
    assert diff_parts(g1.parts, g2.parts) == [f"pseudonym_secret: \"{g1.parts['pseudonym_secret']}\" → "
                                              f"\"{g2.parts['pseudonym_secret']}\""]


def test_each_generation_gets_its_own_target_and_pinecone_a_new_index_for_a_new_dimension(tmp_path):
    pinecone = {"api_key": "k", "index": "memory", "namespace": "prod"}
    config = make_config(tmp_path, sinks={"local": {"path": str(tmp_path / "l")}, "pinecone": pinecone,
                                          "weaviate": {"url": "http://127.0.0.1:8080"}})
    old = generation_of(config, spec())
    new = generation_of(make_config(tmp_path, chunking={"max_tokens": 128, "overlap_tokens": 16}), spec())
    targets = generation_targets(config, new, base_parts=old.parts)
    assert targets["local"] == {"table": f"chunks__{new.id}"}
    assert targets["weaviate"] == {"collection": f"MemoryChunk_{new.id}"}
    assert targets["pinecone"] == {"namespace": f"prod__{new.id}"}  # same dimension: same index
    wider = dict(old.parts, model={**old.parts["model"], "dimensions": 768})
    assert generation_targets(config, new, base_parts=wider)["pinecone"]["index"] == f"memory-{new.id}"
    pointed = targeted(config, targets)
    assert pointed.sinks.local.table == f"chunks__{new.id}" and config.sinks.local.table == "chunks"


def test_a_masked_store_document_screens_to_what_its_raw_one_does(tmp_path):
    """``documents.store: masked`` keeps documents as masked; a rebuild screens them again. The
    second mask must change nothing: same key, version, text, title, url and metadata."""
    from tests.conftest import COLLECTIONS, load_stream
    from worker.documents import Binding
    from worker.screen import Screen

    presets = {"sophia-ai/gong-calls-enriched": "gong_call", "sophia-ai/slack-messages-enriched": "slack_message",
               "sophia-ai/github-enriched": "github_document"}
    config = make_config(tmp_path, bindings=[{"collection": c, "preset": p, "privacy": {"default_action": "pseudonymize"}}
                                             for c, p in presets.items()],
                         privacy={"pseudonym_secret": "a-test-pseudonym-secret"})
    screen = Screen({b.collection: Binding(b) for b in config.bindings}, secret=b"a-test-pseudonym-secret")
    seen = masked_something = 0
    for collection in COLLECTIONS:
        for raw in load_stream(collection):
            first = screen.screen(collection, raw).document
            masked = screen.masked_raw(collection, raw)
            again = screen.screen(collection, masked).document
            assert (first is None) == (again is None)
            if first is None:
                continue
            fields = ("doc_id", "version", "sections", "title", "url", "context", "metadata")
            assert [getattr(again, f) for f in fields] == [getattr(first, f) for f in fields], first.doc_id
            masked_something += masked != raw
            seen += 1
    assert seen > 50 and masked_something >= 5  # the stream has PII to mask, and it was masked


def _gen(bindings: dict, chunking: int = 256):  # noqa: ANN202
    from worker.generation import Generation

    parts = {"model": {"id": "m"}, "chunking": {"max_tokens": chunking}, "pseudonym_secret": None,
             "bindings": bindings}
    fp = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return Generation(f"g{fp[:10]}", fp, parts)


def test_the_registry_maps_a_compatible_config_to_its_generation_and_refuses_ambiguity(tmp_path):
    from worker.errors import ConfigError
    from worker.migration import open_registry

    plain, masked = {"chunker": None, "privacy": None}, {"chunker": None, "privacy": {"default_action": "redact"}}
    registry = open_registry(tmp_path)
    a = _gen({"x": plain, "y": plain})
    registry.adopt(a, config_yaml="a", config_path="a.yaml")
    # one more binding: the same generation, with it recorded; another chunking: unknown
    with_z = _gen({"x": plain, "y": plain, "z": plain})
    assert registry.identify(with_z).id == a.id
    registry.extend(registry.identify(with_z), config_yaml="a+z", config_path="az.yaml")
    assert set(registry.generation(a.id).parts["bindings"]) == {"x", "y", "z"}
    assert registry.generation(a.id).config_yaml == "a+z"
    assert registry.identify(_gen({"x": plain}, chunking=128)).id != a.id
    assert registry.identify(_gen({"x": masked})).id != a.id  # a shared binding's policy differs
    # a migration a → b (x masked): a config without x fits both sides, so it is refused
    b = _gen({"x": masked, "y": plain, "z": plain})
    registry.register(b, config_yaml="b", config_path="b.yaml", targets={"local": {"table": "t_b"}})
    registry.begin(a.id, b.id, 0)
    with pytest.raises(ConfigError, match="fits both generations"):
        registry.identify(_gen({"y": plain}))
    assert registry.identify(_gen({"x": masked, "y": plain})).id == b.id
    # a binding added mid-migration would reach one side only: refused until it ends
    with pytest.raises(ConfigError, match="in progress"):
        registry.extend(registry.identify(_gen({"x": plain, "w": plain})), config_yaml="a+w", config_path="aw.yaml")
    assert "w" not in registry.generation(a.id).parts["bindings"]
    registry.close()


def test_a_lease_of_a_dead_process_on_this_host_is_taken_at_once(tmp_path):
    """kill -9 leaves a lease until it expires; a dead local owner's is taken immediately, a
    live one's or another host's is not."""
    import subprocess
    import sys

    from worker.migration import open_registry, owner_alive, owner_id

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = owner_id("backfill").rsplit(":", 1)[0] + f":{dead.pid}"
    assert owner_alive(owner_id("service")) and not owner_alive(gone)
    assert owner_alive("backfill:some-other-host:1")
    registry = open_registry(tmp_path)
    assert registry.acquire("follow:g1", gone, 60)
    assert registry.acquire("follow:g1", owner_id("backfill"), 60)  # taken from the dead one
    assert not registry.acquire("follow:g1", "backfill:some-other-host:1", 60)  # held by a live one
    assert any(e[1] == "lease" for e in registry.events())
    registry.close()
