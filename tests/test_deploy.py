"""deploy/: the CPU image, docker-compose, Prometheus and Grafana provisioning, Kubernetes.

Checked offline with the real parsers and schemas, never by grepping:

- Kubernetes objects against the Kubernetes API schema (``kubernetes_validate``, strict: an
  unknown field fails), the ServiceMonitor and PrometheusRule against prometheus-operator's CRD
  schemas and the compose file against the compose spec (both vendored in tests/data/deploy/,
  sources in its README);
- the config every container runs, through the worker's own loader: the ConfigMap and
  deploy/config.yaml must be the same config;
- the wiring between the files, which no schema sees: probes reach the routes the worker really
  serves on the public port, the admin Service and the scrape configs reach the admin listener
  with the admin token, the grace periods outlast ``server.shutdown_timeout_s``, every secret
  the config needs is provided, and every mounted file exists.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import REPO, make_config
from test_dockerfile import _dockerignored, env_of, find, index_of, parse

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DATA = REPO / "tests" / "data" / "deploy"
#: The Kubernetes version the manifests are validated against (one kubernetes_validate ships).
KUBERNETES_VERSION = "1.33"
#: Written by the rules generator from deploy/prometheus/rules.yaml, not by hand.
PROMETHEUS_RULE = K8S / "prometheusrule.yaml"
CORE_MANIFESTS = ["namespace.yaml", "configmap.yaml", "statefulset.yaml", "service.yaml",
                  "service-admin.yaml"]


def load_yaml(path: Path) -> Any:  # noqa: ANN401
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def manifest(name: str) -> dict[str, Any]:
    [doc] = [d for d in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if d]
    return doc


def under(path: str | Path, directory: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(directory))


# -- the config the containers run -----------------------------------------------------------------

def load_with_required_env(load) -> tuple[Any, dict[str, str]]:  # noqa: ANN001
    """Load through the real loader, adding each environment variable it asks for (a distinct
    value each, so two configs compare equal only if they read the same variables into the
    same keys). Returns the config and the variables it required."""
    from worker.errors import ConfigError

    env: dict[str, str] = {}
    while True:
        try:
            return load(env), env
        except ConfigError as exc:
            missing = re.search(r"needs environment variable (\w+)", str(exc))
            if missing is None or missing.group(1) in env:
                raise
            env[missing.group(1)] = f"value-of-{missing.group(1)}"


@pytest.fixture(scope="module")
def deployed():
    """deploy/config.yaml loaded by worker.config, and the variables it needs."""
    from worker.config import load_config

    return load_with_required_env(lambda env: load_config(DEPLOY / "config.yaml", env))


def test_the_configmap_and_deploy_config_are_one_config(deployed):
    from worker.config import parse_config

    config, required = deployed
    data = manifest("configmap.yaml")["data"]["config.yaml"]
    from_configmap, required_there = load_with_required_env(
        lambda env: parse_config(yaml.safe_load(data), file=K8S / "configmap.yaml", env=env))
    assert required_there == required
    assert from_configmap == config
    assert yaml.safe_load(data) == load_yaml(DEPLOY / "config.yaml")


def test_the_container_config_listens_on_all_interfaces_with_every_token_set(deployed):
    config, required = deployed
    server = config.server
    assert (server.host, server.port) == ("0.0.0.0", 9010)
    assert (server.admin_host, server.admin_port) == ("0.0.0.0", 9011)
    for name in ("webhook_token", "query_token", "admin_token"):
        token = getattr(server, name)
        assert token is not None and token.get_secret_value().startswith("value-of-"), name
    assert {"MEMORY_WORKER_WEBHOOK_TOKEN", "MEMORY_WORKER_QUERY_TOKEN",
            "MEMORY_WORKER_ADMIN_TOKEN"} <= set(required)
    assert config.sinks.names() == ["local"]
    assert under(config.state_dir, "/var/lib/memory-worker")
    assert under(config.sinks.local.path, "/var/lib/memory-worker")


# -- Kubernetes: the API schema --------------------------------------------------------------------

@pytest.mark.parametrize("name", CORE_MANIFESTS)
def test_manifest_is_valid_against_the_kubernetes_api_schema(name):
    doc = manifest(name)
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_the_kubernetes_schema_check_rejects_a_misspelt_field():
    doc = manifest("statefulset.yaml")
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def strict_schema(schema: Any) -> Any:  # noqa: ANN401
    """A CRD schema as the API server applies it with strict field validation: an object whose
    properties are declared takes no others (unless it preserves unknown fields). Patterns are
    Go (RE2) regexps; the one construct Python reads differently, flags after ``^``
    (``^(?i)…``), is moved to the front."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(out.get("pattern"), str):
        out["pattern"] = re.sub(r"^\^\(\?([a-z]+)\)", r"(?\1)^", out["pattern"])
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: strict_schema(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = strict_schema(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = strict_schema(out[key])
    return out


def crd_validator(name: str) -> jsonschema.Draft7Validator:
    schema = strict_schema(load_yaml(DATA / f"{name}.openapi.yaml"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_the_servicemonitor_is_valid_against_the_prometheus_operator_crd():
    doc = manifest("servicemonitor.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    crd_validator("servicemonitor").validate(doc)
    broken = json.loads(json.dumps(doc))
    broken["spec"]["endpoints"][0]["bearerTokenSecrett"] = {"name": "x", "key": "y"}
    with pytest.raises(jsonschema.ValidationError, match="bearerTokenSecrett"):
        crd_validator("servicemonitor").validate(broken)


def test_the_prometheusrule_is_valid_against_the_prometheus_operator_crd():
    if not PROMETHEUS_RULE.is_file():
        pytest.skip("deploy/k8s/prometheusrule.yaml is not generated yet (from deploy/prometheus/rules.yaml)")
    doc = manifest(PROMETHEUS_RULE.name)
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    crd_validator("prometheusrule").validate(doc)


def test_kustomization_lists_every_manifest_and_only_those():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert (kustomization["apiVersion"], kustomization["kind"]) == ("kustomize.config.k8s.io/v1beta1",
                                                                    "Kustomization")
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk | {PROMETHEUS_RULE.name}
    assert set(CORE_MANIFESTS) | {"servicemonitor.yaml"} <= set(listed)


def test_kustomize_renders_everything_into_the_namespace():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    if not PROMETHEUS_RULE.is_file():
        pytest.skip("deploy/k8s/prometheusrule.yaml is not generated yet")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    namespace = load_yaml(K8S / "kustomization.yaml")["namespace"]
    assert {d["kind"] for d in docs} == {"Namespace", "ConfigMap", "StatefulSet", "Service",
                                         "ServiceMonitor", "PrometheusRule"}
    for doc in docs:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == namespace
        else:
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


# -- Kubernetes: the wiring ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pod() -> dict[str, Any]:
    return manifest("statefulset.yaml")["spec"]["template"]


def worker_container(pod: dict[str, Any]) -> dict[str, Any]:
    [container] = pod["spec"]["containers"]
    return container


def container_port(pod: dict[str, Any], port: int | str) -> int:
    """A Service targetPort or probe port (number or name) → the container port number."""
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in worker_container(pod)["ports"] if p["name"] == port]
    return number


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_statefulset_selects_its_pods_and_names_a_service(pod):
    sts = manifest("statefulset.yaml")
    assert selects(sts["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert sts["spec"]["serviceName"] in {manifest(n)["metadata"]["name"] for n in ("service.yaml",
                                                                                   "service-admin.yaml")}
    assert sts["spec"]["replicas"] == 1  # each pod owns a spool and a local store


def test_the_worker_gets_one_gpu(pod):
    resources = worker_container(pod)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources.get("requests", {}).get("nvidia.com/gpu", 1) == 1  # must equal the limit


def test_the_image_is_the_gpu_one_and_runs_as_its_user(pod):
    gpu = parse((REPO / "Dockerfile.gpu").read_text(encoding="utf-8"))
    uid = re.search(r"useradd\b.*--uid (\d+)", " ".join(i.args for i in find(gpu, "RUN"))).group(1)
    assert pod["spec"]["securityContext"]["runAsUser"] == int(uid)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert worker_container(pod)["image"].split(":")[-1] == "gpu"


def test_the_config_is_mounted_where_the_worker_reads_it(pod, deployed):
    container = worker_container(pod)
    argv = container.get("command", []) + container.get("args", [])
    assert argv[:2] == ["memory-worker", "run"]
    path = PurePosixPath(argv[argv.index("--config") + 1])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env.get("MEMORY_WORKER_CONFIG", str(path)) == str(path)
    [mount] = [m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == path.parent]
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    configmap = manifest("configmap.yaml")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert path.name in configmap["data"]


def test_state_dir_and_the_local_store_are_on_the_claimed_volume(pod, deployed):
    config, _ = deployed
    claims = {t["metadata"]["name"] for t in manifest("statefulset.yaml")["spec"]["volumeClaimTemplates"]}
    mounts = [m for m in worker_container(pod)["volumeMounts"] if m["name"] in claims]
    for path in (config.state_dir, config.sinks.local.path):
        assert any(under(path, m["mountPath"]) for m in mounts), f"{path} is not on a claimed volume"


def test_every_variable_the_config_needs_comes_from_the_secret(pod, deployed):
    _, required = deployed
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in worker_container(pod)["env"]
            if "valueFrom" in e}
    assert set(required) <= set(refs), f"not set: {set(required) - set(refs)}"
    assert {r["name"] for r in refs.values()} == {"ai-memory-worker"}
    assert not any(r.get("optional") for r in refs.values())  # no Secret, no start
    # the documented `kubectl create secret` makes exactly these keys
    documented = re.findall(r"--from-literal=([\w.-]+)=", (K8S / "kustomization.yaml").read_text())
    assert sorted(documented) == sorted(r["key"] for r in refs.values())


def test_termination_grace_outlasts_the_worker_shutdown(deployed):
    config, _ = deployed
    sts = manifest("statefulset.yaml")
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > config.server.shutdown_timeout_s


def test_the_services_reach_the_public_and_the_admin_listener(pod, deployed):
    config, _ = deployed
    for name, port in (("service.yaml", config.server.port), ("service-admin.yaml", config.server.admin_port)):
        service = manifest(name)
        assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "ai-memory-worker"
        assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
        [entry] = service["spec"]["ports"]
        assert container_port(pod, entry["targetPort"]) == port, name
        assert entry["port"] == port


@pytest.fixture(scope="module")
def listeners(tmp_path_factory, embedder):
    """The public and admin apps of a real service, as ``memory-worker run`` serves them."""
    from starlette.testclient import TestClient

    from worker.metrics import Metrics
    from worker.runtime import build_service

    config = make_config(tmp_path_factory.mktemp("deploy"),
                         server={"webhook_token": "hook-secret", "query_token": "query-secret",
                                 "admin_token": "admin-secret"})
    service = build_service(config, {}, embedder=embedder, metrics=Metrics())
    yield TestClient(service.public_app()), TestClient(service.admin_app())
    service.drain(30)
    service.close()


def test_probes_hit_routes_the_public_listener_serves(pod, deployed, listeners):
    config, _ = deployed
    public, _ = listeners
    container = worker_container(pod)
    paths = {}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(kind)
        if probe is None:
            continue
        assert container_port(pod, probe["httpGet"]["port"]) == config.server.port, kind
        assert public.get(probe["httpGet"]["path"]).status_code == 200, kind
        paths[kind] = probe["httpGet"]["path"]
    assert paths["livenessProbe"] == "/healthz" and paths["readinessProbe"] == "/readyz"


def test_the_servicemonitor_scrapes_the_admin_listener_as_job_ai_memory_worker(pod, listeners):
    monitor = manifest("servicemonitor.yaml")["spec"]
    services = {n: manifest(n) for n in ("service.yaml", "service-admin.yaml")}
    chosen = [n for n, s in services.items() if selects(monitor["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert chosen == ["service-admin.yaml"]
    admin = services["service-admin.yaml"]
    # prometheus-operator sets job to the value of the Service's label named by jobLabel
    assert admin["metadata"]["labels"][monitor["jobLabel"]] == "ai-memory-worker"
    [endpoint] = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in admin["spec"]["ports"]}
    credentials = endpoint["authorization"]["credentials"]
    admin_env = next(e for e in worker_container(pod)["env"] if e["name"] == "MEMORY_WORKER_ADMIN_TOKEN")
    assert credentials == {k: admin_env["valueFrom"]["secretKeyRef"][k] for k in ("name", "key")}
    public, admin_app = listeners
    assert admin_app.get(endpoint["path"]).status_code == 401
    scraped = admin_app.get(endpoint["path"], headers={"Authorization": "Bearer admin-secret"})
    assert scraped.status_code == 200 and "memory_worker_build_info" in scraped.text
    assert public.get(endpoint["path"]).status_code == 404  # never on the public listener


# -- docker-compose ---------------------------------------------------------------------------------

COMPOSE = DEPLOY / "docker-compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_the_vendored_compose_spec_is_the_cited_blob():
    cited = re.search(r"`compose-spec\.json`.*blob `([0-9a-f]{40})`", (DATA / "README.md").read_text())
    assert git_blob_id((DATA / "compose-spec.json").read_bytes()) == cited.group(1)


def test_compose_is_valid_against_the_compose_spec(compose):
    schema = json.loads((DATA / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(compose)
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["stop_grace_periods"] = "45s"
    with pytest.raises(jsonschema.ValidationError, match="stop_grace_periods"):
        jsonschema.Draft7Validator(schema).validate(broken)


def mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, source, target) of each volume entry, short or long syntax."""
    out = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target = entry.split(":")[:2]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            out.append((kind, source, target))
        else:
            out.append((entry["type"], entry.get("source", ""), entry["target"]))
    return out


def bind_target(service: dict[str, Any], source: str) -> str:
    [target] = [t for kind, s, t in mounts(service) if kind == "bind" and (DEPLOY / s).resolve() == (DEPLOY / source).resolve()]
    return target


def test_every_file_compose_uses_exists_in_the_repo(compose):
    for name, service in compose["services"].items():
        for kind, source, _ in mounts(service):
            if kind == "bind":
                assert (DEPLOY / source).exists(), f"{name}: mounts {source}, which does not exist"
            else:
                assert source in compose.get("volumes", {}), f"{name}: volume {source} is not declared"
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name
    for secret in compose.get("secrets", {}).values():
        if "file" in secret:
            assert (DEPLOY / secret["file"]).is_file()


def published_ports(service: dict[str, Any]) -> set[int]:
    out = set()
    for entry in service.get("ports", []):
        out.add(int(str(entry["target"] if isinstance(entry, dict) else entry.split(":")[-1]).split("/")[0]))
    return out


def test_compose_publishes_the_public_port_and_keeps_admin_on_the_network(compose, deployed):
    config, required = deployed
    worker = compose["services"]["worker"]
    assert published_ports(worker) == {config.server.port}
    assert str(config.server.admin_port) in [str(p) for p in worker.get("expose", [])]
    assert set(required) <= set(worker["environment"])
    for name in required:  # passed through from the host, and compose refuses to start without it
        assert re.fullmatch(rf"\$\{{{name}:\?[^}}]*\}}", worker["environment"][name]), name


def test_the_compose_worker_runs_the_deploy_config_with_state_on_a_volume(compose, deployed):
    config, _ = deployed
    worker = compose["services"]["worker"]
    target = bind_target(worker, "config.yaml")
    assert worker["environment"]["MEMORY_WORKER_CONFIG"] == target
    image_env = {k: v for i in find(cpu_dockerfile(), "ENV") for k, v in env_of(i).items()}
    assert image_env["MEMORY_WORKER_CONFIG"] == target
    volumes = [t for kind, _, t in mounts(worker) if kind == "volume"]
    for path in (config.state_dir, config.sinks.local.path):
        assert any(under(path, v) for v in volumes), path
    grace = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", worker["stop_grace_period"])
    assert int(grace.group(1) or 0) * 60 + int(grace.group(2) or 0) > config.server.shutdown_timeout_s


@pytest.fixture(scope="module")
def prometheus_yml() -> dict[str, Any]:
    return load_yaml(DEPLOY / "prometheus" / "prometheus.yml")


def test_compose_prometheus_scrapes_the_admin_listener_with_the_admin_token(compose, prometheus_yml, deployed):
    config, _ = deployed
    prometheus = compose["services"]["prometheus"]
    [job] = prometheus_yml["scrape_configs"]
    assert job["job_name"] == "ai-memory-worker"
    [target] = [t for s in job["static_configs"] for t in s["targets"]]
    host, port = target.split(":")
    assert host == "worker" and int(port) == config.server.admin_port
    assert job.get("metrics_path", "/metrics") == "/metrics"
    [secret] = prometheus["secrets"]
    name = secret if isinstance(secret, str) else secret["source"]
    file = secret if isinstance(secret, str) else secret.get("target", name)
    assert job["authorization"]["credentials_file"] == f"/run/secrets/{file}"
    assert compose["secrets"][name]["environment"] == "MEMORY_WORKER_ADMIN_TOKEN"
    # rule files are relative to the config file inside the container, and mounted there
    config_file = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    assert config_file == bind_target(prometheus, "prometheus/prometheus.yml")
    for rules in prometheus_yml["rule_files"]:
        assert str(PurePosixPath(config_file).parent / rules) == bind_target(prometheus, f"prometheus/{rules}")


def test_promtool_accepts_the_prometheus_config(tmp_path, prometheus_yml):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (.ci/run installs Debian's prometheus package)")
    rules = DEPLOY / "prometheus" / "rules.yaml"
    if not rules.is_file():
        pytest.skip("deploy/prometheus/rules.yaml is not written yet")
    # The same config, with the token file and the rules where promtool can open them.
    data = json.loads(json.dumps(prometheus_yml))
    (tmp_path / "token").write_text("admin-secret")
    data["scrape_configs"][0]["authorization"]["credentials_file"] = str(tmp_path / "token")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(data))
    shutil.copy(rules, tmp_path / "rules.yaml")
    out = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_grafana_is_provisioned_with_prometheus_and_the_dashboard(compose):
    grafana = compose["services"]["grafana"]
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert bind_target(grafana, "grafana/provisioning") == "/etc/grafana/provisioning"  # Grafana's default
    [source] = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"  # the compose service, Prometheus' default port
    assert "prometheus" in compose["services"]
    assert not any(a.startswith("--web.listen-address") for a in compose["services"]["prometheus"]["command"])
    [provider] = load_yaml(provisioning / "dashboards" / "ai-memory-worker.yaml")["providers"]
    dashboard_target = PurePosixPath(bind_target(grafana, "grafana/ai-memory-worker.json"))
    assert provider["type"] == "file" and PurePosixPath(provider["options"]["path"]) == dashboard_target.parent
    dashboard = DEPLOY / "grafana" / "ai-memory-worker.json"
    if not dashboard.is_file():
        pytest.skip("deploy/grafana/ai-memory-worker.json is not generated yet")
    for ref in datasource_refs(json.loads(dashboard.read_text())):
        uid = ref.get("uid") if isinstance(ref, dict) else ref
        assert uid is None or str(uid).startswith("$") or uid == source["uid"], ref


def datasource_refs(node: Any) -> list[Any]:  # noqa: ANN401
    if isinstance(node, list):
        return [r for v in node for r in datasource_refs(v)]
    if not isinstance(node, dict):
        return []
    refs = [node["datasource"]] if "datasource" in node else []
    return refs + [r for k, v in node.items() if k != "datasource" for r in datasource_refs(v)]


# -- the CPU image (deploy/Dockerfile) ----------------------------------------------------------------

def cpu_dockerfile() -> list:
    return parse((DEPLOY / "Dockerfile").read_text(encoding="utf-8"))


def test_cpu_image_base_is_python_311_without_cuda():
    froms = find(cpu_dockerfile(), "FROM")
    image = froms[-1].args.split()[0]
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image), image


def test_cpu_image_pins_the_readme_torch_from_the_cpu_index_before_the_package():
    instructions = cpu_dockerfile()
    args = {i.args.split("=")[0]: i.args.split("=", 1)[1] for i in find(instructions, "ARG") if "=" in i.args}
    pinned = set(re.findall(r"torch==([\w.+]+)", (REPO / "README.md").read_text()))
    assert pinned == {args["TORCH_VERSION"]}
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = [i.args for i in find(instructions, "RUN")]
    torch_run = next(n for n, r in enumerate(runs) if re.search(r"pip install .*torch", r))
    assert re.search(r'--index-url \$\{TORCH_INDEX_URL\} "torch==\$\{TORCH_VERSION\}"', runs[torch_run])
    assert "assert not torch.version.cuda" in runs[torch_run]
    package_run = next(n for n, r in enumerate(runs) if re.search(r'pip install "?\.(\[[\w,]+\])?"?(\s|$)', r))
    assert torch_run < package_run and "assert not torch.version.cuda" in runs[package_run]
    # the CPU image runs the int8 backend (backend: auto picks OpenVINO when it is installed)
    assert 'pip install ".[int8]"' in runs[package_run] and "import openvino" in runs[package_run]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"openvino", "nncf", "onnxruntime"} <= {re.split(r"[<>=\[ ]", d)[0] for d in extras["int8"]}


def test_cpu_image_bakes_the_model_and_never_reaches_a_hub_at_run_time():
    instructions = cpu_dockerfile()
    runs = " ".join(i.args for i in find(instructions, "RUN"))
    assert re.search(r"bake_models\.py download \$\{EXTRA_MODELS\}", runs)
    assert re.search(r"HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python docker/bake_models\.py verify", runs)
    env = {k: v for i in find(instructions, "ENV") for k, v in env_of(i).items()}
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["MEMORY_WORKER_MODELS"] == "/opt/models"


def test_cpu_image_runs_the_deploy_config_as_a_non_root_user_with_state_on_a_volume(deployed):
    config, _ = deployed
    instructions = cpu_dockerfile()
    env = {k: v for i in find(instructions, "ENV") for k, v in env_of(i).items()}
    copies = [shlex.split(i.args) for i in find(instructions, "COPY")]
    assert ["deploy/config.yaml", env["MEMORY_WORKER_CONFIG"]] in copies
    user = find(instructions, "USER")[-1].args.split(":")[0]
    assert user not in ("root", "0")
    assert index_of(instructions, "USER", last=True) < index_of(instructions, "ENTRYPOINT", last=True)
    runs = " ".join(i.args for i in find(instructions, "RUN"))
    assert re.search(rf"useradd\b.*\b{user}\b", runs)
    volumes = [v for i in find(instructions, "VOLUME") for v in (i.exec_form() or i.args.split())]
    for path in (config.state_dir, config.sinks.local.path):
        assert any(under(path, v) for v in volumes), path
    assert any(re.search(rf"chown\S*\s+\S+\s+{re.escape(v)}", runs) for v in volumes)


def test_cpu_image_exposes_both_listeners_and_checks_healthz_on_the_public_one(deployed):
    config, _ = deployed
    instructions = cpu_dockerfile()
    ports = {int(p.split("/")[0]) for i in find(instructions, "EXPOSE") for p in i.args.split()}
    assert ports == {config.server.port, config.server.admin_port}
    [check] = find(instructions, "HEALTHCHECK")
    assert f"http://127.0.0.1:{config.server.port}/healthz" in check.args
    command = json.loads(check.args[check.args.index("CMD") + 3:].strip())
    compile(command[command.index("-c") + 1], "<healthcheck>", "exec")


def test_cpu_image_entrypoint_runs_the_worker_on_the_configured_file(monkeypatch, deployed):
    from worker import cli

    config, required = deployed
    instructions = cpu_dockerfile()
    entry = find(instructions, "ENTRYPOINT")[-1].exec_form()
    cmd = find(instructions, "CMD")[-1].exec_form()
    assert entry == ["memory-worker"] and cmd == ["run"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry[0] in scripts
    # `memory-worker run` with no --config loads $MEMORY_WORKER_CONFIG (here: deploy/config.yaml)
    monkeypatch.setenv("MEMORY_WORKER_CONFIG", str(DEPLOY / "config.yaml"))
    for name, value in required.items():
        monkeypatch.setenv(name, value)
    args = cli.build_parser().parse_args(cmd)
    assert args.command == "run"
    assert cli._config(args) == config


def test_cpu_image_copy_sources_exist_and_are_in_the_build_context():
    for ins in find(cpu_dockerfile(), "COPY"):
        for source in [t for t in shlex.split(ins.args) if not t.startswith("--")][:-1]:
            assert (REPO / source).exists(), f"line {ins.line}: COPY source {source!r} does not exist"
            assert not _dockerignored(source), f"line {ins.line}: {source!r} is excluded by .dockerignore"
