"""The console's defences beyond the admin token: same-origin POSTs and strict response headers.

* **CSRF.** The session cookie is SameSite=Strict already; on top of that every console POST
  must carry an ``Origin`` (or, when a browser sends none, a ``Referer``) whose host and port are
  the request's own ``Host``. Browsers always send ``Origin`` on a POST, so a form on another
  site, a sandboxed frame (``Origin: null``) or a cross-site redirect is refused, and so is a
  POST with neither header (``curl`` has to say ``-H "Origin: http://host:port"``). Behind a
  reverse proxy the proxy must pass ``Host`` through unchanged.
* **Headers.** A Content-Security-Policy that allows only this origin's scripts, styles and
  images (the vendored htmx, ``console.css``): nothing inline and nothing from elsewhere, so a
  document's text that slipped past escaping still could not run. ``frame-ancestors 'none'``
  keeps the purge and replay buttons out of another site's frames (clickjacking), ``no-store``
  keeps dead-letter contents out of the browser's cache.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                           "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                           "base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
#: Pages and fragments only: the static files may be cached.
NO_STORE = {"Cache-Control": "no-store"}


def same_origin(request: Request) -> bool:
    """True when the POST comes from a page of this listener (see the module docstring)."""
    host = request.headers.get("host", "")
    origin = request.headers.get("origin")
    if origin is not None:
        source = origin  # "null" included: it has no host, so it never matches
    else:
        source = request.headers.get("referer", "")
    try:
        netloc = urlsplit(source).netloc
    except ValueError:
        return False
    return bool(host) and bool(netloc) and hmac.compare_digest(netloc.lower().encode(), host.lower().encode())


class ConsoleHeaders:
    """ASGI middleware: :data:`HEADERS` on every console response (``no-store`` but on static)."""

    def __init__(self, app: ASGIApp, static_prefix: str) -> None:
        self.app = app
        self.static_prefix = static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        static = path.startswith(self.static_prefix)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
                if not static:
                    for name, value in NO_STORE.items():
                        headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
