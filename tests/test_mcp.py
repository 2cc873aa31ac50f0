"""The MCP tools, through the SDK's own client, over both transports.

``stdio``: ``memory-worker mcp --config F`` as a subprocess (its own model load, its own handle
on the store). ``http``: ``memory-worker run``'s Starlette app served by uvicorn (lifespan on,
as ``run_server`` serves it) on an ephemeral port, ``/mcp`` with the query token.

Both read one local store holding real sample documents (all of Slack, one Gong call, the
short GitHub documents), indexed once for the module; every tool test runs on both transports.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import httpx
import pytest

from conftest import REPO, load_stream, make_config
from test_service import GITHUB, GONG, HOOK, QUERY, SLACK, free_port, write_config
from worker.contract import DocumentView, QueryResponse, SourceInfo
from worker.ids import document_id

QUERIES = {q["doc_id_hint"]: q for q in json.loads((REPO / "examples" / "queries.json").read_text())}
SOURCES = {GONG: "gong", SLACK: "slack", GITHUB: "github"}
BRIGHTLINE = "gong:7793120458876630021"   # a multi-chunk call transcript
#: What the store holds: enough to rank against, small enough to embed in seconds on two cores.
INDEXED = {
    SLACK: lambda doc: True,
    GONG: lambda doc: f"gong:{doc['call_id']}" == BRIGHTLINE,
    GITHUB: lambda doc: len(json.dumps(doc)) < 4000,  # leaves out the 280 KB issue and its long comment
}
CALL_TIMEOUT_S = 120.0  # a guard against hanging forever, never asserted on


def intended(hint: str) -> str:
    q = QUERIES[hint]
    return document_id(SOURCES[q["collection"]], tuple(str(k) for k in q["key"]))


# -- the store, the servers, the clients -----------------------------------------------------------

@pytest.fixture(scope="module")
def memory(tmp_path_factory, embedder) -> Path:
    """A worker root whose local store holds the ``INDEXED`` sample documents (read-only)."""
    from worker.runtime import build_runtime

    root = tmp_path_factory.mktemp("mcp-memory")
    runtime = build_runtime(make_config(root), {}, embedder=embedder)
    try:
        for collection, keep in INDEXED.items():
            docs, rejected = runtime.pipeline.validate(collection, [d for d in load_stream(collection) if keep(d)])
            assert rejected == 0
            runtime.pipeline.apply(docs)
    finally:
        runtime.close()
    return root


@dataclass
class HttpWorker:
    url: str
    service: Any


@pytest.fixture(scope="module")
def http_worker(memory, embedder) -> Iterator[HttpWorker]:
    """``memory-worker run``'s app on 127.0.0.1, served like ``run_server`` serves it."""
    import uvicorn

    from worker.metrics import Metrics
    from worker.runtime import build_service

    service = build_service(make_config(memory), {}, embedder=embedder, metrics=Metrics())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(service.app(), log_level="warning", access_log=False,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield HttpWorker(f"http://127.0.0.1:{sock.getsockname()[1]}", service)
    finally:
        server.should_exit = True
        thread.join(30)
        service.close()
        sock.close()


class McpSession:
    """An entered SDK ``Client``, driven from synchronous tests through an anyio portal."""

    def __init__(self, transport: str, portal: anyio.from_thread.BlockingPortal, client: Any,  # noqa: ANN401
                 problems: list[Exception], log: Path | None = None) -> None:
        self.transport = transport
        self.portal = portal
        self.client = client
        self.problems = problems  # transport-level errors the client saw (unparseable lines, ...)
        self.log = log

    def tools(self) -> dict[str, Any]:
        return {t.name: t for t in self.portal.call(self.client.list_tools).tools}

    def call(self, tool: str, arguments: dict[str, Any] | None = None) -> Any:  # noqa: ANN401
        return self.portal.call(self.client.call_tool, tool, arguments or {})

    def ok(self, tool: str, arguments: dict[str, Any] | None = None) -> Any:  # noqa: ANN401
        result = self.call(tool, arguments)
        assert not result.is_error, (result.content, self.server_log())
        assert result.structured_content is not None
        return result.structured_content

    def search(self, text: str, **arguments: Any) -> QueryResponse:
        return QueryResponse.model_validate(self.ok("search_memory", {"text": text, **arguments}))

    def server_log(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log else ""


@contextlib.contextmanager
def connected(transport: Any, name: str, log: Path | None = None) -> Iterator[McpSession]:  # noqa: ANN401
    from mcp import Client

    problems: list[Exception] = []

    async def record(message: Any) -> None:  # noqa: ANN401
        if isinstance(message, Exception):
            problems.append(message)

    with anyio.from_thread.start_blocking_portal() as portal:
        client = Client(transport, message_handler=record, read_timeout_seconds=CALL_TIMEOUT_S)
        with portal.wrap_async_context_manager(client) as entered:
            yield McpSession(name, portal, entered, problems, log)


def http_transport(base_url: str, headers: dict[str, str]) -> Any:  # noqa: ANN401
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    return streamable_http_client(f"{base_url}/mcp", http_client=create_mcp_http_client(headers=headers))


@pytest.fixture(scope="module", params=["stdio", "http"])
def mcp(request, memory, tmp_path_factory) -> Iterator[McpSession]:
    if request.param == "stdio":
        from mcp.client.stdio import StdioServerParameters, stdio_client

        config = write_config(memory, port=free_port(), name="mcp.yaml")
        log = tmp_path_factory.mktemp("mcp-stdio") / "stderr.log"
        params = StdioServerParameters(command=sys.executable, cwd=REPO,
                                       args=["-m", "worker.cli", "mcp", "--config", str(config)],
                                       env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        with log.open("w") as errlog, connected(stdio_client(params, errlog=errlog), "stdio", log) as session:
            yield session
    else:
        base_url = request.getfixturevalue("http_worker").url
        with connected(http_transport(base_url, QUERY), "http") as session:
            yield session


# -- the tools ------------------------------------------------------------------------------------

def test_the_three_tools_are_listed_with_schemas_an_llm_can_use(mcp):
    tools = mcp.tools()
    assert set(tools) == {"search_memory", "get_document", "list_sources"}
    search = tools["search_memory"].input_schema
    assert search["required"] == ["text"]
    props = search["properties"]
    assert {"text", "k", "filter", "mode"} <= set(props)
    assert props["k"]["type"] == "integer" and props["k"]["default"] == 5
    assert (props["k"]["minimum"], props["k"]["maximum"]) == (1, 100)
    assert props["mode"]["enum"] == ["hybrid", "vector", "keyword"] and props["mode"]["default"] == "hybrid"
    assert all(p.get("description") for p in props.values()), props
    assert tools["get_document"].input_schema["required"] == ["doc_id"]
    for tool in tools.values():
        assert tool.description and tool.output_schema, tool.name
        assert tool.annotations.read_only_hint is True


@pytest.mark.parametrize("hint", ["gong: Brightline incident", "slack: #incidents root cause", "github: PR #442"])
def test_search_memory_ranks_the_document_a_question_is_about_first(mcp, hint):
    response = mcp.search(QUERIES[hint]["query"], k=3)
    docs = [r.doc_id for r in response.results]
    assert docs[0] == intended(hint), docs
    assert response.group == "document" and len(docs) == 3 == len(set(docs))  # one result per document
    best = response.results[0]
    assert best.collection == QUERIES[hint]["collection"] and best.title and best.chunks
    assert [c.score for c in best.chunks] == sorted((c.score for c in best.chunks), reverse=True)


def test_a_filter_restricts_the_results(mcp):
    question = QUERIES["slack: #incidents root cause"]["query"]
    everywhere = mcp.search(question, k=10).results
    assert everywhere[0].doc_id == intended("slack: #incidents root cause")
    assert BRIGHTLINE not in [r.doc_id for r in everywhere[:3]]
    github = mcp.search(question, k=10, filter={"collection": GITHUB}).results
    assert github and {r.collection for r in github} == {GITHUB}
    # a metadata field of one collection: only that call is left, however poorly it matches
    brightline = mcp.search(question, k=10, filter={"account_name": "Brightline Retail"}).results
    assert [r.doc_id for r in brightline] == [BRIGHTLINE]
    assert brightline[0].metadata["account_name"] == "Brightline Retail"


@pytest.mark.parametrize("arguments, field", [
    ({"filter": {"no_such_field": "me"}}, "filter.no_such_field"),
    ({"filter": {"account_name": {"$gte": "A"}}}, "filter.account_name.$gte"),
    ({"filter": {"published_after": "yesterday"}}, "filter.published_after"),
    ({"k": 0}, "k"),
    ({"mode": "semantic"}, "mode"),
])
def test_a_bad_argument_is_a_tool_error_naming_the_field(mcp, arguments, field):
    result = mcp.call("search_memory", {"text": "search latency", **arguments})
    assert result.is_error
    text = result.content[0].text
    # Ours: "...: filter.no_such_field: unknown field ..."; the SDK's type check: "...\nmode\n  Input ..."
    assert re.search(rf"(: |\n){re.escape(field)}[.:\n]", text), text
    assert mcp.ok("list_sources")  # and the server is still there


def test_get_document_returns_every_stored_chunk_in_order(mcp, memory):
    from worker.sinks.local import LocalSink

    found = mcp.search(QUERIES["gong: Brightline incident"]["query"], k=1).results[0]
    assert found.doc_id == BRIGHTLINE and found.chunk_count and found.chunk_count > 1
    view = DocumentView.model_validate(mcp.ok("get_document", {"doc_id": BRIGHTLINE}))
    assert [c.chunk_index for c in view.chunks] == list(range(found.chunk_count))
    assert (view.doc_id, view.collection, view.title) == (BRIGHTLINE, GONG, found.title)
    sink = LocalSink(memory / "lancedb")
    try:
        rows = sorted((r for r in sink.rows() if r["doc_id"] == BRIGHTLINE), key=lambda r: r["chunk_index"])
    finally:
        sink.close()
    assert [c.text for c in view.chunks] == [r["text"] for r in rows]


def test_get_document_of_an_unknown_id_is_a_tool_error(mcp):
    result = mcp.call("get_document", {"doc_id": "gong:no-such-call"})
    assert result.is_error and "doc_id" in result.content[0].text


def test_list_sources_names_the_collections_and_their_filterable_fields(mcp):
    sources = [SourceInfo.model_validate(s) for s in mcp.ok("list_sources")["result"]]
    assert {s.collection: s.source for s in sources} == SOURCES
    gong = {f.name: f for f in next(s for s in sources if s.collection == GONG).fields}
    assert gong["account_name"].type == "string" and gong["account_name"].collections == [GONG]
    assert gong["published_at"].type == "time" and gong["published_at"].collections == []
    for s in sources:
        assert {"source", "collection", "doc_id", "published_at"} <= {f.name for f in s.fields}
    # every field listed is one search_memory's filter accepts
    for name in gong:
        result = mcp.call("search_memory", {"text": "x", "mode": "keyword", "filter": {name: {"$in": ["x"]}}})
        assert not result.is_error or "unknown field" not in result.content[0].text, (name, result.content)


def test_the_transport_carried_nothing_but_protocol_messages(mcp):
    """Runs after the others on its transport: over stdio, a stray line on stdout (a progress
    bar, a print while loading the model) reaches the client as an unparseable message."""
    mcp.ok("list_sources")
    assert mcp.problems == [], (mcp.problems, mcp.server_log())


# -- /mcp in memory-worker run: the query token ----------------------------------------------------

INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "test", "version": "0"}}}
MCP_ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic cXVlcnktc2VjcmV0"},
                                     HOOK], ids=["none", "wrong", "basic", "webhook-token"])
def test_http_mcp_refuses_a_request_without_the_query_token(http_worker, headers):
    refused = httpx.post(f"{http_worker.url}/mcp", json=INITIALIZE, headers={**MCP_ACCEPT, **headers}, timeout=30)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"] == "Unauthorized"
    answered = httpx.post(f"{http_worker.url}/mcp", json=INITIALIZE, headers={**MCP_ACCEPT, **QUERY}, timeout=30)
    assert answered.status_code == 200, answered.text
    assert answered.json()["result"]["serverInfo"]["name"] == "ai-memory-worker"


def test_the_sdk_client_with_a_wrong_token_cannot_connect(http_worker):
    # The SDK reports the 401 as a generic MCPError inside an exception group; what matters
    # is that no session opens (the right token's session is the ``mcp`` fixture's).
    with pytest.raises(Exception):  # noqa: B017, PT011
        with connected(http_transport(http_worker.url, {"Authorization": "Bearer wrong"}), "http"):
            pass


def test_http_mcp_without_its_lifespan_refuses_with_503_instead_of_failing(http_worker):
    """An app served with lifespan off (the SDK's session manager never started) says so."""
    from starlette.testclient import TestClient

    client = TestClient(http_worker.service.app())  # not entered: no lifespan
    assert client.post("/mcp", json=INITIALIZE, headers=MCP_ACCEPT).status_code == 401
    r = client.post("/mcp", json=INITIALIZE, headers={**MCP_ACCEPT, **QUERY})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    assert "not running" in r.json()["reason"]
