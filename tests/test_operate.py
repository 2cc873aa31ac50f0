"""Operating the worker: the two listeners, the admin token, metric conventions, secrets kept
out of status, ``--version`` and ``MEMORY_WORKER_CONFIG`` (issue 13).

Metrics are parsed with prometheus_client's own text parser, not by hand.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, make_config
from test_service import (
    DELIVERY_DEADLINE_S,
    QUERY,
    QUERY_TOKEN,
    SLACK,
    T0,
    WEBHOOK_TOKEN,
    slack_doc,
    start_worker,  # noqa: F401 - the fixture
)

ADMIN_TOKEN = "admin-t0ken-for-tests"


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


# -- the two listeners ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/metrics", "/estuary/status", "/estuary/schema", "/console/"])
def test_admin_routes_are_not_on_the_public_listener(start_worker, path):
    client, _ = start_worker()
    assert client.http.get(path).status_code == 404
    assert client.admin.get(path).status_code == 200


def test_public_routes_are_not_on_the_admin_listener(start_worker):
    client, _ = start_worker()
    body = b'[{"ts": "1.1"}]'
    assert client.admin.post(f"/estuary/webhook/{SLACK}", content=body).status_code == 404
    assert client.admin.post("/query", json={"text": "x"}, headers=QUERY).status_code == 404
    assert client.http.post("/query", json={"text": "x"}, headers=QUERY).status_code == 200
    for listener in (client.http, client.admin):  # probes answer on both
        assert listener.get("/healthz").status_code == 200


def test_listeners_must_differ():
    from worker.errors import ConfigError

    with pytest.raises(ConfigError, match="admin_port 9010 is server.port too"):
        make_config(REPO, server={"port": 9010, "admin_port": 9010})
    assert make_config(REPO, server={"admin_port": None}).server.admin_port is None


# -- the admin token ------------------------------------------------------------------------------

@pytest.fixture
def guarded(start_worker, tmp_path):
    config = make_config(tmp_path, server={"webhook_token": WEBHOOK_TOKEN, "query_token": QUERY_TOKEN,
                                           "admin_token": ADMIN_TOKEN})
    return start_worker(config)


def test_the_admin_token_guards_metrics_status_and_schema(guarded):
    client, _ = guarded
    for path in ("/metrics", "/estuary/status", "/estuary/schema"):
        refused = client.admin.get(path)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert client.admin.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.admin.get(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
    # the other listener's tokens do not open this one
    assert client.admin.get("/metrics", headers={"Authorization": f"Bearer {QUERY_TOKEN}"}).status_code == 401


def test_a_person_signs_in_once_and_keeps_a_session_cookie_not_the_token(guarded):
    client, _ = guarded
    page = client.admin.get("/console/dead-letters?stage=validate", headers={"Accept": "text/html"})
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=/console/dead-letters%3Fstage%3Dvalidate"
    assert client.admin.post("/login", data={"token": "nope", "next": "/console/"}).status_code == 401

    signed = client.admin.post("/login", data={"token": ADMIN_TOKEN, "next": "/console/dead-letters"})
    assert signed.status_code == 303 and signed.headers["location"] == "/console/dead-letters"
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and ADMIN_TOKEN not in cookie
    assert client.admin.get("/estuary/status").status_code == 200  # the cookie now travels

    client.admin.post("/logout")
    client.admin.cookies.clear()
    assert client.admin.get("/estuary/status").status_code == 401


def test_login_never_redirects_off_site(guarded):
    client, _ = guarded
    for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        r = client.admin.post("/login", data={"token": ADMIN_TOKEN, "next": target})
        assert r.status_code == 303 and r.headers["location"] == "/console/"


# -- secrets stay out of status ---------------------------------------------------------------------

def test_a_secret_a_vendor_echoes_in_its_error_is_masked_in_status(start_worker):
    from worker.errors import SinkUnavailable

    client, service = start_worker(deliver=False)
    sink = service.rt.sinks["local"]
    leaked = (f"HTTP 403 from the vendor: request had Authorization: Bearer {WEBHOOK_TOKEN} and "
              f"api_key={QUERY_TOKEN}; retry with sk-proj-Zx81kQ3vNw0pL5mT7yR2aB9c")

    def upsert(records):  # noqa: ANN001, ANN202 - the vendor refuses, echoing what it was sent
        raise SinkUnavailable(leaked)

    sink.upsert = upsert
    client.post(SLACK, [slack_doc("13.1", "a document the store refuses", at=T0)])
    service.start()
    deadline = time.monotonic() + DELIVERY_DEADLINE_S
    while (status := client.admin.get("/estuary/status")).json()["sinks"]["local"]["last_error"] is None:
        assert time.monotonic() < deadline, "the failure never showed in /estuary/status"
        time.sleep(0.02)
    shown = status.json()["sinks"]["local"]["last_error"]
    assert "HTTP 403 from the vendor" in shown  # the reason stays readable
    for secret in (WEBHOOK_TOKEN, QUERY_TOKEN, "sk-proj-Zx81kQ3vNw0pL5mT7yR2aB9c"):
        assert secret not in status.text
    assert "***" in shown and "[API_KEY]" in shown


def test_the_scrubber_masks_known_values_and_detected_secrets_only():
    from worker.scrub import Scrubber

    s = Scrubber(["pcsk_live_93jd8s", "abc"])  # too short to replace verbatim: "abc"
    assert s.text("key pcsk_live_93jd8s refused") == "key *** refused"
    assert s.text("abc is fine") == "abc is fine"
    assert s.text("https://bob:hunter22@db.example/x") == "https://[URL_CREDENTIALS]@db.example/x"
    assert s.text("email ops@example.com, index memory-v2") == "email ops@example.com, index memory-v2"
    assert s.tree({"a": ["pcsk_live_93jd8s", 3, None]}) == {"a": ["***", 3, None]}


# -- metric conventions -------------------------------------------------------------------------

def _traffic(client) -> None:  # noqa: ANN001
    assert client.post(SLACK, [slack_doc("14.1", "Acme renewal moved to Q3", at=T0),
                               slack_doc("14.2", "SOC 2 report sent to Acme", at=T0)]).status_code == 200
    assert client.post(SLACK, [{"text": "no ts, no channel: invalid"}]).json()["dead_lettered"] == 1
    client.wait_delivered()
    assert client.query("Acme renewal").status_code == 200


def test_metrics_follow_prometheus_conventions(start_worker):
    from worker import __version__

    client, _ = start_worker()
    _traffic(client)
    text = client.admin.get("/metrics").text
    fams = families(text)
    assert not [n for n in text.splitlines() if "_created" in n]
    assert "memory_worker_up" not in fams  # Prometheus's own `up` says that
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "python_gc_objects_collected",
                 "python_info"):
        assert name in fams, name
    for fam in fams.values():
        if not fam.name.startswith("memory_worker_"):
            continue
        if fam.type == "counter":
            assert all(s.name.endswith("_total") for s in fam.samples), fam.name
        if fam.type == "histogram":
            assert fam.name.endswith("_seconds"), fam.name
        assert not re.search(r"_(ms|milliseconds|kb|mb|percent)\b", fam.name), fam.name
    got = samples(text)
    build = [labels for (name, labels), v in got.items() if name == "memory_worker_build_info" and v == 1]
    assert build == [(("backend", "torch"), ("device", "cpu"), ("model", "all-minilm-l6-v2"),
                      ("version", __version__))]


def test_latency_histograms_and_counters_move_with_traffic(start_worker):
    client, _ = start_worker()
    _traffic(client)
    got = samples(client.admin.get("/metrics").text)

    def count(name: str, **labels: str) -> float:
        return got[(f"{name}_count", tuple(sorted(labels.items())))]

    assert count("memory_worker_webhook_accept_seconds") == 2
    assert count("memory_worker_spool_append_seconds") == 1  # the invalid request spooled nothing
    assert count("memory_worker_query_seconds") == 1
    assert count("memory_worker_sink_call_seconds", sink="local", operation="upsert") >= 1
    assert count("memory_worker_sink_call_seconds", sink="local", operation="search") >= 1
    assert count("memory_worker_end_to_end_lag_seconds", sink="local") == 2
    checked = got[("memory_worker_documents_checked_total", (("collection", SLACK),))]
    invalid = got[("memory_worker_documents_invalid_total", (("collection", SLACK), ("reason", "validate")))]
    assert (checked, invalid) == (3, 1)  # valid ratio 2/3
    assert got[("memory_worker_spool_max_bytes", ())] > 0 and got[("memory_worker_dead_letters", ())] == 1
    assert got[("memory_worker_sink_lag_seconds", (("sink", "local"),))] == 0
    assert got[("memory_worker_embedding_padded_tokens_total", ())] >= got[("memory_worker_tokens_embedded_total", ())] > 0


def documented_metrics() -> set[str]:
    """The names in README's metric table (first column; ``a / b`` rows name two)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Metrics"):]
    names = set()
    for row in re.findall(r"^\| (`memory_worker_[^|]+)\|", section, re.M):
        names.update(re.findall(r"`(memory_worker_[a-z0-9_]+)`", row))
    return names


def test_every_exported_metric_is_documented_in_the_readme(start_worker):
    client, _ = start_worker()
    _traffic(client)
    exported = {f.name for f in text_string_to_metric_families(client.admin.get("/metrics").text)
                if f.name.startswith("memory_worker_")}
    # the parser names a counter family without `_total`; the table uses the sample name
    documented = {n.removesuffix("_total") for n in documented_metrics()}
    missing = sorted(n for n in exported if n not in documented)
    assert not missing, f"metrics missing from README's metric table: {missing}"


def test_every_documented_metric_exists_in_the_code():
    source = "\n".join(p.read_text() for p in (REPO / "worker").rglob("*.py"))
    kafka = {"memory_worker_dekaf_lag_offsets", "memory_worker_kafka_lag_offsets"}  # f"memory_worker_{kind}_…"
    absent = sorted(n for n in documented_metrics() - kafka if n not in source)
    assert not absent, f"README documents metrics the worker never exports: {absent}"
    assert "memory_worker_{kind}_lag_offsets" in source


# -- sink calls are timed ---------------------------------------------------------------------------

def test_a_timed_sink_times_failed_calls_and_passes_the_rest_through():
    from worker.sinks.timed import TimedSink

    class Store:
        name, target = "fake", "idx"

        def upsert(self, records):  # noqa: ANN001, ANN202
            raise RuntimeError("down")

        def rows(self):  # noqa: ANN202
            return ["r"]

    seen = []
    timed = TimedSink(Store(), lambda op, s: seen.append((op, s)))
    with pytest.raises(RuntimeError):
        timed.upsert([])
    assert [op for op, _ in seen] == ["upsert"] and seen[0][1] >= 0
    assert timed.rows() == ["r"] and timed.target == "idx"
    assert not hasattr(timed, "search")  # not invented for a sink that lacks it


# -- GPU gauges -------------------------------------------------------------------------------------

def test_no_gpu_gauges_on_a_cpu_worker(start_worker):
    client, _ = start_worker()
    assert "memory_worker_gpu_" not in client.admin.get("/metrics").text


def test_gpu_collector_reads_torch_and_nvml():
    """The CUDA path without a GPU: torch's and NVML's own call names, answered by stand-ins
    with the shapes those libraries return (nvmlUtilization_t.gpu in percent, nvmlMemory_t)."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from worker.gpu_metrics import GpuCollector

    cuda = SimpleNamespace(memory_allocated=lambda i: 1000 + i, memory_reserved=lambda i: 4000 + i)
    nvml = SimpleNamespace(
        nvmlDeviceGetHandleByIndex=lambda i: f"h{i}",
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=87, memory=10),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=7 << 30, total=80 << 30, free=73 << 30))
    registry = CollectorRegistry()
    registry.register(GpuCollector(["cuda:1"], torch=SimpleNamespace(cuda=cuda), nvml=nvml))
    got = samples(generate_latest(registry).decode())
    dev = (("device", "cuda:1"),)
    assert got[("memory_worker_gpu_memory_allocated_bytes", dev)] == 1001
    assert got[("memory_worker_gpu_memory_reserved_bytes", dev)] == 4001
    assert got[("memory_worker_gpu_utilization_ratio", dev)] == 0.87
    assert got[("memory_worker_gpu_memory_used_bytes", dev)] == 7 << 30

    def broken(h):  # noqa: ANN001, ANN202
        raise OSError("NVML: GPU is lost")

    nvml.nvmlDeviceGetUtilizationRates = broken
    registry = CollectorRegistry()
    registry.register(GpuCollector(["cuda:1"], torch=SimpleNamespace(cuda=cuda), nvml=nvml))
    text = generate_latest(registry).decode()  # the scrape survives, without NVML's gauges
    assert "memory_worker_gpu_memory_allocated_bytes" in text and "utilization" not in text


# -- the command line -------------------------------------------------------------------------------

def memory_worker(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_version():
    from worker import __version__

    proc = memory_worker("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"memory-worker {__version__}"


def test_config_defaults_to_MEMORY_WORKER_CONFIG(tmp_path):
    config = tmp_path / "from-env.yaml"
    config.write_text(f"model: all-minilm-l6-v2\nmodels_dir: {REPO / 'models'}\nstate_dir: {tmp_path}/s\n"
                      f"bindings:\n  - collection: {SLACK}\n    preset: slack_message\n"
                      f"embedding:\n  device: cpu\n  backend: torch\nsinks:\n  local:\n    path: {tmp_path}/db\n")
    used = memory_worker("check", env={"MEMORY_WORKER_CONFIG": str(config)})
    assert used.returncode == 0, used.stderr
    assert f"config  {config}: valid" in used.stdout
    other = memory_worker("check", "--config", str(tmp_path / "missing.yaml"),
                          env={"MEMORY_WORKER_CONFIG": str(config)})
    assert other.returncode != 0 and "missing.yaml" in other.stderr  # --config wins


def test_run_serves_both_listeners(tmp_path):
    """The real ``memory-worker run``: public and admin sockets from the config."""
    from test_service import WorkerProcess, free_port, write_config

    port, admin = free_port(), free_port()
    worker = WorkerProcess(write_config(tmp_path, port=port, server={"admin_port": admin}), port,
                           tmp_path / "worker.log").start()
    try:
        assert httpx.get(f"http://127.0.0.1:{admin}/metrics").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
        assert f"admin=127.0.0.1:{admin}" in worker.log()
        assert worker.stop(60) == 0
    finally:
        worker.close()


def test_run_refuses_an_admin_port_in_use(tmp_path):
    from test_service import free_port, write_config

    port = free_port()
    with __import__("socket").create_server(("127.0.0.1", 0)) as taken:
        admin = taken.getsockname()[1]
        proc = memory_worker("run", "--config", str(write_config(tmp_path, port=port,
                                                                 server={"admin_port": admin})))
    assert proc.returncode != 0 and f"cannot listen on 127.0.0.1:{admin}" in proc.stderr


