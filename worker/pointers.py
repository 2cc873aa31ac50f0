"""RFC 6901 JSON pointers over parsed documents (shared by parsing and the quality rules)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: What :func:`resolve_pointer` returns when a step of the pointer is absent.
MISSING = object()


def resolve_pointer(doc: Any, pointer: str) -> Any:
    """RFC 6901 JSON pointer lookup; returns ``MISSING`` when any step is absent."""
    if pointer == "":
        return doc
    node = doc
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping):
            if token not in node:
                return MISSING
            node = node[token]
        elif isinstance(node, list):
            if not token.isdigit() or int(token) >= len(node):
                return MISSING
            node = node[int(token)]
        else:
            return MISSING
    return node
