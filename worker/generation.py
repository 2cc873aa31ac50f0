"""Index generations: a fingerprint of what changes stored vectors or text, and its targets.

A **generation** is everything that decides what a sink stores for a document:

* the model: spec id, weights revision (the weights package's version, or the directory),
  dimensions, similarity, pooling, normalization, max sequence and passage prompt
  (:attr:`ModelSpec.fingerprint`);
* chunking: ``max_tokens``, ``overlap_tokens``;
* per binding: its chunker and its privacy policy, plus a digest of
  ``privacy.pseudonym_secret`` (pseudonyms change with it; the digest reveals nothing about it).

Metadata fields, quality rules, sink settings and everything operational are not part of it:
they change no vector and no chunk text. Nor is a binding's text mapping (preset, text/title
pointers): fixing one (then ``dlq replay``) changes the text of the documents it re-delivers, in
the same vector space, which is the fix, not a mix. Adding or removing a binding is no new
generation either (:func:`compatible`): it changes no stored vector of another binding.

Each sink writes each generation to its own **target**, so two generations never share one:

======== ====================================== ==========================================
sink     the first generation (adopted)         a later generation ``gXXXXXXXXXX``
======== ====================================== ==========================================
local    table ``chunks``                       table ``chunks__gXXXXXXXXXX``
weaviate collection ``MemoryChunk``             collection ``MemoryChunk_gXXXXXXXXXX``
pinecone namespace ``ns`` of index ``memory``   namespace ``ns__gXXXXXXXXXX``; a new index
                                                ``memory-gXXXXXXXXXX`` when the dimension or
                                                the metric changes (an index's are immutable)
======== ====================================== ==========================================

The first generation a state directory sees keeps the configured names, so an existing
deployment needs no migration to start using generations.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from worker.config import WorkerConfig
from worker.modelspec import ModelSpec

#: Generation ids: ``g`` + this many hex digits of the fingerprint.
ID_HEX = 10


@dataclass(frozen=True, slots=True)
class Generation:
    id: str
    fingerprint: str  # sha256 hex of the canonical JSON of ``parts``
    parts: Mapping[str, Any]  # what went into it (``migrate plan`` diffs these)


def model_revision(spec: ModelSpec) -> str:
    """The weights' revision: the package's version, else the directory, else the hub id."""
    if spec.load.package:
        dist = importlib.metadata.packages_distributions().get(spec.load.package, [spec.load.package])
        try:
            return f"{dist[0]}=={importlib.metadata.version(dist[0])}"
        except importlib.metadata.PackageNotFoundError:
            return f"{spec.load.package} (not installed)"
    return str(spec.load.directory or spec.load.hub)


def generation_parts(config: WorkerConfig, spec: ModelSpec) -> dict[str, Any]:
    secret = config.privacy.pseudonym_secret
    secret_digest = (hmac.new(secret.get_secret_value().encode(), b"memory-worker generation",
                              hashlib.sha256).hexdigest()[:16] if secret is not None else None)
    bindings = {}
    for b in sorted(config.bindings, key=lambda b: b.collection):
        privacy = b.privacy.model_dump(mode="json") if b.privacy is not None and b.privacy.enabled else None
        bindings[b.collection] = {"chunker": b.chunker, "privacy": privacy}
    return {
        "model": {"id": spec.id, "fingerprint": spec.fingerprint, "revision": model_revision(spec),
                  "dimensions": spec.dimensions, "similarity": spec.similarity,
                  "pooling": spec.pooling or "model default", "normalize": spec.normalize},
        "chunking": {"max_tokens": config.chunking.max_tokens,
                     "overlap_tokens": config.chunking.overlap_tokens},
        "bindings": bindings,
        "pseudonym_secret": secret_digest,
    }


def generation_of(config: WorkerConfig, spec: ModelSpec) -> Generation:
    parts = generation_parts(config, spec)
    digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return Generation(f"g{digest[:ID_HEX]}", digest, parts)


#: The parts every binding shares; any difference in them is a new vector space or chunking.
CORE_PARTS = ("model", "chunking", "pseudonym_secret")


def compatible(known: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether a config whose generation parts are ``new`` writes what the generation with parts
    ``known`` holds: the same model, chunking and pseudonym secret, and the same chunker and
    privacy policy for every binding both have. A binding only one of them has is no conflict:
    adding or removing a collection changes no stored vector of another."""
    if any(known.get(k) != new.get(k) for k in CORE_PARTS):
        return False
    a, b = known.get("bindings", {}), new.get("bindings", {})
    return all(a[c] == b[c] for c in a.keys() & b.keys())


def merged(known: Generation, new: Generation) -> Generation:
    """``known`` with the bindings of ``new`` it lacks (a compatible config added them); its id
    and fingerprint stay those of the config that created it."""
    bindings = {**new.parts.get("bindings", {}), **known.parts.get("bindings", {})}
    return Generation(known.id, known.fingerprint, {**known.parts, "bindings": bindings})


def diff_parts(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: old → new`` lines for every leaf that differs."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b, path = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(diff_parts(a, b, path + "."))
        elif a != b:
            out.append(f"{path}: {orjson.dumps(a).decode()} → {orjson.dumps(b).decode()}")
    return out


def generation_targets(config: WorkerConfig, gen: Generation, *,
                       base_parts: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per sink, the settings that point it at ``gen``'s own target (vs the configured names).

    ``base_parts`` are the parts of the generation that holds the configured names: Pinecone
    needs a new index when the dimension or the metric differs from it.
    """
    out: dict[str, dict[str, Any]] = {}
    sinks = config.sinks
    if getattr(sinks, "local", None) is not None:
        out["local"] = {"table": f"{sinks.local.table}__{gen.id}"}
    if getattr(sinks, "weaviate", None) is not None:
        out["weaviate"] = {"collection": f"{sinks.weaviate.collection}_{gen.id}"}
    if getattr(sinks, "pinecone", None) is not None:
        pc = sinks.pinecone
        old, new = base_parts["model"], gen.parts["model"]
        if (old["dimensions"], old["similarity"]) != (new["dimensions"], new["similarity"]):
            out["pinecone"] = {"index": f"{pc.index}-{gen.id}"[:45], "index_host": None}
        else:
            out["pinecone"] = {"namespace": f"{pc.namespace}__{gen.id}"}
    return out


def targeted(config: WorkerConfig, targets: Mapping[str, Mapping[str, Any]]) -> WorkerConfig:
    """``config`` with each sink's target settings replaced by ``targets`` (validated again)."""
    if not targets:
        return config
    sinks = {}
    for name in config.sinks.names():
        cfg = getattr(config.sinks, name)
        sinks[name] = cfg.model_copy(update=dict(targets.get(name, {}))) if name in targets else cfg
    return config.model_copy(update={"sinks": config.sinks.model_copy(update=sinks)})


def target_names(config: WorkerConfig) -> dict[str, str]:
    """Per sink, the physical target a config writes (for status and ``check``)."""
    out: dict[str, str] = {}
    for name in config.sinks.names():
        cfg = getattr(config.sinks, name)
        if name == "local":
            out[name] = f"{cfg.path}/{cfg.table}"
        elif name == "weaviate":
            out[name] = cfg.collection
        elif name == "pinecone":
            out[name] = f"{cfg.index}/{cfg.namespace or '(default)'}"
        else:
            out[name] = str(getattr(cfg, "target", ""))
    return out
