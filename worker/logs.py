"""Structured logs: a fixed message plus fields, one line each, rendered by ``structlog``.

Every module logs through the standard library (``log.info("batch embedded", extra={"chunks":
12, "ms": 3.1})``); :func:`setup` puts structlog's :class:`~structlog.stdlib.ProcessorFormatter`
on the root handler, so third-party records get the same shape:

* ``text`` (default): logfmt, ``ts=… level=info logger=worker.engine msg="batch embedded"
  chunks=12 ms=3.1``. Values with spaces, quotes or newlines are quoted and escaped by
  structlog's ``LogfmtRenderer``, so one record is always one line.
* ``json``: one JSON object per line (``JSONRenderer`` over orjson), for log shippers.

Document text and secrets are never logged at info level; that is the callers' contract.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

_KEY_ORDER = ["ts", "level", "logger", "msg"]


def _json(obj: object, **_: object) -> str:
    return orjson.dumps(obj, default=str).decode()


def formatter(fmt: str) -> logging.Formatter:
    pre_chain = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", key="ts"),
        structlog.stdlib.ExtraAdder(),
        structlog.processors.EventRenamer("msg"),
    ]
    renderer = (structlog.processors.JSONRenderer(serializer=_json) if fmt == "json"
                else structlog.processors.LogfmtRenderer(key_order=_KEY_ORDER, drop_missing=True))
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer])


def setup(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "urllib3", "sentence_transformers", "transformers", "filelock",
                  "pinecone", "weaviate", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
