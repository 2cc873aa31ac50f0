"""Deterministic ids: the same document always yields the same chunk ids, in every sink.

* Document id: ``<source>:<key>``; a composite key's parts are joined with ``/``. Each part is
  percent-encoded outside a conservative ASCII set, so ``:``, ``/``, ``#``, spaces and non-ASCII
  never leak into the id and the id is Pinecone-safe.
* Chunk id: ``<doc id>#<chunk index>``. Document ids never contain ``#``, so ``<doc id>#`` is an
  exact prefix for listing a document's chunks.
* Ids that would pass Pinecone's 512-character limit are replaced by ``<source>:h-<sha256>``.
* Weaviate object ids are UUIDv5 of the chunk id, equal to
  ``weaviate.util.generate_uuid5(chunk_id)``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from urllib.parse import quote

MAX_ID_CHARS = 512
_INDEX_ROOM = 8  # "#" + up to 7 digits of chunk index
_SAFE = "-._~@+=,;!$&'()*"


def document_id(source: str, key: tuple[str, ...]) -> str:
    escaped = "/".join(quote(part, safe=_SAFE) for part in key)
    candidate = f"{source}:{escaped}"
    if len(candidate) + _INDEX_ROOM <= MAX_ID_CHARS:
        return candidate
    # JSON-encode the parts so no two different keys can hash the same input.
    digest = hashlib.sha256(json.dumps(list(key), ensure_ascii=True).encode()).hexdigest()
    return f"{source}:h-{digest}"


def chunk_id(doc_id: str, index: int) -> str:
    return f"{doc_id}#{index}"


def chunk_prefix(doc_id: str) -> str:
    return f"{doc_id}#"


def chunk_uuid(chunk_id_: str) -> str:
    """UUIDv5 for Weaviate; identical to ``weaviate.util.generate_uuid5(chunk_id_)``."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, chunk_id_))
