"""The worker's one error tree, sorted by what the caller must do.

::

    WorkerError
    ├── TransientError          retry later; the work stays in the spool
    │   ├── SinkUnavailable     timeouts, connection errors, 429, 5xx, gRPC UNAVAILABLE
    │   └── SpoolFull           the spool is over its disk budget (HTTP 503 + Retry-After)
    ├── PermanentError          reject the record: it goes to the dead-letter store
    │   ├── DocumentInvalid     a document that does not fit its binding (missing key/text, bad _meta)
    │   └── RecordRejected      a sink refused one record for good (4xx other than 429)
    ├── RequestInvalid          refuse a whole webhook request (HTTP 400/401/413)
    │   ├── Unauthorized
    │   └── BodyTooLarge
    └── FatalError              stop: a bug or a misconfiguration that retrying cannot fix
        ├── ConfigError         bad YAML, unknown key, missing env var, cross-field mismatch
        ├── ModelError          the model cannot be loaded or does not match its spec
        └── SinkMismatch        an index/collection exists with another dimension or metric

Sink adapters translate vendor exceptions into this tree at their boundary (``raise ... from exc``);
nothing above ``worker/sinks`` imports a vendor exception.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base of every error the worker raises on purpose."""


class TransientError(WorkerError):
    """Retrying later may succeed. ``retry_after_s`` carries a server's Retry-After, if any."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SinkUnavailable(TransientError):
    """A sink could not be reached or asked us to slow down."""


class SpoolFull(TransientError):
    """The spool is over its disk budget; the caller should retry after the sinks catch up."""


class PermanentError(WorkerError):
    """This record will never succeed as it is; dead-letter it and carry on with the rest."""


class DocumentInvalid(PermanentError):
    """A document does not fit its binding. The message names collection, key and field."""

    def __init__(self, message: str, *, collection: str, key: str | None, field: str | None) -> None:
        where = f"collection {collection!r}"
        if key is not None:
            where += f", key {key}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
        self.reason = message
        self.collection = collection
        self.key = key
        self.field = field


class RecordRejected(PermanentError):
    """A sink refused one record with a permanent error (its message is kept verbatim)."""

    def __init__(self, message: str, *, record_id: str, sink: str) -> None:
        super().__init__(f"sink {sink!r} rejected {record_id!r}: {message}")
        self.record_id = record_id
        self.sink = sink


class RequestInvalid(WorkerError):
    """The whole request is unreadable; answered with ``status`` and this message."""

    status = 400


class Unauthorized(RequestInvalid):
    status = 401


class BodyTooLarge(RequestInvalid):
    status = 413


class FatalError(WorkerError):
    """Retrying cannot help: fix the configuration or the code."""


class ConfigError(FatalError):
    """A configuration file is invalid; the message names the file and the key."""


class ModelError(FatalError):
    """The embedding model cannot be loaded or does not match its spec."""


class SinkMismatch(FatalError):
    """A sink's index or collection exists but does not match the model (dimension, metric)."""


#: One table from error kind to HTTP status for the API (most specific class first).
HTTP_STATUS: tuple[tuple[type[WorkerError], int], ...] = (
    (Unauthorized, 401),
    (BodyTooLarge, 413),
    (RequestInvalid, 400),
    (SpoolFull, 503),
    (TransientError, 503),
    (PermanentError, 422),
    (FatalError, 500),
)


def http_status(error: WorkerError) -> int:
    """The HTTP status the API answers for ``error``."""
    for kind, status in HTTP_STATUS:
        if isinstance(error, kind):
            return status
    return 500
