"""The console's pages: each handler reads the service, shapes it (:mod:`worker.console.views`)
and renders a template from ``templates/``.

Every page is plain HTML that works without JavaScript; htmx only polls the overview fragment
and sends the replay button's POST in place (``HX-Request`` answers with a fragment, a plain POST
with the whole page). POSTs pass :func:`worker.console.guard.same_origin` first. What people see
of reasons and errors passes :attr:`Service.scrubber` (vendor errors echo tokens); dead-letter
documents are shown as stored, escaped by the templates' autoescaping.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
import yaml
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from worker import __version__
from worker.admin import admin_token
from worker.config import masked
from worker.console import deadletters
from worker.console.deadletters import Filter
from worker.console.guard import same_origin
from worker.console.views import Budget, Overview, RateWindow, SinkCounters, query_terms, sink_rows
from worker.deadletter import DeadLetter, DeadLetterStore
from worker.errors import WorkerError, http_status
from worker.filters import FilterInvalid
from worker.query import parse_request

if TYPE_CHECKING:
    from prometheus_client import Counter

    from worker.service import Service

PREFIX = "/console"
#: The most dead letters one list page shows (newest first); the count says how many match.
LIST_LIMIT = 500
MODES = ("hybrid", "vector", "keyword")
Handler = Callable[[Request], Awaitable[Response]]


def counter_totals(counter: Counter) -> dict[tuple[str, ...], float]:
    """A labelled counter's ``_total`` samples, by label values (through its public collect())."""
    out: dict[tuple[str, ...], float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[tuple(sample.labels.values())] = sample.value
    return out


class Console:
    def __init__(self, service: Service, templates: Jinja2Templates) -> None:
        self.service = service
        self.templates = templates
        self.rates = RateWindow()
        self.token_set = admin_token(service.config.server) is not None

    # -- rendering ---------------------------------------------------------------------------
    def render(self, request: Request, name: str, *, status_code: int = 200, **context: Any) -> Response:  # noqa: ANN401
        context.setdefault("active", "")
        return self.templates.TemplateResponse(
            request, name, {"signed_in": self.token_set, "version": __version__, **context},
            status_code=status_code)

    def scrub(self, text: str | None) -> str | None:
        return None if text is None else self.service.scrubber.text(text)

    def guarded(self, handler: Handler) -> Handler:
        """``handler`` for POSTs, behind the same-origin check."""
        async def check(request: Request) -> Response:
            if not same_origin(request):
                return self.render(request, "error.html", status_code=403, title="Refused",
                                   message="This POST did not come from a console page (its Origin "
                                           "or Referer is not this listener), so it was refused.")
            return await handler(request)
        return check

    # -- overview ----------------------------------------------------------------------------
    def overview_model(self) -> Overview:
        status = self.service.public_status()
        metrics = self.service.metrics
        upserts, deletes = counter_totals(metrics.upserts), counter_totals(metrics.deletes)
        errors, retries = counter_totals(metrics.errors), counter_totals(metrics.retries)
        counters = {name: SinkCounters(upserts.get((name,), 0.0), deletes.get((name,), 0.0),
                                       errors.get((name,), 0.0), retries.get((name,), 0.0))
                    for name in status["sinks"]}
        rates = self.rates.observe(time.monotonic(), {n: c.upserts for n, c in counters.items()})
        return Overview(
            status=status, sinks=sink_rows(status["sinks"], counters, rates),
            spool=Budget(status["spool"]["bytes"], status["spool"]["max_bytes"]),
            prepared=Budget(status["prepared"]["bytes"], status["prepared"]["max_bytes"]),
            received=sum(counter_totals(metrics.documents_received).values()),
            accepted=sum(counter_totals(metrics.documents_accepted).values()),
            as_of=time.time())

    async def overview(self, request: Request) -> Response:
        model = await run_in_threadpool(self.overview_model)
        return self.render(request, "overview.html", active="overview", o=model)

    async def overview_fragment(self, request: Request) -> Response:
        model = await run_in_threadpool(self.overview_model)
        return self.render(request, "_overview.html", o=model)

    # -- dead letters ------------------------------------------------------------------------
    @property
    def store(self) -> DeadLetterStore:
        return self.service.rt.dead_letters

    def _filter(self, values: Any) -> Filter:  # noqa: ANN401 - query params or form data
        return Filter(collection=str(values.get("collection") or "").strip(),
                      stage=str(values.get("stage") or "").strip())

    def _collections(self) -> list[str]:
        return [b.collection for b in self.service.config.bindings]

    async def dead_letters(self, request: Request) -> Response:
        where = self._filter(request.query_params)

        def load() -> tuple[list[DeadLetter], list[DeadLetter]]:
            every = self.store.list()
            return every, [e for e in every if where.matches(e)]

        every, entries = await run_in_threadpool(load)
        shown = entries[::-1][:LIST_LIMIT]
        collections = sorted(set(self._collections()) | {e.collection for e in every})
        return self.render(
            request, "dead_letters.html", active="dead-letters", where=where, total=len(every),
            matched=len(entries), entries=shown, reasons={e.id: self.scrub(e.reason) for e in shown},
            collections=collections, stages=deadletters.stages_of(every),
            purged=request.query_params.get("purged"))

    async def _entry(self, request: Request) -> DeadLetter | None:
        entry_id = _int(request.path_params["entry_id"])
        return None if entry_id is None else await run_in_threadpool(self.store.get, entry_id)

    async def dead_letter(self, request: Request) -> Response:
        entry = await self._entry(request)
        if entry is None:
            return self._missing(request)
        return self.render(request, "dead_letter.html", active="dead-letters", entry=entry,
                           reason=self.scrub(entry.reason), raw=_pretty(entry.raw),
                           refusal=deadletters.replay_refusal(entry),
                           redacted=self.service.config.deadletters.redact)

    def _missing(self, request: Request) -> Response:
        return self.render(request, "error.html", status_code=404, active="dead-letters", title="Not found",
                           message=f"No dead letter {request.path_params['entry_id']!r}: it was "
                                   "replayed or purged, or never existed.")

    async def replay(self, request: Request) -> Response:
        entry = await self._entry(request)
        if entry is None:
            return self._missing(request)
        status, replayed, error = 200, None, None
        try:
            replayed = await run_in_threadpool(deadletters.replay, self.service.intake, self.store, entry,
                                               draining=self.service.draining)
        except WorkerError as exc:
            status, error = http_status(exc), self.scrub(str(exc))
        context = {"entry": entry, "replayed": replayed, "error": error,
                   "refusal": deadletters.replay_refusal(entry),
                   "refiled_reason": self.scrub(replayed.refiled.reason)
                   if replayed is not None and replayed.refiled is not None else None}
        if request.headers.get("hx-request") == "true":
            return self.render(request, "_replay_outcome.html", status_code=status, **context)
        return self.render(request, "replay.html", status_code=status, active="dead-letters", **context)

    async def purge(self, request: Request) -> Response:
        form = await request.form()
        where = self._filter(form)
        if form.get("confirm") == "yes":
            up_to_id = _int(str(form.get("up_to_id", "")))
            if up_to_id is None:
                return self.render(request, "error.html", status_code=400, title="Purge refused",
                                   message="The confirmation is missing which entries it counted.")
            n = await run_in_threadpool(deadletters.purge, self.store, where, up_to_id=up_to_id)
            return RedirectResponse(f"{PREFIX}/dead-letters?" + urlencode({**where.params, "purged": n}),
                                    status_code=303)
        entries = await run_in_threadpool(deadletters.matching, self.store, where)
        return self.render(request, "purge_confirm.html", active="dead-letters", where=where,
                           count=len(entries), up_to_id=max((e.id for e in entries), default=0))

    # -- search ------------------------------------------------------------------------------
    async def search(self, request: Request) -> Response:
        params = request.query_params
        form = {"text": params.get("text", ""), "source": params.get("source", ""),
                "collection": params.get("collection", ""), "filter": params.get("filter", ""),
                "mode": params.get("mode", "hybrid"), "sink": params.get("sink", ""),
                "k": params.get("k", "5")}
        retriever = self.service.retriever
        context: dict[str, Any] = {
            "form": form, "modes": MODES, "sinks": list(retriever.sinks),
            "collections": list(retriever.collections),
            "sources": sorted(set(retriever.collections.values())), "response": None, "error": None,
            "error_field": None, "terms": query_terms(form["text"])}
        status = 200
        if form["text"].strip():
            try:
                req = parse_request(_query_payload(form))
                context["response"] = await run_in_threadpool(retriever.search, req)
            except WorkerError as exc:
                status = http_status(exc)
                context["error"] = self.scrub(str(exc))
                context["error_field"] = getattr(exc, "field", None)
        return self.render(request, "search.html", status_code=status, active="search", **context)

    # -- configuration -----------------------------------------------------------------------
    async def config(self, request: Request) -> Response:
        config = self.service.config
        catalog = config.field_catalog()
        bindings = [{"collection": b.collection, "preset": b.preset,
                     "source": self.service.retriever.collections.get(b.collection, b.source),
                     "fields": sorted((f for f in catalog.for_collection(b.collection).values()
                                       if f.collections), key=lambda f: f.name)}
                    for b in config.bindings]
        builtins = [f for f in catalog.fields.values() if not f.collections]
        text = yaml.safe_dump(masked(config), sort_keys=False, allow_unicode=True, width=100)
        return self.render(request, "config.html", active="config", config_yaml=self.scrub(text),
                           bindings=bindings, builtins=builtins, sinks=config.sinks.names())


def _query_payload(form: dict[str, str]) -> dict[str, Any]:
    """The search form → a ``POST /query`` body (the select boxes first, the JSON box on top)."""
    payload: dict[str, Any] = {"text": form["text"], "mode": form["mode"] or "hybrid",
                               "k": form["k"].strip() or 5}
    if form["sink"]:
        payload["sink"] = form["sink"]
    where: dict[str, Any] = {}
    if form["source"]:
        where["source"] = form["source"]
    if form["collection"]:
        where["collection"] = form["collection"]
    if form["filter"].strip():
        try:
            extra = orjson.loads(form["filter"])
        except orjson.JSONDecodeError as exc:
            raise FilterInvalid(f"filter: not valid JSON ({exc})", field="filter") from None
        if not isinstance(extra, dict):
            raise FilterInvalid('filter: must be a JSON object, e.g. {"labels": {"$in": ["bug"]}}',
                                field="filter")
        where.update(extra)
    payload["filter"] = where
    return payload


def _pretty(raw: Any) -> str:  # noqa: ANN401
    return orjson.dumps(raw, option=orjson.OPT_INDENT_2).decode()


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None
