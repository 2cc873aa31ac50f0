"""Weaviate collection aliases: the pointer that makes index generations swappable.

Each index generation is its own collection (``MemoryChunk``, ``MemoryChunk_g1a2b3c4d``); one alias
names the generation that external readers query. Aliases arrived in Weaviate 1.32
(``/v1/aliases``, ``client.alias`` in weaviate-client ≥ 4.16). What the server guarantees, and what
this module relies on (weaviate/weaviate v1.33.0 ``usecases/schema/alias.go``,
``cluster/schema/schema.go``):

* an alias name is unique among collections *and* aliases (case-insensitively), and its first
  letter is upper-cased like a collection name's, so ``live`` and ``Live`` are one alias;
* object operations (inserts, queries, deletes, aggregates) through an alias act on its target;
  collection management does not resolve aliases: ``DELETE /v1/schema/{alias}`` answers 200 and
  deletes nothing;
* repointing is one schema command, so a reader sees the old target or the new one, never a mix
  and never a gap;
* deleting a collection keeps the aliases pointing to it (they dangle, and reads through them fail).

Every call runs under the sink's retry policy (:meth:`VendorSink._call`), so vendor exceptions
leave as :mod:`worker.errors`. A server older than 1.32 is refused with :class:`SinkMismatch` that
names its version, checked once per connection (``GET /v1/meta``).

Crash safety: :meth:`WeaviateAliases.point` reads the alias, then creates or repoints it; a crash
or a lost answer between the two leaves either the old pointer or the new one, and calling it again
finishes the job (an alias already pointing at the collection is success). Reads and writes are
separate requests, and the server has no compare-and-set: two processes repointing one alias at
once end with the last writer's target.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from worker.errors import ConfigError, SinkMismatch, SinkUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The first Weaviate release with collection aliases.
ALIASES_SINCE = (1, 32)
#: Read-then-write rounds before a pointer that keeps changing under us is reported.
POINT_ROUNDS = 3
_VERSION = re.compile(r"^v?(\d+)\.(\d+)")


class ClientCall(Protocol):
    """``call(what, fn)`` runs ``fn(client)`` under the sink's retry policy, errors translated."""

    def __call__(self, what: str, fn: Callable[[Any], T], /) -> T: ...


def canonical_name(name: str) -> str:
    """A collection or alias name as the server stores it (``UppercaseClassName``)."""
    return name[:1].upper() + name[1:]


def supports_aliases(version: str) -> bool | None:
    """Whether a server of ``version`` (``/v1/meta``) has aliases; None if it cannot be parsed."""
    match = _VERSION.match(version.strip())
    if match is None:
        return None
    return (int(match.group(1)), int(match.group(2))) >= ALIASES_SINCE


class WeaviateAliases:
    """Alias operations of one :class:`~worker.sinks.weaviate.WeaviateSink` (its client, retries).

    ``where`` names the server in messages (``http://host:8080``).
    """

    def __init__(self, call: ClientCall, where: str) -> None:
        self._call = call
        self._where = where
        self._checked: object | None = None  # the client whose server passed the version check

    # -- public operations ---------------------------------------------------------------------
    def point(self, alias: str, collection: str) -> None:
        """Make ``alias`` point at ``collection``: create it, or repoint it in one atomic step.

        Idempotent: an alias already pointing there is success, so this is safe to repeat after
        a crash or a timeout whose write may have landed. Refused with :class:`ConfigError`: an
        alias named like a collection (or like another alias but for case), a ``collection`` that
        does not exist (create it first: readers would get errors) or that is itself an alias.
        :class:`SinkUnavailable` if another writer keeps changing the alias under us.
        """
        alias, collection = canonical_name(alias), canonical_name(collection)
        if not alias or not collection:
            raise ConfigError("a weaviate alias and its collection need non-empty names")
        if alias.lower() == collection.lower():
            raise ConfigError(f"weaviate alias {alias!r} cannot have the name of its own collection")
        self._require_aliases()
        for _ in range(POINT_ROUNDS):
            collections = self._collection_names()
            aliases = self._aliases()
            self._check_point(alias, collection, collections, aliases)
            previous = aliases.get(alias)
            if previous == collection:
                return
            if previous is None:
                done = self._run(f"create alias {alias} -> {collection}",
                                 lambda c: _create_alias(c, alias, collection))
            else:
                done = bool(self._run(f"repoint alias {alias} -> {collection}",
                                      lambda c: c.alias.update(alias_name=alias,
                                                               new_target_collection=collection)))
            if done:
                log.info("weaviate alias pointed", extra={
                    "alias": alias, "collection": collection, "previous": previous,
                    "server": self._where})
                return
            # Created (or deleted) by someone else between our read and our write: read again.
        raise SinkUnavailable(f"weaviate alias {alias!r} at {self._where} kept changing while "
                              f"we pointed it at {collection!r}; retry later")

    def target(self, alias: str) -> str | None:
        """The collection ``alias`` points at, or None if there is no such alias.

        A dangling alias (its collection was deleted) still answers its old target.
        """
        name = canonical_name(alias)
        self._require_aliases()
        found = self._run(f"read alias {name}", lambda c: c.alias.get(alias_name=name))
        return None if found is None else str(found.collection)

    def drop(self, alias: str) -> None:
        """Delete ``alias``; a missing one is fine. Its collection and objects stay."""
        name = canonical_name(alias)
        self._require_aliases()
        if self._run(f"drop alias {name}", lambda c: c.alias.delete(alias_name=name)):
            log.info("weaviate alias dropped", extra={"alias": name, "server": self._where})

    def drop_collection(self, name: str) -> None:
        """Delete collection ``name`` and its objects; a missing one is fine.

        Refused with :class:`ConfigError` while an alias points to it (readers would lose their
        index: repoint or drop the alias first), and when ``name`` is an alias (Weaviate would
        answer 200 and delete nothing). On a server older than 1.32 there are no aliases, so the
        collection is dropped without that check. Hazard: an alias created between our check and
        the delete (the server has no conditional delete) is left dangling.
        """
        name = canonical_name(name)
        if not name:
            raise ConfigError("drop_collection needs a collection name")
        if self._server_has_aliases():
            aliases = self._aliases()
            as_alias = next((a for a in aliases if a.lower() == name.lower()), None)
            if as_alias is not None:
                raise ConfigError(
                    f"{name!r} at {self._where} is an alias (of {aliases[as_alias]!r}), not a "
                    "collection; drop the alias with drop_alias, or name the collection itself")
            pointing = sorted(a for a, target in aliases.items() if target == name)
            if pointing:
                raise ConfigError(
                    f"weaviate collection {name!r} at {self._where} is still the target of alias(es) "
                    f"{', '.join(pointing)}; point them at another collection (point_alias) or drop "
                    "them (drop_alias) first")
        self._run(f"drop collection {name}", lambda c: c.collections.delete(name))
        log.info("weaviate collection dropped", extra={"collection": name, "server": self._where})

    # -- plumbing ------------------------------------------------------------------------------
    def _run(self, what: str, fn: Callable[[Any], T]) -> T:
        """``fn(client)`` under the sink's retries; the client's own version refusal is ours."""
        from weaviate.exceptions import WeaviateUnsupportedFeatureError

        def attempt(client: Any) -> T:
            try:
                return fn(client)
            except WeaviateUnsupportedFeatureError as exc:
                raise SinkMismatch(self._too_old(str(exc))) from exc

        return self._call(what, attempt)

    def _server_has_aliases(self) -> bool:
        try:
            self._require_aliases()
        except SinkMismatch:
            return False
        return True

    def _require_aliases(self) -> None:
        """SinkMismatch if the server is older than 1.32; checked once per client connection."""
        def check(client: Any) -> None:
            if client is self._checked:
                return
            version = str((client.get_meta() or {}).get("version", ""))
            if supports_aliases(version) is False:
                raise SinkMismatch(self._too_old(f"the server reports version {version}"))
            self._checked = client  # unparsable versions: the client's own check still applies

        self._run("read server version", check)

    def _too_old(self, detail: str) -> str:
        return (f"weaviate at {self._where} has no collection aliases ({detail}); index "
                "generations need Weaviate 1.32 or newer: upgrade the server")

    def _collection_names(self) -> set[str]:
        return self._run("list collections",
                         lambda c: set(c.collections.list_all(simple=True)))

    def _aliases(self) -> dict[str, str]:
        return self._run("list aliases", lambda c: {
            str(name): str(found.collection) for name, found in c.alias.list_all().items()})

    def _check_point(self, alias: str, collection: str, collections: set[str],
                     aliases: dict[str, str]) -> None:
        clash = next((c for c in collections if c.lower() == alias.lower()), None)
        if clash is not None:
            raise ConfigError(f"weaviate alias {alias!r} at {self._where} has the name of "
                              f"collection {clash!r}; an alias needs a name no collection has")
        twin = next((a for a in aliases if a.lower() == alias.lower() and a != alias), None)
        if twin is not None:
            raise ConfigError(f"weaviate alias {alias!r} at {self._where} differs only in case from "
                              f"alias {twin!r}; Weaviate treats them as one name, use {twin!r}")
        if collection not in collections:
            if collection in aliases:
                raise ConfigError(
                    f"{collection!r} at {self._where} is an alias (of {aliases[collection]!r}), not "
                    f"a collection; point {alias!r} at a collection")
            raise ConfigError(f"weaviate collection {collection!r} does not exist at {self._where}; "
                              f"create it (ensure) before pointing alias {alias!r} at it")


def _create_alias(client: Any, alias: str, collection: str) -> bool:
    """Create the alias; False if it exists already (created meanwhile, or our own earlier
    attempt whose answer was lost): the caller reads it again."""
    from weaviate.exceptions import UnexpectedStatusCodeError

    try:
        client.alias.create(alias_name=alias, target_collection=collection)
    except UnexpectedStatusCodeError as exc:
        if exc.status_code == 422 and "alias already exists" in str(exc.error):
            return False
        raise
    return True
