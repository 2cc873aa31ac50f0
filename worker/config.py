"""Typed, strict configuration loaded from YAML.

Every section is a pydantic model with ``extra="forbid"``: a typo is a :class:`ConfigError` that
names the key and the file. ``${VAR}`` and ``${VAR:-default}`` are substituted from the
environment passed in (never read here on our own), and secrets are :class:`SecretStr`, so they
never appear in reprs, logs or ``memory-worker check``.

Relative paths (``state_dir``, ``sinks.local.path``) are relative to the working directory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, PrivateAttr, SecretStr, ValidationError, create_model, model_validator

from worker.configbase import RetryConfig, Strict
from worker.errors import ConfigError
from worker.fields import PRESET_FIELDS, FieldCatalog, check_name
from worker.privacy import PrivacyPolicy
from worker.quality import QualityRules
from worker.sinks.registry import SINKS

__all__ = ["RetryConfig", "Strict", "WorkerConfig", "load_config", "masked", "parse_config"]

PRESETS = ("gong_call", "slack_message", "github_document")
CHUNKERS = ("transcript", "slack", "markdown", "plain")


class MetadataField(Strict):
    pointer: str
    type: Literal["string", "string[]", "number", "integer", "boolean", "time"] = "string"


class BindingConfig(Strict):
    """Maps one Estuary collection to a preset, or to a generic field mapping.

    Generic mapping: ``key`` (JSON pointers), ``text`` (pointers whose values are joined),
    optional ``title``/``url``/``published_at`` pointers, ``metadata`` (name -> pointer) and a
    ``chunker``. A preset fills all of these for a known collection shape.
    """

    collection: str = Field(min_length=1)
    preset: Literal["gong_call", "slack_message", "github_document"] | None = None
    source: str | None = Field(default=None, pattern=r"^[a-z0-9_\-]{1,32}$")
    key: tuple[str, ...] | None = None
    text: tuple[str, ...] | None = None
    title: str | None = None
    url: str | None = None
    #: Extra metadata fields: ``name: /pointer`` (a string field) or
    #: ``name: {pointer: /pointer, type: string|string[]|number|integer|boolean|time}``. Every
    #: field is stored typed and filterable in every sink (worker/fields.py).
    metadata: dict[str, str | MetadataField] = Field(default_factory=dict)
    chunker: Literal["transcript", "slack", "markdown", "plain"] | None = None
    #: PII and secret masking before anything is chunked or embedded (worker/privacy.py).
    privacy: PrivacyPolicy | None = None
    #: Data-quality rules (worker/quality.py): dead_letter, flag or drop_field per rule.
    quality: QualityRules | None = None

    @model_validator(mode="after")
    def _preset_or_mapping(self) -> BindingConfig:
        if self.preset is None:
            missing = [n for n in ("source", "key", "text") if getattr(self, n) in (None, ())]
            if missing:
                raise ValueError(
                    f"binding {self.collection!r} has no preset, so it needs a generic mapping; "
                    f"missing: {', '.join(missing)} (or set preset: one of {', '.join(PRESETS)})"
                )
        for name in self.metadata:
            check_name(name, f"binding {self.collection!r}")
        for pointer in (*(self.key or ()), *(self.text or ()), self.title, self.url,
                        *self.pointers().values()):
            if pointer is not None and not pointer.startswith("/"):
                raise ValueError(f"binding {self.collection!r}: {pointer!r} is not a JSON pointer "
                                 "(it must start with '/')")
        return self


    def pointers(self) -> dict[str, str]:
        """Extra metadata field name → JSON pointer."""
        return {n: (m if isinstance(m, str) else m.pointer) for n, m in self.metadata.items()}

    def declared_fields(self) -> dict[str, str]:
        """Every metadata field of this binding with its type: the preset's, then the extra ones."""
        out: dict[str, str] = dict(PRESET_FIELDS.get(self.preset or "", {}))
        out["quality_flags"] = "string[]"  # set by quality rules with action flag
        for name, m in self.metadata.items():
            out[name] = "string" if isinstance(m, str) else m.type
        return out


class ChunkingConfig(Strict):
    max_tokens: int = Field(default=256, ge=16)
    overlap_tokens: int = Field(default=32, ge=0)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingConfig:
        if self.overlap_tokens >= self.max_tokens // 2:
            raise ValueError(f"chunking.overlap_tokens {self.overlap_tokens} must be below half of "
                             f"chunking.max_tokens {self.max_tokens}")
        return self


class EmbeddingConfig(Strict):
    device: str = Field(default="auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    #: One engine per listed device (several GPUs on one host); empty = just ``device``.
    devices: tuple[Annotated[str, Field(pattern=r"^(cpu|mps|cuda(:\d+)?)$")], ...] = ()
    #: auto: int8 OpenVINO on CPU when installed and passing the quality gate, else torch
    #: (worker/backends.py); torch, onnx or openvino to choose.
    backend: Literal["auto", "torch", "onnx", "openvino"] = "auto"
    max_batch_tokens: int = Field(default=16384, ge=256)
    max_wait_ms: int = Field(default=50, ge=0)
    cpu_threads: int | None = Field(default=None, ge=1)
    cache_max_entries: int = Field(default=500_000, ge=0)
    #: On CUDA, probe the largest batch budget that fits GPU memory at start-up.
    autotune_batch_tokens: bool = True


class ServerConfig(Strict):
    #: The public listener: the webhook, /query, /mcp, /healthz, /readyz.
    host: str = "127.0.0.1"
    port: int = Field(default=9010, ge=1, le=65535)
    webhook_token: SecretStr | None = None
    query_token: SecretStr | None = None
    #: The admin listener: /metrics, /estuary/status, /estuary/schema and the web console.
    #: Loopback by default; ``admin_port: null`` turns it off.
    admin_host: str = "127.0.0.1"
    admin_port: int | None = Field(default=9011, ge=1, le=65535)
    admin_token: SecretStr | None = None
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_json_depth: int = Field(default=128, ge=4)
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    #: Nice value of the model, prepare, sink and checkpoint threads (Linux), so the webhook and
    #: queries are scheduled first on a saturated host; 0 runs everything at one priority.
    background_nice: int = Field(default=10, ge=0, le=19)

    @model_validator(mode="after")
    def _listeners_differ(self) -> ServerConfig:
        if self.admin_port == self.port:
            raise ValueError(f"server.admin_port {self.admin_port} is server.port too; give the admin "
                             "listener its own port (or admin_port: null to turn it off)")
        return self


class SpoolConfig(Strict):
    max_bytes: int = Field(default=4 * 1024**3, ge=1024 * 1024)
    #: Entries one prepare pass takes at once (and at most ~1 MiB of bodies).
    batch_entries: int = Field(default=64, ge=1)
    poll_interval_s: float = Field(default=0.05, gt=0)
    #: WAL checkpoints by a background thread this often, off the append path; null: SQLite's
    #: automatic checkpoint inside whichever commit crosses 1000 pages (an append, often).
    checkpoint_interval_s: float | None = Field(default=1.0, gt=0)


class PreparedConfig(Strict):
    """The prepared store (chunks + vectors held until every sink has them)."""

    #: While the slowest sink is this many bytes of prepared records behind, preparation pauses
    #: (the spool keeps accepting until ``spool.max_bytes``). ~3 KB per 384-d chunk.
    max_bytes: int = Field(default=2 * 1024**3, ge=1024 * 1024)


#: ``sinks:``: one optional section per registered sink (``worker/sinks/registry.py``).
SinksConfig = create_model("SinksConfig", __base__=Strict,
                           **{name: (kind.config | None, None) for name, kind in SINKS.items()})


def _sink_names(self: Any) -> list[str]:
    """The configured sinks, in registry order."""
    return [name for name in SINKS if getattr(self, name) is not None]


SinksConfig.names = _sink_names  # type: ignore[attr-defined]


class PrivacySettings(Strict):
    #: The HMAC key of ``pseudonymize`` (e.g. ``${MEMORY_WORKER_PSEUDONYM_KEY}``); required when a
    #: binding pseudonymizes. Changing it changes every token: re-materialize.
    pseudonym_secret: SecretStr | None = None


class DeadLettersConfig(Strict):
    #: Store dead letters masked with their binding's privacy policy (secrets always) instead
    #: of raw. Raw keeps ``dlq replay`` exact; masked keeps PII off this disk too.
    redact: bool = False


class DocumentsConfig(Strict):
    #: The local document store (worker/docstore.py): the newest version of every document, so
    #: a rebuild or migration needs no Estuary backfill. ``raw``: as received (any later
    #: privacy policy can be applied); ``masked``: with the binding's privacy policy applied
    #: (PII stays off this disk; a migration can only add masking); ``off``: no store (then
    #: ``migrate`` needs a backfill from files or Dekaf).
    store: Literal["raw", "masked", "off"] = "raw"


class WebhookSourceConfig(Strict):
    enabled: bool = True


class KafkaTopicConfig(Strict):
    """One topic → one binding. The topic name defaults to the collection name."""

    collection: str = Field(min_length=1)
    topic_name: str | None = None

    @property
    def topic(self) -> str:
        return self.topic_name or self.collection


DekafTopicConfig = KafkaTopicConfig  # the name older code and configs' docs use


class KafkaConsumerConfig(Strict):
    """What every Kafka-protocol source shares: connection, auth, group, topics, pacing."""

    bootstrap_servers: str
    security_protocol: Literal["SASL_SSL", "SASL_PLAINTEXT", "SSL", "PLAINTEXT"] = "SASL_SSL"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    username: str | None = None
    password: SecretStr | None = None
    #: TLS: a CA bundle to trust (default: the system's), and a client certificate for mTLS.
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    schema_registry_url: str | None = None
    schema_registry_username: str | None = None  # default: username
    schema_registry_password: SecretStr | None = None  # default: password
    group_id: str = Field(min_length=1)
    topics: tuple[KafkaTopicConfig, ...] = Field(min_length=1)
    max_batch_messages: int = Field(default=500, ge=1)
    poll_timeout_s: float = Field(default=1.0, gt=0)
    #: A member silent this long is dropped from the group and its partitions move on.
    session_timeout_s: float = Field(default=45.0, ge=1, le=300)
    #: On a graceful rebalance, how long to wait for the sinks to apply what was read from a
    #: partition being handed over before leaving the rest to its next owner.
    delivery_wait_s: float = Field(default=10.0, ge=0)


class DekafSourceConfig(KafkaConsumerConfig):
    """Estuary's Kafka-protocol read path (Dekaf): one consumer per Dekaf task (see README)."""

    bootstrap_servers: str = "dekaf.estuary-data.com:9092"
    username: str | None = None  # the materialization's full task name
    password: SecretStr | None = None  # the materialization's token
    schema_registry_url: str | None = "https://dekaf.estuary-data.com"
    deletions: Literal["kafka", "cdc"] = "kafka"


class KafkaSourceConfig(KafkaConsumerConfig):
    """Estuary's ``materialize-kafka`` writing into your own Kafka-compatible broker: the way to
    spread the GPU work over N workers in one consumer group (read_committed, keyed by the
    collection key, so a key's versions stay on one partition)."""

    security_protocol: Literal["SASL_SSL", "SASL_PLAINTEXT", "SSL", "PLAINTEXT"] = "PLAINTEXT"
    #: The connector's message format: ``json`` or ``avro`` (Confluent framing + schema registry).
    message_format: Literal["json", "avro"] = "json"

    @model_validator(mode="after")
    def _avro_needs_a_registry(self) -> KafkaSourceConfig:
        if self.message_format == "avro" and not self.schema_registry_url:
            raise ValueError("sources.kafka.message_format avro needs sources.kafka.schema_registry_url")
        return self


class SourcesConfig(Strict):
    webhook: WebhookSourceConfig = WebhookSourceConfig()
    dekaf: DekafSourceConfig | None = None
    kafka: KafkaSourceConfig | None = None

    def kafka_sources(self) -> list[tuple[str, KafkaConsumerConfig]]:
        return [(name, cfg) for name, cfg in (("dekaf", self.dekaf), ("kafka", self.kafka)) if cfg is not None]


class WorkerConfig(Strict):
    model: str = "all-minilm-l6-v2"
    #: Where model specs live; default: ``models/`` of the working directory, then of the repo.
    models_dir: Path | None = None
    state_dir: Path = Path("data/state")
    bindings: tuple[BindingConfig, ...] = Field(min_length=1)
    chunking: ChunkingConfig = ChunkingConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    server: ServerConfig = ServerConfig()
    spool: SpoolConfig = SpoolConfig()
    prepared: PreparedConfig = PreparedConfig()
    retry: RetryConfig = RetryConfig()
    sinks: SinksConfig = SinksConfig(local=SINKS["local"].config())  # type: ignore[valid-type]
    sources: SourcesConfig = SourcesConfig()
    privacy: PrivacySettings = PrivacySettings()
    deadletters: DeadLettersConfig = DeadLettersConfig()
    documents: DocumentsConfig = DocumentsConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``text``: logfmt lines (``key=value``); ``json``: one JSON object per line, for log shippers.
    log_format: Literal["text", "json"] = "text"
    #: (path, YAML text) this config was read from (load_config), for the generation registry.
    _source: tuple[str, str] | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        """Two configs are equal when their settings are: where they were read from is not one."""
        if not isinstance(other, WorkerConfig):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    @model_validator(mode="after")
    def _cross_checks(self) -> WorkerConfig:
        seen: set[str] = set()
        for b in self.bindings:
            if b.collection in seen:
                raise ValueError(f"collection {b.collection!r} is bound twice")
            seen.add(b.collection)
        for name, source in self.sources.kafka_sources():
            for t in source.topics:
                if t.collection not in seen:
                    raise ValueError(f"sources.{name}.topics: collection {t.collection!r} has no binding; "
                                     "add it to bindings")
        if any(b.privacy is not None and b.privacy.enabled and b.privacy.pseudonymizes
               for b in self.bindings) and self.privacy.pseudonym_secret is None:
            raise ValueError("a binding pseudonymizes but privacy.pseudonym_secret is not set; set it "
                             "(e.g. ${MEMORY_WORKER_PSEUDONYM_KEY}) or use redact")
        self.field_catalog()  # one name, one type across the bindings
        if not self.sinks.names():
            raise ValueError("no sink configured: set at least one of "
                             + ", ".join(f"sinks.{name}" for name in SINKS))
        return self

    def field_catalog(self) -> FieldCatalog:
        """Every typed, filterable metadata field of the bindings (worker/fields.py)."""
        return FieldCatalog({b.collection: b.declared_fields() for b in self.bindings})  # type: ignore[misc]

    def binding(self, collection: str) -> BindingConfig | None:
        for b in self.bindings:
            if b.collection == collection:
                return b
        return None


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _substitute(node: Any, env: Mapping[str, str], path: str, file: Path) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, env, f"{path}.{k}" if path else str(k), file)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, env, f"{path}[{i}]", file) for i, v in enumerate(node)]
    if isinstance(node, str):
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{file}: key {path!r} needs environment variable {name}, "
                              "which is not set")
        return _ENV.sub(repl, node)
    return node


def _describe(error: ValidationError, file: Path) -> str:
    lines = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"{file}: unknown key {where!r}")
        elif e["type"] == "missing":
            lines.append(f"{file}: missing required key {where!r}")
        else:
            # Never echo the input: it may be a secret.
            lines.append(f"{file}: key {where!r}: {e['msg']}")
    return "\n".join(lines)


M = TypeVar("M", bound=BaseModel)


def validate_document(model: type[M], data: Any, *, file: Path, env: Mapping[str, str]) -> M:
    """Substitute ``${VAR}`` and validate parsed YAML; errors name ``file`` and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping")
    data = _substitute(data, env, "", file)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, file)) from None


def read_yaml(file: Path) -> Any:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: invalid YAML: {exc}") from None


def parse_config(data: Any, *, file: Path, env: Mapping[str, str]) -> WorkerConfig:
    """Validate an already-parsed YAML mapping; errors name ``file`` and the key."""
    return validate_document(WorkerConfig, data, file=file, env=env)


def load_config(file: Path | str, env: Mapping[str, str]) -> WorkerConfig:
    """Read and validate a YAML config file (its text is kept: :func:`config_source`)."""
    file = Path(file)
    config = parse_config(read_yaml(file), file=file, env=env)
    config._source = (str(file.resolve()), file.read_text(encoding="utf-8"))
    return config


def load_config_text(text: str, *, file: str, env: Mapping[str, str]) -> WorkerConfig:
    """A config from YAML text (a generation's recorded config); errors name ``file``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: invalid YAML: {exc}") from None
    config = parse_config(data, file=Path(file), env=env)
    config._source = (file, text)
    return config


def config_source(config: WorkerConfig) -> tuple[str, str]:
    """(path, YAML text) the config was read from: the text is recorded unexpanded, so
    ``${VAR}`` secrets stay references. A config built in code gives its JSON, secrets masked."""
    if config._source is not None:
        return config._source
    return ("(in code)", json.dumps(masked(config), default=str))


def secret_values(config: WorkerConfig) -> list[str]:
    """Every secret the config holds (for :class:`worker.scrub.Scrubber`)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, SecretStr):
            if node.get_secret_value():
                found.append(node.get_secret_value())
        elif isinstance(node, BaseModel):
            for k in type(node).model_fields:
                walk(getattr(node, k))
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)

    walk(config)
    return found


def masked(config: WorkerConfig) -> dict[str, Any]:
    """The config as plain data with every secret replaced by ``'***'`` (for ``check``)."""

    def walk(node: Any) -> Any:
        if isinstance(node, SecretStr):
            return "***" if node.get_secret_value() else ""
        if isinstance(node, BaseModel):
            return {k: walk(getattr(node, k)) for k in type(node).model_fields}
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v) for v in node]
        if isinstance(node, Path):
            return str(node)
        return node

    return walk(config)
