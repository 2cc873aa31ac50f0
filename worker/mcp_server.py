"""The query API as MCP tools, built with the official ``mcp`` SDK (``MCPServer``).

::

    MCP host --stdio--------------------------> memory-worker mcp --config F   (model + sinks, no ingest)
    MCP host --POST /mcp (bearer query token)--> memory-worker run            (streamable HTTP)
        search_memory(text, k, filter, mode)  → QueryResponse   (= POST /query, document-level)
        get_document(doc_id)                  → DocumentView    (= GET /query/documents/{id})
        list_sources()                        → [SourceInfo]    (= GET /query/sources)

The tools take and give the models of :mod:`worker.contract`, so the SDK publishes their JSON
schemas (``inputSchema`` / ``outputSchema``) and answers with ``structuredContent``. Arguments
are checked by :func:`worker.query.parse_request`, the parser ``POST /query`` uses: a bad
argument is an ``isError`` result whose text names the field (``k: ...``,
``filter.author: unknown field ...``), never a crash of the server.

Retrieval blocks (the query embedding, the sink's search), so each call runs on a worker
thread, off the event loop that serves the protocol.

Over HTTP the endpoint is stateless (every POST is a whole exchange, no ``Mcp-Session-Id``, so
any pod behind a load balancer can answer any request) and answers with JSON bodies, not SSE
streams: the tools neither stream nor send server-to-client requests.
"""

# No `from __future__ import annotations`: the SDK reads the tools' annotations (descriptions,
# bounds) from the live objects instead of re-evaluating strings.
import argparse
import contextlib
import functools
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, TypeVar

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from worker import __version__
from worker.contract import DocumentView, Mode, QueryRequest, QueryResponse, SourceInfo
from worker.errors import TransientError, WorkerError
from worker.query import parse_request
from worker.retrieve import Retriever

log = logging.getLogger(__name__)

_T = TypeVar("_T")

INSTRUCTIONS = (
    "Memory of the team's Gong calls, Slack messages and GitHub issues/PRs, as materialized from "
    "Estuary. search_memory finds the documents that answer a question (best first, with their "
    "best-matching passages); get_document reads one document whole; list_sources names the "
    "collections and the fields search_memory's filter accepts.")

#: JSON-schema keywords copied from the contract into the tools' input schemas.
_BOUNDS = ("minimum", "maximum", "minLength", "maxLength")


def _arg(name: str, description: str | None = None) -> Any:  # noqa: ANN401 - a pydantic FieldInfo
    """A tool argument described as :class:`QueryRequest` describes the field.

    Its bounds (``k`` 1-100, ...) are published in the schema but checked by ``parse_request``,
    so a bad value is refused with the same ``field: reason`` message as ``POST /query``.
    """
    prop = QueryRequest.model_json_schema()["properties"][name]
    return Field(description=description or prop.get("description"),
                 json_schema_extra={k: prop[k] for k in _BOUNDS if k in prop} or None)


def _refused(exc: WorkerError) -> ToolError:
    field = getattr(exc, "field", None)
    reason = str(exc)
    if field and not reason.startswith(field):
        reason = f"{field}: {reason}"
    log.info("mcp call refused", extra={"error": type(exc).__name__, "field": field})
    return ToolError(reason)


_READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                             open_world_hint=False)


def build_mcp(retriever: Retriever, *, default_sink: str | None = None,
              max_concurrent_calls: int | None = None) -> MCPServer:
    """The three tools over ``retriever``. ``default_sink`` answers them (default: the
    retriever's first sink). ``max_concurrent_calls`` bounds the retrieval threads (1 when
    the retriever embeds on the caller's thread, as ``build_retriever``'s does: one model owner)."""
    mcp = MCPServer("ai-memory-worker", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    limiter = anyio.CapacityLimiter(max_concurrent_calls) if max_concurrent_calls else None

    async def off_loop(fn: Callable[..., _T], *args: Any) -> _T:  # noqa: ANN401
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=limiter)
        except WorkerError as exc:  # refused or unavailable: the caller's to read, not a crash
            raise _refused(exc) from exc

    @mcp.tool(title="Search memory", annotations=_READ_ONLY)
    async def search_memory(
        text: Annotated[str, _arg("text", "the question, in plain words (it is embedded as a query)")],
        k: Annotated[int, _arg("k", "how many documents to return, best first")] = 5,
        filter: Annotated[dict[str, Any] | None, _arg("filter", (  # noqa: A002 - the contract's name
            'only documents whose fields match: {"field": value} (equal; on a list field: contains), '
            '{"field": {"$in": [v1, v2]}}, {"field": {"$gte": a, "$lt": b}} on number and time fields '
            '(ISO 8601 or unix seconds); "published_after"/"published_before" are shorthands. '
            "Fields: source, collection, doc_id, published_at and each collection's fields "
            "(list_sources)."))] = None,
        mode: Annotated[Mode, _arg("mode", "hybrid (keywords and meaning; the default), vector "
                                           "(meaning only) or keyword (exact words only)")] = "hybrid",
        chunks_per_doc: Annotated[int, _arg("chunks_per_doc")] = 2,
        context: Annotated[int, _arg("context")] = 0,
    ) -> QueryResponse:
        """Find the documents (calls, messages, issues) that answer a question, best first.

        Each result is one document with its title, url, source, collection, publish time, typed
        metadata and its best-matching passages (`chunks`); read a whole document with
        get_document(doc_id).
        """
        try:
            req = parse_request({"text": text, "k": k, "mode": mode, "chunks_per_doc": chunks_per_doc,
                                 "context": context, "filter": filter or {}, "sink": default_sink})
        except WorkerError as exc:
            raise _refused(exc) from exc
        return await off_loop(retriever.search, req)

    @mcp.tool(title="Read a document", annotations=_READ_ONLY)
    async def get_document(
        doc_id: Annotated[str, Field(description="a doc_id from search_memory, e.g. 'slack:C024BE91L/1714.1'")],
    ) -> DocumentView:
        """Every stored chunk of one document, in order (chunk_index 0, 1, ...), with its metadata."""
        view = await off_loop(retriever.get_document, doc_id, default_sink)
        if view is None:
            raise ToolError(f"doc_id: no document {doc_id!r}")
        return view

    @mcp.tool(title="List sources", annotations=_READ_ONLY)
    async def list_sources() -> list[SourceInfo]:
        """The collections in memory (Gong, Slack, GitHub, ...) and the fields search_memory's
        filter accepts on each (name and type; `collections` empty: on every collection)."""
        return retriever.sources()

    return mcp


# -- streamable HTTP, inside memory-worker run -------------------------------------------------

class McpEndpoint:
    """``/mcp`` of the worker's Starlette app: the SDK's streamable HTTP transport behind
    ``authorize`` (the query token), refusals rendered by ``refuse`` (the API's error shape).

    The SDK's session manager needs its task group running: enter :meth:`lifespan` in the
    app's lifespan (and serve with uvicorn's lifespan on). Until then, and once it has exited,
    requests are refused with a 503 rather than failing inside the SDK.
    """

    def __init__(self, retriever: Retriever, *, authorize: Callable[[Request], None],
                 refuse: Callable[[WorkerError], Response], host: str,
                 default_sink: str | None = None) -> None:
        self.server = build_mcp(retriever, default_sink=default_sink)
        # Builds the session manager; the sub-app it returns is not used (this endpoint is a
        # route of the worker's own app). ``host`` keeps the SDK's default DNS-rebinding check
        # on loopback binds.
        self.server.streamable_http_app(stateless_http=True, json_response=True, host=host)
        self.sessions = self.server.session_manager
        self._authorize = authorize
        self._refuse = refuse
        self._running = False

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        async with self.sessions.run():
            self._running = True
            try:
                yield
            finally:
                self._running = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._authorize(Request(scope))
            if not self._running:
                raise TransientError("the MCP endpoint is not running (the server is starting or "
                                     "stopping)", retry_after_s=5)
        except WorkerError as exc:
            await self._refuse(exc)(scope, receive, send)
            return
        await self.sessions.handle_request(scope, receive, send)


# -- memory-worker mcp (stdio) -----------------------------------------------------------------

@contextlib.contextmanager
def _stdout_on_stderr() -> Iterator[None]:
    """Send everything written to stdout (Python's or a native library's, fd 1) to stderr:
    stdout is the protocol, and loading a model must not write a byte of it. The SDK's stdio
    transport does the same while it serves; this covers the start-up before it."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


def cmd_mcp(args: argparse.Namespace) -> int:
    """``memory-worker mcp --config F [--sink S]``: the tools over stdio, until stdin closes."""
    from worker.cli import _config, _env
    from worker.runtime import build_retriever

    with _stdout_on_stderr():
        retriever = build_retriever(_config(args), _env(), sink=args.sink)
    log.info("serving mcp over stdio", extra={"sinks": ",".join(retriever.sinks)})
    try:
        build_mcp(retriever, default_sink=args.sink, max_concurrent_calls=1).run("stdio")
    finally:
        for sink in retriever.sinks.values():
            sink.close()
    return 0
