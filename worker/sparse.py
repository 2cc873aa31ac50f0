"""The keyword side of Pinecone's hybrid search: a BM25-style sparse encoder, computed locally.

Pinecone's single-index hybrid search scores ``dense · q_dense + sparse · q_sparse`` on a
``dotproduct`` index (https://docs.pinecone.io/guides/search/hybrid-search). The sparse vectors
come from the client, so the worker encodes them, the way ``pinecone-text``'s ``BM25Encoder``
does, without its fitted corpus statistics or its NLTK download:

* terms: lower-cased words and numbers (``INC-4821`` → ``inc``, ``4821``; ``OOMKilled`` →
  ``oomkilled``), English stop words dropped;
* a term's index is ``zlib.crc32`` of its UTF-8 bytes: stable across processes and machines, and
  within Pinecone's uint32 index space;
* a chunk's weight for a term is BM25's saturated term frequency
  ``tf·(k1+1) / (tf + k1·(1 − b + b·dl/avgdl))`` (k1 = 1.2, b = 0.75);
* a query's weights are equal and sum to 1 (BM25's IDF needs corpus-wide document frequencies that
  only the index holds; rare exact terms such as ticket numbers and error strings, which this leg
  is for, are the ones that match few chunks anyway). Hybrid weighting is the caller's: dense ×
  alpha, sparse × (1 − alpha).
"""

from __future__ import annotations

import re
import zlib
from collections import Counter

TOKEN = re.compile(r"[0-9a-z]+")
K1 = 1.2
B = 0.75
#: Average chunk length in terms (about 256 model tokens of English prose).
AVG_TERMS = 150.0
MAX_TERMS = 1000  # Pinecone's limit of non-zero sparse values per vector

STOP_WORDS = frozenset("""a about above after again against all am an and any are as at be because been
before being below between both but by can did do does doing down during each few for from further had
has have having he her here hers herself him himself his how i if in into is it its itself just me more
most my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those through
to too under until up very was we were what when where which while who whom why will with you your
yours yourself yourselves""".split())


def terms(text: str) -> list[str]:
    return [t for t in TOKEN.findall(text.lower()) if t not in STOP_WORDS]


def term_index(term: str) -> int:
    return zlib.crc32(term.encode("utf-8"))


def _sparse(weights: dict[int, float]) -> dict[str, list]:
    items = sorted(weights.items(), key=lambda kv: -kv[1])[:MAX_TERMS]
    items.sort()
    return {"indices": [i for i, _ in items], "values": [round(v, 6) for _, v in items]}


def encode_document(text: str, *, avg_terms: float = AVG_TERMS) -> dict[str, list] | None:
    """A chunk's sparse vector, or None when it has no terms (Pinecone refuses empty ones)."""
    counts = Counter(term_index(t) for t in terms(text))
    if not counts:
        return None
    length = sum(counts.values())
    norm = K1 * (1.0 - B + B * length / avg_terms)
    return _sparse({i: tf * (K1 + 1.0) / (tf + norm) for i, tf in counts.items()})


def encode_query(text: str, scale: float = 1.0) -> dict[str, list] | None:
    """A query's sparse vector (equal weights summing to ``scale``), or None without terms."""
    unique = {term_index(t) for t in terms(text)}
    if not unique:
        return None
    return _sparse({i: scale / len(unique) for i in unique})
