"""The web console on the admin listener: server-rendered pages, htmx for the live parts.

::

    /console/                       overview: sinks (state, freshness, backlog, throughput,
                                    errors), spool and prepared bytes against their budgets,
                                    dead letters, model; the fragment below polled every 2 s
    /console/fragments/overview     the overview's live part (htmx)
    /console/dead-letters           filter by collection and stage; purge (confirmation page)
    /console/dead-letters/{id}      one entry: reason, the document; replay (POST)
    /console/search                 the query API with the matching words highlighted
    /console/config                 the configuration, secrets masked; each binding's fields
    /console/static/                htmx (vendored, see static/README.md), console.css

No build step and nothing from outside: templates and static files ship as package data, and
the Content-Security-Policy (:mod:`worker.console.guard`) allows only this origin. The admin
listener's guard (:class:`worker.admin.AdminGuard`) has authenticated every request but the
static files before it reaches these routes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import jinja2
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from worker.console import views
from worker.console.guard import ConsoleHeaders
from worker.console.pages import PREFIX, Console

if TYPE_CHECKING:
    from worker.service import Service

#: htmx settings (https://htmx.org/reference/#config), read from a <meta> by htmx itself:
#: no inline <style> and no eval (the CSP forbids both), no page snapshots in localStorage
#: (dead-letter documents stay off the disk), and 4xx answers swapped in (they carry the reason).
HTMX_CONFIG = {
    "includeIndicatorStyles": False, "allowEval": False, "allowScriptTags": False,
    "historyCacheSize": 0,
    "responseHandling": [{"code": "204", "swap": False}, {"code": "[234]..", "swap": True},
                         {"code": "5..", "swap": True, "error": True}],
}


def templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.PackageLoader("worker.console", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(bytes=views.human_bytes, seconds=views.human_seconds, utc=views.utc_time,
                       number=views.number, highlight=views.highlight, safe_link=views.safe_link)
    env.globals.update(htmx_config=json.dumps(HTMX_CONFIG, separators=(",", ":")), prefix=PREFIX)
    return Jinja2Templates(env=env)


def console_routes(service: Service) -> list[BaseRoute]:
    """The routes :meth:`Service.admin_routes` mounts at ``/console``."""
    console = Console(service, templates())
    post = console.guarded
    routes: list[BaseRoute] = [
        Route("/", console.overview, methods=["GET"]),
        Route("/fragments/overview", console.overview_fragment, methods=["GET"]),
        Route("/dead-letters", console.dead_letters, methods=["GET"]),
        Route("/dead-letters/purge", post(console.purge), methods=["POST"]),
        Route("/dead-letters/{entry_id}", console.dead_letter, methods=["GET"]),
        Route("/dead-letters/{entry_id}/replay", post(console.replay), methods=["POST"]),
        Route("/search", console.search, methods=["GET"]),
        Route("/config", console.config, methods=["GET"]),
        Mount("/static", app=StaticFiles(packages=[("worker.console", "static")]), name="static"),
    ]
    # One Mount inside the service's: the headers middleware wraps every console route.
    return [Mount("", routes=routes, middleware=[Middleware(ConsoleHeaders, static_prefix=f"{PREFIX}/static/")])]
