"""The sink registry: name → config model and factory.

``worker.config`` builds the ``sinks:`` section from it, ``worker.runtime`` builds the sinks from
it, and the CLI's ``--sink`` choices are its keys. Adding a sink is its own module (a sink class
that speaks :class:`worker.sinks.base.Sink`, a ``Strict`` config model and a ``KIND``) plus one
line below.
"""

from __future__ import annotations

from worker.sinks import local, pinecone, weaviate
from worker.sinks.base import SinkKind

SINKS: dict[str, SinkKind] = {kind.name: kind for kind in (
    local.KIND,
    pinecone.KIND,
    weaviate.KIND,
)}
