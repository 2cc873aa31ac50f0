"""Loopback Confluent schema registry: the subset Dekaf serves and confluent-kafka calls.

Needed where the worker runs in another process (``mock://`` registries live in one process).

* ``POST /subjects/{subject}/versions`` registers a schema and answers ``{"id": n}`` (the same
  schema text gets the same id); ``GET /schemas/ids/{id}`` answers ``{"schema": ...}``.
* ``GET /associations/...`` answers 404 (the client then falls back to topic-name subjects).
* HTTP Basic auth with one user; a wrong or missing one gets 401. ``requests`` counts calls.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SchemaRegistryEmulator:
    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self.schemas: dict[int, str] = {}
        self.ids: dict[str, int] = {}
        self.requests = 0
        self._lock = threading.Lock()
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _answer(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                emulator.requests += 1
                expected = base64.b64encode(f"{emulator.username}:{emulator.password}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {expected}":
                    self._answer(401, {"error_code": 401, "message": "Unauthorized"})
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802
                if not self._authorized():
                    return
                path = self.path.split("?", 1)[0]
                if path.startswith("/schemas/ids/"):
                    schema = emulator.schemas.get(int(path.rsplit("/", 1)[1]))
                    if schema is None:
                        self._answer(404, {"error_code": 40403, "message": "Schema not found"})
                    else:
                        self._answer(200, {"schema": schema})
                    return
                self._answer(404, {"error_code": 404, "message": "Not found"})

            def do_POST(self) -> None:  # noqa: N802
                if not self._authorized():
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                path = self.path.split("?", 1)[0]
                if path.startswith("/subjects/") and path.endswith("/versions"):
                    self._answer(200, {"id": emulator.register(body["schema"])})
                    return
                self._answer(404, {"error_code": 404, "message": "Not found"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def register(self, schema: str) -> int:
        with self._lock:
            if schema not in self.ids:
                self.ids[schema] = len(self.ids) + 1
                self.schemas[self.ids[schema]] = schema
            return self.ids[schema]

    def start(self) -> SchemaRegistryEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
