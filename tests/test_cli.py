"""``memory-worker`` check / reindex / query / dlq (worker/cli.py), as a user runs them.

Most commands run in-process through ``worker.cli.main`` (output captured, logging restored);
``check`` and a bad config also run as a real ``memory-worker`` subprocess.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from conftest import COLLECTIONS, REPO, flow_uuid, load_stream, seed_cache
from worker.cli import main

GONG, SLACK, GITHUB = COLLECTIONS
SUMMARY_FIELDS = ("documents", "chunks", "tokens", "skipped", "dead_lettered", "elapsed_s", "chunks_per_s")
HOOK_SECRET = "hook-s3cret-from-env"
DEFAULT_SECRET = "query-s3cret-default"
PINECONE_SECRET = "pc-s3cret-key"

CONFIG = """\
model: all-minilm-l6-v2
models_dir: {models}
state_dir: {root}/state
bindings:
  - collection: sophia-ai/gong-calls-enriched
    preset: gong_call
  - collection: sophia-ai/slack-messages-enriched
    preset: slack_message
  - collection: sophia-ai/github-enriched
    preset: github_document
embedding:
  device: cpu
  backend: torch
  max_wait_ms: 5
server:
  webhook_token: ${{TEST_HOOK_TOKEN:-hook-s3cret-default}}
  query_token: ${{TEST_QUERY_TOKEN:-{default_secret}}}
sinks:
  local:
    path: {root}/lancedb
"""


def cli(*argv: str) -> tuple[int, str, str]:
    """Run ``memory-worker <argv>`` in this process; returns (exit code, stdout, stderr)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(argv))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return rc, out.getvalue(), err.getvalue()


def summary_of(stdout: str) -> dict[str, str]:
    line = stdout.strip().splitlines()[-1]
    return dict(part.split("=", 1) for part in line.split())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, stream_cache):
    """A config file and a store holding the whole sample stream, loaded through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "worker.yaml"
    config.write_text(CONFIG.format(models=REPO / "models", root=root, default_secret=DEFAULT_SECRET))
    seed_cache(stream_cache, root / "state")  # vectors computed once per session
    summaries = {}
    for collection, path in COLLECTIONS.items():
        rc, out, err = cli("reindex", "--config", str(config), "--collection", collection, str(path))
        assert rc == 0, err
        summaries[collection] = (out, summary_of(out))
    return root, config, summaries


def test_reindex_prints_the_summary(workspace):
    _, _, summaries = workspace
    for collection, (out, summary) in summaries.items():
        for field in SUMMARY_FIELDS:
            assert field in summary, (field, out)
        assert int(summary["documents"]) == len(load_stream(collection))
        assert int(summary["dead_lettered"]) == 0
        assert int(summary["chunks"]) > 0 and int(summary["tokens"]) > int(summary["chunks"])
        assert float(summary["elapsed_s"]) > 0 and float(summary["chunks_per_s"]) > 0


def test_reindexing_again_skips_everything(workspace):
    root, config, summaries = workspace
    rc, out, _ = cli("reindex", "--config", str(config), "--collection", SLACK, "--json",
                     str(COLLECTIONS[SLACK]))
    assert rc == 0
    summary = json.loads(out)
    assert summary["chunks"] == 0 and summary["written"] == 0
    assert summary["skipped"] == summary["keys"] > 0
    assert summary["documents"] == int(summaries[SLACK][1]["documents"])


def test_query_json_returns_documents_with_their_best_chunks(workspace):
    _, config, _ = workspace
    rc, out, err = cli("query", "--config", str(config), "--json", "--k", "5",
                       "Acme asked for the SOC 2 report before signing")
    assert rc == 0, err
    answer = json.loads(out)
    assert answer["group"] == "document" and answer["mode"] == "hybrid" and answer["sink"] == "local"
    docs = answer["results"]
    assert len(docs) == 5 and len({d["doc_id"] for d in docs}) == 5  # one result per document
    for doc in docs:
        assert {"doc_id", "source", "collection", "title", "score", "chunks", "metadata"} <= set(doc)
        assert 1 <= len(doc["chunks"]) <= 2 and doc["chunks"][0]["score"] == doc["score"]
        assert all(c["id"].startswith(doc["doc_id"] + "#") and c["text"] for c in doc["chunks"])
    assert [d["score"] for d in docs] == sorted((d["score"] for d in docs), reverse=True)


def test_query_json_chunk_group_returns_raw_chunks(workspace):
    _, config, _ = workspace
    rc, out, err = cli("query", "--config", str(config), "--json", "--k", "5", "--group", "chunk",
                       "--mode", "vector", "Acme asked for the SOC 2 report before signing")
    assert rc == 0, err
    hits = json.loads(out)["results"]
    assert len(hits) == 5
    for hit in hits:
        assert {"id", "doc_id", "source", "score", "text", "metadata"} <= set(hit)
        assert hit["id"].startswith(hit["doc_id"] + "#")
        assert -1.0 <= hit["score"] <= 1.0 and hit["text"]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


@pytest.mark.parametrize("source", ["slack", "gong", "github"])
def test_query_source_filter_returns_only_that_source(workspace, source):
    _, config, _ = workspace
    rc, out, _ = cli("query", "--config", str(config), "--json", "--k", "20", "--source", source,
                     "renewal pricing and the security review")
    docs = json.loads(out)["results"]
    assert rc == 0 and docs
    assert {d["source"] for d in docs} == {source}
    assert all(d["doc_id"].startswith(f"{source}:") for d in docs)


def test_query_metadata_filter(workspace):
    _, config, _ = workspace
    rc, out, err = cli("query", "--config", str(config), "--json", "--k", "20",
                       "--filter", '{"labels": {"$in": ["bug"]}}', "memory search problems")
    assert rc == 0, err
    docs = json.loads(out)["results"]
    assert docs and all("bug" in d["metadata"]["labels"] for d in docs)
    rc, _, err = cli("query", "--config", str(config), "--filter", '{"labelz": "bug"}', "x")
    assert rc == 1 and "labelz" in err


def test_query_time_filter(workspace):
    _, config, _ = workspace
    rc, out, _ = cli("query", "--config", str(config), "--json", "--k", "50", "--after", "2100-01-01",
                     "anything")
    assert rc == 0 and json.loads(out)["results"] == []


def test_query_plain_output_is_readable(workspace):
    _, config, _ = workspace
    rc, out, _ = cli("query", "--config", str(config), "--k", "2", "--source", "slack", "SOC 2 report")
    assert rc == 0
    assert out.lstrip().startswith("1. ") and "[slack]" in out


def test_invalid_documents_are_dead_lettered_and_listed(workspace):
    root, config, _ = workspace
    bad = root / "bad.jsonl"
    good = {"_meta": {"uuid": flow_uuid(1_800_000_000), "op": "c"}, "channel_id": "CBAD", "ts": "1.0",
            "text": "a valid message in a bad file"}
    no_key = {"_meta": {"uuid": flow_uuid(1_800_000_000), "op": "c"}, "channel_id": "CBAD", "text": "x"}
    bad_op = dict(good, ts="2.0", _meta={"uuid": flow_uuid(1_800_000_000), "op": "upsert"})
    bad.write_bytes(b"\n".join([orjson.dumps(good), orjson.dumps(no_key), b"{not json",
                                orjson.dumps(bad_op)]) + b"\n")
    rc, out, err = cli("reindex", "--config", str(config), "--collection", SLACK, str(bad))
    assert rc == 0  # bad documents never fail the run
    summary = summary_of(out)
    assert summary["documents"] == "3" and summary["dead_lettered"] == "3"
    assert "invalid JSON" in err

    rc, out, _ = cli("dlq", "--config", str(config), "list", "--json")
    assert rc == 0
    letters = [json.loads(line) for line in out.splitlines()]
    reasons = " | ".join(e["reason"] for e in letters)
    assert len(letters) == 3
    assert "'/ts'" in reasons and "'/_meta/op'" in reasons and "invalid JSON" in reasons
    assert {e["stage"] for e in letters} == {"validate", "read"}
    rc, out, _ = cli("dlq", "--config", str(config), "list")
    assert rc == 0 and len(out.strip().splitlines()) == 3 and "'/_meta/op'" in out


def test_reindex_of_an_unbound_collection_is_refused(workspace):
    _, config, _ = workspace
    rc, _, err = cli("reindex", "--config", str(config), "--collection", "acme/unknown",
                     str(COLLECTIONS[SLACK]))
    assert rc != 0 and "acme/unknown" in err and str(config) in err


def memory_worker(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("memory-worker")
    return subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=300,
                          env={"PATH": str(exe.parent), "HF_HUB_OFFLINE": "1", **(env or {})})


def test_check_prints_a_masked_summary_and_exits_0(workspace):
    _, config, _ = workspace
    proc = memory_worker("check", "--config", str(config), env={"TEST_HOOK_TOKEN": HOOK_SECRET})
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert f"config  {config}: valid" in proc.stdout
    assert "model   all-minilm-l6-v2: 384-d" in proc.stdout
    assert "backend torch float32 (embedding.backend: torch): configured" in proc.stdout
    assert "sink    local: ok" in proc.stdout
    assert '"webhook_token": "***"' in proc.stdout and '"query_token": "***"' in proc.stdout
    for secret in (HOOK_SECRET, DEFAULT_SECRET, "hook-s3cret-default"):
        assert secret not in output


def test_check_json_counts_the_records(workspace):
    root, config, _ = workspace
    rc, out, _ = cli("check", "--config", str(config), "--json")
    assert rc == 0
    report = json.loads(out)
    assert report["ok"] is True and report["model"]["dimensions"] == 384
    assert report["sinks"]["local"]["records"] > 1000
    assert DEFAULT_SECRET not in out


def test_check_says_which_backend_auto_picked_and_why(tmp_path, openvino_state):
    from conftest import copy_int8_models

    config = tmp_path / "auto.yaml"
    config.write_text(CONFIG.format(models=REPO / "models", root=tmp_path, default_secret=DEFAULT_SECRET)
                      .replace("backend: torch", "backend: auto"))
    copy_int8_models(openvino_state.state, tmp_path / "state")  # what an earlier run left
    rc, out, err = cli("check", "--config", str(config))
    assert rc == 0, err
    line = next(x for x in out.splitlines() if x.startswith("backend "))
    assert line.startswith("backend openvino int8-static (embedding.backend: auto): auto on cpu: fastest")
    assert "passed the quality gate: mean cosine 0.9" in line and "over 96 chunks" in line
    rc, out, _ = cli("check", "--config", str(config), "--json")
    backend = json.loads(out)["backend"]
    assert backend["requested"] == "auto" and backend["backend"] == "openvino"
    assert backend["gate"]["chunks"] == 96 and backend["gate"]["min_cosine"] >= 0.97


def test_check_with_a_secret_in_an_unreachable_sink_never_prints_it(tmp_path):
    config = tmp_path / "pc.yaml"
    config.write_text(CONFIG.format(models=REPO / "models", root=tmp_path, default_secret=DEFAULT_SECRET)
                      + f"  pinecone:\n    api_key: {PINECONE_SECRET}\n    index: memory\n"
                        "    index_host: http://127.0.0.1:9\n    controller_host: http://127.0.0.1:9\n"
                        "    timeout_s: 0.5\n")
    rc, out, err = cli("check", "--config", str(config))
    assert PINECONE_SECRET not in out + err and DEFAULT_SECRET not in out + err
    assert '"api_key": "***"' in out


def test_a_bad_config_exits_non_zero_naming_the_file_and_the_key(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text(CONFIG.format(models=REPO / "models", root=tmp_path, default_secret=DEFAULT_SECRET)
                      + "chunking:\n  max_tokenz: 128\n")
    proc = memory_worker("check", "--config", str(config))
    assert proc.returncode != 0
    assert str(config) in proc.stderr and "'chunking.max_tokenz'" in proc.stderr
    assert DEFAULT_SECRET not in proc.stdout + proc.stderr


def test_max_tokens_above_the_model_exits_non_zero_saying_how_to_fix(tmp_path):
    config = tmp_path / "big.yaml"
    config.write_text(CONFIG.format(models=REPO / "models", root=tmp_path, default_secret=DEFAULT_SECRET)
                      + "chunking:\n  max_tokens: 512\n")
    rc, _, err = cli("check", "--config", str(config))
    assert rc != 0 and "chunking.max_tokens 512" in err and "at most 256" in err


def test_a_missing_config_file_is_named(tmp_path):
    rc, _, err = cli("check", "--config", str(tmp_path / "nope.yaml"))
    assert rc != 0 and str(tmp_path / "nope.yaml") in err
