"""Loopback Weaviate 1.33 emulator (REST + gRPC) that the real ``weaviate-client`` 4.24 accepts.

Start it, point ``weaviate.connect_to_custom(..., skip_init_checks=True)`` at ``http_port`` and
``grpc_port``, and drive it only through the client::

    with WeaviateEmulator() as emu:
        client = weaviate.connect_to_custom(
            http_host="127.0.0.1", http_port=emu.http_port, http_secure=False,
            grpc_host="127.0.0.1", grpc_port=emu.grpc_port, grpc_secure=False,
            skip_init_checks=True,
        )

What it models (the parts the worker depends on):

- Schema: ``/v1/schema`` replies are fully defaulted (per-property index flags and tokenization,
  inverted index, sharding, replication, HNSW/flat/dynamic index configs), so ``config.get()`` and
  client-side batching work. Unknown keys in create bodies are dropped, as Go's JSON decoder does.
  Only self-provided vectors (``vectorizer: none``) are accepted; multi-tenancy is refused.
- Objects: ``BatchObjects`` stores (re-inserting a uuid overwrites it), coerces values by the
  schema's dataType (protobuf ``Struct`` numbers arrive as doubles), auto-adds unknown properties
  (auto-schema), and reports bad objects in ``BatchObjectsReply.errors`` without failing the call.
  Writing to a collection that does not exist is a per-object error (the real server would
  auto-create it with word tokenization; that hides the bug the worker must not have).
- Search: filters with Weaviate's tokenization semantics (``word`` compares lowercase alphanumeric
  tokens, so ``Equal("gong:call-1")`` also matches ``"gong:call-1-2"``; ``field`` compares the
  trimmed whole value; stopwords are dropped from ``word`` filter values) and its gRPC value
  typing (an int on a number property is a float, ``"3"`` on an int property is 3, a string on
  a boolean one is refused), exact nearest neighbours by numpy brute force (pre-filtered), and
  the reply fields the client requires (``metadata.id_as_bytes``, ``*_present`` flags, timestamps).
- Keyword and hybrid search: ``bm25`` is the server's BM25F (BlockMax WAND scoring by default,
  the legacy WAND merge with ``usingBlockMaxWAND: false``; k1/b and stopwords from the class),
  and ``hybrid`` runs its vector and keyword legs with the server's candidate counts, distance
  cutoff and ranked / relativeScore fusion; ``score`` (and ``explain_score``) come back, and
  ``auto_limit`` applies. Sources are cited in that section.
- Limits: ``QUERY_MAXIMUM_RESULTS`` (10,000) caps each ``BatchDelete`` (loop until nothing
  matches) and ``offset + limit`` of a search; ``QUERY_DEFAULTS_LIMIT`` (10) applies without a limit.
- Aliases (Weaviate >= 1.32): ``/v1/aliases`` with the server's bodies, statuses and messages;
  object operations (REST objects, gRPC ``Search``, ``BatchObjects``, ``BatchDelete``,
  ``Aggregate``, ``TenantsGet``) and ``GET /v1/schema/{name}`` resolve an alias to its target,
  collection management (update, add property, delete) does not. Sources are cited in that section.
- Server version: ``WeaviateEmulator(version=...)`` sets what ``/v1/meta`` reports (default
  ``SERVER_VERSION``); below 1.32 the alias routes do not exist (404), as on an older server.
- Index requirements the real server enforces: filtering needs an inverted index on the
  property (filterable, searchable or rangeable), ``_creationTimeUnix``/``_lastUpdateTimeUnix`` need
  ``indexTimestamps``, ``IsNull`` needs ``indexNullState``, ``len(prop)`` needs
  ``indexPropertyLength``.

Operations (for ``FaultPlan`` and ``RecordedRequest.op``): gRPC ``batch_objects``, ``search``,
``batch_delete``, ``aggregate``, ``tenants_get``, ``health``; REST ``meta``, ``schema_get``,
``schema_create``, ``schema_update``, ``schema_delete``, ``objects``, ``nodes``, ``tenants``,
``aliases_get``, ``aliases_create``, ``aliases_update``, ``aliases_delete``, ``ready``, ``live``,
``oidc``. ``op="*"`` matches every operation except the probes (``health``,
``ready``, ``live``, ``oidc``); ``set_down(True)`` takes those down too.

Hazard: a ``deadline`` fault parks a server thread for ``stall_s``; ``stop()`` releases it.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import json
import math
import random
import re
import struct
import threading
import time
import uuid as uuid_lib
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict
from weaviate.proto.v1 import (
    aggregate_pb2,
    base_pb2,
    base_search_pb2,
    batch_delete_pb2,
    batch_pb2,
    health_weaviate_pb2,
    properties_pb2,
    search_get_pb2,
    tenants_pb2,
    weaviate_pb2_grpc,
)

SERVER_VERSION = "1.33.0"
ALIASES_SINCE = (1, 32)
GRPC_MAX_MESSAGE_BYTES = 104_858_000
QUERY_MAXIMUM_RESULTS = 10_000
QUERY_DEFAULTS_LIMIT = 10

PROBE_OPS = frozenset({"health", "ready", "live", "oidc"})
KNOWN_OPS = frozenset(
    {
        "batch_objects", "search", "batch_delete", "aggregate", "tenants_get", "health",
        "meta", "schema_get", "schema_create", "schema_update", "schema_delete", "objects",
        "nodes", "tenants", "aliases_get", "aliases_create", "aliases_update", "aliases_delete",
        "ready", "live", "oidc", "*",
    }
)
REQUEST_FAULT_KINDS = frozenset({"unavailable", "deadline", "internal", "500", "503", "429", "drop"})
FAULT_KINDS = REQUEST_FAULT_KINDS | {"object_error"}

_F = base_pb2.Filters


# --------------------------------------------------------------------------------------------
# Recording and fault injection
# --------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One REST request or gRPC call as the emulator saw it.

    ``method`` is the HTTP verb or the gRPC method name (``"BatchObjects"``); ``path`` is the URL
    path with query string or the full gRPC path. ``headers`` has lower-case keys (HTTP headers or
    gRPC metadata, ``authorization`` included). ``body`` is decoded JSON (REST) or the request
    message as ``MessageToDict(..., preserving_proto_field_name=True)`` (gRPC; bytes are base64).
    ``status`` is the HTTP status or the gRPC code name (``"OK"``, ``"UNAVAILABLE"``); ``None``
    means the connection was dropped. ``fault`` names the injected fault kind, if any.
    """

    time: float
    transport: str
    op: str
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int | str | None = None
    fault: str | None = None


@dataclass
class Fault:
    """One entry of a ``FaultPlan``; ``fired`` counts the calls it has affected."""

    op: str
    kind: str
    times: int | None = None
    rate: float | None = None
    uuids: frozenset[str] | None = None
    message: str = "emulated fault"
    stall_s: float = 10.0
    retry_after_s: int = 1
    then_apply: bool = False
    fired: int = 0

    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times


class FaultPlan:
    """Faults injected by operation, for the next ``times`` calls or at a seeded random ``rate``.

    Request-level kinds (applied before the request touches the store):

    - ``unavailable``: gRPC ``UNAVAILABLE`` / REST 503.
    - ``deadline``: stall ``stall_s`` (default 10 s), then gRPC ``DEADLINE_EXCEEDED`` / REST 504;
      with ``then_apply=True`` the request is applied after the stall instead (the write lands
      although the client already gave up).
    - ``internal``: gRPC ``INTERNAL`` / REST 500.
    - ``"500"``, ``"503"``, ``"429"``: that REST status (429 carries ``Retry-After:
      retry_after_s``); on gRPC they map to ``INTERNAL``, ``UNAVAILABLE``, ``RESOURCE_EXHAUSTED``.
    - ``drop``: REST closes the connection without an answer; gRPC answers ``UNAVAILABLE``.

    ``object_error`` (``batch_objects`` only) fails single objects in ``BatchObjectsReply.errors``
    while the others are stored: those in ``uuids``, or each object with probability ``rate``, or
    every object when neither is given.

    Without ``times`` and ``rate`` a fault fires on every matching call until ``clear()``.
    The first matching request-level fault wins. Random draws come from one ``random.Random(seed)``.
    """

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(
        self,
        op: str = "*",
        kind: str = "unavailable",
        *,
        times: int | None = None,
        rate: float | None = None,
        uuids: Iterable[str] | None = None,
        message: str | None = None,
        stall_s: float = 10.0,
        retry_after_s: int = 1,
        then_apply: bool = False,
    ) -> Fault:
        if op not in KNOWN_OPS:
            raise ValueError(f"unknown op {op!r}; use one of {sorted(KNOWN_OPS)}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {sorted(FAULT_KINDS)}")
        if kind == "object_error" and op != "batch_objects":
            raise ValueError("object_error faults apply to op='batch_objects' only")
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate {rate} must be within [0, 1]")
        if times is not None and times < 1:
            raise ValueError(f"times {times} must be at least 1")
        fault = Fault(
            op=op,
            kind=kind,
            times=times,
            rate=rate,
            uuids=frozenset(str(uuid_lib.UUID(str(u))) for u in uuids) if uuids is not None else None,
            message=message or f"emulated {kind} fault",
            stall_s=stall_s,
            retry_after_s=retry_after_s,
            then_apply=then_apply,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def _request_fault(self, op: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind == "object_error" or fault.exhausted():
                    continue
                if fault.op != op and not (fault.op == "*" and op not in PROBE_OPS):
                    continue
                if fault.rate is not None and self._rng.random() >= fault.rate:
                    continue
                fault.fired += 1
                return fault
        return None

    def _object_errors(self, uuids: list[str]) -> dict[int, str]:
        errors: dict[int, str] = {}
        with self._lock:
            for fault in self._faults:
                if fault.kind != "object_error" or fault.exhausted():
                    continue
                hit = False
                for index, u in enumerate(uuids):
                    if index in errors:
                        continue
                    if fault.uuids is not None and u not in fault.uuids:
                        continue
                    if fault.rate is not None and self._rng.random() >= fault.rate:
                        continue
                    errors[index] = fault.message
                    hit = True
                if hit:
                    fault.fired += 1
        return errors


# --------------------------------------------------------------------------------------------
# Errors shared by both transports
# --------------------------------------------------------------------------------------------


class _ApiError(Exception):
    def __init__(self, http_status: int, grpc_code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code
        self.message = message


def _invalid(message: str) -> _ApiError:
    return _ApiError(422, grpc.StatusCode.INVALID_ARGUMENT, message)


def _not_found(message: str) -> _ApiError:
    return _ApiError(404, grpc.StatusCode.NOT_FOUND, message)


def _unimplemented(what: str) -> _ApiError:
    return _ApiError(501, grpc.StatusCode.UNIMPLEMENTED, f"emulator does not implement {what}")


# --------------------------------------------------------------------------------------------
# Schema defaults
# --------------------------------------------------------------------------------------------

_PQ_DEFAULTS = {
    "enabled": False,
    "bitCompression": False,
    "segments": 0,
    "centroids": 256,
    "trainingLimit": 100000,
    "encoder": {"type": "kmeans", "distribution": "log-normal"},
}
_HNSW_DEFAULTS: dict[str, Any] = {
    "skip": False,
    "cleanupIntervalSeconds": 300,
    "maxConnections": 32,
    "efConstruction": 128,
    "ef": -1,
    "dynamicEfMin": 100,
    "dynamicEfMax": 500,
    "dynamicEfFactor": 8,
    "vectorCacheMaxObjects": 1000000000000,
    "flatSearchCutoff": 40000,
    "distance": "cosine",
    "filterStrategy": "sweeping",
    "pq": _PQ_DEFAULTS,
    "bq": {"enabled": False},
    "sq": {"enabled": False, "trainingLimit": 100000, "rescoreLimit": 20},
    "rq": {"enabled": False, "bits": 8, "rescoreLimit": 20},
    "multivector": {
        "enabled": False,
        "aggregation": "maxSim",
        "muvera": {"enabled": False, "ksim": 4, "dprojections": 16, "repetitions": 10},
    },
}
_FLAT_DEFAULTS: dict[str, Any] = {
    "distance": "cosine",
    "vectorCacheMaxObjects": 1000000000000,
    "pq": _PQ_DEFAULTS,
    "bq": {"enabled": False, "cache": False, "rescoreLimit": -1},
    "sq": {"enabled": False, "trainingLimit": 100000, "rescoreLimit": 20},
    "rq": {"enabled": False, "bits": 8, "rescoreLimit": 20},
    "multivector": _HNSW_DEFAULTS["multivector"],
}
_DYNAMIC_DEFAULTS: dict[str, Any] = {
    "distance": "cosine",
    "threshold": 10000,
    "hnsw": _HNSW_DEFAULTS,
    "flat": _FLAT_DEFAULTS,
}
_INDEX_DEFAULTS = {"hnsw": _HNSW_DEFAULTS, "flat": _FLAT_DEFAULTS, "dynamic": _DYNAMIC_DEFAULTS}
_CLASS_DEFAULTS: dict[str, Any] = {
    "invertedIndexConfig": {
        "bm25": {"b": 0.75, "k1": 1.2},
        "cleanupIntervalSeconds": 60,
        "stopwords": {"preset": "en", "additions": None, "removals": None},
        "indexNullState": False,
        "indexPropertyLength": False,
        "indexTimestamps": False,
        "usingBlockMaxWAND": True,
    },
    "multiTenancyConfig": {"enabled": False, "autoTenantCreation": False, "autoTenantActivation": False},
    "replicationConfig": {"factor": 1, "asyncEnabled": False, "deletionStrategy": "NoAutomatedResolution"},
    "shardingConfig": {
        "virtualPerPhysical": 128,
        "desiredCount": 1,
        "actualCount": 1,
        "desiredVirtualCount": 128,
        "actualVirtualCount": 128,
        "key": "_id",
        "strategy": "hash",
        "function": "murmur3",
    },
}
_PRIMITIVE_TYPES = frozenset(
    {
        "text", "text[]", "int", "int[]", "number", "number[]", "boolean", "boolean[]",
        "date", "date[]", "uuid", "uuid[]", "geoCoordinates", "phoneNumber", "blob",
        "object", "object[]",
    }
)
_TEXT_TYPES = frozenset({"text", "text[]"})
_TOKENIZATIONS = frozenset({"word", "lowercase", "whitespace", "field", "trigram", "gse", "kagome_kr", "kagome_ja"})
_PROPERTY_KEYS = (
    "name", "dataType", "description", "indexFilterable", "indexSearchable", "indexRangeFilters",
    "tokenization", "nestedProperties", "moduleConfig", "textAnalyzer",
)
_NAME_RE = re.compile(r"^[_A-Za-z][_0-9A-Za-z]*$")
_CLASS_RE = re.compile(r"^[A-Z][_0-9A-Za-z]*$")


def _merge(defaults: Any, given: Any) -> Any:
    """Deep-merge ``given`` over ``defaults`` (dicts merge; anything else replaces)."""
    if isinstance(defaults, dict) and isinstance(given, dict):
        out = {k: _merge(v, None) for k, v in defaults.items()}
        for key, value in given.items():
            out[key] = _merge(defaults.get(key), value) if key in defaults else _merge(None, value)
        return out
    if given is None:
        return json.loads(json.dumps(defaults))  # deep copy of a JSON value
    return json.loads(json.dumps(given))


def _capitalise(name: str) -> str:
    return name[:1].upper() + name[1:]


def _default_property(prop: dict[str, Any], nested: bool = False) -> dict[str, Any]:
    name = prop.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _invalid(f"'{name}' is not a valid property name")
    if not nested and name in ("id", "_id", "_additional"):
        raise _invalid(f"'{name}' is a reserved property name")
    data_type = prop.get("dataType")
    if not isinstance(data_type, list) or not data_type:
        raise _invalid(f"property '{name}': dataType must be a non-empty list")
    base = data_type[0]
    is_primitive = base[:1].islower()
    if is_primitive and base not in _PRIMITIVE_TYPES:
        raise _invalid(f"property '{name}': unknown data type '{base}'")
    tokenization = prop.get("tokenization")
    if tokenization and base not in _TEXT_TYPES:
        raise _invalid(f"property '{name}': tokenization is not allowed for data type '{base}'")
    if tokenization and tokenization not in _TOKENIZATIONS:
        raise _invalid(f"property '{name}': unknown tokenization '{tokenization}'")
    out: dict[str, Any] = {"name": name, "dataType": [_capitalise(t) if not is_primitive else t for t in data_type]}
    if prop.get("description"):
        out["description"] = prop["description"]
    out["indexFilterable"] = bool(prop.get("indexFilterable", base != "blob"))
    out["indexSearchable"] = bool(prop.get("indexSearchable", base in _TEXT_TYPES))
    out["indexRangeFilters"] = bool(prop.get("indexRangeFilters", False))
    if out["indexSearchable"] and base not in _TEXT_TYPES:
        raise _invalid(f"property '{name}': indexSearchable is allowed for text properties only")
    if out["indexRangeFilters"] and base not in ("int", "number", "date"):
        raise _invalid(f"property '{name}': indexRangeFilters is allowed for int, number and date only")
    if base in _TEXT_TYPES:
        out["tokenization"] = tokenization or "word"
    if base in ("object", "object[]"):
        nested_props = prop.get("nestedProperties") or []
        if not nested_props:
            raise _invalid(f"property '{name}': object properties need nestedProperties")
        out["nestedProperties"] = [_default_property(p, nested=True) for p in nested_props]
    for key in ("moduleConfig", "textAnalyzer"):
        if prop.get(key):
            out[key] = prop[key]
    return out


def _default_vector_index(index_type: str, given: dict[str, Any] | None, where: str) -> dict[str, Any]:
    if index_type not in _INDEX_DEFAULTS:
        raise _invalid(f"{where}: unsupported vectorIndexType '{index_type}'")
    config = _merge(_INDEX_DEFAULTS[index_type], given or {})
    if config.get("distance") not in ("cosine", "dot", "l2-squared", "manhattan", "hamming"):
        raise _invalid(f"{where}: unsupported distance '{config.get('distance')}'")
    return config


def _default_class(body: dict[str, Any]) -> dict[str, Any]:
    """The class as ``GET /v1/schema/{C}`` returns it: every server default filled in."""
    name = body.get("class")
    if not isinstance(name, str) or not name:
        raise _invalid("class name is required")
    name = _capitalise(name)
    if not _CLASS_RE.match(name):
        raise _invalid(f"'{name}' is not a valid class name")
    out: dict[str, Any] = {"class": name}
    if body.get("description"):
        out["description"] = body["description"]
    for key, defaults in _CLASS_DEFAULTS.items():
        out[key] = _merge(defaults, body.get(key) or {})
    if out["multiTenancyConfig"].get("enabled"):
        raise _invalid("emulator does not implement multi-tenancy")
    if body.get("moduleConfig"):
        out["moduleConfig"] = body["moduleConfig"]
    props = [_default_property(p) for p in (body.get("properties") or [])]
    names = [p["name"].lower() for p in props]
    if len(set(names)) != len(names):
        raise _invalid("class has duplicate property names")
    out["properties"] = props
    if body.get("vectorConfig"):
        vector_config: dict[str, Any] = {}
        for vec_name, vec in body["vectorConfig"].items():
            vectorizer = (vec or {}).get("vectorizer") or {"none": {}}
            if list(vectorizer) != ["none"]:
                raise _invalid(f"vector '{vec_name}': emulator only supports self-provided vectors (vectorizer none)")
            index_type = vec.get("vectorIndexType", "hnsw")
            vector_config[vec_name] = {
                "vectorizer": {"none": {}},
                "vectorIndexType": index_type,
                "vectorIndexConfig": _default_vector_index(index_type, vec.get("vectorIndexConfig"), f"vector '{vec_name}'"),
            }
        out["vectorConfig"] = vector_config
    else:
        vectorizer = body.get("vectorizer") or "none"
        if vectorizer != "none":
            raise _invalid(f"vectorizer '{vectorizer}' is not enabled; emulator only supports vectorizer none")
        index_type = body.get("vectorIndexType") or "hnsw"
        out["vectorizer"] = "none"
        out["vectorIndexType"] = index_type
        out["vectorIndexConfig"] = _default_vector_index(index_type, body.get("vectorIndexConfig"), "class")
    return out


# --------------------------------------------------------------------------------------------
# Values: coercion by dataType, auto-schema, dates
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def _parse_date(text: str) -> dt.datetime:
    value = text.strip()
    if value.endswith("Z") or value.endswith("z"):
        value = value[:-1] + "+00:00"
    value = re.sub(r"(\.\d{6})\d+", r"\1", value)  # Python keeps microseconds only
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"date '{text}' has no timezone")
    return parsed


def _normalise_date(text: str) -> str:
    parsed = _parse_date(text).astimezone(dt.timezone.utc)
    return parsed.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _looks_like_date(text: str) -> bool:
    if not re.match(r"^\d{4}-\d{2}-\d{2}T", text):
        return False
    try:
        _parse_date(text)
    except ValueError:
        return False
    return True


def _infer_data_type(value: Any) -> str | None:
    """Auto-schema: the dataType the server would add for an unknown property."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "date" if _looks_like_date(value) else "text"
    if isinstance(value, list) and value:
        first = _infer_data_type(value[0])
        return f"{first}[]" if first in ("boolean", "number", "text", "date", "int") else None
    return None


def _coerce_scalar(base: str, value: Any, prop: str, cls: str) -> Any:
    def bad(kind: str) -> _ApiError:
        return _invalid(f"invalid {kind} property '{prop}' on class '{cls}': the given value is {value!r}")

    if base == "text":
        if not isinstance(value, str):
            raise bad("text")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("integer")
        if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
            raise bad("integer")
        return int(value)
    if base == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("number")
        return float(value)
    if base == "boolean":
        if not isinstance(value, bool):
            raise bad("boolean")
        return value
    if base == "date":
        if not isinstance(value, str):
            raise bad("date")
        try:
            return _normalise_date(value)
        except ValueError:
            raise bad("date") from None
    if base == "uuid":
        try:
            return str(uuid_lib.UUID(str(value)))
        except ValueError:
            raise bad("uuid") from None
    return value  # geoCoordinates, phoneNumber, blob, object: kept as given


def _coerce(data_type: str, value: Any, prop: str, cls: str) -> Any:
    if data_type.endswith("[]"):
        if not isinstance(value, list):
            raise _invalid(f"invalid {data_type} property '{prop}' on class '{cls}': expected a list, got {value!r}")
        base = data_type[:-2]
        if base == "object":
            return value
        return [_coerce_scalar(base, v, prop, cls) for v in value]
    return _coerce_scalar(data_type, value, prop, cls)


# --------------------------------------------------------------------------------------------
# Tokenization and filters
# --------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"[^\W_]+")


def _tokens(text: str, tokenization: str) -> list[str]:
    """Weaviate's tokenizers for filtering (no stopword removal)."""
    if tokenization == "field":
        stripped = text.strip()
        return [stripped] if stripped else []
    if tokenization == "whitespace":
        return text.split()
    if tokenization == "lowercase":
        return text.lower().split()
    if tokenization == "trigram":
        letters = "".join(_WORD_RE.findall(text.lower()))
        return [letters[i : i + 3] for i in range(max(len(letters) - 2, 0))]
    return [t.lower() for t in _WORD_RE.findall(text)]  # word (and the language tokenizers)


# weaviate/weaviate adapters/repos/db/inverted/stopwords/presets.go
_STOPWORD_PRESETS: dict[str, frozenset[str]] = {
    "en": frozenset({
        "a", "an", "and", "are", "as", "at", "be", "but", "by", "for",
        "if", "in", "into", "is", "it", "no", "not", "of", "on", "or", "such", "that",
        "the", "their", "then", "there", "these", "they", "this", "to", "was", "will",
        "with",
    }),
    "none": frozenset(),
}
_ONLY_STOPWORDS = (
    "invalid search term, only stopwords provided. "
    "Stopwords can be configured in class.invertedIndexConfig.stopwords"
)


def _stopwords(inverted: dict[str, Any]) -> frozenset[str]:
    """The class's stopword set: preset, plus additions, minus removals.

    Source: adapters/repos/db/inverted/stopwords/detector.go (NewDetectorFromConfig). They
    apply to ``word`` tokenization only, and only to query/filter values: the index keeps them.
    """
    config = inverted.get("stopwords") or {}
    preset = config.get("preset") or ""
    if preset and preset not in _STOPWORD_PRESETS:
        raise _invalid(f'failed to create new detector from config: preset "{preset}" not known to stopword detector')
    words = set(_STOPWORD_PRESETS.get(preset, frozenset()))
    words.update(config.get("additions") or ())
    words.difference_update(config.get("removals") or ())
    return frozenset(words)


def _glob(pattern: str) -> Callable[[str], bool]:
    pattern = pattern.replace("[", "[[]")
    return lambda s: fnmatch.fnmatchcase(s, pattern)


_COMPARE = {
    _F.OPERATOR_GREATER_THAN: lambda a, b: a > b,
    _F.OPERATOR_GREATER_THAN_EQUAL: lambda a, b: a >= b,
    _F.OPERATOR_LESS_THAN: lambda a, b: a < b,
    _F.OPERATOR_LESS_THAN_EQUAL: lambda a, b: a <= b,
}
Predicate = Callable[[str, "_StoredObject"], bool]


def _typed_filter_values(f: base_pb2.Filters) -> tuple[str, list[Any]]:
    """(the ``test_value`` oneof name, its values as a list)."""
    which = f.WhichOneof("test_value")
    if which is None:
        raise _invalid("filter has no value")
    value = getattr(f, which)
    if which.endswith("_array"):
        return which, list(value.values)
    return which, [value]


# The Go type a gRPC filter value becomes (adapters/handlers/grpc/v1/filters.go, ExtractFilters),
# named the way the server's "%T" errors name it.
_GO_TYPE = {
    "value_text": "string", "value_int": "int", "value_number": "float64", "value_boolean": "bool",
    "value_text_array": "string", "value_int_array": "int", "value_number_array": "float64",
    "value_boolean_array": "bool",
}


def _go_float_to_int(v: float) -> int:
    """adapters/handlers/grpc/v1/filters.go floatToInt."""
    if not math.isfinite(v):
        raise _invalid(f"filtering for integer, but received a non-finite number {v:g}")
    if v != math.trunc(v):
        raise _invalid(f"filtering for integer, but received a floating point number {v:g}")
    return int(v)


def _go_parse_float(text: str, kind: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _invalid(
            f"expected {'a number' if kind == 'number' else 'an integer'} value, but could not parse string "
            f"'{text}' as {'float' if kind == 'number' else 'int'}: strconv.ParseFloat: parsing \"{text}\": invalid syntax"
        ) from None
    return value


def _coerce_filter_values(base: str, which: str, values: list[Any], op: int) -> list[Any]:
    """The server's gRPC value handling for a filter on a ``base``-typed property.

    Over gRPC the value's declared type is the property's (ExtractFilters sets
    ``Value.Type`` from the schema), so a mismatch is not caught by the validator but by the
    inverted searcher's extractors (adapters/repos/db/inverted/searcher_value_extractors.go,
    searcher.go extractTokenizableProp), whose messages are reproduced here. Numbers are
    corrected first: an int (or a numeric string) on a number property becomes a float, a
    whole float (or a numeric string) on an int property becomes an int, element-wise for the
    Contains operators only.
    """
    contains = op in (_F.OPERATOR_CONTAINS_ANY, _F.OPERATOR_CONTAINS_ALL, _F.OPERATOR_CONTAINS_NONE)
    if base == "number":
        if which == "value_int":
            values = [float(values[0])]
        elif which == "value_text":
            values = [_go_parse_float(values[0], "number")]
        elif which == "value_int_array" and contains:
            values = [float(v) for v in values]
    elif base == "int":
        if which == "value_number":
            values = [_go_float_to_int(values[0])]
        elif which == "value_text":
            values = [_go_float_to_int(_go_parse_float(values[0], "int"))]
        elif which == "value_number_array" and contains:
            values = [_go_float_to_int(v) for v in values]
    want = {"text": (str, "expected value to be string, got '{}'"),
            "int": (int, "expected value to be int, got {}"),
            "number": (float, "expected value to be float64, got {}"),
            "boolean": (bool, "expected value to be bool, got {}"),
            "date": (str, "expected value to be time.Time (or parseable string), got {}")}.get(base)
    if want is None:
        return values
    kind, message = want
    for v in values:
        ok = isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
        if not ok:
            raise _invalid(message.format(_GO_TYPE.get(which, type(v).__name__)))
    return values


class _FilterCompiler:
    """Turns a ``base_pb2.Filters`` tree into a predicate over stored objects."""

    def __init__(self, collection: "_Collection") -> None:
        self._c = collection
        self._props = {p["name"]: p for p in collection.schema["properties"]}
        self._inverted = collection.schema["invertedIndexConfig"]
        self._stopwords = _stopwords(self._inverted)

    def compile(self, f: base_pb2.Filters) -> Predicate:
        op = f.operator
        if op in (_F.OPERATOR_AND, _F.OPERATOR_OR):
            subs = [self.compile(s) for s in f.filters]
            if op == _F.OPERATOR_AND:
                return lambda u, o: all(s(u, o) for s in subs)
            return lambda u, o: any(s(u, o) for s in subs)
        if op == _F.OPERATOR_NOT:
            if len(f.filters) != 1:
                raise _invalid("Not filter takes exactly one operand")
            sub = self.compile(f.filters[0])
            return lambda u, o: not sub(u, o)
        if op == _F.OPERATOR_WITHIN_GEO_RANGE:
            raise _unimplemented("WithinGeoRange filters")
        if f.HasField("target"):
            which = f.target.WhichOneof("target")
            if which != "property":
                raise _unimplemented(f"{which} filter targets")
            target = f.target.property
        elif f.on:
            if len(f.on) != 1:
                raise _unimplemented("reference filter paths")
            target = f.on[0]
        else:
            raise _invalid("filter has no target property")
        return self._leaf(op, target, f)

    # -- leaves ---------------------------------------------------------------------------

    def _leaf(self, op: int, target: str, f: base_pb2.Filters) -> Predicate:
        which, values = _typed_filter_values(f)
        if target == "_id":
            wanted = [str(v).lower() for v in values]
            return self._generic(op, lambda u, o: [u], wanted)
        if target in ("_creationTimeUnix", "_lastUpdateTimeUnix"):
            if not self._inverted.get("indexTimestamps"):
                raise _invalid(
                    "Timestamps must be indexed to be filterable! Add `IndexTimestamps: true` to the InvertedIndexConfig"
                )
            attr = "created_ms" if target == "_creationTimeUnix" else "updated_ms"
            wanted = [self._to_ms(v) for v in values]
            return self._generic(op, lambda u, o: [getattr(o, attr)], wanted)
        match = re.match(r"^len\((\w+)\)$", target)
        if match:
            if not self._inverted.get("indexPropertyLength"):
                raise _invalid(
                    "Property length must be indexed to be filterable! add `IndexPropertyLength: true` to the invertedIndexConfig"
                )
            name = match.group(1)
            return self._generic(op, lambda u, o: [_length(o.properties.get(name))], [int(v) for v in values])
        prop = self._props.get(target)
        if prop is None:
            raise _invalid(f"no such prop with name '{target}' found in class '{self._c.name}' in the schema")
        base = prop["dataType"][0].removesuffix("[]")
        if op == _F.OPERATOR_IS_NULL:
            if not self._inverted.get("indexNullState"):
                raise _invalid("Nullstate must be indexed to be filterable! Add `indexNullState: true` to the invertedIndexConfig")
            want_null = bool(values[0])
            return lambda u, o: _is_null(o.properties.get(target)) == want_null
        # Any inverted index serves a filter (filterable, searchable or rangeable), except that
        # Like cannot run on the rangeable one alone (adapters/repos/db/inverted/searcher.go
        # extractPrimitiveProp, prop_value_pairs.go getBucketName).
        indexes = (prop["indexFilterable"], prop.get("indexSearchable", False), prop["indexRangeFilters"])
        if not any(indexes) or (op == _F.OPERATOR_LIKE and not any(indexes[:2])):
            raise _invalid(
                f"Filtering by property '{target}' requires inverted index. Is `indexFilterable` option of property '{target}' enabled? Set it to `true` or leave empty"
            )

        def elements(u: str, o: _StoredObject) -> list[Any]:
            value = o.properties.get(target)
            if value is None:
                return []
            return value if isinstance(value, list) else [value]

        values = _coerce_filter_values(base, which, values, op)
        if base == "text":
            stopwords = self._stopwords if prop["tokenization"] == "word" else frozenset()
            return self._text(op, elements, values, prop["tokenization"], stopwords)
        if base in ("int", "number", "boolean"):
            return self._generic(op, elements, values)
        if base == "date":
            try:
                wanted = [_parse_date(v) for v in values]
            except ValueError as exc:
                raise _invalid(f"trying parse time as RFC3339 string: {exc}") from None
            return self._generic(op, lambda u, o: [_parse_date(e) for e in elements(u, o)], wanted)
        if base == "uuid":
            return self._generic(op, elements, [str(self._expect(v, str, target)).lower() for v in values])
        raise _unimplemented(f"filters on {base} properties")

    @staticmethod
    def _expect(value: Any, kind: Any, target: str) -> Any:
        if kind in ((int, float),) and isinstance(value, bool):
            raise _invalid(f"filter on '{target}': wrong value type {type(value).__name__}")
        if not isinstance(value, kind):
            raise _invalid(f"filter on '{target}': wrong value type {type(value).__name__}")
        return value

    @staticmethod
    def _to_ms(value: Any) -> int:
        if isinstance(value, str):
            if value.isdigit():
                return int(value)
            return int(_parse_date(value).timestamp() * 1000)
        return int(value)

    @staticmethod
    def _generic(op: int, elements: Callable[[str, Any], list[Any]], wanted: list[Any]) -> Predicate:
        if op == _F.OPERATOR_EQUAL:
            w = wanted[0]
            return lambda u, o: w in elements(u, o)
        if op == _F.OPERATOR_NOT_EQUAL:
            w = wanted[0]
            return lambda u, o: w not in elements(u, o)
        if op in _COMPARE:
            cmp, w = _COMPARE[op], wanted[0]
            return lambda u, o: any(cmp(e, w) for e in elements(u, o))
        if op == _F.OPERATOR_CONTAINS_ANY:
            ws = set(wanted)
            return lambda u, o: any(e in ws for e in elements(u, o))
        if op == _F.OPERATOR_CONTAINS_ALL:
            ws = set(wanted)
            return lambda u, o: ws.issubset(set(elements(u, o)))
        if op == _F.OPERATOR_CONTAINS_NONE:
            ws = set(wanted)
            return lambda u, o: not any(e in ws for e in elements(u, o))
        if op == _F.OPERATOR_LIKE:
            matchers = [_glob(str(w)) for w in wanted]
            return lambda u, o: any(m(str(e)) for e in elements(u, o) for m in matchers)
        raise _unimplemented(f"operator {_F.Operator.Name(op)} on this property")

    @staticmethod
    def _text(
        op: int, elements: Callable[[str, Any], list[Any]], wanted: list[str], tokenization: str,
        stopwords: frozenset[str],
    ) -> Predicate:
        def object_tokens(u: str, o: _StoredObject) -> set[str]:
            out: set[str] = set()
            for e in elements(u, o):
                out.update(_tokens(e, tokenization))
            return out

        # Equal on a text property is an AND over the value's tokens against the object's tokens.
        # The index keeps stopwords but a filter value drops them (word tokenization only); a value
        # left without tokens is refused, except among several ContainsAny values
        # (adapters/repos/db/inverted/searcher.go: extractTokenizableProp, ErrOnlyStopwords).
        if op == _F.OPERATOR_LIKE:
            token_sets = []
        else:
            token_sets = [
                frozenset([w.strip()]) if tokenization == "field"  # field: one term, "" included
                else frozenset(t for t in _tokens(w, tokenization) if t not in stopwords)
                for w in wanted
            ]
            if op == _F.OPERATOR_CONTAINS_ANY:
                token_sets = [t for t in token_sets if t]
            if not token_sets or not all(token_sets):
                raise _invalid(_ONLY_STOPWORDS)

        def has(tokens: set[str], needed: frozenset[str]) -> bool:
            return bool(needed) and needed.issubset(tokens)

        if op == _F.OPERATOR_EQUAL:
            needed = token_sets[0]
            return lambda u, o: has(object_tokens(u, o), needed)
        if op == _F.OPERATOR_NOT_EQUAL:
            needed = token_sets[0]
            return lambda u, o: not has(object_tokens(u, o), needed)
        if op == _F.OPERATOR_CONTAINS_ANY:
            return lambda u, o: (lambda t: any(has(t, n) for n in token_sets))(object_tokens(u, o))
        if op == _F.OPERATOR_CONTAINS_ALL:
            return lambda u, o: (lambda t: all(has(t, n) for n in token_sets))(object_tokens(u, o))
        if op == _F.OPERATOR_CONTAINS_NONE:
            return lambda u, o: (lambda t: not any(has(t, n) for n in token_sets))(object_tokens(u, o))
        if op == _F.OPERATOR_LIKE:
            if tokenization == "field":
                matcher = _glob(wanted[0].strip())
                return lambda u, o: any(matcher(e.strip()) for e in elements(u, o))
            pattern = wanted[0].lower() if tokenization in ("word", "lowercase", "trigram") else wanted[0]
            matcher = _glob(pattern)
            return lambda u, o: any(matcher(t) for t in object_tokens(u, o))
        if op in _COMPARE:
            cmp, w = _COMPARE[op], wanted[0]
            return lambda u, o: any(cmp(e, w) for e in elements(u, o))
        raise _unimplemented(f"operator {_F.Operator.Name(op)} on text properties")


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, list) and not value)


def _length(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, (str, list)):
        return len(value)
    return 1


# --------------------------------------------------------------------------------------------
# Store
# --------------------------------------------------------------------------------------------

_LEGACY = ""  # the key of the unnamed vector of a collection without vectorConfig


@dataclass
class _StoredObject:
    properties: dict[str, Any]
    vectors: dict[str, np.ndarray]
    created_ms: int
    updated_ms: int


@dataclass
class _Collection:
    schema: dict[str, Any]
    objects: dict[str, _StoredObject] = field(default_factory=dict)  # insertion (docID) order
    dims: dict[str, int] = field(default_factory=dict)
    version: int = 0
    _matrices: dict[str, tuple[int, list[str], np.ndarray]] = field(default_factory=dict)
    _postings: dict[str, tuple[int, "_Postings"]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.schema["class"]

    def vector_names(self) -> list[str]:
        if "vectorConfig" in self.schema:
            return list(self.schema["vectorConfig"])
        return [_LEGACY]

    def index_config(self, vector: str) -> dict[str, Any]:
        if vector == _LEGACY:
            return self.schema["vectorIndexConfig"]
        return self.schema["vectorConfig"][vector]["vectorIndexConfig"]

    def property(self, name: str) -> dict[str, Any] | None:
        for prop in self.schema["properties"]:
            if prop["name"] == name:
                return prop
        return None

    def put(self, uid: str, properties: dict[str, Any], vectors: dict[str, np.ndarray], now_ms: int) -> None:
        for name, vec in vectors.items():
            dim = self.dims.setdefault(name, len(vec))
            if dim != len(vec):
                raise _invalid(
                    f"new node has a vector with length {len(vec)}. Existing nodes have vectors with length {dim}"
                )
        previous = self.objects.pop(uid, None)  # an overwrite gets a new docID, as on the server
        created = previous.created_ms if previous is not None else now_ms
        self.objects[uid] = _StoredObject(properties, vectors, created, now_ms)
        self.version += 1

    def delete(self, uid: str) -> bool:
        if self.objects.pop(uid, None) is None:
            return False
        self.version += 1
        return True

    def postings(self, prop: dict[str, Any]) -> "_Postings":
        """The inverted index of one searchable property (rebuilt after any write)."""
        cached = self._postings.get(prop["name"])
        if cached is not None and cached[0] == self.version:
            return cached[1]
        built = _build_postings(self, prop)
        self._postings[prop["name"]] = (self.version, built)
        return built

    def matrix(self, vector: str) -> tuple[list[str], np.ndarray]:
        """Ids and float32 rows of every object holding ``vector`` (rows normalised for cosine)."""
        cached = self._matrices.get(vector)
        if cached is not None and cached[0] == self.version:
            return cached[1], cached[2]
        ids = [u for u, o in self.objects.items() if vector in o.vectors]
        dim = self.dims.get(vector, 0)
        rows = np.stack([self.objects[u].vectors[vector] for u in ids]) if ids else np.zeros((0, dim), np.float32)
        if self.index_config(vector)["distance"] == "cosine":
            rows = _normalise_rows(rows)
        self._matrices[vector] = (self.version, ids, rows)
        return ids, rows


def _normalise_rows(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms == 0, 1, norms)


def _distances(metric: str, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    rows64, q = rows.astype(np.float64), query.astype(np.float64)
    if metric == "cosine":
        qn = q / (np.linalg.norm(q) or 1.0)
        return 1.0 - rows64 @ qn
    if metric == "dot":
        return -(rows64 @ q)
    if metric == "l2-squared":
        return ((rows64 - q) ** 2).sum(axis=1)
    if metric == "manhattan":
        return np.abs(rows64 - q).sum(axis=1)
    return (rows64 != q).sum(axis=1).astype(np.float64)  # hamming


def _now_ms() -> int:
    return int(time.time() * 1000)


def _unpack_f32(data: bytes) -> np.ndarray:
    if len(data) % 4:
        raise _invalid("vector bytes are not a whole number of float32 values")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


# --------------------------------------------------------------------------------------------
# Keyword search (BM25F), autocut and hybrid fusion
# --------------------------------------------------------------------------------------------
#
# Followed from weaviate/weaviate at adcffc54 (main, 2026-08-20; the emulator claims 1.33, whose
# hybrid/BM25 paths these match as far as the client can tell), and the concept pages
# https://docs.weaviate.io/weaviate/concepts/search/hybrid-search and .../keyword-search:
# - adapters/repos/db/inverted/bm25_searcher.go (query terms, stats, legacy WAND, createTerm),
#   bm25_searcher_block.go (BlockMax WAND: per-property scoring, idf, combineResults),
#   terms/terms.go (Idf, Term.Score), lsmkv/segment_blockmax.go (SegmentBlockMax.Score),
#   lsmkv/bucket.go (CreateDiskTerm, GetAveragePropertyLength), shard_write_inverted_lsm.go
#   (propLength = token count, or distinct tokens for the legacy map strategy),
#   adapters/repos/db/index.go (objectSearch: default properties, autocut),
#   entities/tokenizer/analyze.go (AnalyzeAndCountDuplicates);
# - usecases/traverser/explorer_hybrid.go (Explorer.Hybrid: legs, candidate counts, the vector
#   distance cutoff, pagination), usecases/traverser/hybrid/hybrid_fusion.go (FusionRanked,
#   FusionRelativeScore), hybrid/searcher.go (HybridCombiner, autocut), entities/autocut/autocut.go;
# - adapters/handlers/grpc/v1/parse_search_request.go (alpha, fusion default, vectors).

QUERY_HYBRID_MAXIMUM_RESULTS = 100  # usecases/config/environment.go DefaultQueryHybridMaximumResults
_BM25_AND = base_search_pb2.SearchOperatorOptions.OPERATOR_AND
_BM25_AND_CROSS = base_search_pb2.SearchOperatorOptions.OPERATOR_AND_CROSS
_FUSION_RANKED = base_search_pb2.Hybrid.FUSION_TYPE_RANKED
_MISSING_SEARCHABLE = (
    "Searching by property '{0}' requires inverted index. Is `indexSearchable` option of property '{0}' "
    "enabled? Set it to `true` or leave empty"
)


@dataclass
class _Postings:
    """One searchable property's inverted index, as BM25 reads it (cached per store version).

    ``lengths`` is the BlockMax propLength (every token, stopwords included) of the objects
    holding at least one token; ``distinct`` is the legacy propLength (distinct tokens) of every
    object holding the property, which is also what the legacy length tracker averages.
    """

    freqs: dict[str, dict[str, int]]
    lengths: dict[str, int]
    distinct: dict[str, int]
    df: dict[str, int]

    @property
    def mean_length(self) -> float:
        return sum(self.lengths.values()) / len(self.lengths) if self.lengths else 0.0

    @property
    def mean_distinct(self) -> float:
        return sum(self.distinct.values()) / len(self.distinct) if self.distinct else 0.0


def _build_postings(coll: "_Collection", prop: dict[str, Any]) -> _Postings:
    name, tokenization = prop["name"], prop.get("tokenization") or "word"
    out = _Postings({}, {}, {}, {})
    for uid, obj in coll.objects.items():
        value = obj.properties.get(name)
        if value is None:
            continue
        counts: dict[str, int] = {}
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                for token in _tokens(item, tokenization):  # the index keeps stopwords
                    counts[token] = counts.get(token, 0) + 1
        out.distinct[uid] = len(counts)
        if counts:
            out.freqs[uid] = counts
            out.lengths[uid] = sum(counts.values())
            for token in counts:
                out.df[token] = out.df.get(token, 0) + 1
    return out


@dataclass
class _Scored:
    """One ranked object: ``score`` is what the reply carries; ``secondary`` breaks fusion ties
    (the raw BM25 score, or ``1 - distance``)."""

    uid: str
    score: float
    secondary: float = 0.0
    explain: str = ""


def _f32(x: float) -> float:
    return float(np.float32(x))


def _go_float(x: float) -> str:
    """A float32 as Go's ``%v`` prints it (shortest round-trip digits)."""
    return np.format_float_positional(np.float32(x), unique=True, trim="-")


def _bm25_idf(n: float, total: float) -> float:
    """terms.Idf: ``log(1 + (N - n + 0.5) / (n + 0.5))`` with N clamped to n."""
    total = max(total, n)
    return math.log(1.0 + (total - n + 0.5) / (n + 0.5))


def _searchable(prop: dict[str, Any]) -> bool:
    return prop["dataType"][0] in _TEXT_TYPES and bool(prop.get("indexSearchable", True))


def _bm25_properties(coll: "_Collection", requested: list[str]) -> list[tuple[dict[str, Any], float]]:
    """The searched properties with their ``^boost``; all searchable text ones when none named."""
    if not requested:
        props = [(p, 1.0) for p in coll.schema["properties"] if _searchable(p)]
        if not props:
            raise _invalid("No properties provided, and no indexed properties found in class")
        return props
    boosts: dict[str, float] = {}
    for raw in requested:
        raw = raw[:1].lower() + raw[1:]  # parse_search_request.go LowercaseFirstLetterOfStrings
        name, _, boost_text = raw.partition("^")
        prop = coll.property(name)
        if prop is None or not _searchable(prop):
            raise _invalid(_MISSING_SEARCHABLE.format(name))
        try:
            boost = float(boost_text) if boost_text else 1.0
        except ValueError:
            boost = 0.0  # Go ignores the ParseFloat error and keeps the zero value
        boosts[name] = boost  # a repeated property keeps its last boost and is searched once
    return [(coll.property(name), boost) for name, boost in boosts.items()]  # type: ignore[misc]


def _query_terms(query: str, tokenization: str, stopwords: frozenset[str]) -> dict[str, int]:
    """AnalyzeAndCountDuplicates: distinct query terms, each with its count as a boost."""
    counts: dict[str, int] = {}
    for token in _tokens(query, tokenization):
        if tokenization == "word" and token in stopwords:
            continue
        counts[token] = counts.get(token, 0) + 1
    return counts


def _keyword_search(
    coll: "_Collection",
    query: str,
    requested: list[str],
    predicate: "Predicate | None",
    limit: int,
    operator: int = 0,
    minimum_match: int = 0,
) -> list[_Scored]:
    """BM25F over the searched properties, best first (ties by uuid), at most ``limit`` (0: all).

    Scores follow the server's formula, which has no ``(k1 + 1)`` factor:
    ``idf(t) * f / (f + k1 * (1 - b + b * len / avgLen))`` with
    ``idf = log(1 + (N - n + 0.5) / (n + 0.5))`` times the term's count in the query, where N
    counts every object and n the objects holding the term, *ignoring the filter* (the filter
    only removes candidates). Only objects matching at least one term (all with the AND
    operator, at least ``minimum_match`` with OR) are returned. With the default
    ``usingBlockMaxWAND: true`` each property is scored on its own (its own avgLen, the term's
    n averaged over the properties holding it, the property boost as a factor), each keeps its
    top ``max(1.1 * limit, limit + 10)`` and the sums are ranked; with ``false`` the legacy
    WAND merges the properties per term (frequencies and lengths added, distinct-token lengths,
    the mean of the properties' average lengths).
    """
    if operator == _BM25_AND_CROSS:
        raise _unimplemented("the BM25 AND_CROSS operator")
    inverted = coll.schema["invertedIndexConfig"]
    k1, b = float(inverted["bm25"]["k1"]), float(inverted["bm25"]["b"])
    stopwords = _stopwords(inverted)
    props = _bm25_properties(coll, requested)
    groups: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for prop, boost in props:
        groups.setdefault(prop.get("tokenization") or "word", []).append((prop, boost))
    total = float(len(coll.objects))
    order = {uid: i for i, uid in enumerate(coll.objects)}  # docID order
    allowed = (lambda u: True) if predicate is None else (lambda u: predicate(u, coll.objects[u]))
    totals: dict[str, float] = {}
    explains: dict[str, list[str]] = {}

    if inverted.get("usingBlockMaxWAND", True):
        for tokenization, members in groups.items():
            terms = _query_terms(query, tokenization, stopwords)
            need = len(terms) if operator == _BM25_AND else minimum_match
            postings = [coll.postings(prop) for prop, _ in members]
            idf: dict[str, float] = {}
            for term, duplicates in terms.items():
                counts = [p.df.get(term, 0) for p in postings]
                holding = sum(1 for c in counts if c)
                if holding:
                    idf[term] = _bm25_idf(float(sum(counts) // holding), total) * duplicates
            keep = limit if limit <= 0 else max(int(limit * 1.1), limit + 10)
            for (prop, boost), post in zip(members, postings):
                avg = post.mean_length
                scored: list[tuple[float, int, str, list[str]]] = []
                for uid, freqs in post.freqs.items():
                    matched = [t for t in terms if t in freqs and t in idf]
                    if not matched or len(matched) < need or not allowed(uid):
                        continue
                    length = post.lengths[uid]
                    score = sum(
                        idf[t] * freqs[t] / (freqs[t] + k1 * ((1 - b) + b * (length / avg))) * boost for t in matched
                    )
                    why = [f"BM25F_{t}_frequency:{freqs[t]}, BM25F_{t}_propLength:{length}" for t in matched]
                    scored.append((-_f32(score), order[uid], uid, why))
                scored.sort(key=lambda row: row[:2])
                for neg, _, uid, why in scored[:keep] if keep > 0 else scored:
                    totals[uid] = _f32(totals.get(uid, 0.0) - neg)
                    explains.setdefault(uid, []).extend(why)
    else:
        means = [coll.postings(prop).mean_distinct for prop, _ in props]
        avg = sum(means) / len(means) if means else 0.0
        if not avg or math.isnan(avg):
            avg = 40.0  # bm25_searcher.go: "sane default, if all prop lengths are NaN or 0"
        need = None
        matched_terms: dict[str, int] = {}
        for tokenization, members in groups.items():
            terms = _query_terms(query, tokenization, stopwords)
            group_need = len(terms) if operator == _BM25_AND else minimum_match
            need = group_need if need is None else min(need, group_need)
            postings = [(coll.postings(prop), boost) for prop, boost in members]
            for term, duplicates in terms.items():
                docs = {u for post, _ in postings for u, f in post.freqs.items() if term in f}
                if not docs:
                    continue
                idf = _bm25_idf(float(len(docs)), total) * duplicates
                for uid in docs:
                    if not allowed(uid):
                        continue
                    freq = sum(post.freqs[uid][term] * boost for post, boost in postings if term in post.freqs.get(uid, {}))
                    length = sum(post.distinct[uid] for post, _ in postings if term in post.freqs.get(uid, {}))
                    term_score = idf * freq / (freq + k1 * (1 - b + b * length / avg))
                    totals[uid] = totals.get(uid, 0.0) + term_score
                    matched_terms[uid] = matched_terms.get(uid, 0) + 1
                    explains.setdefault(uid, []).append(
                        f"BM25F_{term}_frequency:{_go_float(freq)}, BM25F_{term}_propLength:{length}"
                    )
        totals = {u: _f32(s) for u, s in totals.items() if matched_terms[u] >= max(need or 0, 1)}

    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    if limit > 0:
        ranked = ranked[:limit]
    return [
        _Scored(uid, score, score, "".join(f", {e}" for e in explains.get(uid, [])))
        for uid, score in ranked
    ]


def _autocut(scores: list[float], cut_off: int) -> int:
    """entities/autocut/autocut.go in float32: how many results to keep."""
    n = len(scores)
    if n <= 1:
        return n
    y = np.asarray(scores, dtype=np.float32)
    step = np.float32(1.0) / (np.float32(n) - np.float32(1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.arange(n, dtype=np.float32) * step
        diff = (y - y[0]) / (y[-1] - y[0]) - x
    extrema = 0
    for i in range(1, n):
        after = diff[i - 2] if i == n - 1 else diff[i + 1]
        if diff[i] > diff[i - 1] and diff[i] > after:
            extrema += 1
            if extrema >= cut_off:
                return i
    return n


def _fusion_order(a: _Scored, b: _Scored) -> int:
    """The comparator both fusions sort with (score, then secondary score, then id)."""
    d = float(np.float32(b.score) - np.float32(a.score))
    if d * d < 1e-14:
        d2 = float(np.float32(b.secondary) - np.float32(a.secondary))
        if d2 * d2 < 1e-14:
            return -1 if a.uid < b.uid else (1 if a.uid > b.uid else 0)
        return -1 if a.secondary > b.secondary else 1
    return -1 if a.score > b.score else 1


def _fuse(fusion: int, legs: list[tuple[str, float, list[_Scored]]]) -> list[_Scored]:
    """FusionRanked (``weight / (rank + 60)``, rank from 0) or FusionRelativeScore (each leg
    min-max normalised to [0, 1], times its weight; a leg whose scores are all equal gives each
    object the full weight). Sums over the legs an object appears in; an object missing from a
    leg gets nothing from it. For an object in both legs the later leg's result (the keyword
    one) carries the secondary sort value, as in the server's map."""
    fused: dict[str, _Scored] = {}
    if fusion == _FUSION_RANKED:
        for name, weight, results in legs:
            for rank, res in enumerate(results):
                score = _f32(weight / (rank + 60))
                previous = fused.get(res.uid)
                explain = f"\nHybrid (Result Set {name}) Document {res.uid} contributed {_go_float(score)} to the score"
                if previous is not None:
                    score = _f32(score + previous.score)
                    explain = previous.explain + explain
                fused[res.uid] = _Scored(res.uid, score, res.secondary, explain)
    else:
        if all(not results for _, _, results in legs):
            return []
        for name, weight, results in legs:
            if not results:
                continue
            values = [np.float32(r.secondary) for r in results]
            high, low = max(values), min(values)
            for res, value in zip(results, values):
                score = np.float32(weight)
                if high != low:
                    score = np.float32(score * ((value - low) / (high - low)))
                explain = (
                    f"Hybrid (Result Set {name}) Document {res.uid}: original score {_go_float(value)}, "
                    f"normalized score: {_go_float(score)}"
                )
                previous = fused.get(res.uid)
                if previous is not None:
                    score = np.float32(score + np.float32(previous.score))
                    explain += " - " + previous.explain
                fused[res.uid] = _Scored(res.uid, float(score), res.secondary, explain)
    return sorted(fused.values(), key=functools.cmp_to_key(_fusion_order))


# --------------------------------------------------------------------------------------------
# Protobuf <-> Python values
# --------------------------------------------------------------------------------------------


def _struct_value(v: Any) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return v.string_value
    if kind == "number_value":
        return v.number_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return {k: _struct_value(x) for k, x in v.struct_value.fields.items()}
    if kind == "list_value":
        return [_struct_value(x) for x in v.list_value.values]
    return None


def _batch_properties(props: Any) -> dict[str, Any]:
    """``BatchObject.Properties`` / ``ObjectPropertiesValue`` as a plain dict (before coercion)."""
    out: dict[str, Any] = {k: _struct_value(v) for k, v in props.non_ref_properties.fields.items()}
    for arr in props.text_array_properties:
        out[arr.prop_name] = list(arr.values)
    for arr in props.int_array_properties:
        out[arr.prop_name] = [int(x) for x in arr.values]
    for arr in props.number_array_properties:
        if arr.values_bytes:
            out[arr.prop_name] = [float(x) for x in np.frombuffer(arr.values_bytes, dtype="<f8")]
        else:
            out[arr.prop_name] = [float(x) for x in arr.values]
    for arr in props.boolean_array_properties:
        out[arr.prop_name] = [bool(x) for x in arr.values]
    for obj in props.object_properties:
        out[obj.prop_name] = _batch_properties(obj.value)
    for arr in props.object_array_properties:
        out[arr.prop_name] = [_batch_properties(v) for v in arr.values]
    for name in props.empty_list_props:
        out[name] = []
    if hasattr(props, "single_target_ref_props") and (props.single_target_ref_props or props.multi_target_ref_props):
        raise _unimplemented("cross-references")
    return out


def _to_value(data_type: str | None, value: Any) -> properties_pb2.Value:
    """A stored Python value as the ``properties_pb2.Value`` the client deserialises."""
    if value is None:
        return properties_pb2.Value(null_value=0)
    base = (data_type or "").removesuffix("[]")
    if isinstance(value, list):
        lv = properties_pb2.ListValue()
        if base == "int" or (not base and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            lv.int_values.values = struct.pack(f"<{len(value)}q", *value)
        elif base == "number" or (not base and value and isinstance(value[0], float)):
            lv.number_values.values = struct.pack(f"<{len(value)}d", *value)
        elif base == "boolean" or (not base and value and isinstance(value[0], bool)):
            lv.bool_values.values.extend(value)
        elif base == "date":
            lv.date_values.values.extend(value)
        elif base == "uuid":
            lv.uuid_values.values.extend(value)
        elif base == "object" or (value and isinstance(value[0], dict)):
            lv.object_values.SetInParent()
            for item in value:
                lv.object_values.values.append(_to_properties(None, item))
        else:
            lv.text_values.SetInParent()
            lv.text_values.values.extend(str(v) for v in value)
        return properties_pb2.Value(list_value=lv)
    if base == "date":
        return properties_pb2.Value(date_value=value)
    if base == "uuid":
        return properties_pb2.Value(uuid_value=value)
    if base == "blob":
        return properties_pb2.Value(blob_value=value)
    if base == "geoCoordinates" and isinstance(value, dict):
        return properties_pb2.Value(
            geo_value=properties_pb2.GeoCoordinate(latitude=value.get("latitude", 0.0), longitude=value.get("longitude", 0.0))
        )
    if isinstance(value, bool):
        return properties_pb2.Value(bool_value=value)
    if base == "int" or (not base and isinstance(value, int)):
        return properties_pb2.Value(int_value=int(value))
    if isinstance(value, (int, float)):
        return properties_pb2.Value(number_value=float(value))
    if isinstance(value, dict):
        return properties_pb2.Value(object_value=_to_properties(None, value))
    return properties_pb2.Value(text_value=str(value))


def _to_properties(schema_props: list[dict[str, Any]] | None, values: dict[str, Any]) -> properties_pb2.Properties:
    types = {p["name"]: p["dataType"][0] for p in (schema_props or [])}
    out = properties_pb2.Properties()
    for name, value in values.items():
        out.fields[name].CopyFrom(_to_value(types.get(name), value))
    return out


# --------------------------------------------------------------------------------------------
# The emulated server
# --------------------------------------------------------------------------------------------


class WeaviateEmulator:
    """In-process Weaviate (REST on ``http_port``, gRPC on ``grpc_port``), see the module docstring.

    ``api_key`` may be reassigned while running (simulates a rotated key); so may ``version``
    (what ``/v1/meta`` reports; clients read it when they connect). ``requests`` grows for
    the emulator's lifetime; ``calls(op)`` filters it. Thread-safe: one lock guards the store.
    """

    def __init__(self, api_key: str | None = None, *, seed: int = 0, version: str = SERVER_VERSION) -> None:
        self.api_key = api_key
        self.version = version
        self.faults = FaultPlan(seed)
        self.requests: list[RecordedRequest] = []
        self.http_port = 0
        self.grpc_port = 0
        self._collections: dict[str, _Collection] = {}
        self._aliases: dict[str, str] = {}  # canonical alias name -> class name, as the server keeps them
        self._lock = threading.RLock()
        self._record_lock = threading.Lock()
        self._down = False
        self._stopping = threading.Event()
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._grpc: grpc.Server | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> "WeaviateEmulator":
        if self._http is not None:
            raise RuntimeError("emulator already started")
        self._stopping.clear()
        http = ThreadingHTTPServer(("127.0.0.1", 0), _RestHandler)
        http.daemon_threads = True
        http.block_on_close = False  # keep-alive connections must not block stop()
        http.emulator = self  # type: ignore[attr-defined]
        self._http = http
        self.http_port = http.server_address[1]
        self._http_thread = threading.Thread(
            target=http.serve_forever, kwargs={"poll_interval": 0.05}, name="weaviate-emu-rest", daemon=True
        )
        self._http_thread.start()

        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="weaviate-emu-grpc"),
            options=[
                ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES * 2),
                ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES * 2),
                ("grpc.so_reuseport", 0),
            ],
        )
        weaviate_pb2_grpc.add_WeaviateServicer_to_server(_Servicer(self), server)
        server.add_generic_rpc_handlers((_health_handler(self),))
        self.grpc_port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc = server
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait(5)
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._http_thread is not None:
            self._http_thread.join(5)
            self._http_thread = None

    def __enter__(self) -> "WeaviateEmulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls and inspection -----------------------------------------------------

    def set_down(self, down: bool) -> None:
        """While down, REST answers 503 and gRPC ``UNAVAILABLE`` to everything (probes included)."""
        self._down = down

    def objects(self, collection: str) -> dict[str, tuple[list[float], dict]]:
        """Snapshot: uuid -> (vector, properties). The vector is the unnamed one, else the first named one."""
        with self._lock:
            coll = self._collections.get(_capitalise(collection))
            if coll is None:
                return {}
            primary = coll.vector_names()[0]
            return {
                u: (
                    [float(x) for x in o.vectors[primary]] if primary in o.vectors else [],
                    json.loads(json.dumps(o.properties)),
                )
                for u, o in coll.objects.items()
            }

    def calls(self, op: str) -> list[RecordedRequest]:
        """Recorded requests of one operation, in arrival order."""
        with self._record_lock:
            return [r for r in self.requests if r.op == op]

    # -- gate shared by both transports ---------------------------------------------------

    def _record(self, rec: RecordedRequest) -> RecordedRequest:
        with self._record_lock:
            self.requests.append(rec)
        return rec

    def _authorised(self, headers: dict[str, str]) -> bool:
        return self.api_key is None or headers.get("authorization") == f"Bearer {self.api_key}"

    def _stall(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    # -- collections ----------------------------------------------------------------------

    def _collection(self, name: str) -> _Collection:
        coll = self._collections.get(_capitalise(name))
        if coll is None:
            raise _not_found(f"could not find class {_capitalise(name)} in schema")
        return coll

    def _data_collection(self, name: str) -> _Collection:
        """The collection an object operation names, through an alias if it is one (the server
        resolves aliases before every data operation; a dangling alias names a missing class)."""
        return self._collection(self._resolve_alias(name))

    def _resolve_alias(self, name: str) -> str:
        """``schema.ResolveAlias``: the first letter is upper-cased, then an exact lookup."""
        canonical = _capitalise(name)
        return self._aliases.get(canonical, canonical)

    def aliases(self) -> dict[str, str]:
        """Snapshot: alias -> target class."""
        with self._lock:
            return dict(self._aliases)

    def supports_aliases(self) -> bool:
        match = re.match(r"^v?(\d+)\.(\d+)", self.version)
        return match is None or (int(match.group(1)), int(match.group(2))) >= ALIASES_SINCE

    def _coerce_properties(self, coll: _Collection, raw: dict[str, Any]) -> dict[str, Any]:
        """Coerce by the schema; unknown properties are added to it (auto-schema)."""
        out: dict[str, Any] = {}
        new_props: list[dict[str, Any]] = []
        for name, value in raw.items():
            if value is None:
                continue
            prop = coll.property(name)
            if prop is None:
                inferred = _infer_data_type(value)
                if inferred is None:
                    if isinstance(value, list) and not value:
                        continue  # an empty list of unknown type adds nothing
                    raise _invalid(f"could not infer the data type of property '{name}' on class '{coll.name}'")
                prop = _default_property({"name": name, "dataType": [inferred]})
                new_props.append(prop)
            out[name] = _coerce(prop["dataType"][0], value, name, coll.name)
        for prop in new_props:
            coll.schema["properties"].append(prop)
        return out

    def _object_vectors(self, coll: _Collection, single: np.ndarray | None, named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = coll.vector_names()
        vectors: dict[str, np.ndarray] = {}
        if single is not None and len(single):
            if len(names) != 1:
                raise _invalid(f"collection {coll.name} has multiple vectors, but the object has one unnamed vector")
            vectors[names[0]] = single
        for name, vec in named.items():
            if name not in names:
                if name in ("", "default") and len(names) == 1:
                    name = names[0]
                else:
                    raise _invalid(f"collection {coll.name} does not have a vector named '{name}'")
            vectors[name] = vec
        return vectors


# --------------------------------------------------------------------------------------------
# gRPC
# --------------------------------------------------------------------------------------------

_GRPC_FAULT_CODES = {
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "503": grpc.StatusCode.UNAVAILABLE,
    "drop": grpc.StatusCode.UNAVAILABLE,
    "internal": grpc.StatusCode.INTERNAL,
    "500": grpc.StatusCode.INTERNAL,
    "429": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _grpc_call(emu: WeaviateEmulator, op: str, method: str, request: Any, context: grpc.ServicerContext, apply: Callable[[Any], Any]) -> Any:
    """Record, then gate (down, auth, faults), then apply. Aborts carry the code into the record."""
    metadata = {k.lower(): v for k, v in context.invocation_metadata()}
    rec = emu._record(
        RecordedRequest(
            time=time.time(),
            transport="grpc",
            op=op,
            method=method,
            path=f"/weaviate.v1.Weaviate/{method}" if op != "health" else "/grpc.health.v1.Health/Check",
            headers=metadata,
            body=MessageToDict(request, preserving_proto_field_name=True),
        )
    )
    code, details = _grpc_gate(emu, op, metadata, rec)
    if code is None:
        try:
            reply = apply(request)
            rec.status = "OK"
            return reply
        except _ApiError as exc:
            code, details = exc.grpc_code, exc.message
        except Exception as exc:  # an emulator bug: surface it instead of a bare UNKNOWN
            code, details = grpc.StatusCode.UNKNOWN, f"emulator error: {type(exc).__name__}: {exc}"
    rec.status = code.name
    context.abort(code, details)


def _grpc_gate(emu: WeaviateEmulator, op: str, metadata: dict[str, str], rec: RecordedRequest) -> tuple[grpc.StatusCode | None, str]:
    if emu._down:
        return grpc.StatusCode.UNAVAILABLE, "emulator is down"
    if op != "health" and not emu._authorised(metadata):
        return grpc.StatusCode.UNAUTHENTICATED, "unauthenticated: missing or wrong api key"
    fault = emu.faults._request_fault(op)
    if fault is None:
        return None, ""
    rec.fault = fault.kind
    if fault.kind == "deadline":
        emu._stall(fault.stall_s)
        if fault.then_apply:
            return None, ""
        return grpc.StatusCode.DEADLINE_EXCEEDED, fault.message
    return _GRPC_FAULT_CODES[fault.kind], fault.message


def _health_handler(emu: WeaviateEmulator) -> grpc.GenericRpcHandler:
    def check(request: Any, context: grpc.ServicerContext) -> Any:
        return _grpc_call(
            emu, "health", "Check", request, context,
            lambda _req: health_weaviate_pb2.WeaviateHealthCheckResponse(
                status=health_weaviate_pb2.WeaviateHealthCheckResponse.SERVING
            ),
        )

    return grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check,
                request_deserializer=health_weaviate_pb2.WeaviateHealthCheckRequest.FromString,
                response_serializer=health_weaviate_pb2.WeaviateHealthCheckResponse.SerializeToString,
            )
        },
    )


class _Servicer(weaviate_pb2_grpc.WeaviateServicer):
    def __init__(self, emu: WeaviateEmulator) -> None:
        self.emu = emu

    def BatchObjects(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _grpc_call(self.emu, "batch_objects", "BatchObjects", request, context, self._batch_objects)

    def Search(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _grpc_call(self.emu, "search", "Search", request, context, self._search)

    def BatchDelete(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _grpc_call(self.emu, "batch_delete", "BatchDelete", request, context, self._batch_delete)

    def Aggregate(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _grpc_call(self.emu, "aggregate", "Aggregate", request, context, self._aggregate)

    def TenantsGet(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _grpc_call(self.emu, "tenants_get", "TenantsGet", request, context, self._tenants_get)

    def BatchReferences(self, request: Any, context: grpc.ServicerContext) -> Any:
        def refuse(_req: Any) -> Any:
            raise _unimplemented("BatchReferences")

        return _grpc_call(self.emu, "batch_references", "BatchReferences", request, context, refuse)

    # -- BatchObjects ---------------------------------------------------------------------

    def _batch_objects(self, request: batch_pb2.BatchObjectsRequest) -> batch_pb2.BatchObjectsReply:
        started = time.perf_counter()
        emu = self.emu
        objects = list(request.objects)
        errors = emu.faults._object_errors([_safe_uuid(o.uuid) for o in objects])
        with emu._lock:
            for index, obj in enumerate(objects):
                if index in errors:
                    continue
                try:
                    if obj.tenant:
                        raise _invalid("emulator does not implement multi-tenancy")
                    coll = emu._data_collection(obj.collection)
                    uid = str(uuid_lib.UUID(obj.uuid))
                    single = _unpack_f32(obj.vector_bytes) if obj.vector_bytes else (
                        np.asarray(obj.vector, np.float32) if len(obj.vector) else None
                    )
                    named: dict[str, np.ndarray] = {}
                    for vec in obj.vectors:
                        if vec.type == base_pb2.Vectors.VECTOR_TYPE_MULTI_FP32:
                            raise _unimplemented("multi-vectors")
                        named[vec.name] = _unpack_f32(vec.vector_bytes)
                    vectors = emu._object_vectors(coll, single, named)
                    props = emu._coerce_properties(coll, _batch_properties(obj.properties)) if obj.HasField("properties") else {}
                    coll.put(uid, props, vectors, _now_ms())
                except _ApiError as exc:
                    errors[index] = exc.message
                except ValueError as exc:
                    errors[index] = f"invalid object: {exc}"
        reply = batch_pb2.BatchObjectsReply(took=time.perf_counter() - started)
        for index in sorted(errors):
            reply.errors.add(index=index, error=errors[index])
        return reply

    # -- Search ---------------------------------------------------------------------------

    def _search(self, request: search_get_pb2.SearchRequest) -> search_get_pb2.SearchReply:
        started = time.perf_counter()
        emu = self.emu
        for unsupported in ("near_text", "near_image", "near_audio", "near_video",
                            "near_depth", "near_thermal", "near_imu", "group_by", "generative", "rerank", "boost"):
            if request.HasField(unsupported):
                raise _unimplemented(f"Search.{unsupported}")
        if request.tenant:
            raise _invalid("emulator does not implement multi-tenancy")
        searches = [n for n in ("near_vector", "near_object", "bm25_search", "hybrid_search") if request.HasField(n)]
        if len(searches) > 1:
            raise _invalid(f"conflict: {' and '.join(searches)} arguments present, choose one")
        if request.sort_by and searches:
            raise _invalid("sorting cannot be combined with search")  # parse_search_request.go
        if request.autocut and not {"bm25_search", "hybrid_search"} & set(searches):
            raise _unimplemented("autocut outside bm25 and hybrid search")
        with emu._lock:
            coll = emu._data_collection(request.collection)
            predicate = _FilterCompiler(coll).compile(request.filters) if request.HasField("filters") else None
            distances: dict[str, float] = {}
            scored: dict[str, _Scored] = {}
            if request.HasField("hybrid_search") or request.HasField("bm25_search"):
                ranked = self._hybrid(coll, request, predicate) if request.HasField("hybrid_search") else (
                    self._bm25(coll, request, predicate)
                )
                hits = [r.uid for r in ranked]
                scored = {r.uid: r for r in ranked}
            elif request.HasField("near_vector") or request.HasField("near_object"):
                hits = self._vector_search(coll, request, predicate, distances)
            else:
                hits = self._list(coll, request, predicate)
            results = [
                self._result(coll, uid, coll.objects[uid], request, distances.get(uid), scored.get(uid)) for uid in hits
            ]
        return search_get_pb2.SearchReply(took=time.perf_counter() - started, results=results)

    # -- keyword and hybrid search ----------------------------------------------------------

    def _bm25(self, coll: _Collection, request: Any, predicate: Predicate | None) -> list[_Scored]:
        """``Search.bm25_search``: top ``offset + limit`` by BM25F, autocut on those, then the page."""
        bm = request.bm25_search
        if not bm.query:
            raise _invalid("keyword search (bm25) must have query set")  # explorer.go getClassKeywordBased
        offset, limit = self._window(request)
        operator, minimum = _bm25_operator(bm.search_operator if bm.HasField("search_operator") else None)
        ranked = _keyword_search(coll, bm.query, list(bm.properties), predicate, offset + limit, operator, minimum)
        if request.autocut > 0:
            ranked = ranked[: _autocut([r.score for r in ranked], request.autocut)]
        return ranked[offset : offset + limit]

    def _hybrid(self, coll: _Collection, request: Any, predicate: Predicate | None) -> list[_Scored]:
        """``Search.hybrid_search`` as Explorer.Hybrid runs it (usecases/traverser/explorer_hybrid.go).

        - ``alpha`` (the proto field ``alpha`` below server 1.36.6; the client sends 0.7 when the
          caller gives none) weighs the legs: the vector leg runs only when ``alpha > 0`` (weight
          ``alpha``), the keyword leg only when ``1 - alpha > 0`` (weight ``1 - alpha``), so 0 is
          pure BM25 and 1 pure vector, both still fused (scores normalised).
        - Each leg fetches ``max(QUERY_HYBRID_MAXIMUM_RESULTS, limit)`` candidates (100 by
          default; the offset does not enlarge it), both under the filter.
        - ``max_vector_distance`` (``vector_distance``) cuts the vector leg at the first result
          beyond it *and* drops keyword results not kept by the vector leg; a distance on the
          ``near_vector`` sub-search only bounds that search.
        - Fusion defaults to relativeScore when unset; the fused list is cut to
          ``offset + limit``, then autocut, then the page is taken.
        """
        hs = request.hybrid_search
        for unsupported in ("near_text", "selection"):
            if hs.HasField(unsupported):
                raise _unimplemented(f"Hybrid.{unsupported}")
        vector: np.ndarray | None = None
        if len(hs.vectors):
            if len(hs.vectors) > 1:
                raise _invalid(f"hybrid: only 1 vector supported, found {len(hs.vectors)} vectors")
            if hs.vectors[0].type == base_pb2.Vectors.VECTOR_TYPE_MULTI_FP32:
                raise _unimplemented("multi-vector queries")
            vector = _unpack_f32(hs.vectors[0].vector_bytes)
        elif hs.vector_bytes:
            vector = _unpack_f32(hs.vector_bytes)
        elif len(hs.vector):
            vector = np.asarray(hs.vector, np.float32)
        near = hs.near_vector if hs.HasField("near_vector") else None
        if near is not None and vector is not None:
            raise _invalid("cannot combine nearVector and vector in hybrid search")
        if not hs.use_alpha_param:
            alpha = float(hs.alpha)
        else:
            alpha = float(hs.alpha_param) if hs.HasField("alpha_param") else 0.75  # common_filters.DefaultAlpha
        alpha = _f32(alpha)  # a proto float
        offset, limit = self._window(request)
        leg_limit = max(QUERY_HYBRID_MAXIMUM_RESULTS, limit)
        legs: list[tuple[str, float, list[_Scored]]] = []
        kept_by_vector: set[str] | None = None
        if alpha > 0:
            targets = list(hs.targets.target_vectors) if hs.HasField("targets") else list(hs.target_vectors)
            if not targets and near is not None:
                targets = list(near.target_vectors) or list(near.targets.target_vectors)
            target = self._target(coll, targets)
            certainty = max_distance = None
            if near is not None:
                query = _near_vector_query(near, target)
                certainty = near.certainty if near.HasField("certainty") else None
                max_distance = near.distance if near.HasField("distance") else None
            elif vector is not None:
                query = vector
            else:  # no vectorizer: the module provider cannot embed the query
                raise _invalid(
                    f"VectorFromInput was called without vectorizer on class {coll.name} for input {hs.query}"
                )
            nearest = self._nearest(coll, target, query, predicate, leg_limit, max_distance, certainty)
            if hs.HasField("vector_distance"):
                cutoff = hs.vector_distance
                cut = 0
                while cut < len(nearest) and nearest[cut][1] <= cutoff:
                    cut += 1
                nearest = nearest[:cut]
                kept_by_vector = {uid for uid, _ in nearest}
            name = "vector,nearVector" if near is not None else "vector,hybridVector"
            legs.append((name, alpha, [_Scored(uid, 1.0 - d, 1.0 - d) for uid, d in nearest]))
        if 1 - alpha > 0:
            operator, minimum = _bm25_operator(hs.bm25_search_operator if hs.HasField("bm25_search_operator") else None)
            keyword = _keyword_search(coll, hs.query, list(hs.properties), predicate, leg_limit, operator, minimum)
            if kept_by_vector is not None:
                keyword = [r for r in keyword if r.uid in kept_by_vector]
            legs.append(("keyword,bm25", 1 - alpha, keyword))
        fused = _fuse(hs.fusion_type, legs)[: offset + limit]
        if request.autocut > 0:
            fused = fused[: _autocut([r.score for r in fused], request.autocut)]
        return fused[offset : offset + limit]

    @staticmethod
    def _window(request: Any) -> tuple[int, int]:
        limit = request.limit or QUERY_DEFAULTS_LIMIT
        if request.offset + limit > QUERY_MAXIMUM_RESULTS:
            raise _invalid(
                f"query maximum results exceeded: offset {request.offset} + limit {limit} > QUERY_MAXIMUM_RESULTS {QUERY_MAXIMUM_RESULTS}"
            )
        return request.offset, limit

    def _list(self, coll: _Collection, request: Any, predicate: Predicate | None) -> list[str]:
        offset, limit = self._window(request)
        if request.after:
            if predicate is not None or request.sort_by:
                raise _invalid("the cursor api (after) cannot be combined with filters or sorting")
            after = request.after.lower()
            ids = sorted(u for u in coll.objects if u > after)
            return ids[offset : offset + limit]
        if predicate is None:
            ids = sorted(coll.objects)  # the objects bucket is keyed by uuid
        else:
            ids = [u for u, o in coll.objects.items() if predicate(u, o)]
        for sort in reversed(request.sort_by):
            path = sort.path[0] if sort.path else ""
            present = [u for u in ids if _sort_key(coll, u, path) is not None]
            missing = [u for u in ids if _sort_key(coll, u, path) is None]
            present.sort(key=lambda u: _sort_key(coll, u, path), reverse=not sort.ascending)
            ids = present + missing if sort.ascending else missing + present
        return ids[offset : offset + limit]

    def _vector_search(self, coll: _Collection, request: Any, predicate: Predicate | None, distances: dict[str, float]) -> list[str]:
        offset, limit = self._window(request)
        if request.HasField("near_vector"):
            nv = request.near_vector
            target = self._target(coll, list(nv.target_vectors) or list(nv.targets.target_vectors))
            query = _near_vector_query(nv, target)
            certainty = nv.certainty if nv.HasField("certainty") else None
            max_distance = nv.distance if nv.HasField("distance") else None
        else:
            no = request.near_object
            target = self._target(coll, list(no.target_vectors) or list(no.targets.target_vectors))
            source = coll.objects.get(no.id.lower())
            if source is None or target not in source.vectors:
                raise _not_found(f"nearObject: object {no.id} not found or has no vector '{target}'")
            query = source.vectors[target]
            certainty = no.certainty if no.HasField("certainty") else None
            max_distance = no.distance if no.HasField("distance") else None
        if request.limit == 0 and (certainty is not None or max_distance is not None):
            limit = QUERY_MAXIMUM_RESULTS - offset
        out = []
        for uid, d in self._nearest(coll, target, query, predicate, offset + limit, max_distance, certainty)[offset:]:
            distances[uid] = d
            out.append(uid)
        return out

    @staticmethod
    def _nearest(
        coll: _Collection, target: str, query: np.ndarray, predicate: Predicate | None, k: int,
        max_distance: float | None, certainty: float | None,
    ) -> list[tuple[str, float]]:
        """Exact top ``k`` (uid, distance) under the filter, nearest first, ties in docID order."""
        metric = coll.index_config(target)["distance"]
        ids, rows = coll.matrix(target)
        if len(ids) and rows.shape[1] != len(query):
            raise _invalid(f"vector lengths don't match: {len(query)} vs {rows.shape[1]}")
        if certainty is not None and metric != "cosine":
            raise _invalid("can't compute and return certainty when vector index is configured with a distance other than cosine")
        if predicate is not None:
            mask = np.fromiter((predicate(u, coll.objects[u]) for u in ids), dtype=bool, count=len(ids))
            keep = np.nonzero(mask)[0]
        else:
            keep = np.arange(len(ids))
        d = _distances(metric, rows[keep], query) if len(keep) else np.zeros(0)
        if max_distance is not None:
            ok = d <= max_distance
            keep, d = keep[ok], d[ok]
        if certainty is not None:
            ok = d <= 2 * (1 - certainty)
            keep, d = keep[ok], d[ok]
        k = min(k, len(d))
        if k == 0:
            return []
        top = np.argpartition(d, k - 1)[:k] if k < len(d) else np.arange(len(d))
        top = top[np.lexsort((keep[top], d[top]))]
        return [(ids[keep[i]], float(d[i])) for i in top]

    @staticmethod
    def _target(coll: _Collection, targets: list[str]) -> str:
        names = coll.vector_names()
        if not targets:
            if len(names) != 1:
                raise _invalid(f"collection {coll.name} has multiple vectors; name a target vector")
            return names[0]
        if len(targets) != 1:
            raise _unimplemented("multi-target vector search")
        if targets[0] not in names:
            raise _invalid(f"collection {coll.name} has no vector named '{targets[0]}'")
        return targets[0]

    def _result(
        self, coll: _Collection, uid: str, obj: _StoredObject, request: Any, distance: float | None,
        scored: _Scored | None = None,
    ) -> search_get_pb2.SearchResult:
        md = request.metadata
        meta = search_get_pb2.MetadataResult(id=uid, id_as_bytes=uuid_lib.UUID(uid).bytes)
        if scored is not None and md.score:
            meta.score, meta.score_present = scored.score, True
        if scored is not None and md.explain_score:
            meta.explain_score, meta.explain_score_present = scored.explain, True
        if md.creation_time_unix:
            meta.creation_time_unix, meta.creation_time_unix_present = obj.created_ms, True
        if md.last_update_time_unix:
            meta.last_update_time_unix, meta.last_update_time_unix_present = obj.updated_ms, True
        if md.is_consistent:
            meta.is_consistent, meta.is_consistent_present = True, True
        if distance is not None and md.distance:
            meta.distance, meta.distance_present = distance, True
        if distance is not None and md.certainty:
            meta.certainty, meta.certainty_present = 1 - distance / 2, True
        wanted = list(md.vectors) or (coll.vector_names() if md.vector else [])
        for name in wanted:
            if name not in obj.vectors:
                continue
            data = obj.vectors[name].astype("<f4").tobytes()
            if name == _LEGACY:
                meta.vector_bytes = data
            else:
                meta.vectors.add(name=name, vector_bytes=data, type=base_pb2.Vectors.VECTOR_TYPE_SINGLE_FP32)
        if request.HasField("properties") and not request.properties.return_all_nonref_properties:
            requested = set(request.properties.non_ref_properties)
            requested.update(p.prop_name for p in request.properties.object_properties)
            if request.properties.ref_properties:
                raise _unimplemented("reference properties")
            values = {k: v for k, v in obj.properties.items() if k in requested}
        else:
            values = obj.properties
        props = search_get_pb2.PropertiesResult(
            target_collection=coll.name,
            non_ref_props=_to_properties(coll.schema["properties"], values),
        )
        return search_get_pb2.SearchResult(metadata=meta, properties=props)

    # -- BatchDelete ----------------------------------------------------------------------

    def _batch_delete(self, request: batch_delete_pb2.BatchDeleteRequest) -> batch_delete_pb2.BatchDeleteReply:
        started = time.perf_counter()
        emu = self.emu
        if request.tenant:
            raise _invalid("emulator does not implement multi-tenancy")
        if not request.HasField("filters"):
            raise _invalid("batch delete needs a filter")
        with emu._lock:
            coll = emu._data_collection(request.collection)
            predicate = _FilterCompiler(coll).compile(request.filters)
            matched: list[str] = []
            for uid, obj in coll.objects.items():
                if predicate(uid, obj):
                    matched.append(uid)
                    if len(matched) >= QUERY_MAXIMUM_RESULTS:
                        break
            reply = batch_delete_pb2.BatchDeleteReply(matches=len(matched))
            for uid in matched:
                deleted = False if request.dry_run else coll.delete(uid)
                if deleted:
                    reply.successful += 1
                if request.verbose:
                    reply.objects.add(uuid=uuid_lib.UUID(uid).bytes, successful=deleted)
        reply.took = time.perf_counter() - started
        return reply

    # -- Aggregate ------------------------------------------------------------------------

    def _aggregate(self, request: aggregate_pb2.AggregateRequest) -> aggregate_pb2.AggregateReply:
        started = time.perf_counter()
        emu = self.emu
        for unsupported in ("group_by", "hybrid", "near_vector", "near_object", "near_text", "near_image",
                            "near_audio", "near_video", "near_depth", "near_thermal", "near_imu"):
            if request.HasField(unsupported):
                raise _unimplemented(f"Aggregate.{unsupported}")
        if request.tenant:
            raise _invalid("emulator does not implement multi-tenancy")
        with emu._lock:
            coll = emu._data_collection(request.collection)
            predicate = _FilterCompiler(coll).compile(request.filters) if request.HasField("filters") else None
            matched = [o for u, o in coll.objects.items() if predicate is None or predicate(u, o)]
            single = aggregate_pb2.AggregateReply.Single()
            if request.objects_count:
                single.objects_count = len(matched)
            if request.aggregations:
                single.aggregations.SetInParent()
                for agg in request.aggregations:
                    single.aggregations.aggregations.append(_aggregation(coll, agg, matched))
        return aggregate_pb2.AggregateReply(took=time.perf_counter() - started, single_result=single)

    # -- TenantsGet -----------------------------------------------------------------------

    def _tenants_get(self, request: tenants_pb2.TenantsGetRequest) -> tenants_pb2.TenantsGetReply:
        with self.emu._lock:
            self.emu._data_collection(request.collection)
        return tenants_pb2.TenantsGetReply(took=0.0)


def _safe_uuid(text: str) -> str:
    try:
        return str(uuid_lib.UUID(text))
    except ValueError:
        return text


def _sort_key(coll: _Collection, uid: str, path: str) -> Any:
    obj = coll.objects[uid]
    if path == "_id":
        return uid
    if path == "_creationTimeUnix":
        return obj.created_ms
    if path == "_lastUpdateTimeUnix":
        return obj.updated_ms
    value = obj.properties.get(path)
    if isinstance(value, list):
        return None  # the server refuses to sort by arrays; treat as missing
    prop = coll.property(path)
    if prop is not None and prop["dataType"][0] == "date" and value is not None:
        return _parse_date(value)
    return value


def _near_vector_query(nv: Any, target: str) -> np.ndarray:
    for vec in nv.vectors:
        if vec.type == base_pb2.Vectors.VECTOR_TYPE_MULTI_FP32:
            raise _unimplemented("multi-vector queries")
        return _unpack_f32(vec.vector_bytes)
    if nv.vector_bytes:
        return _unpack_f32(nv.vector_bytes)
    if len(nv.vector):
        return np.asarray(nv.vector, np.float32)
    for vft in nv.vector_for_targets:
        if vft.name == target:
            if vft.vector_bytes:
                return _unpack_f32(vft.vector_bytes)
            for vec in vft.vectors:
                return _unpack_f32(vec.vector_bytes)
    if target in nv.vector_per_target:
        return _unpack_f32(nv.vector_per_target[target])
    raise _invalid("near_vector has no vector")


def _bm25_operator(options: Any) -> tuple[int, int]:
    """(operator, minimum_or_tokens_match) of a ``SearchOperatorOptions`` (OR and 0 without)."""
    if options is None:
        return 0, 0
    minimum = options.minimum_or_tokens_match if options.HasField("minimum_or_tokens_match") else 0
    return options.operator, minimum


def _aggregation(coll: _Collection, agg: Any, objects: list[_StoredObject]) -> Any:
    Agg = aggregate_pb2.AggregateReply.Aggregations.Aggregation
    prop = coll.property(agg.property)
    if prop is None:
        raise _invalid(f"no such prop with name '{agg.property}' found in class '{coll.name}'")
    values: list[Any] = []
    for obj in objects:
        value = obj.properties.get(agg.property)
        if value is None:
            continue
        values.extend(value if isinstance(value, list) else [value])
    out = Agg(property=agg.property)
    which = agg.WhichOneof("aggregation")
    if which in ("int", "number"):
        req = getattr(agg, which)
        res = getattr(out, which)
        res.SetInParent()
        if req.count:
            res.count = len(values)
        if values:
            arr = np.asarray(values, dtype=np.float64)
            cast = int if which == "int" else float
            if req.sum:
                res.sum = cast(arr.sum())
            if req.mean:
                res.mean = float(arr.mean())
            if req.median:
                res.median = float(np.median(arr))
            if req.maximum:
                res.maximum = cast(arr.max())
            if req.minimum:
                res.minimum = cast(arr.min())
            if req.mode:
                vals, counts = np.unique(arr, return_counts=True)
                res.mode = cast(vals[np.argmax(counts)])
        if req.type:
            res.type = prop["dataType"][0]
    elif which == "boolean":
        req, res = agg.boolean, out.boolean
        res.SetInParent()
        trues = sum(1 for v in values if v)
        if req.count:
            res.count = len(values)
        if req.total_true:
            res.total_true = trues
        if req.total_false:
            res.total_false = len(values) - trues
        if req.percentage_true and values:
            res.percentage_true = trues / len(values)
        if req.percentage_false and values:
            res.percentage_false = (len(values) - trues) / len(values)
    elif which == "text":
        req, res = agg.text, out.text
        res.SetInParent()
        if req.count:
            res.count = len(values)
        if req.top_occurences:
            counts: dict[str, int] = {}
            for v in values:
                counts[v] = counts.get(v, 0) + 1
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: req.top_occurences_limit or 5]
            res.top_occurences.SetInParent()
            for value, occurs in ranked:
                res.top_occurences.items.add(value=value, occurs=occurs)
    elif which == "date":
        req, res = agg.date, out.date
        res.SetInParent()
        if req.count:
            res.count = len(values)
        if values:
            ordered = sorted(values, key=_parse_date)
            if req.minimum:
                res.minimum = ordered[0]
            if req.maximum:
                res.maximum = ordered[-1]
            if req.median:
                res.median = ordered[len(ordered) // 2]
    else:
        raise _unimplemented(f"{which} aggregations")
    return out


# --------------------------------------------------------------------------------------------
# REST
# --------------------------------------------------------------------------------------------

_UUID_PATH = r"[0-9a-fA-F-]{36}"
_ROUTES: list[tuple[str, re.Pattern[str], str, str]] = [
    # (method, path regex, op, handler name)
    ("GET", re.compile(r"^/v1/\.well-known/openid-configuration$"), "oidc", "_oidc"),
    ("GET", re.compile(r"^/v1/\.well-known/ready$"), "ready", "_ok"),
    ("GET", re.compile(r"^/v1/\.well-known/live$"), "live", "_ok"),
    ("GET", re.compile(r"^/v1/meta$"), "meta", "_meta"),
    ("GET", re.compile(r"^/v1/schema$"), "schema_get", "_schema_list"),
    ("POST", re.compile(r"^/v1/schema$"), "schema_create", "_schema_create"),
    ("GET", re.compile(r"^/v1/schema/(?P<cls>\w+)$"), "schema_get", "_schema_get"),
    ("PUT", re.compile(r"^/v1/schema/(?P<cls>\w+)$"), "schema_update", "_schema_update"),
    ("DELETE", re.compile(r"^/v1/schema/(?P<cls>\w+)$"), "schema_delete", "_schema_delete"),
    ("POST", re.compile(r"^/v1/schema/(?P<cls>\w+)/properties$"), "schema_update", "_schema_add_property"),
    ("GET", re.compile(r"^/v1/schema/(?P<cls>\w+)/shards$"), "schema_get", "_schema_shards"),
    ("GET", re.compile(r"^/v1/schema/(?P<cls>\w+)/tenants$"), "tenants", "_tenants_list"),
    ("GET", re.compile(r"^/v1/nodes(?:/(?P<cls>\w+))?$"), "nodes", "_nodes"),
    ("POST", re.compile(r"^/v1/objects$"), "objects", "_object_create"),
    ("GET", re.compile(r"^/v1/objects$"), "objects", "_object_list"),
    ("HEAD", re.compile(rf"^/v1/objects/(?P<cls>\w+)/(?P<uid>{_UUID_PATH})$"), "objects", "_object_head"),
    ("GET", re.compile(rf"^/v1/objects/(?P<cls>\w+)/(?P<uid>{_UUID_PATH})$"), "objects", "_object_get"),
    ("DELETE", re.compile(rf"^/v1/objects/(?P<cls>\w+)/(?P<uid>{_UUID_PATH})$"), "objects", "_object_delete"),
    ("PATCH", re.compile(rf"^/v1/objects/(?P<cls>\w+)/(?P<uid>{_UUID_PATH})$"), "objects", "_object_patch"),
    ("PUT", re.compile(rf"^/v1/objects/(?P<cls>\w+)/(?P<uid>{_UUID_PATH})$"), "objects", "_object_put"),
    ("ANY", re.compile(r"^/v1/schema/(?P<cls>\w+)/tenants(?:/.*)?$"), "tenants", "_tenants_refuse"),
    ("GET", re.compile(r"^/v1/aliases$"), "aliases_get", "_aliases_list"),
    ("POST", re.compile(r"^/v1/aliases$"), "aliases_create", "_alias_create"),
    ("GET", re.compile(r"^/v1/aliases/(?P<alias>[^/]+)$"), "aliases_get", "_alias_get"),
    ("PUT", re.compile(r"^/v1/aliases/(?P<alias>[^/]+)$"), "aliases_update", "_alias_update"),
    ("DELETE", re.compile(r"^/v1/aliases/(?P<alias>[^/]+)$"), "aliases_delete", "_alias_delete"),
]
_PUBLIC_OPS = frozenset({"oidc", "ready", "live"})
_REST_FAULT_STATUS = {"unavailable": 503, "503": 503, "internal": 500, "500": 500, "429": 429}


class _RestReply(Exception):
    """Raised by REST handlers to answer with ``status`` and a JSON body (None: empty body)."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


def _error_body(message: str) -> dict[str, Any]:
    return {"error": [{"message": message}]}


class _RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "weaviate-emulator"
    # Headers and body go out in two writes on a keep-alive connection: without TCP_NODELAY,
    # Nagle + delayed ACK add ~40 ms to every reply.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    @property
    def emu(self) -> WeaviateEmulator:
        return self.server.emulator  # type: ignore[attr-defined]

    def _dispatch(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        route = None
        for route_method, pattern, op, handler in _ROUTES:
            match = pattern.match(split.path)
            if match and route_method in (method, "ANY"):
                route = (op, handler, {k: unquote(v) for k, v in match.groupdict().items() if v is not None})
                break
        if route is not None and route[0].startswith("aliases_") and not self.emu.supports_aliases():
            route = None  # a server older than 1.32 has no such path
        op = route[0] if route else "unknown"
        rec = self.emu._record(
            RecordedRequest(time.time(), "rest", op, method, self.path, headers, body)
        )
        try:
            self._gate(op, headers, rec)
            if route is None:
                raise _RestReply(404, _error_body(f"emulator has no route for {method} {split.path}"))
            if isinstance(body, str):
                raise _RestReply(400, _error_body("request body is not valid JSON"))
            try:
                result = getattr(self, route[1])(body=body, query=query, **route[2])
            except _ApiError as exc:
                raise _RestReply(exc.http_status, _error_body(exc.message)) from None
            except (ValueError, KeyError, TypeError) as exc:
                raise _RestReply(422, _error_body(f"invalid request: {type(exc).__name__}: {exc}")) from None
            if isinstance(result, _RestReply):
                raise result
            raise _RestReply(200, result)
        except _RestReply as reply:
            if reply.status == 0:  # drop
                rec.status = None
                self.close_connection = True
                return
            rec.status = reply.status
            self._send(method, reply)

    def _gate(self, op: str, headers: dict[str, str], rec: RecordedRequest) -> None:
        emu = self.emu
        if emu._down:
            raise _RestReply(503, _error_body("emulator is down"))
        if op not in _PUBLIC_OPS and not emu._authorised(headers):
            raise _RestReply(401, _error_body("anonymous access not enabled, please provide an auth scheme"))
        fault = emu.faults._request_fault(op)
        if fault is None:
            return
        rec.fault = fault.kind
        if fault.kind == "drop":
            raise _RestReply(0)
        if fault.kind == "deadline":
            emu._stall(fault.stall_s)
            if fault.then_apply:
                return
            raise _RestReply(504, _error_body(fault.message))
        status = _REST_FAULT_STATUS[fault.kind]
        extra = {"Retry-After": str(fault.retry_after_s)} if status == 429 else {}
        raise _RestReply(status, _error_body(fault.message), extra)

    def _send(self, method: str, reply: _RestReply) -> None:
        data = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        if reply.body is not None:
            self.send_header("Content-Type", "application/json")
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD" and data:
            self.wfile.write(data)

    # -- handlers (each returns a JSON value for 200, or raises _RestReply / _ApiError) ----

    def _oidc(self, **_: Any) -> Any:
        raise _RestReply(404, None)  # 404 means anonymous / API-key access

    def _ok(self, **_: Any) -> Any:
        return _RestReply(200, None)

    def _meta(self, **_: Any) -> Any:
        return {
            "hostname": "http://[::]:8080",
            "version": self.emu.version,
            "modules": {},
            "grpcMaxMessageSize": GRPC_MAX_MESSAGE_BYTES,
        }

    def _schema_list(self, **_: Any) -> Any:
        with self.emu._lock:
            return {"classes": [json.loads(json.dumps(c.schema)) for c in self.emu._collections.values()]}

    def _schema_create(self, body: Any, **_: Any) -> Any:
        schema = _default_class(body or {})
        with self.emu._lock:
            if schema["class"] in self.emu._collections:
                raise _invalid(f"class name {schema['class']} already exists")
            # cluster/schema/manager.go PreApplyFilter (v1.33.0): aliases are checked first
            similar = next((a for a in self.emu._aliases if a.lower() == schema["class"].lower()), None)
            if similar == schema["class"]:
                raise _invalid(f"alias name {similar} already exists")
            if similar is not None:
                raise _invalid(f'class already exists: found similar alias "{similar}"')
            self.emu._collections[schema["class"]] = _Collection(schema)
            return json.loads(json.dumps(schema))

    def _schema_get(self, cls: str, **_: Any) -> Any:
        with self.emu._lock:
            # GetConsistentClass resolves an alias: GET /v1/schema/{alias} answers its target
            coll = self.emu._collections.get(self.emu._resolve_alias(cls))
            if coll is None:
                raise _RestReply(404, None)
            return json.loads(json.dumps(coll.schema))

    def _schema_update(self, cls: str, body: Any, **_: Any) -> Any:
        with self.emu._lock:
            coll = self.emu._collection(cls)
            # Properties change through POST .../properties only; the class endpoint keeps them.
            updated = _default_class({**coll.schema, **(body or {}), "class": coll.name, "properties": coll.schema["properties"]})
            coll.schema = updated
            return json.loads(json.dumps(updated))

    def _schema_delete(self, cls: str, **_: Any) -> Any:
        with self.emu._lock:
            self.emu._collections.pop(_capitalise(cls), None)
        return _RestReply(200, None)

    def _schema_add_property(self, cls: str, body: Any, **_: Any) -> Any:
        prop = _default_property(body or {})
        with self.emu._lock:
            coll = self.emu._collection(cls)
            if coll.property(prop["name"]) is not None:
                raise _invalid(f"property '{prop['name']}' already exists in class '{coll.name}'")
            coll.schema["properties"].append(prop)
            return prop

    def _schema_shards(self, cls: str, **_: Any) -> Any:
        with self.emu._lock:
            coll = self.emu._collection(cls)
            return [{"name": f"{coll.name.lower()}-shard-0", "status": "READY", "vectorQueueSize": 0}]

    def _tenants_list(self, cls: str, **_: Any) -> Any:
        with self.emu._lock:
            self.emu._collection(cls)
        return []

    def _tenants_refuse(self, cls: str, **_: Any) -> Any:
        raise _invalid(f"multi-tenancy is not enabled for class '{_capitalise(cls)}'")

    def _nodes(self, cls: str | None = None, query: dict[str, str] | None = None, **_: Any) -> Any:
        with self.emu._lock:
            colls = [c for c in self.emu._collections.values() if cls is None or c.name == _capitalise(cls)]
            shards = [
                {
                    "name": f"{c.name.lower()}-shard-0",
                    "class": c.name,
                    "objectCount": len(c.objects),
                    "vectorIndexingStatus": "READY",
                    "vectorQueueLength": 0,
                    "compressed": False,
                    "loaded": True,
                }
                for c in colls
            ]
        node: dict[str, Any] = {
            "name": "weaviate-emulator-0",
            "status": "HEALTHY",
            "version": self.emu.version,
            "gitHash": "emulator",
            "batchStats": {"queueLength": 0, "ratePerSecond": 0},
            "stats": {"objectCount": sum(s["objectCount"] for s in shards), "shardCount": len(shards)},
        }
        if (query or {}).get("output") == "verbose":
            node["shards"] = shards
        return {"nodes": [node]}

    # -- aliases --------------------------------------------------------------------------
    # Built from weaviate/weaviate at tag v1.33.0 (the version this emulator reports):
    #   openapi-specs/schema.json: paths /aliases (GET ?class=, POST) and /aliases/{aliasName}
    #     (GET, PUT, DELETE); definitions Alias {alias, class} and AliasResponse {aliases: [Alias]};
    #   adapters/handlers/rest/handlers_aliases.go: statuses. Create answers 200 with the
    #     (canonicalised) request body and 422 for every refusal; get/update/delete answer 404 with
    #     no body for an unknown alias; update 200 {alias, class}, other refusals 422; delete 204;
    #   usecases/schema/alias.go: names are upper-cased in their first letter (UppercaseClassName),
    #     the alias name is validated like a class name, the list's ?class= filter on a missing
    #     class is an empty list, update looks the alias up by exact canonical name;
    #   cluster/raft_alias_apply_endpoints.go: a missing target class is "class does not exist:
    #     bad request" (create and update);
    #   cluster/schema/schema.go createAlias/replaceAlias/deleteAlias/getAliases and
    #     cluster/schema/manager.go apply (errors wrapped "updating schema: TYPE_CREATE_ALIAS: ...");
    #     an existing alias (case-insensitive) is refused before a clash with a class name; deleting
    #     a class leaves its aliases in place (dangling); replace is one raft command, so atomic.
    # Alias resolution in data operations: adapters/handlers/grpc/v1/service.go (Search, Aggregate,
    # BatchDelete, TenantsGet), adapters/handlers/grpc/v1/batch/handler.go (BatchObjects: writes
    # through an alias are allowed), usecases/objects/*.go (REST objects), usecases/schema/class.go
    # GetConsistentClass (GET /v1/schema/{alias}); DeleteClass and UpdateClass do not resolve.
    # The client side: weaviate-client 4.24.1 weaviate/aliases/executor.py.

    def _aliases_list(self, query: dict[str, str], **_: Any) -> Any:
        wanted = query.get("class")
        with self.emu._lock:
            if wanted:
                cls = _capitalise(wanted)
                if cls not in self.emu._collections:
                    return {"aliases": []}  # "Optional class Filter not found"
                pairs = [(a, c) for a, c in self.emu._aliases.items() if c == cls]
            else:
                pairs = list(self.emu._aliases.items())
        return {"aliases": [{"alias": a, "class": c} for a, c in sorted(pairs)]}

    def _alias_create(self, body: Any, **_: Any) -> Any:
        body = body if isinstance(body, dict) else {}
        alias = _capitalise(str(body.get("alias") or ""))
        target = _capitalise(str(body.get("class") or ""))
        if len(alias) > 255:
            raise _invalid(f"'{alias}' is not a valid alias name. Name should not be longer than 255 characters")
        if not _CLASS_RE.match(alias):
            raise _invalid(f"'{alias}' is not a valid alias name")
        with self.emu._lock:
            if target not in self.emu._collections:
                raise _invalid("class does not exist: bad request")
            prefix = "updating schema: TYPE_CREATE_ALIAS: create alias:"
            if any(a.lower() == alias.lower() for a in self.emu._aliases):
                raise _invalid(f"{prefix} {alias}, alias already exists")
            if alias in self.emu._collections:
                raise _invalid(f"{prefix} class {alias} already exists")
            self.emu._aliases[alias] = target
        return {"alias": alias, "class": target}

    def _alias_get(self, alias: str, **_: Any) -> Any:
        name = _capitalise(alias)
        with self.emu._lock:
            target = self.emu._aliases.get(name)
        if target is None:
            raise _RestReply(404, None)
        return {"alias": name, "class": target}

    def _alias_update(self, alias: str, body: Any, **_: Any) -> Any:
        name = _capitalise(alias)
        target = _capitalise(str((body or {}).get("class") or "")) if isinstance(body, dict) else ""
        with self.emu._lock:
            if name not in self.emu._aliases:
                raise _RestReply(404, None)
            if target not in self.emu._collections:
                raise _invalid("class does not exist: bad request")
            self.emu._aliases[name] = target  # one step under the store lock: readers see old or new
        return {"alias": name, "class": target}

    def _alias_delete(self, alias: str, **_: Any) -> Any:
        name = _capitalise(alias)
        with self.emu._lock:
            if self.emu._aliases.pop(name, None) is None:
                raise _RestReply(404, None)
        return _RestReply(204, None)

    # -- single objects -------------------------------------------------------------------

    def _rest_vectors(self, coll: _Collection, body: dict[str, Any]) -> dict[str, np.ndarray]:
        single = np.asarray(body["vector"], np.float32) if body.get("vector") else None
        named = {k: np.asarray(v, np.float32) for k, v in (body.get("vectors") or {}).items()}
        return self.emu._object_vectors(coll, single, named)

    def _write(self, coll: _Collection, uid: str, body: dict[str, Any], merge_with: _StoredObject | None) -> None:
        props = self.emu._coerce_properties(coll, body.get("properties") or {})
        vectors = self._rest_vectors(coll, body)
        if merge_with is not None:
            props = {**merge_with.properties, **props}
            vectors = {**merge_with.vectors, **vectors}
        coll.put(uid, props, vectors, _now_ms())

    def _object_create(self, body: Any, **_: Any) -> Any:
        body = body or {}
        if body.get("tenant"):
            raise _invalid("emulator does not implement multi-tenancy")
        with self.emu._lock:
            coll = self.emu._data_collection(body.get("class") or "")
            uid = str(uuid_lib.UUID(body["id"])) if body.get("id") else str(uuid_lib.uuid4())
            if uid in coll.objects:
                raise _invalid(f"id '{uid}' already exists")
            self._write(coll, uid, body, None)
            return _object_json(coll, uid, include_vector=True)

    def _object_list(self, query: dict[str, str], **_: Any) -> Any:
        with self.emu._lock:
            coll = self.emu._data_collection(query.get("class") or "")
            limit = int(query.get("limit") or 25)
            after = (query.get("after") or "").lower()
            ids = [u for u in sorted(coll.objects) if u > after][:limit]
            include = "vector" in (query.get("include") or "")
            return {"objects": [_object_json(coll, u, include) for u in ids], "totalResults": len(ids)}

    def _object_head(self, cls: str, uid: str, **_: Any) -> Any:
        with self.emu._lock:
            coll = self.emu._data_collection(cls)
            return _RestReply(204 if uid.lower() in coll.objects else 404, None)

    def _object_get(self, cls: str, uid: str, query: dict[str, str], **_: Any) -> Any:
        with self.emu._lock:
            coll = self.emu._data_collection(cls)
            if uid.lower() not in coll.objects:
                raise _RestReply(404, None)
            return _object_json(coll, uid.lower(), "vector" in (query.get("include") or ""))

    def _object_delete(self, cls: str, uid: str, **_: Any) -> Any:
        with self.emu._lock:
            coll = self.emu._data_collection(cls)
            return _RestReply(204 if coll.delete(uid.lower()) else 404, None)

    def _object_patch(self, cls: str, uid: str, body: Any, **_: Any) -> Any:
        with self.emu._lock:
            coll = self.emu._data_collection(cls)
            existing = coll.objects.get(uid.lower())
            if existing is None:
                raise _RestReply(404, None)
            self._write(coll, uid.lower(), body or {}, existing)
            return _RestReply(204, None)

    def _object_put(self, cls: str, uid: str, body: Any, **_: Any) -> Any:
        with self.emu._lock:
            coll = self.emu._data_collection(cls)
            if uid.lower() not in coll.objects:
                raise _RestReply(404, _error_body(f"object {uid} not found"))
            self._write(coll, uid.lower(), body or {}, None)
            return _object_json(coll, uid.lower(), include_vector=True)


def _object_json(coll: _Collection, uid: str, include_vector: bool) -> dict[str, Any]:
    obj = coll.objects[uid]
    out: dict[str, Any] = {
        "class": coll.name,
        "id": uid,
        "properties": json.loads(json.dumps(obj.properties)),
        "creationTimeUnix": obj.created_ms,
        "lastUpdateTimeUnix": obj.updated_ms,
    }
    if include_vector:
        if _LEGACY in obj.vectors:
            out["vector"] = [float(x) for x in obj.vectors[_LEGACY]]
        named = {k: [float(x) for x in v] for k, v in obj.vectors.items() if k != _LEGACY}
        if named:
            out["vectors"] = named
    return out


__all__ = ["Fault", "FaultPlan", "RecordedRequest", "WeaviateEmulator", "QUERY_MAXIMUM_RESULTS"]
