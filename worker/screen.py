"""Screening, the first step of the prepare stage: data-quality rules, then privacy masking.

::

    raw document --quality rules (raw)--> drop fields --Binding.parse--> quality rules (document)
        --flags--> quality_flags --Masker.mask_document--> FlowDocument (every sink-bound string masked)

Per binding (``bindings[].quality``, ``bindings[].privacy``; :mod:`worker.quality`,
:mod:`worker.privacy`). Runs once per document version, before chunking and embedding, so no
sink, vector, prepared record, log line or metric label ever sees a raw value: metrics get
counts per entity type and collection only. The spool (local disk) holds the raw documents as
Estuary sent them; the dead-letter store holds them raw too unless ``deadletters.redact`` is
set, in which case every string in a dead letter is masked with its binding's policy (secrets
always).

The valid ratio per collection (:class:`~worker.quality.ValidRatioWindow`, the last
``QUALITY_WINDOW`` documents) feeds ``memory_worker_quality_valid_ratio``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.documents import Binding
from worker.errors import DocumentInvalid
from worker.privacy import Masker, PrivacyPolicy
from worker.quality import QualityChecker, ValidRatioWindow
from worker.records import FlowDocument
from worker.schema_check import DriftWatch

QUALITY_WINDOW = 10_000  # documents per collection in the valid-ratio window
_SECRETS_ONLY = PrivacyPolicy(default_action="keep")


@dataclass(slots=True)
class Screened:
    document: FlowDocument | None
    stage: str = ""  # "validate" or "quality" when rejected
    reason: str = ""
    key: str | None = None


@dataclass
class ScreenCounters:
    """Counts for metrics: entities masked per (collection, type), quality outcomes."""

    entities: Counter[tuple[str, str]] = field(default_factory=Counter)
    checked: Counter[str] = field(default_factory=Counter)
    failed: Counter[tuple[str, str]] = field(default_factory=Counter)


class Screen:
    def __init__(self, bindings: Mapping[str, Binding], *, secret: bytes | None,
                 redact_dead_letters: bool = False, count_tokens: Any = None,  # noqa: ANN401
                 watch_drift: bool = False,
                 on_checked: Callable[[str, str | None], None] | None = None) -> None:
        self.bindings = bindings
        #: ``on_checked(collection, reason)`` per non-delete document: reason None when valid,
        #: else ``validate``, ``quality`` (dead-lettered) or ``flagged`` (kept with a flag).
        self._on_checked = on_checked or (lambda collection, reason: None)
        self.maskers: dict[str, Masker] = {}
        self.checkers: dict[str, QualityChecker] = {}
        for collection, binding in bindings.items():
            policy = binding.config.privacy
            if policy is not None and policy.enabled:
                self.maskers[collection] = Masker(policy, secret=secret)
            if binding.config.quality is not None and binding.config.quality.rules:
                self.checkers[collection] = QualityChecker(binding.config.quality, count_tokens=count_tokens)
        self._secrets_only = Masker(_SECRETS_ONLY, secret=secret)
        self.redact_dead_letters = redact_dead_letters
        self.window = ValidRatioWindow(size=QUALITY_WINDOW)
        self.counters = ScreenCounters()
        # Schema drift is watched in the live stream (`run`), not in bulk loads (`reindex`).
        self.drift = DriftWatch(expected={c: b.json_schema().get("properties", {}) for c, b in bindings.items()}) \
            if watch_drift else None

    def screen(self, collection: str, raw: Any) -> Screened:  # noqa: ANN401
        binding = self.bindings[collection]
        checker = self.checkers.get(collection)
        if self.drift is not None and isinstance(raw, Mapping):
            self.drift.observe(collection, raw)
        try:
            if checker is None:
                doc: FlowDocument | None = binding.parse(raw)
                verdict = None
            else:
                checked = checker.run(raw, binding.parse)
                doc, verdict = checked.document, checked.verdict
        except DocumentInvalid as exc:
            self.window.record(collection, False)
            self._on_checked(collection, "validate")
            return Screened(None, "validate", str(exc), exc.key)
        if verdict is not None and (doc is None or not doc.is_delete):
            self.counters.checked[collection] += 1
        if verdict is not None:
            for rule in verdict.failed_rules:
                self.counters.failed[(collection, rule)] += 1
            if verdict.dead_letter_reason is not None:
                self.window.record(collection, False)
                self._on_checked(collection, "quality")
                return Screened(None, "quality", verdict.dead_letter_reason)
        assert doc is not None
        if not doc.is_delete:  # valid: no rule failed (flagged and trimmed documents are kept)
            valid = verdict.valid if verdict is not None else True
            self.window.record(collection, valid)
            self._on_checked(collection, None if valid else "flagged")
        masker = self.maskers.get(collection)
        if masker is not None and not doc.is_delete:
            masked = masker.mask_document(doc, raw if isinstance(raw, Mapping) else {})
            doc = masked.document
            for kind, n in masked.counts.items():
                self.counters.entities[(collection, kind)] += n
        return Screened(doc)

    def dead_letter_raw(self, collection: str, raw: Any) -> Any:  # noqa: ANN401
        """What the dead-letter store keeps: ``raw``, or masked with ``deadletters.redact``."""
        if not self.redact_dead_letters:
            return raw
        return self.masked_raw(collection, raw)

    def masked_raw(self, collection: str, raw: Any) -> Any:  # noqa: ANN401
        """``raw`` with every string masked by its binding's policy (secrets at least)."""
        masker = self.maskers.get(collection, self._secrets_only)

        def walk(node: Any) -> Any:  # noqa: ANN401
            if isinstance(node, str):
                return masker.mask_text(node).text
            if isinstance(node, list):
                return [walk(v) for v in node]
            if isinstance(node, dict):
                return {k: walk(v) for k, v in node.items()}
            return node

        return walk(raw)

    def mask_query(self, text: str, collection: str | None = None) -> str:
        """A query masked like the documents it should find (pseudonyms match pseudonyms)."""
        maskers = [self.maskers[collection]] if collection in self.maskers else list(self.maskers.values())
        for masker in sorted(maskers, key=lambda m: not m.policy.pseudonymizes):
            text = masker.mask_query(text)
        return text

    def ratios(self) -> dict[str, float]:
        return {c: r for c, r in self.window.ratios().items() if r is not None}
