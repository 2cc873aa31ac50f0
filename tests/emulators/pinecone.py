"""Loopback Pinecone emulator that the real ``pinecone`` SDK 10.2.0 (API 2026-07) accepts.

Contract
--------
* One ``ThreadingHTTPServer`` on ``127.0.0.1:<ephemeral>`` serves the control plane
  (``control_url``); every index gets its own server and port, so an index host is
  ``http://127.0.0.1:<port>`` exactly as a 2026-07 ``IndexModel.host`` would name it.
* Vectors are stored for real. ``query`` is exact brute force (numpy, float64) under the
  index metric -- cosine and dotproduct best-first by descending score, euclidean by
  ascending *squared* L2 distance -- with ties broken by id, after the metadata filter.
* Sparse-dense (hybrid) records: ``sparseValues`` are validated and stored on any metric
  and come back from fetch (and from query with ``includeValues``); a query carrying a
  ``sparseVector`` is served on a ``dotproduct`` index only (score = dense dot + sparse dot)
  and is a 400 elsewhere, as the known-limitations page says; its dense part may be all
  zeros (how an alpha-0, keyword-only query is written). Sparse-only indexes
  (``vector_type="sparse"``) and 2026-07 document indexes are not modelled.
* Limits are enforced the way the service enforces them (see the ``MAX_*`` constants):
  a 400 with the data-plane body ``{"code":3,"message":..,"details":[]}``, a 413 for a
  body over 2 MiB, a plain-text 401 for a missing or wrong ``Api-Key``.
* Metadata numbers are stored as float64, as the service does: ``{"year": 2020}`` comes
  back from fetch/query as ``2020.0``.
* Every request is appended to ``requests`` on arrival (before auth, faults or routing);
  its ``status`` is filled in when the answer is sent and stays ``None`` for a stall or
  a drop.
* ``faults`` (a :class:`FaultPlan`) injects failures *before* a request is applied, so a
  faulted upsert stores nothing. A ``drop`` or ``stall`` on an upsert therefore never
  half-applies here; the real service can apply a write and still lose the answer.
* ``set_visibility_delay`` makes upserts eventually consistent: a new or overwritten
  record becomes visible to query/fetch/list/stats only after the delay (the previous
  version stays visible until then). Deletes and updates apply at once.

Hazards for tests
-----------------
* The SDK keeps a *process-global* retry budget per hostname (all ports of 127.0.0.1 share
  it) and retries 408/429/5xx and transport errors up to 4 attempts, honouring a numeric
  ``Retry-After``. Retryable faults therefore cost tokens across tests.
* Fault matching is by arrival order; with concurrent callers the order (and therefore
  which call a ``times=N`` or ``rate=`` fault hits) is not deterministic.
* Fetch uses ``GET`` with repeated ``ids=``; the stdlib server refuses a request line over
  64 KiB with 414, which 1,000 ids of ~60 characters reach.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

MAX_UPSERT_VECTORS = 1_000
MAX_REQUEST_BODY_BYTES = 2 * 1024 * 1024
MAX_METADATA_BYTES = 40 * 1024
MAX_ID_CHARS = 512
MAX_IDS_PER_REQUEST = 1_000
MAX_LIST_LIMIT = 100
MAX_TOP_K = 10_000
MAX_DIMENSION = 20_000
MAX_SPARSE_VALUES = 1_000  # "Sparse vectors can contain no more than 1000 non-zero values"
MAX_SPARSE_INDEX = 2**32 - 1  # indices are uint32 ("max dimensionality for sparse vectors is 4.2 billion")
# Sources: https://docs.pinecone.io/reference/api/known-limitations ,
# https://www.pinecone.io/docs/limits/ ,
# https://docs.pinecone.io/guides/search/hybrid-search/single-index ,
# https://docs.pinecone.io/guides/data/query-sparse-dense-vectors .
SPARSE_METRIC_MESSAGE = (
    # Seen as {"code":3,"message":"Index configuration does not support sparse values",...}
    # (langchain-ai/langchain#2451, 2023); the current service appends the reason.
    "Index configuration does not support sparse values - only indexes that are sparse or using "
    "dotproduct are supported"
)
EMPTY_SPARSE_MESSAGE = "Sparse vector must contain at least one value"

DATA_PLANE_OPS = ("upsert", "query", "fetch", "delete", "update", "list", "describe_index_stats")
CONTROL_PLANE_OPS = (
    "describe_index",
    "create_index",
    "list_indexes",
    "delete_index",
    "configure_index",
)
FAULT_KINDS = ("429", "500", "503", "stall", "drop", "400", "reject_ids")

_METRICS = ("cosine", "dotproduct", "euclidean")
_INDEX_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,43}[a-z0-9])?")
# gRPC status codes the data plane puts in "code", keyed by HTTP status.
_GRPC_CODE = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 413: 3, 429: 8, 500: 13, 503: 14}
_CONTROL_CODE = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "UNKNOWN",
    503: "UNAVAILABLE",
}


# --------------------------------------------------------------------------- records


@dataclass
class RecordedRequest:
    """One request as it arrived. ``time`` is ``time.monotonic()`` at arrival."""

    time: float
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: Any  # decoded JSON; None when empty; the raw text when it is not JSON
    op: str  # operation name ("upsert", "describe_index", ...; "unknown" if unrouted)
    index: str | None  # index the data-plane port belongs to; None on the control plane
    status: int | None = None  # None: no answer sent (stall, drop) or still in flight
    fault: str | None = None  # the injected fault kind, if one fired


@dataclass
class FaultRule:
    """One injected fault. ``times_left`` is None for rate-based and unlimited rules."""

    op: str
    kind: str
    times_left: int | None
    rate: float | None
    retry_after_s: float | None
    stall_s: float
    message: str
    ids: frozenset[str]
    index: str | None
    body_format: str
    fired: int = 0


class FaultPlan:
    """Faults injected on demand, matched by operation name (or ``"*"``) in arrival order.

    ``add(op, kind, times=N)`` fires on the next N matching calls; ``rate=p`` fires on each
    matching call with probability p drawn from a generator seeded by the emulator's seed.
    With neither, a fault fires once -- except ``reject_ids``, which fires on every upsert
    that carries one of ``ids`` until cleared. The first rule that fires wins.
    """

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()

    def add(
        self,
        op: str = "*",
        kind: str = "503",
        *,
        times: int | None = None,
        rate: float | None = None,
        retry_after_s: float | None = None,
        stall_s: float = 10.0,
        message: str | None = None,
        ids: set[str] | frozenset[str] | list[str] | None = None,
        index: str | None = None,
        body_format: str = "text",
    ) -> FaultRule:
        """Register a fault and return its rule (``rule.fired`` counts hits).

        ``retry_after_s`` sets a numeric ``Retry-After`` (429 defaults to 1 s).
        ``body_format`` ("text" or "json") picks the 429 body: the gateway answers plain text.
        ``index`` restricts a data-plane fault to one index.
        """
        if op != "*" and op not in DATA_PLANE_OPS + CONTROL_PLANE_OPS:
            raise ValueError(f"unknown op {op!r}; use one of {DATA_PLANE_OPS + CONTROL_PLANE_OPS}")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; use one of {FAULT_KINDS}")
        if times is not None and rate is not None:
            raise ValueError("give times= or rate=, not both")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1")
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        if body_format not in ("text", "json"):
            raise ValueError("body_format must be 'text' or 'json'")
        if kind == "reject_ids":
            if op not in ("upsert", "*"):
                raise ValueError("reject_ids applies to upserts only")
            if not ids:
                raise ValueError("reject_ids needs ids=")
            if rate is not None:
                raise ValueError("reject_ids is by id, not by rate")
            op = "upsert"
        elif times is None and rate is None:
            times = 1
        if kind == "429" and retry_after_s is None:
            retry_after_s = 1.0
        rule = FaultRule(
            op=op,
            kind=kind,
            times_left=times,
            rate=rate,
            retry_after_s=retry_after_s,
            stall_s=stall_s,
            message=message or _default_fault_message(kind),
            ids=frozenset(ids or ()),
            index=index,
            body_format=body_format,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def _take(self, op: str, index: str | None, body: Any) -> FaultRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.op not in ("*", op) or (rule.index is not None and rule.index != index):
                    continue
                if rule.kind == "reject_ids":
                    if rule.ids.isdisjoint(_upsert_ids(body)):
                        continue
                elif rule.rate is not None:
                    if self._rng.random() >= rule.rate:
                        continue
                elif rule.times_left is not None:
                    if rule.times_left <= 0:
                        continue
                    rule.times_left -= 1
                rule.fired += 1
                return rule
        return None


def _default_fault_message(kind: str) -> str:
    return {
        "429": "Request was rate limited. Retry later.",
        "500": "Internal error (injected)",
        "503": "Service unavailable (injected)",
        "400": "Invalid request (injected)",
        "reject_ids": "Invalid record (injected)",
    }.get(kind, "")


def _upsert_ids(body: Any) -> set[str]:
    if not isinstance(body, dict) or not isinstance(body.get("vectors"), list):
        return set()
    vectors = body["vectors"]
    return {v["id"] for v in vectors if isinstance(v, dict) and isinstance(v.get("id"), str)}


# --------------------------------------------------------------------------- validation


class _Rejected(Exception):
    """A request the service refuses; rendered in the plane's error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _bad(message: str) -> _Rejected:
    return _Rejected(400, message)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_id(value: Any, what: str = "id") -> str:
    if not isinstance(value, str) or not value:
        raise _bad(f"{what} must be a non-empty string")
    if len(value) > MAX_ID_CHARS:
        raise _bad(f"{what} length {len(value)} exceeds the maximum of {MAX_ID_CHARS} characters")
    if not value.isascii() or "\x00" in value:
        raise _bad(f"{what} must contain only ASCII characters (no NUL): {value[:64]!r}")
    return value


def _check_namespace(body_value: Any) -> str:
    if body_value is None:
        return ""
    if not isinstance(body_value, str):
        raise _bad("namespace must be a string")
    if len(body_value) > MAX_ID_CHARS or not body_value.isascii():
        raise _bad("namespace must be ASCII and at most 512 characters")
    return body_value


def _check_values(values: Any, dimension: int, what: str, *, allow_zero: bool = False) -> list[float]:
    if not isinstance(values, list) or not values:
        raise _bad(f"{what}: dense values are required")
    if not all(_is_number(x) and math.isfinite(x) for x in values):
        raise _bad(f"{what}: values must be finite numbers")
    if len(values) != dimension:
        raise _bad(
            f"Vector dimension {len(values)} does not match the dimension of the index {dimension}"
        )
    if not any(values) and not allow_zero:
        raise _bad(f"{what}: Dense vectors must contain at least one non-zero value")
    return [float(x) for x in values]


def _check_metadata(metadata: Any, what: str, null_metadata: str) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        raise _bad(f"{what}: metadata must be a JSON object")
    cleaned: dict[str, Any] = {}
    for key, value in metadata.items():
        if key.startswith("$"):
            raise _bad(f"{what}: metadata key {key!r} must not start with '$'")
        if value is None:
            if null_metadata == "strip":
                continue
            raise _bad(
                f"{what}: Metadata value must be a string, number, boolean or list of strings, "
                f"got 'null' for field '{key}'"
            )
        if isinstance(value, (str, bool)):
            cleaned[key] = value
        elif _is_number(value):
            if not math.isfinite(value):
                raise _bad(f"{what}: metadata number for field '{key}' must be finite")
            cleaned[key] = float(value)  # the service stores every number as float64
        elif isinstance(value, list) and all(isinstance(x, str) for x in value):
            cleaned[key] = list(value)
        else:
            rendered = json.dumps(value, separators=(",", ":"))[:100]
            raise _bad(
                f"{what}: Metadata value must be a string, number, boolean or list of strings, "
                f"got '{rendered}' for field '{key}'"
            )
    size = len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise _bad(
            f"{what}: Metadata size is {size} bytes, which exceeds the limit of "
            f"{MAX_METADATA_BYTES} bytes per vector"
        )
    return cleaned


def _check_int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(f"{what} must be an integer between {low} and {high}, got {value!r}")
    return value


# --------------------------------------------------------------------------- metadata filter

_Predicate = Callable[[dict[str, Any]], bool]
_RANGE_OPS: dict[str, Callable[[float, float], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}
_FIELD_OPS = ("$eq", "$ne", "$in", "$nin", "$exists", *_RANGE_OPS)


def _same(a: Any, b: Any) -> bool:
    """Equality without Python's ``True == 1``: a bool only ever equals a bool."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    return isinstance(a, str) and isinstance(b, str) and a == b


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else "number"


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, bool)) or _is_number(value)


def compile_filter(spec: Any) -> _Predicate:
    """Compile a Pinecone metadata filter into a predicate over a metadata dict.

    Raises ``_Rejected(400)`` for a malformed filter. Semantics follow MongoDB, which the
    Pinecone language is based on: a list-valued field matches ``$eq``/``$in``/range
    operators when any element does, and matches ``$ne``/``$nin`` only when no element
    does; ``$ne``/``$nin`` also match records that lack the field.
    """
    if spec is None:
        return lambda _md: True
    if not isinstance(spec, dict):
        raise _bad("filter must be a JSON object")
    clauses: list[_Predicate] = []
    for key, value in spec.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise _bad(f"{key} needs a non-empty list of filters")
            parts = [compile_filter(item) for item in value]
            if key == "$and":
                clauses.append(lambda md, parts=parts: all(p(md) for p in parts))
            else:
                clauses.append(lambda md, parts=parts: any(p(md) for p in parts))
        elif key.startswith("$"):
            raise _bad(f"unsupported top-level filter operator {key!r}")
        elif isinstance(value, dict):
            if not value:
                raise _bad(f"filter on field {key!r} has no operator")
            for op, operand in value.items():
                clauses.append(_compile_field_op(key, op, operand))
        elif _is_scalar(value):
            clauses.append(_compile_field_op(key, "$eq", value))
        else:
            raise _bad(f"filter on field {key!r} must be an operator object or a scalar")
    return lambda md: all(c(md) for c in clauses)


def _compile_field_op(name: str, op: str, operand: Any) -> _Predicate:
    if op not in _FIELD_OPS:
        raise _bad(f"unsupported filter operator {op!r} on field {name!r}")
    if op in ("$eq", "$ne") and not _is_scalar(operand):
        raise _bad(f"{op} on {name!r} needs a string, number or boolean")
    if op in _RANGE_OPS and not _is_number(operand):
        # The service's wording, as its users quote it ("the $gt operator must be followed by a
        # number, got string instead"): range operators take numbers only, never strings.
        raise _bad(f"the {op} operator must be followed by a number, got {_json_type(operand)} instead")
    if op in ("$in", "$nin") and (
        not isinstance(operand, list) or not all(_is_scalar(x) for x in operand)
    ):
        raise _bad(f"{op} on {name!r} needs a list of strings or numbers")
    if op == "$exists" and not isinstance(operand, bool):
        raise _bad(f"$exists on {name!r} needs a boolean")

    def predicate(md: dict[str, Any]) -> bool:
        present = name in md
        if op == "$exists":
            return present == operand
        if not present:
            return op in ("$ne", "$nin")
        value = md[name]
        elements = value if isinstance(value, list) else [value]
        if op == "$eq":
            return any(_same(e, operand) for e in elements)
        if op == "$ne":
            return not any(_same(e, operand) for e in elements)
        if op == "$in":
            return any(_same(e, o) for e in elements for o in operand)
        if op == "$nin":
            return not any(_same(e, o) for e in elements for o in operand)
        compare = _RANGE_OPS[op]
        return any(_is_number(e) and compare(float(e), float(operand)) for e in elements)

    return predicate


# --------------------------------------------------------------------------- storage


@dataclass
class _Record:
    values: list[float]
    array: np.ndarray
    metadata: dict[str, Any]
    sparse: dict[str, list[Any]] | None
    visible_at: float


@dataclass
class _Slot:
    """One id: the version readers see, and a newer one not yet visible."""

    current: _Record | None = None
    pending: _Record | None = None

    def settle(self, now: float) -> _Record | None:
        if self.pending is not None and self.pending.visible_at <= now:
            self.current, self.pending = self.pending, None
        return self.current

    def latest(self) -> _Record | None:
        return self.pending or self.current


@dataclass
class _Index:
    name: str
    dimension: int
    metric: str
    cloud: str
    region: str
    deletion_protection: str
    tags: dict[str, str] | None
    host: str = ""
    namespaces: dict[str, dict[str, _Slot]] = field(default_factory=dict)

    def model(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": {"ready": True, "state": "Ready"},
            "schema": {
                "fields": {
                    "_values": {
                        "type": "dense_vector",
                        "dimension": self.dimension,
                        "metric": self.metric,
                    }
                }
            },
            "deployment": {
                "deployment_type": "managed",
                "cloud": self.cloud,
                "region": self.region,
            },
            "deletion_protection": self.deletion_protection,
            "host": self.host,
            "tags": self.tags,
        }

    def visible(self, namespace: str, now: float) -> dict[str, _Record]:
        slots = self.namespaces.get(namespace, {})
        out = {}
        for vid, slot in slots.items():
            record = slot.settle(now)
            if record is not None:
                out[vid] = record
        return out


# --------------------------------------------------------------------------- HTTP plumbing


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Silence:
    """No answer: close at once (drop) or after ``wait_s`` (stall)."""

    wait_s: float = 0.0


def _json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Reply:
    encoded = json.dumps(payload, separators=(",", ":")).encode()
    return _Reply(status, encoded, headers=headers or {})


def _error_reply(control_plane: bool, status: int, message: str) -> _Reply:
    if control_plane:
        code = _CONTROL_CODE.get(status, "UNKNOWN")
        return _json_reply(status, {"error": {"code": code, "message": message}, "status": status})
    code = _GRPC_CODE.get(status, 2)
    return _json_reply(status, {"code": code, "message": message, "details": []})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, emulator: PineconeEmulator, index_name: str | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.emulator = emulator
        self.index_name = index_name
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"pinecone-emulator:{index_name or 'control'}",
            daemon=True,
        )
        self._thread.start()

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_all(self) -> None:
        self.shutdown()
        self.server_close()
        # Keep-alive handler threads would otherwise serve a stopped emulator.
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pinecone-emulator/1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid a 40 ms stall
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, alive=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, alive=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._serve()

    do_POST = do_DELETE = do_PATCH = do_PUT = do_GET  # noqa: N815

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        answer = self.server.emulator._handle(
            server_url=self.server.url,
            index_name=self.server.index_name,
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            raw=raw,
        )
        if isinstance(answer, _Silence):
            if answer.wait_s > 0:
                self.server.emulator._stopping.wait(answer.wait_s)
            self.close_connection = True
            return
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if answer.body:
            self.wfile.write(answer.body)


def _route(control_plane: bool, method: str, path: str) -> tuple[str, str | None]:
    """Map a request to (operation name, index name from the path, if any)."""
    if control_plane:
        if path in ("/indexes", "/indexes/"):
            return {"GET": "list_indexes", "POST": "create_index"}.get(method, "unknown"), None
        if path.startswith("/indexes/") and path.count("/") == 2:
            name = unquote(path[len("/indexes/") :])
            op = {"GET": "describe_index", "DELETE": "delete_index", "PATCH": "configure_index"}
            return op.get(method, "unknown"), name
        return "unknown", None
    routes = {
        ("POST", "/vectors/upsert"): "upsert",
        ("POST", "/query"): "query",
        ("GET", "/vectors/fetch"): "fetch",
        ("POST", "/vectors/delete"): "delete",
        ("POST", "/vectors/update"): "update",
        ("GET", "/vectors/list"): "list",
        ("POST", "/describe_index_stats"): "describe_index_stats",
        ("GET", "/describe_index_stats"): "describe_index_stats",
    }
    return routes.get((method, path), "unknown"), None


# --------------------------------------------------------------------------- the emulator


class PineconeEmulator:
    """Pinecone control + data plane on loopback. Use as a context manager or start()/stop().

    ``null_metadata="reject"`` (default) answers 400 for a null metadata value, as the
    documentation says; ``"strip"`` drops the key instead, which is what the SDK's own
    source claims the server does.
    """

    def __init__(
        self, api_key: str = "test-key", *, seed: int = 0, null_metadata: str = "reject"
    ) -> None:
        if null_metadata not in ("reject", "strip"):
            raise ValueError("null_metadata must be 'reject' or 'strip'")
        self.api_key = api_key
        self.null_metadata = null_metadata
        self.requests: list[RecordedRequest] = []
        self.faults = FaultPlan(seed)
        self.control_url = ""
        self._lock = threading.RLock()
        self._indexes: dict[str, _Index] = {}
        self._servers: list[_Server] = []
        self._control: _Server | None = None
        self._visibility_delay_s = 0.0
        self._stopping = threading.Event()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> PineconeEmulator:
        if self._control is None:
            self._stopping.clear()
            self._control = _Server(self, None)
            self._servers.append(self._control)
            self.control_url = self._control.url
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends stalls
        with self._lock:
            servers, self._servers, self._control = self._servers, [], None
        for server in servers:
            server.close_all()

    def __enter__(self) -> PineconeEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- direct setup and inspection

    def create_index(self, name: str, dimension: int, metric: str = "cosine") -> str:
        """Create an index without a request (not recorded); return its data-plane host."""
        with self._lock:
            index = self._new_index(
                {"name": name, "dimension": dimension, "metric": metric}
            )
            return index.host

    def index_host(self, name: str) -> str:
        with self._lock:
            if name not in self._indexes:
                raise KeyError(f"no index named {name!r}")
            return self._indexes[name].host

    def vectors(
        self, index: str, namespace: str = "", *, visible_only: bool = False
    ) -> dict[str, tuple[list[float], dict[str, Any]]]:
        """Snapshot of stored records as ``{id: (values, metadata)}`` (copies).

        Includes records not yet visible under a visibility delay unless ``visible_only``.
        """
        with self._lock:
            state = self._indexes[index]
            now = time.monotonic()
            out = {}
            for vid, slot in state.namespaces.get(namespace, {}).items():
                slot.settle(now)
                record = slot.current if visible_only else slot.latest()
                if record is not None:
                    out[vid] = (list(record.values), dict(record.metadata))
            return out

    def namespaces(self, index: str) -> list[str]:
        with self._lock:
            return sorted(ns for ns, slots in self._indexes[index].namespaces.items() if slots)

    def requests_for(self, op: str) -> list[RecordedRequest]:
        return [r for r in list(self.requests) if r.op == op]

    def set_visibility_delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("visibility delay must be >= 0")
        self._visibility_delay_s = float(seconds)

    # ----------------------------------------------------------------- request handling

    def _handle(
        self,
        *,
        server_url: str,
        index_name: str | None,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        raw: bytes,
    ) -> _Reply | _Silence:
        control_plane = index_name is None
        op, path_name = _route(control_plane, method, path)
        record = RecordedRequest(
            time=time.monotonic(),
            method=method,
            path=path,
            query=query,
            headers=headers,
            body=_decode_body(raw),
            op=op,
            index=index_name,
        )
        self.requests.append(record)
        answer = self._answer(record, raw, control_plane, path_name, server_url)
        if isinstance(answer, _Reply):
            record.status = answer.status
        return answer

    def _answer(
        self,
        rec: RecordedRequest,
        raw: bytes,
        control_plane: bool,
        path_name: str | None,
        server_url: str,
    ) -> _Reply | _Silence:
        if rec.headers.get("api-key") != self.api_key:
            return _Reply(401, b"Invalid API Key", content_type="text/plain")
        rule = self.faults._take(rec.op, rec.index, rec.body)
        if rule is not None:
            rec.fault = rule.kind
            return self._fault_reply(rule, control_plane)
        try:
            if rec.op == "unknown":
                raise _Rejected(404, f"Not found: {rec.method} {rec.path}")
            if control_plane:
                return self._control_plane(rec, path_name)
            if rec.method in ("POST", "PUT", "PATCH") and len(raw) > MAX_REQUEST_BODY_BYTES:
                raise _Rejected(
                    413,
                    f"Request size {len(raw)} bytes exceeds the maximum supported size "
                    f"of {MAX_REQUEST_BODY_BYTES} bytes",
                )
            if raw and not isinstance(rec.body, (dict, list)):
                raise _bad("request body is not valid JSON")
            return self._data_plane(rec, server_url)
        except _Rejected as exc:
            return _error_reply(control_plane, exc.status, exc.message)

    def _fault_reply(self, rule: FaultRule, control_plane: bool) -> _Reply | _Silence:
        if rule.kind == "drop":
            return _Silence(0.0)
        if rule.kind == "stall":
            return _Silence(rule.stall_s)
        if rule.kind == "429":
            headers = {"Retry-After": _format_seconds(rule.retry_after_s or 0.0)}
            if rule.body_format == "text":
                body = rule.message.encode()
                return _Reply(429, body, content_type="text/plain", headers=headers)
            reply = _error_reply(control_plane, 429, rule.message)
            reply.headers.update(headers)
            return reply
        status = 400 if rule.kind in ("400", "reject_ids") else int(rule.kind)
        reply = _error_reply(control_plane, status, rule.message)
        if rule.retry_after_s is not None:
            reply.headers["Retry-After"] = _format_seconds(rule.retry_after_s)
        return reply

    # ----------------------------------------------------------------- control plane

    def _control_plane(self, rec: RecordedRequest, name: str | None) -> _Reply:
        with self._lock:
            if rec.op == "list_indexes":
                return _json_reply(200, {"indexes": [i.model() for i in self._indexes.values()]})
            if rec.op == "create_index":
                if not isinstance(rec.body, dict):
                    raise _bad("create_index needs a JSON body")
                return _json_reply(201, self._new_index(rec.body).model())
            assert name is not None
            index = self._indexes.get(name)
            if index is None:
                raise _Rejected(404, f"Resource {name} not found")
            if rec.op == "describe_index":
                return _json_reply(200, index.model())
            if rec.op == "delete_index":
                if index.deletion_protection == "enabled":
                    raise _Rejected(403, f"Deletion protection is enabled for index '{name}'")
                del self._indexes[name]  # its port now answers 404
                return _Reply(202)
            body = rec.body if isinstance(rec.body, dict) else {}
            if "deletion_protection" in body:
                index.deletion_protection = str(body["deletion_protection"])
            if "tags" in body:
                index.tags = {**(index.tags or {}), **(body["tags"] or {})}
            return _json_reply(200, index.model())

    def _new_index(self, body: dict[str, Any]) -> _Index:
        if self._control is None:
            raise RuntimeError("start the emulator before creating indexes")
        name = body.get("name")
        if not isinstance(name, str) or not _INDEX_NAME.fullmatch(name):
            raise _bad(
                f"Invalid index name {name!r}: 1-45 lowercase alphanumeric characters or '-'"
            )
        fields = (body.get("schema") or {}).get("fields") or {}
        dense = fields.get("_values") if isinstance(fields, dict) else None
        if dense is not None:
            if not isinstance(dense, dict) or dense.get("type", "dense_vector") != "dense_vector":
                raise _bad("the emulator supports one dense '_values' field only")
            dimension, metric = dense.get("dimension"), dense.get("metric") or "cosine"
        elif fields:
            raise _bad(f"the emulator supports one dense '_values' field, got {sorted(fields)}")
        else:  # the pre-2026-07 top-level shape
            dimension, metric = body.get("dimension"), body.get("metric") or "cosine"
        dimension = _check_int(dimension, "dimension", 1, MAX_DIMENSION)
        if metric not in _METRICS:
            raise _bad(f"metric must be one of {_METRICS}, got {metric!r}")
        if name in self._indexes:
            raise _Rejected(409, f"Resource {name} already exists")
        deployment = body.get("deployment") or {}
        serverless = (body.get("spec") or {}).get("serverless") or {}
        index = _Index(
            name=name,
            dimension=dimension,
            metric=metric,
            cloud=deployment.get("cloud") or serverless.get("cloud") or "aws",
            region=deployment.get("region") or serverless.get("region") or "us-east-1",
            deletion_protection=body.get("deletion_protection") or "disabled",
            tags=body.get("tags"),
        )
        server = _Server(self, name)
        self._servers.append(server)
        index.host = server.url
        self._indexes[name] = index
        return index

    # ----------------------------------------------------------------- data plane

    def _data_plane(self, rec: RecordedRequest, server_url: str) -> _Reply:
        body = rec.body if isinstance(rec.body, dict) else {}
        with self._lock:
            assert rec.index is not None
            index = self._indexes.get(rec.index)
            if index is None or index.host != server_url:  # deleted (maybe re-created elsewhere)
                raise _Rejected(404, f"Index {rec.index} not found")
            now = time.monotonic()
            handler = {
                "upsert": self._upsert,
                "query": self._query,
                "fetch": self._fetch,
                "delete": self._delete,
                "update": self._update,
                "list": self._list,
                "describe_index_stats": self._stats,
            }[rec.op]
            return _json_reply(200, handler(index, body, rec.query, now))

    def _upsert(self, index: _Index, body: dict, _q: dict, now: float) -> dict:
        vectors = body.get("vectors")
        if not isinstance(vectors, list):
            raise _bad("vectors must be a list")
        if len(vectors) > MAX_UPSERT_VECTORS:
            raise _bad(
                f"Upsert request contains {len(vectors)} vectors; the maximum is "
                f"{MAX_UPSERT_VECTORS} vectors per request"
            )
        namespace = _check_namespace(body.get("namespace"))
        visible_at = now + self._visibility_delay_s
        staged: list[tuple[str, _Record]] = []
        for position, item in enumerate(vectors):  # validate all before storing any
            where = f"vectors[{position}]"
            if not isinstance(item, dict):
                raise _bad(f"{where} must be an object")
            vid = _check_id(item.get("id"), f"{where}.id")
            values = _check_values(item.get("values"), index.dimension, where)
            metadata: dict[str, Any] = {}
            if item.get("metadata") is not None:
                metadata = _check_metadata(item["metadata"], where, self.null_metadata)
            sparse = _check_sparse(item.get("sparseValues"), where)
            staged.append((vid, _Record(values, np.asarray(values), metadata, sparse, visible_at)))
        slots = index.namespaces.setdefault(namespace, {})
        for vid, record in staged:
            slot = slots.setdefault(vid, _Slot())
            slot.settle(now)
            if self._visibility_delay_s > 0:
                slot.pending = record
            else:
                slot.current, slot.pending = record, None
        return {"upsertedCount": len(staged)}

    def _query(self, index: _Index, body: dict, _q: dict, now: float) -> dict:
        """Exact top-k. A hybrid query (``vector`` + ``sparseVector``) needs a ``dotproduct``
        index and scores ``dense·dense + sparse·sparse``, the sparse dot over shared indices (a
        record without sparse values adds 0); weighting the two is the caller's job (scale the
        query vectors). On any other metric a sparse query is a 400
        (known-limitations: "querying will return an error"). A sparse-only query needs a
        sparse index, which the emulator does not model: on a dense index it is a 400 as well.
        """
        top_k = _check_int(body.get("topK"), "topK", 1, MAX_TOP_K)
        namespace = _check_namespace(body.get("namespace"))
        vector, by_id, sparse_query = body.get("vector"), body.get("id"), body.get("sparseVector")
        if by_id is not None and (vector is not None or sparse_query is not None):
            raise _bad("Cannot provide both 'ID' and 'vector' (or 'sparse_vector') at the same time")
        if by_id is None and vector is None and sparse_query is None:
            raise _bad("No query provided: give 'vector', 'sparseVector' or 'id'")
        sparse = None
        if sparse_query is not None:
            if index.metric != "dotproduct":
                raise _bad(SPARSE_METRIC_MESSAGE)
            sparse = _check_sparse(sparse_query, "sparseVector")
            if vector is None:
                # [UNCONFIRMED wording] the service refuses it (run-llama/llama_index#12967:
                # "Pinecone always expects a vector ... when querying" a dense index).
                raise _bad("A query on a dense index needs a dense 'vector'; 'sparseVector' alone queries a sparse index")
        predicate = compile_filter(body.get("filter") or None)
        records = index.visible(namespace, now)
        if by_id is not None:
            anchor = records.get(_check_id(by_id))
            if anchor is None:
                return {"matches": [], "namespace": namespace, "usage": {"readUnits": 1}}
            query = anchor.array
        else:
            # An all-zero dense part is how a sparse-only (alpha = 0) query is written on a hybrid
            # index (hybrid_score_norm in https://docs.pinecone.io/guides/search/hybrid-search/single-index;
            # run-llama/llama_index#12967); the non-zero rule is documented for upserts.
            query = np.asarray(_check_values(vector, index.dimension, "query vector", allow_zero=sparse is not None))
        ids = sorted(vid for vid, r in records.items() if predicate(r.metadata))
        matches = []
        if ids:
            matrix = np.stack([records[vid].array for vid in ids])
            scores = _scores(index.metric, matrix, query)
            if sparse is not None:
                scores = scores + np.array([_sparse_dot(sparse, records[vid].sparse) for vid in ids])
            ranking = scores if index.metric == "euclidean" else -scores
            order = np.argsort(ranking, kind="stable")[:top_k]  # ids are sorted: ties by id
            include_values = bool(body.get("includeValues"))
            include_metadata = bool(body.get("includeMetadata"))
            for i in order:
                record = records[ids[i]]
                match: dict[str, Any] = {
                    "id": ids[i],
                    "score": float(scores[i]),
                    "values": list(record.values) if include_values else [],
                }
                if include_values and record.sparse is not None:
                    match["sparseValues"] = record.sparse
                if include_metadata and record.metadata:
                    match["metadata"] = record.metadata
                matches.append(match)
        return {"matches": matches, "namespace": namespace, "usage": {"readUnits": 1}}

    def _fetch(self, index: _Index, _b: dict, query: dict, now: float) -> dict:
        ids = query.get("ids", [])
        if not ids:
            raise _bad("ids are required")
        if len(ids) > MAX_IDS_PER_REQUEST:
            raise _bad(f"fetch accepts at most {MAX_IDS_PER_REQUEST} ids, got {len(ids)}")
        namespace = _check_namespace((query.get("namespace") or [""])[0])
        records = index.visible(namespace, now)
        found = {}
        for vid in ids:
            record = records.get(_check_id(vid))
            if record is not None:
                found[vid] = _vector_json(vid, record)
        return {"vectors": found, "namespace": namespace, "usage": {"readUnits": 1}}

    def _delete(self, index: _Index, body: dict, _q: dict, now: float) -> dict:
        namespace = _check_namespace(body.get("namespace"))
        ids, delete_all, flt = body.get("ids"), bool(body.get("deleteAll")), body.get("filter")
        if sum([ids is not None, delete_all, bool(flt)]) != 1:
            raise _bad("exactly one of ids, deleteAll or a non-empty filter must be provided")
        slots = index.namespaces.get(namespace, {})
        if delete_all:
            slots.clear()
        elif ids is not None:
            if not isinstance(ids, list) or not ids:
                raise _bad("ids must be a non-empty list")
            if len(ids) > MAX_IDS_PER_REQUEST:
                raise _bad(f"delete accepts at most {MAX_IDS_PER_REQUEST} ids, got {len(ids)}")
            for vid in ids:
                slots.pop(_check_id(vid), None)
        else:
            predicate = compile_filter(flt)
            doomed = [
                vid for vid, s in slots.items() if (r := s.latest()) and predicate(r.metadata)
            ]
            for vid in doomed:
                del slots[vid]
        if not slots:
            index.namespaces.pop(namespace, None)
        return {}

    def _update(self, index: _Index, body: dict, _q: dict, now: float) -> dict:
        namespace = _check_namespace(body.get("namespace"))
        vid, flt = body.get("id"), body.get("filter")
        if (vid is None) == (flt is None):
            raise _bad("exactly one of id or filter must be provided")
        set_metadata = body.get("setMetadata")
        if set_metadata is not None:
            set_metadata = _check_metadata(set_metadata, "setMetadata", self.null_metadata)
        values = body.get("values")
        if values is not None:
            if flt is not None:
                raise _bad("Update by metadata request does not support updating vector values.")
            values = _check_values(values, index.dimension, "values")
        sparse = body.get("sparseValues")
        if sparse is not None:
            if flt is not None:
                raise _bad("Update by metadata request does not support updating vector values.")
            sparse = _check_sparse(sparse, "sparseValues")
        slots = index.namespaces.get(namespace, {})
        if vid is not None:
            slot = slots.get(_check_id(vid))
            targets = [slot] if slot is not None else []
        else:
            predicate = compile_filter(flt)
            targets = [s for s in slots.values() if (r := s.latest()) and predicate(r.metadata)]
            if body.get("dryRun"):
                return {"matchedRecords": len(targets)}
        records = [r for s in targets for r in (s.current, s.pending) if r is not None]
        merged = [{**r.metadata, **(set_metadata or {})} for r in records]
        for metadata in merged:  # the 40 KB limit applies to the result; check all, then apply
            _check_metadata(metadata, "setMetadata", self.null_metadata)
        for record, metadata in zip(records, merged):
            record.metadata = metadata
            if values is not None:
                record.values, record.array = values, np.asarray(values)
            if sparse is not None:
                record.sparse = sparse
        return {"matchedRecords": len(targets)} if flt is not None else {}

    def _list(self, index: _Index, _b: dict, query: dict, now: float) -> dict:
        namespace = _check_namespace((query.get("namespace") or [""])[0])
        prefix = (query.get("prefix") or [""])[0]
        raw_limit = (query.get("limit") or [str(MAX_LIST_LIMIT)])[0]
        try:
            limit = int(raw_limit)
        except ValueError:
            raise _bad(f"limit must be an integer, got {raw_limit!r}") from None
        _check_int(limit, "limit", 1, MAX_LIST_LIMIT)
        after = None
        token = (query.get("paginationToken") or [""])[0]
        if token:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode("ascii")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise _bad("invalid paginationToken") from None
        ids = sorted(
            (vid for vid in index.visible(namespace, now) if vid.startswith(prefix)),
            key=lambda v: v.encode(),
        )
        if after is not None:
            ids = [vid for vid in ids if vid.encode() > after.encode()]
        page = ids[:limit]
        out: dict[str, Any] = {
            "vectors": [{"id": vid} for vid in page],
            "namespace": namespace,
            "usage": {"readUnits": 1},
        }
        if len(ids) > limit:
            out["pagination"] = {"next": base64.urlsafe_b64encode(page[-1].encode()).decode()}
        return out

    def _stats(self, index: _Index, body: dict, _q: dict, now: float) -> dict:
        if body.get("filter"):
            raise _bad(
                "Serverless and starter indexes do not support describing index stats "
                "with metadata filtering."
            )
        counts = {ns: len(index.visible(ns, now)) for ns in list(index.namespaces)}
        counts = {ns: n for ns, n in counts.items() if n}
        return {
            "namespaces": {ns: {"vectorCount": n} for ns, n in sorted(counts.items())},
            "dimension": index.dimension,
            "indexFullness": 0.0,
            "totalVectorCount": sum(counts.values()),
            "metric": index.metric,
            "vectorType": "dense",
        }


# --------------------------------------------------------------------------- small pieces


def _decode_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw.decode("utf-8", "replace")


def _check_sparse(sparse: Any, where: str) -> dict[str, list[Any]] | None:
    """Validate sparse values: ``indices`` uint32 and unique, ``values`` finite float32, equal
    lengths, at least one and at most ``MAX_SPARSE_VALUES`` entries.

    The limits are documented (https://www.pinecone.io/docs/limits/); the empty-vector message
    is the service's as quoted by users; the other messages are [UNCONFIRMED wording].
    """
    if sparse is None:
        return None
    if not isinstance(sparse, dict):
        raise _bad(f"{where}.sparseValues must be an object")
    indices, values = sparse.get("indices"), sparse.get("values")
    if not isinstance(indices, list) or not isinstance(values, list) or len(indices) != len(values):
        raise _bad(f"{where}: sparse 'indices' and 'values' must be lists of the same length")
    if not indices:
        raise _bad(EMPTY_SPARSE_MESSAGE)
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_SPARSE_INDEX for i in indices):
        raise _bad(f"{where}: sparse indices must be unsigned 32-bit integers")
    if not all(_is_number(v) and math.isfinite(v) for v in values):
        raise _bad(f"{where}: sparse values must be finite numbers")
    if len(set(indices)) != len(indices):
        raise _bad(f"{where}: sparse indices must be unique")
    nonzero = sum(1 for v in values if v != 0)
    if nonzero > MAX_SPARSE_VALUES:
        raise _bad(
            f"{where}: sparse vector has {nonzero} non-zero values; the maximum is {MAX_SPARSE_VALUES}"
        )
    return {"indices": list(indices), "values": [float(v) for v in values]}  # as given, like dense values


def _sparse_dot(query: dict[str, list[Any]], record: dict[str, list[Any]] | None) -> float:
    if record is None:
        return 0.0
    weights = dict(zip(record["indices"], record["values"]))
    return float(sum(v * weights.get(i, 0.0) for i, v in zip(query["indices"], query["values"])))


def _vector_json(vid: str, record: _Record) -> dict[str, Any]:
    out: dict[str, Any] = {"id": vid, "values": list(record.values)}
    if record.sparse is not None:
        out["sparseValues"] = record.sparse
    if record.metadata:
        out["metadata"] = record.metadata
    return out


def _scores(metric: str, matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    if metric == "dotproduct":
        return matrix @ query
    if metric == "euclidean":
        diff = matrix - query
        return np.einsum("ij,ij->i", diff, diff)
    norms = np.linalg.norm(matrix, axis=1) * np.linalg.norm(query)
    return (matrix @ query) / norms


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
