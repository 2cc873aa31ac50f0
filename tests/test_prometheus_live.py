"""A real Prometheus (Debian's ``prometheus`` binary) scrapes a running worker fed with the sample
stream, loads ``deploy/prometheus/rules.yaml``, and answers every dashboard panel's and every
rule's expression through its HTTP API (``/api/v1/query``).

What "works" means for each expression:
- it evaluates without an error (a typo'd function, a bad matcher, a type error all fail here);
- recording rules and panels return data once traffic has flowed (the worker's GPU panels are the
  one exception, named in :data:`NO_DATA_WITHOUT_GPU`: this machine has no GPU);
- an alert's expression is empty while the system is healthy, so instead every series it selects
  (each vector selector, found by parsing the expression with ``promql_parser``) must exist;
  and the alerts this traffic should trip (dead letters: the stream carries invalid documents)
  do return data.

``.ci/run`` installs Prometheus; without the binary this module is skipped, saying so.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import COLLECTIONS, REPO, load_stream
from test_service import SLACK, free_port, slack_doc

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="Debian's prometheus is not installed "
                                "(.ci/run installs it: apt-get install prometheus)")

RULES = REPO / "deploy" / "prometheus" / "rules.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "ai-memory-worker.json"
JOB = "ai-memory-worker"
#: Dashboard panels with no data on a CPU worker: the GPU gauges exist only on CUDA.
NO_DATA_WITHOUT_GPU = "memory_worker_gpu_"
#: Values for the dashboard's template variables.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "${datasource}": "",
             "$sink": "local", "${sink}": "local", "$collection": ".*", "${collection}": ".*"}
#: Alerts the fed traffic must trip: the sample stream is sent with invalid documents.
TRIPPED = {"MemoryWorkerDocumentsDeadLettered"}


def rule_expressions() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    recording, alerts = [], []
    for group in groups:
        for rule in group["rules"]:
            if "record" in rule:
                recording.append((rule["record"], rule["expr"]))
            else:
                alerts.append((rule["alert"], rule["expr"]))
    return recording, alerts


def panel_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))  # rows hold panels
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if expr:
                    for var, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
                        expr = expr.replace(var, value)
                    out.append((f"{panel.get('title')} [{target.get('refId', '?')}]", expr))

    walk(dashboard.get("panels", []))
    return out


def selectors(expr: str) -> list[str]:
    """Every vector selector in ``expr``, as PromQL text, without ``offset`` or ``@`` (the series
    must exist now; a test Prometheus holds minutes, not the offset's past)."""
    import promql_parser as pp

    found: list[str] = []

    def walk(node: Any) -> None:  # noqa: ANN401
        if isinstance(node, pp.VectorSelector):
            found.append(re.sub(r"\s+(offset\s+-?\w+|@\s+\S+)", "", node.prettify()))
            return
        if isinstance(node, pp.MatrixSelector):
            walk(node.vector_selector)
            return
        for attr in ("expr", "lhs", "rhs", "param"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, (str, int, float)):
                walk(child)
        for arg in getattr(node, "args", None) or []:
            walk(arg)

    walk(pp.parse(expr))
    return found


class PromServer:
    def __init__(self, root: Path, admin_port: int) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (root / "rules.yaml").write_text(RULES.read_text())
        (root / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(root / "rules.yaml")],
            "scrape_configs": [{"job_name": JOB, "scrape_interval": "1s",
                                "static_configs": [{"targets": [f"127.0.0.1:{admin_port}"]}]}],
        }))
        self.log = root / "prometheus.log"
        self.proc: subprocess.Popen | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def start(self) -> PromServer:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.root / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.root / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT)
        self.wait(lambda: self.http.get("/-/ready").status_code == 200, "Prometheus never became ready")
        return self

    def wait(self, check, what: str, timeout_s: float = 60.0) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if check():
                    return
            assert time.monotonic() < deadline, f"{what}:\n{self.log.read_text()[-3000:]}"
            time.sleep(0.25)

    def query(self, expr: str) -> list[dict]:
        r = self.http.get("/api/v1/query", params={"query": expr})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
        return body["data"]["result"]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.http.close()


@pytest.fixture(scope="module")
def scraped(tmp_path_factory, embedder, stream_cache):  # noqa: ANN001
    """A worker that has taken the whole sample stream (and a few invalid documents and queries),
    scraped by a real Prometheus long enough for every rate window to hold data."""
    from test_service import serving

    from conftest import make_config, seed_cache
    from worker.metrics import Metrics
    from worker.runtime import build_service

    root = tmp_path_factory.mktemp("prom")
    config = make_config(root)
    seed_cache(stream_cache, Path(config.state_dir))  # vectors computed once per session
    service = build_service(config, {}, embedder=embedder, metrics=Metrics())
    with serving(service) as client:
        admin_port = int(client.admin.base_url.port)
        prom = PromServer(root, admin_port).start()
        try:
            prom.wait(lambda: prom.query(f'up{{job="{JOB}"}} == 1'), "the worker was never scraped")
            for wave, (collection, _) in enumerate(COLLECTIONS.items()):
                docs = load_stream(collection)
                assert client.post(collection, docs).status_code == 200
                bad = client.post(SLACK, [{"text": f"wave {wave}: no ts, no channel"}])
                assert bad.json()["dead_lettered"] == 1
                assert client.query("data residency in the EU", k=3).status_code == 200
                time.sleep(1.5)  # a scrape between waves: every rate() sees an increase
            client.wait_delivered()
            client.post(SLACK, [slack_doc("99.1", "a late message after the bulk load",
                                          at=time.time() - 1)])
            client.wait_delivered()
            assert client.query("late message", k=1).status_code == 200
            # recorded series exist once the rule groups evaluated after the traffic
            recorded = [name for name, _ in rule_expressions()[0]]
            prom.wait(lambda: all(prom.query(name) for name in recorded),
                      "recording rules never produced their series", timeout_s=90)
            yield prom
        finally:
            prom.stop()


def test_prometheus_scrapes_the_admin_listener(scraped):
    up = scraped.query(f'up{{job="{JOB}"}}')
    assert [s["value"][1] for s in up] == ["1"]
    assert scraped.query("memory_worker_build_info")[0]["metric"]["model"] == "all-minilm-l6-v2"
    targets = scraped.http.get("/api/v1/targets").json()["data"]["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets


def test_every_recording_rule_evaluates_with_data(scraped):
    recording, _ = rule_expressions()
    assert recording, "rules.yaml has no recording rules"
    empty = [name for name, expr in recording if not scraped.query(expr)]
    assert not empty, f"recording rules with no data after traffic: {empty}"


def test_every_alert_evaluates_and_selects_series_that_exist(scraped):
    _, alerts = rule_expressions()
    assert alerts, "rules.yaml has no alerts"
    missing = []
    for name, expr in alerts:
        scraped.query(expr)  # evaluates: no parse or type error
        for sel in selectors(expr):
            if not scraped.query(sel):
                missing.append(f"{name}: {sel}")
    assert not missing, f"alerts select series the worker does not export: {missing}"


def test_the_dead_letters_of_the_stream_trip_their_alert_expression(scraped):
    _, alerts = rule_expressions()
    by_name = dict(alerts)
    for name in TRIPPED:
        assert name in by_name, f"no alert {name} in rules.yaml"
        assert scraped.query(by_name[name]), f"{name} did not fire on dead-lettered documents"


def test_the_rules_loaded_with_no_evaluation_error(scraped):
    groups = scraped.http.get("/api/v1/rules").json()["data"]["groups"]
    assert groups
    broken = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"]
              if r.get("health") != "ok" or r.get("lastError")]
    assert not broken, broken


def test_every_dashboard_panel_evaluates_with_data(scraped):
    panels = panel_expressions()
    assert len(panels) >= 10, "the dashboard has fewer targets than the panels it promises"
    empty = []
    for title, expr in panels:
        result = scraped.query(expr)
        if not result and NO_DATA_WITHOUT_GPU not in expr:
            empty.append(f"{title}: {expr}")
    assert not empty, f"panels with no data after traffic: {empty}"
