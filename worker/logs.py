"""Structured logs: a fixed message plus fields, one line each (``logfmt``-style).

``log.info("batch embedded", extra={"chunks": 12, "ms": 3.1})`` prints
``level=info logger=worker.engine msg="batch embedded" chunks=12 ms=3.1``.
"""

from __future__ import annotations

import logging
import sys

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class FieldsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        parts = [f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}", f"level={record.levelname.lower()}",
                 f"logger={record.name}", f'msg="{record.getMessage()}"']
        parts += [f"{k}={v!r}" if isinstance(v, str) and " " in v else f"{k}={v}" for k, v in fields.items()]
        if record.exc_info:
            parts.append(f'exc="{self.formatException(record.exc_info)!r}"')
        return " ".join(parts)


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FieldsFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "urllib3", "sentence_transformers", "transformers", "filelock",
                  "pinecone", "weaviate", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
