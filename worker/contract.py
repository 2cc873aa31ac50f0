"""The query contract, as pydantic models: what ``POST /query``, the CLI and the MCP tools take
and give. ``GET /openapi.json`` serves :func:`openapi`; ``worker/openapi.json`` is the committed
copy, checked by a test (``memory-worker openapi > worker/openapi.json`` refreshes it).

A request that does not fit is a 400 whose ``field`` names the offending field
(``k``, ``filter.labels.$in``, ...), from :func:`field_of`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker import __version__

Mode = Literal["hybrid", "vector", "keyword"]
Group = Literal["document", "chunk"]
Scalar = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FilterOps(_Model):
    """Operators on one field; all given ones must hold."""

    eq: Scalar | None = Field(default=None, alias="$eq")
    in_: list[Scalar] | None = Field(default=None, alias="$in", min_length=1, max_length=256)
    gte: Scalar | None = Field(default=None, alias="$gte")
    gt: Scalar | None = Field(default=None, alias="$gt")
    lte: Scalar | None = Field(default=None, alias="$lte")
    lt: Scalar | None = Field(default=None, alias="$lt")


class QueryRequest(_Model):
    """A question for AI Memory V2's memory."""

    text: str = Field(min_length=1, max_length=8192, description="the question, in plain words")
    k: int = Field(default=5, ge=1, le=100, description="results (documents, or chunks with group=chunk)")
    sink: str | None = Field(default=None, description="which sink answers; default: the first configured")
    mode: Mode = Field(default="hybrid", description="hybrid (keyword + vector), vector or keyword")
    alpha: float = Field(default=0.5, ge=0.0, le=1.0,
                         description="hybrid weight of the vector leg (1 = vector only)")
    group: Group = Field(default="document", description="one result per document, or raw chunks")
    chunks_per_doc: int = Field(default=2, ge=1, le=20, description="best chunks shown per document")
    context: int = Field(default=0, ge=0, le=10,
                         description="neighbouring chunks on each side of a document's best chunk")
    filter: dict[str, Scalar | FilterOps] = Field(
        default_factory=dict,
        description='{"field": value}, {"field": {"$in": [...]}}, {"field": {"$gte": a, "$lt": b}}; '
                    "fields: GET /query/fields or the list_sources MCP tool")

    def filter_dict(self) -> dict[str, Any]:
        return {name: (c.model_dump(by_alias=True, exclude_none=True) if isinstance(c, FilterOps) else c)
                for name, c in self.filter.items()}


class ChunkOut(_Model):
    id: str
    chunk_index: int
    text: str
    score: float | None = Field(default=None, description="absent for context chunks")


class DocumentResult(_Model):
    doc_id: str
    source: str
    collection: str
    title: str
    url: str
    score: float = Field(description="the best chunk's score in the mode that ran")
    published_at: str | None = None
    chunk_count: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict, description="the binding's typed fields")
    chunks: list[ChunkOut] = Field(description="best-matching chunks, best first")
    context: list[ChunkOut] | None = Field(
        default=None, description="with context=N: the best chunk and its neighbours, in order")


class ChunkResult(_Model):
    id: str
    doc_id: str
    source: str
    score: float
    text: str
    title: str
    url: str
    metadata: dict[str, Any]


class QueryResponse(_Model):
    sink: str
    mode: Mode = Field(description="the mode that ran (a sink that cannot run the asked one says why)")
    group: Group
    results: list[DocumentResult] | list[ChunkResult]
    warnings: list[str] = Field(default_factory=list)
    generation: str | None = Field(default=None, description="the index generation that answered "
                                   "(every result comes from this one; see `memory-worker migrate`)")


class FieldInfo(_Model):
    name: str
    type: str
    collections: list[str] = Field(description="empty: on every collection")


class SourceInfo(_Model):
    collection: str
    source: str
    fields: list[FieldInfo]


class DocumentView(_Model):
    doc_id: str
    source: str
    collection: str
    title: str
    url: str
    published_at: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    chunks: list[ChunkOut]


class ErrorResponse(_Model):
    error: str = Field(description="the error class, e.g. RequestInvalid")
    reason: str
    field: str | None = Field(default=None, description="the offending request field, when one is at fault")


def field_of(exc: ValidationError) -> tuple[str, str]:
    """``(field, message)`` of the first error, the field as a dotted path with aliases."""
    errors = exc.errors()
    # A union's errors: the operator object's own error says more than "not a string".
    err = next((e for e in errors if "FilterOps" in e.get("loc", ())), errors[0])
    parts = [str(p) for p in err.get("loc", ()) if not str(p).startswith(("function-", "FilterOps"))
             and p not in ("str", "int", "float", "bool", "list[union[str,int,float,bool]]")]
    field = ".".join(parts) or "body"
    return field, f"{field}: {err.get('msg', 'invalid')}"


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the query API (and the health probes)."""
    from pydantic.json_schema import models_json_schema

    models = [QueryRequest, QueryResponse, ErrorResponse, SourceInfo, DocumentView]
    _, schema = models_json_schema([(m, "validation" if m is QueryRequest else "serialization")
                                    for m in models], ref_template="#/components/schemas/{model}")
    ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
    error = {"description": "the request is refused; `field` names what to fix",
             "content": {"application/json": {"schema": ref("ErrorResponse")}}}
    bearer = [{"queryToken": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "ai-memory-worker query API", "version": __version__,
                 "description": "Document-level hybrid retrieval over what Estuary materialized."},
        "paths": {
            "/query": {"post": {
                "operationId": "query", "security": bearer,
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": ref("QueryRequest")}}},
                "responses": {"200": {"description": "results, best first",
                                      "content": {"application/json": {"schema": ref("QueryResponse")}}},
                              "400": error, "401": error, "503": error}}},
            "/query/sources": {"get": {
                "operationId": "listSources", "security": bearer,
                "responses": {"200": {"description": "collections and their filterable fields",
                                      "content": {"application/json": {"schema": {
                                          "type": "array", "items": ref("SourceInfo")}}}},
                              "401": error}}},
            "/query/documents/{doc_id}": {"get": {
                "operationId": "getDocument", "security": bearer,
                "parameters": [{"name": "doc_id", "in": "path", "required": True,
                                "schema": {"type": "string"}},
                               {"name": "sink", "in": "query", "required": False,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the document's stored chunks, in order",
                                      "content": {"application/json": {"schema": ref("DocumentView")}}},
                              "401": error, "404": error}}},
            "/healthz": {"get": {"operationId": "healthz", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"operationId": "readyz", "responses": {
                "200": {"description": "ready"}, "503": {"description": "not ready"}}}},
        },
        "components": {"schemas": schema["$defs"],
                       "securitySchemes": {"queryToken": {"type": "http", "scheme": "bearer"}}},
    }
