"""The two listeners, and the admin listener's guard.

::

    public  server.host:server.port              webhook, /query, /mcp, /healthz, /readyz
    admin   server.admin_host:server.admin_port  /metrics, /estuary/status, /estuary/schema, /console/

One uvicorn server listens on both sockets; :class:`Listeners` sends each connection to the app
of the port it arrived on, so shutdown, signals and the lifespan stay those of one server. The
admin listener is on loopback by default. With ``server.admin_token`` every admin path needs
``Authorization: Bearer <token>`` (Prometheus: ``authorization.credentials``), or, for people
in a browser, the session cookie that ``/login`` sets once the token is typed in: an HMAC of the
token (never the token itself), HttpOnly and SameSite=Strict, so another site cannot make the
browser replay or purge dead letters.
"""

from __future__ import annotations

import hashlib
import hmac
import html
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "memory_worker_admin"
#: Paths the guard lets through: the login form itself and the console's static files.
OPEN_PREFIXES = ("/login", "/console/static/")


class Listeners:
    """An ASGI app that routes by the local port a connection arrived on."""

    def __init__(self, public: ASGIApp, admin: ASGIApp | None, admin_port: int | None) -> None:
        self.public = public
        self.admin = admin
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" and self.admin is not None:
            server = scope.get("server")
            if server is not None and server[1] == self.admin_port:
                await self.admin(scope, receive, send)
                return
        await self.public(scope, receive, send)  # the lifespan (MCP's session manager) runs here


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"memory-worker console session", hashlib.sha256).hexdigest()


class AdminGuard:
    """Bearer token or session cookie on every admin path but :data:`OPEN_PREFIXES`."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    def allowed(self, request: Request) -> bool:
        if self.token is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode()):
            return True
        cookie = request.cookies.get(COOKIE)
        return cookie is not None and hmac.compare_digest(cookie, session_value(self.token))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if self.allowed(request):
            await self.app(scope, receive, send)
            return
        response: Response
        if "text/html" in request.headers.get("accept", ""):  # a person: to the login form
            target = scope["path"] + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
            response = RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        else:
            response = JSONResponse({"error": "Unauthorized", "reason": "the admin listener needs "
                                     "Authorization: Bearer <server.admin_token>"}, status_code=401,
                                    headers={"WWW-Authenticate": 'Bearer realm="memory-worker admin"'})
        await response(scope, receive, send)


_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>memory-worker: sign in</title>
<link rel="stylesheet" href="/console/static/console.css">
<link rel="icon" href="/console/static/favicon.svg" type="image/svg+xml"></head><body class="login">
<main><h1>memory-worker</h1><p>The admin listener needs its token (<code>server.admin_token</code>).</p>
{error}<form method="post" action="/login"><input type="hidden" name="next" value="{next}">
<label>Token <input type="password" name="token" autocomplete="current-password" autofocus required></label>
<button type="submit">Sign in</button></form></main></body></html>"""


def _safe_next(value: str) -> str:
    """Only a local path: never an open redirect to another site."""
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/") or value.startswith("//"):
        return "/console/"
    return value


def login_routes(token: str | None) -> list[Route]:
    async def form(request: Request) -> Response:
        target = _safe_next(request.query_params.get("next", "/console/"))
        return HTMLResponse(_LOGIN.format(error="", next=html.escape(target)))

    async def submit(request: Request) -> Response:
        data = await request.form()
        target = _safe_next(str(data.get("next", "/console/")))
        given = str(data.get("token", ""))
        if token is not None and not hmac.compare_digest(given.encode(), token.encode()):
            return HTMLResponse(_LOGIN.format(error='<p class="error" role="alert">Wrong token.</p>',
                                              next=html.escape(target)), status_code=401)
        response = RedirectResponse(target, status_code=303)
        if token is not None:
            response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict", path="/")
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    return [Route("/login", form, methods=["GET"]), Route("/login", submit, methods=["POST"]),
            Route("/logout", logout, methods=["POST"])]


def admin_token(config: Any) -> str | None:  # noqa: ANN401 - ServerConfig
    token = config.admin_token
    return token.get_secret_value() if token is not None and token.get_secret_value() else None
