"""Backfills on Ray Data (worker/backfill_ray.py) against the in-process path, on a local
two-CPU Ray cluster with the real model and the local store."""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")

from conftest import load_stream, make_config  # noqa: E402

pytestmark = pytest.mark.ray

SLACK = "sophia-ai/slack-messages-enriched"
GITHUB = "sophia-ai/github-enriched"
PRESETS = {SLACK: "slack_message", GITHUB: "github_document"}


def documents() -> dict[str, list[dict]]:
    """Slack and GitHub of the sample stream (edits, a delete and a late older version in each),
    without the two longest GitHub documents, to keep model time small."""
    github = [raw for raw in load_stream(GITHUB) if len(orjson.dumps(raw)) < 10_000]
    return {SLACK: load_stream(SLACK), GITHUB: github}


def newest_per_key(collection: str, raws: list[dict]) -> list[dict]:
    """What a store export holds: the newest version of each key (by the UUID's time, then its
    tick counter, read from the RFC 4122 layout rather than from worker code)."""
    from worker.config import BindingConfig
    from worker.documents import Binding

    pointers = Binding(BindingConfig(collection=collection, preset=PRESETS[collection])).key_pointers
    best: dict[tuple, tuple] = {}
    for raw in raws:
        key = tuple(str(raw[p.lstrip("/")]) for p in pointers)
        u = uuid.UUID(raw["_meta"]["uuid"])
        clock = (u.time, u.clock_seq >> 10)
        if key not in best or clock >= best[key][0]:
            best[key] = (clock, raw)
    return [raw for _, raw in best.values()]


def export_rows() -> list[dict]:
    return [{"collection": c, "document": raw} for c, raws in documents().items()
            for raw in newest_per_key(c, raws)]


def with_flags(raw: dict, flags: int, *, doc: dict | None = None) -> dict:
    """``raw`` (or ``doc``) with Gazette flags set in its UUID's clock sequence (10 low bits)."""
    u = uuid.UUID(raw["_meta"]["uuid"])
    seq = (u.clock_seq & ~0x3FF) | flags
    stamped = uuid.UUID(fields=(u.time_low, u.time_mid, u.time_hi_version, 0x80 | (seq >> 8),
                                seq & 0xFF, u.node))
    out = dict(doc if doc is not None else raw)
    out["_meta"] = {**out.get("_meta", {}), "uuid": str(stamped)}
    return out


def ack(raw: dict) -> dict:
    """An ACK document as Flow writes it after a transaction: the collection's ack template
    ``{"_meta": {"uuid": …, "ack": true}}`` (estuary/flow crates/validation/src/collection.rs)
    with an ACK_TXN (0x2) UUID of the producer's commit clock."""
    return with_flags(raw, 0x2, doc={"_meta": {"ack": True}})


def write_fragments(root: Path, collection: str, raws: list[dict]) -> Path:
    """The collection's journal as Estuary keeps it in the bucket: hive layout
    ``<collection>/<generation>/pivot=00/utc_date=…/utc_hour=…/`` and gzipped JSON-lines files
    named ``<begin offset>-<end offset>-<sha1 of the content>.gz`` (estuary/flow
    site/docs/concepts/advanced/journals.md, crates/assemble/src/lib.rs partition_template).

    Every version of every key, in transactions of 4 CONTINUE_TXN documents closed by an ACK;
    the first file also holds a transaction that is rolled back (its ACK repeats the previous
    commit clock), whose document must never be read.
    """
    journal = root / collection / "0e8e17d1f3000000" / "pivot=00"
    lines: list[dict] = []
    for start in range(0, len(raws), 4):
        txn = raws[start:start + 4]
        lines += [with_flags(raw, 0x1) for raw in txn]
        last = max(txn, key=lambda r: (uuid.UUID(r["_meta"]["uuid"]).time, uuid.UUID(r["_meta"]["uuid"]).clock_seq))
        lines.append(ack(last))
        if start == 4:  # a transaction rolled back: a newer version no reader may see
            bogus = dict(raws[0], text="ROLLED BACK: must not be indexed")
            u = uuid.UUID(raws[0]["_meta"]["uuid"])
            later = uuid.UUID(fields=(u.time_low, u.time_mid, (u.time_hi_version + 1) & 0x0FFF | 0x1000,
                                      u.clock_seq_hi_variant, u.clock_seq_low, u.node))
            lines += [with_flags({"_meta": {"uuid": str(later)}}, 0x1, doc=bogus), ack(last)]
    half = len(lines) // 2
    offset = 0
    for hour, part in (("14", lines[:half]), ("15", lines[half:])):
        body = b"".join(orjson.dumps(line) + b"\n" for line in part)
        folder = journal / "utc_date=2026-11-20" / f"utc_hour={hour}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{offset:016x}-{offset + len(body):016x}-{hashlib.sha1(body).hexdigest()}.gz"
        (folder / name).write_bytes(gzip.compress(body))
        offset += len(body)
    return root / collection


def config_in(root: Path, **overrides):
    return make_config(root, bindings=[{"collection": c, "preset": p} for c, p in PRESETS.items()],
                       embedding={"device": "cpu", "max_wait_ms": 5, "cache_max_entries": 0}, **overrides)


def table(config) -> list[dict]:
    from worker.sinks.local import LocalSink

    sink = LocalSink(Path(config.sinks.local.path))
    try:
        return sink.rows()
    finally:
        sink.close()


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    assert [r["id"] for r in got] == [r["id"] for r in want]
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k != "vector"} == {k: v for k, v in w.items() if k != "vector"}
        np.testing.assert_allclose(g["vector"], w["vector"], atol=1e-5)


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, embedder):
    """The export's documents through ``build_runtime(config).pipeline`` (validate + apply)."""
    from worker.runtime import build_runtime

    config = config_in(tmp_path_factory.mktemp("in-process"))
    rt = build_runtime(config, {}, embedder=embedder)
    try:
        stats = []
        for collection, raws in documents().items():
            docs, rejected = rt.pipeline.validate(collection, newest_per_key(collection, raws))
            assert rejected == 0
            stats.append(rt.pipeline.apply(docs))
    finally:
        rt.close()
    rows = table(config)
    assert len({r["doc_id"] for r in rows}) > 30 and len(rows) > len({r["doc_id"] for r in rows})
    return rows, stats


@pytest.fixture(scope="module")
def store_run(cluster, tmp_path_factory):
    """One Ray backfill of a gzipped JSON-lines store export into a fresh local store."""
    from worker.backfill_ray import ray_backfill

    root = tmp_path_factory.mktemp("ray-store")
    export = root / "export.jsonl.gz"
    export.write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in export_rows())))
    config = config_in(root)
    stats = ray_backfill(config, {}, [export], fmt="store", batch_docs=16)
    return config, export, stats


# -- tests ---------------------------------------------------------------------------------------

def test_store_export_backfill_equals_the_in_process_path(store_run, in_process):
    config, _, stats = store_run
    want, in_stats = in_process
    assert_same_rows(table(config), want)
    assert stats.written == sum(s.written for s in in_stats) > 0
    assert stats.deleted == sum(s.deleted for s in in_stats) >= 2
    assert stats.documents == len(export_rows()) and stats.dead_lettered == 0


def test_a_rerun_writes_and_embeds_nothing(store_run):
    from worker.backfill_ray import ray_backfill

    config, export, _ = store_run
    before = table(config)
    again = ray_backfill(config, {}, [export], fmt="store", batch_docs=16)
    assert (again.written, again.deleted, again.chunks) == (0, 0, 0)
    assert again.skipped_stale + again.unchanged == len(export_rows())
    assert table(config) == before


def test_fragments_with_every_version_give_the_newest_state(cluster, tmp_path, in_process):
    """ACKs are not documents, a rolled-back transaction is not read, older versions lose to
    the newest clock and deletes delete: the store equals the in-process newest state."""
    from worker.backfill_ray import ray_backfill

    want, _ = in_process
    config = config_in(tmp_path)
    stats = {}
    for collection, raws in documents().items():
        stats[collection] = ray_backfill(config, {}, [write_fragments(tmp_path / "bucket", collection, raws)],
                                         fmt="fragments", collection=collection, batch_docs=8)
    got = table(config)
    assert not any("ROLLED BACK" in r["text"] for r in got)
    assert_same_rows(got, want)
    assert stats[SLACK].dead_lettered == 0 and stats[SLACK].skipped_stale >= 2  # older versions


def test_failed_tasks_are_retried_and_the_result_is_exact(cluster, tmp_path, monkeypatch, in_process):
    """An embed actor's process dies in the middle of its first batch, and one CPU task raises
    a TransientError: Ray restarts and retries them, and the store is still exact (Parquet export)."""
    import cloudpickle
    import pyarrow as pa
    import pyarrow.parquet as pq

    from worker import backfill_ray
    from worker.errors import TransientError

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    killed, raised = tmp_path / "actor-killed", tmp_path / "task-raised"

    def first_time(marker: Path) -> bool:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    class DiesOnce(backfill_ray.EmbedStage):
        def __call__(self, batch):
            if first_time(killed):
                os._exit(1)
            return super().__call__(batch)

    real_prepare = backfill_ray.prepare_batch

    def raises_once(batch, **kwargs):
        if first_time(raised):
            raise TransientError("injected")
        return real_prepare(batch, **kwargs)

    monkeypatch.setattr(backfill_ray, "EmbedStage", DiesOnce)
    monkeypatch.setattr(backfill_ray, "prepare_batch", raises_once)
    rows = export_rows()
    export = tmp_path / "export.parquet"
    pq.write_table(pa.table({"collection": [r["collection"] for r in rows],
                             "document": [orjson.dumps(r["document"]).decode() for r in rows]}), export)
    config = config_in(tmp_path)
    stats = backfill_ray.ray_backfill(config, {}, [export], fmt="store", batch_docs=16)
    assert killed.exists() and raised.exists()
    assert_same_rows(table(config), in_process[0])
    assert stats.documents == len(rows)


def test_fragments_need_a_bound_collection(tmp_path):
    from worker.backfill_ray import ray_backfill
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match="bound collection"):
        ray_backfill(config_in(tmp_path), {}, [tmp_path], fmt="fragments", collection="acme/unknown")


def test_a_fragment_reader_sees_committed_documents_only():
    """Gazette's read-committed rule: an ACK commits its producer's CONTINUE_TXN documents up to
    its clock; one that repeats the last commit rolls the rest back; OUTSIDE_TXN documents stand
    alone; what waits at the end of a file is kept (its ACK is in the next fragment)."""
    from conftest import flow_uuid

    from worker.backfill_ray import committed_documents

    def doc(t: float, flags: int, name: str) -> dict:
        return {"id": name, "_meta": {"uuid": flow_uuid(t, flags=flags)}}

    lines = [doc(1, 0x1, "a"), doc(2, 0x1, "b"), doc(2, 0x2, "ack"), doc(3, 0x1, "rolled-back"),
             doc(2, 0x2, "rollback"), doc(4, 0x0, "outside"), {"_meta": {"ack": True}}, b"{oops",
             doc(5, 0x1, "next-file")]
    out = list(committed_documents(iter(x if isinstance(x, bytes) else orjson.dumps(x) for x in lines)))
    assert [d["id"] for d, _ in out if d is not None] == ["a", "b", "outside", "next-file"]
    problems = [problem for d, problem in out if d is None]
    assert len(problems) == 1 and problems[0].startswith("line 8: invalid JSON")


def test_a_worker_failure_is_raised_in_the_error_tree():
    from worker.backfill_ray import _failure
    from worker.errors import ModelError, TransientError

    stopped = _failure(RuntimeError("Traceback …\nworker.errors.ModelError: model x: weights not found\n"))
    assert isinstance(stopped, ModelError) and "weights not found" in str(stopped)
    assert isinstance(_failure(RuntimeError("node died")), TransientError)
