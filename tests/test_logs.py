"""Structured logs: one record is one line whatever its values hold; ``json`` for shippers."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from worker import logs


def render(fmt: str, msg: str, **fields: object) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter(fmt))
    logger = logging.getLogger(f"test.logs.{fmt}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        raise ValueError('broken "pipe"\nsecond line')
    except ValueError:
        logger.error(msg, exc_info=fields.pop("exc", False), extra=fields)
    return stream.getvalue()


NASTY = {"error": 'HTTP 503: "upstream"\nretry later', "sink": "pinecone", "path": "a b\\c", "n": 3}


def test_text_lines_never_break_on_quotes_or_newlines():
    out = render("text", 'sink "pass" failed\nagain', **NASTY, exc=True)
    assert out.count("\n") == 1 and out.endswith("\n")  # one record, one line
    assert out.startswith("ts=") and " level=error " in out and 'msg="sink \\"pass\\" failed\\nagain"' in out
    assert 'error="HTTP 503: \\"upstream\\"\\nretry later"' in out and " n=3" in out
    assert "ValueError" in out  # the traceback is kept, escaped into the line


def test_json_lines_parse_back_to_the_same_fields():
    out = render("json", 'sink "pass" failed\nagain', **NASTY, exc=True)
    assert out.count("\n") == 1
    record = orjson.loads(out)
    assert record["msg"] == 'sink "pass" failed\nagain' and record["level"] == "error"
    assert {k: record[k] for k in NASTY} == NASTY
    assert record["logger"] == "test.logs.json" and "ValueError" in record["exception"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_setup_installs_one_handler_on_the_root(fmt):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("warning", fmt)
        assert len(root.handlers) == 1 and root.level == logging.WARNING
        assert isinstance(root.handlers[0].formatter, logging.Formatter)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
