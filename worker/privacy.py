"""Privacy policy per binding: mask PII and secrets once, after parsing, before chunking.

Stage order: ``Binding.parse`` → quality checks (:mod:`worker.quality`) → :meth:`Masker.mask_document`
→ chunk → embed → sinks. Every string that reaches a sink is masked: ``title``, ``context``,
``url``, each ``Section.text`` and ``Section.label``, and every string (or list-of-string)
metadata value. ``doc_id``/``key`` are ids and are *not* masked: a collection keyed by an email
needs Estuary's ``redact`` annotation upstream (see landscape.md §2).

Actions per personal-data type (:data:`PII_TYPES`): ``redact`` → ``[EMAIL]``; ``pseudonymize`` →
``[EMAIL:<hex>]``, the first ``token_hex_chars`` of HMAC-SHA256(secret, "email:" + normalised
value) — lowercased email, E.164 phone, compact IBAN, digits of a card/SSN, canonical IP,
lowercased whitespace-collapsed name — so one person gives one token across documents and
queries; ``keep``. Secrets (:data:`SECRET_TYPES`) are always ``[TYPE]``, whatever the policy.

Person names: there is no NER model offline, so only the names the document *declares* are found:
Gong ``participants[].name`` and transcript speakers (``Section.label``), Slack ``user_name`` and
``user_id``, GitHub ``author``. A declared full name is matched whole-word, case-insensitively;
with ``name_parts`` its given and family names (≥ 3 letters) are matched too, but only
capitalised as written (so "Will" the name is masked, "will" the verb is not) and, when one part
belongs to one declared person only, it gets that person's pseudonym ("Dana" and
"Dana Whitfield" → the same token). An optional :class:`~worker.privacy_detect.NerBackend` adds
undeclared names.

Hazards: the secret is never logged and never in a repr. Counts (per entity type) are the only
thing returned besides masked text. Changing the secret or ``token_hex_chars`` changes every
token: re-materialize the binding. Collisions: 10 hex chars (40 bits) reach a 50% chance of one
collision at ~1.2 M distinct values of one type; a collision only merges two values in search.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Literal

import phonenumbers
from pydantic import Field, field_validator

from worker.configbase import Strict
from worker.privacy_detect import (PII_TYPES, SECRET_TYPES, Detector, EntityType, NerBackend,
                                   Span, name_pattern, normalize_name)
from worker.records import FlowDocument, MetadataValue, Section

Action = Literal["redact", "pseudonymize", "keep"]
PiiType = Literal["email", "phone", "card", "iban", "ssn", "ip"]

__all__ = ["PrivacyPolicy", "Masker", "Masked", "MaskedDocument", "declared_names",
           "EntityType", "NerBackend", "Span", "PII_TYPES", "SECRET_TYPES"]


class PrivacyPolicy(Strict):
    """``bindings[].privacy``. Unknown keys and entity types are errors; secrets cannot be listed."""

    enabled: bool = True
    #: Region for phone numbers written without a country code (ISO 3166 alpha-2).
    default_region: str = "US"
    #: Action for a personal-data type not listed in ``actions``.
    default_action: Action = "redact"
    actions: dict[PiiType, Action] = Field(default_factory=dict)
    names: Action = "keep"
    #: Also mask the given/family names of a declared full name (capitalised, ≥ 3 letters).
    name_parts: bool = True
    token_hex_chars: int = Field(default=10, ge=6, le=64)

    @field_validator("actions", mode="before")
    @classmethod
    def _no_secret_actions(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            secret = sorted(str(k) for k in value if k in {t.value for t in SECRET_TYPES})
            if secret:
                raise ValueError(f"actions: {', '.join(secret)} are secrets and always redacted; "
                                 "remove them from the policy")
        return value

    @field_validator("default_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"default_region {value!r} is not an ISO 3166 region phonenumbers knows")
        return value.upper()

    def action_for(self, kind: EntityType) -> Action:
        if kind.is_secret:
            return "redact"
        if kind is EntityType.PERSON:
            return self.names
        return self.actions.get(kind.value, self.default_action)  # type: ignore[arg-type]

    @property
    def pseudonymizes(self) -> bool:
        return self.names == "pseudonymize" or "pseudonymize" in (
            self.action_for(t) for t in PII_TYPES)


@dataclass(frozen=True, slots=True)
class Masked:
    text: str
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class MaskedDocument:
    document: FlowDocument
    counts: dict[str, int]


def declared_names(raw: Mapping[str, Any]) -> list[str]:
    """Person names a raw document declares (Gong participants/speakers, Slack user, GitHub author)."""
    names: list[str] = []
    participants = raw.get("participants")
    if isinstance(participants, list):
        names += [p["name"] for p in participants
                  if isinstance(p, Mapping) and isinstance(p.get("name"), str)]
    transcript = raw.get("transcript")
    if isinstance(transcript, list):
        names += [t["speaker"] for t in transcript
                  if isinstance(t, Mapping) and isinstance(t.get("speaker"), str)]
    for field in ("user_name", "user_id", "author"):
        if isinstance(raw.get(field), str):
            names.append(raw[field])
    return [n for n in dict.fromkeys(n.strip() for n in names) if n]


_PART_WORD = re.compile(r"^[^\W\d_][\w'’-]{2,}$")


@lru_cache(maxsize=4096)
def _names_regex(names: tuple[str, ...], with_parts: bool,
                 ) -> tuple[tuple[re.Pattern[str], dict[str, str]], ...]:
    """(regex, part → full name) for a document's declared names; cached per name set."""
    full = [n for n in names if n.strip()]
    owners: dict[str, set[str]] = {}
    if with_parts:
        for n in full:
            words = n.split()
            if len(words) > 1:
                for w in words:
                    if _PART_WORD.match(w):
                        owners.setdefault(w, set()).add(normalize_name(n))
    parts = [p for p in owners if normalize_name(p) not in {normalize_name(n) for n in full}]
    regex = name_pattern(full, parts)
    if regex is None:
        return ()
    canonical = {normalize_name(p): next(iter(o)) for p, o in owners.items() if len(o) == 1}
    return ((regex, canonical),)


class Masker:
    """Applies a :class:`PrivacyPolicy`. Pure and thread-safe except for the name book.

    ``secret`` keys the pseudonyms (the composition root reads it from the environment); it is
    required when the policy pseudonymizes anything. ``remember_names`` bounds an in-memory
    book of declared names seen in documents, so :meth:`mask_query` can find them in queries;
    it is lost on restart (pass ``names`` to ``mask_query`` to be independent of it).
    """

    def __init__(self, policy: PrivacyPolicy, *, secret: bytes | None = None,
                 ner: NerBackend | None = None, remember_names: int = 100_000) -> None:
        if policy.enabled and policy.pseudonymizes and not secret:
            raise ValueError("the privacy policy pseudonymizes but no secret was given; set the "
                             "pseudonymization key in the environment")
        self.policy = policy
        self._secret = secret or b""
        self._detector = Detector(default_region=policy.default_region, ner=ner)
        self._name_book: OrderedDict[str, str] = OrderedDict()
        self._name_book_max = remember_names

    def __repr__(self) -> str:  # never the secret
        return f"Masker(policy={self.policy!r})"

    def token(self, kind: EntityType, normalized: str) -> str:
        digest = hmac.new(self._secret, f"{kind.value}:{normalized}".encode(), hashlib.sha256)
        return f"[{kind.value.upper()}:{digest.hexdigest()[:self.policy.token_hex_chars]}]"

    def _replacement(self, span: Span) -> str | None:
        action = self.policy.action_for(span.type)
        if action == "keep":
            return None
        if action == "pseudonymize":
            return self.token(span.type, span.normalized)
        return span.type.placeholder

    def mask_text(self, text: str, *, names: Iterable[str] = (),
                  counts: Counter[str] | None = None) -> Masked:
        """Mask ``text``; ``names`` are the declared person names to look for."""
        tally: Counter[str] = Counter() if counts is None else counts
        out = self._mask(text, self._name_regexes(names), tally)
        return Masked(out, dict(tally))

    def _name_regexes(self, names: Iterable[str]) -> tuple[tuple[re.Pattern[str], dict[str, str]], ...]:
        if self.policy.names == "keep":
            return ()
        return _names_regex(tuple(sorted(set(names))), self.policy.name_parts)

    def _mask(self, text: str, names: tuple[tuple[re.Pattern[str], dict[str, str]], ...],
              tally: Counter[str]) -> str:
        if not self.policy.enabled or not text:
            return text
        pieces: list[str] = []
        pos = 0
        for span in self._detector.detect(text, names=names):
            replacement = self._replacement(span)
            if replacement is None:
                continue
            tally[span.type.value] += 1
            pieces.append(text[pos:span.start])
            pieces.append(replacement)
            pos = span.end
        if not pieces:
            return text
        pieces.append(text[pos:])
        return "".join(pieces)

    def mask_document(self, doc: FlowDocument, raw: Mapping[str, Any]) -> MaskedDocument:
        """A new document with every sink-bound string masked, and counts per entity type."""
        if not self.policy.enabled or doc.is_delete:
            return MaskedDocument(doc, {})
        names = declared_names(raw)
        if self.policy.names != "keep":
            names = list(dict.fromkeys([*names, *(s.label for s in doc.sections if s.label)]))
            self._remember(names)
        regexes = self._name_regexes(names)
        tally: Counter[str] = Counter()

        def m(value: str) -> str:
            return self._mask(value, regexes, tally)

        metadata: dict[str, MetadataValue] = {}
        for name, value in doc.metadata.items():
            if isinstance(value, str):
                metadata[name] = m(value)
            elif isinstance(value, list):
                metadata[name] = [m(v) for v in value]
            else:
                metadata[name] = value
        masked = replace(doc, title=m(doc.title), url=m(doc.url), context=m(doc.context),
                         sections=tuple(Section(m(s.text), m(s.label)) for s in doc.sections),
                         metadata=metadata)
        return MaskedDocument(masked, dict(tally))

    def mask_query(self, text: str, *, names: Iterable[str] = ()) -> str:
        """Mask a search query exactly as documents are masked, so a pseudonym finds its documents.

        Names: those passed plus the declared names remembered from documents."""
        known = [*names, *self._name_book.values()] if self.policy.names != "keep" else []
        return self._mask(text, self._name_regexes(known), Counter())

    def _remember(self, names: list[str]) -> None:
        for n in names:
            key = normalize_name(n)
            self._name_book[key] = n
            self._name_book.move_to_end(key)
        while len(self._name_book) > self._name_book_max:
            self._name_book.popitem(last=False)
