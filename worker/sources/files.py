"""``reindex`` from files: ``.json`` (one array, as a webhook request carries, or one object) and
``.jsonl`` (one document per line), fed in groups to the pipeline."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from worker.sources.base import Feed

GROUP_DOCS = 256  # documents per feed call (a pass of prepare → write)


def read_documents(path: Path) -> Iterator[tuple[Any, str | None]]:
    """Yield ``(document, None)`` or ``(None, reason)`` for unreadable parts.

    A bad line is reported and skipped; the rest of the file goes on.
    """
    if path.suffix == ".jsonl":
        with path.open("rb") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield orjson.loads(line), None
                except orjson.JSONDecodeError as exc:
                    yield None, f"{path}:{n}: invalid JSON ({exc})"
        return
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        yield None, f"{path}: invalid JSON ({exc})"
        return
    for doc in data if isinstance(data, list) else [data]:
        yield doc, None


class FileSource:
    """Feeds every document of ``paths`` (one collection) in groups of ``group_docs``."""

    kind = "files"

    def __init__(self, collection: str, paths: Sequence[Path], *, group_docs: int = GROUP_DOCS,
                 on_unreadable: Callable[[str], None] | None = None) -> None:
        self.collection = collection
        self.paths = list(paths)
        self.group_docs = group_docs
        self._on_unreadable = on_unreadable
        self.documents = 0
        self.unreadable = 0

    def run(self, feed: Feed) -> None:
        group: list[Any] = []
        for path in self.paths:
            for doc, problem in read_documents(path):
                if problem is not None:
                    self.unreadable += 1
                    if self._on_unreadable is not None:
                        self._on_unreadable(problem)
                    continue
                self.documents += 1
                group.append(doc)
                if len(group) >= self.group_docs:
                    feed(self.collection, group, f"file:{path}")
                    group = []
        if group:
            feed(self.collection, group, "file")

    def start(self) -> FileSource:
        return self

    def stop(self, timeout_s: float) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind, "collection": self.collection, "documents": self.documents,
                "unreadable": self.unreadable}
