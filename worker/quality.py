"""Data-quality rules per binding (``bindings[].quality``): declarative, pure, clock injected.

Rules and what they read:

=================  ==================  ========================================================
``required``       raw document        every JSON pointer present and not null / ""
``allowed_values`` raw document        the field's value is one of ``values`` (a list: each item)
``timestamp``      raw document        ISO 8601 or unix seconds; not after now + skew, not older
                                       than ``max_age`` (``"90d"``, ``"12h"``, ``"30m"``, seconds)
``pattern``        raw document        the string field must / must not match a regex
``text_length``    parsed document     chars (and tokens, given ``count_tokens``) of the text
``non_text_share`` parsed document     share of characters that are not letters, marks,
                                       whitespace or punctuation (digits, symbols, control)
=================  ==================  ========================================================

Actions: ``dead_letter`` (the reason names the rule), ``flag`` (kept, ``quality_flags`` metadata
lists the rules), ``drop_field`` (raw-field rules only: the field is removed from the raw
document *before* ``Binding.parse``, so it never reaches text, metadata or a sink).

Order (see :meth:`QualityChecker.run`): raw rules on the raw document → dead letter, or drop the
fields of failed ``drop_field`` rules → ``Binding.parse`` on the reduced raw document → document
rules on the parsed document → dead letter, or flags into metadata. Then privacy masking, chunk,
embed. A field rule on a missing field passes (``required`` is the rule for presence), so a
``drop_field`` rule does not turn into a failure of another rule on the same field.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from worker.configbase import Strict
from worker.pointers import MISSING as _ABSENT  # the pointer-absent sentinel
from worker.pointers import resolve_pointer
from worker.records import FlowDocument

QualityAction = Literal["dead_letter", "flag", "drop_field"]
Scalar = str | int | float | bool
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration_s(value: str | float) -> float:
    """``"90d"`` / ``"12h"`` / ``"30m"`` / ``"45s"`` / a number of seconds → seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration; use e.g. 90d, 12h, 30m, 45s")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def _pointer(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{value!r} is not a JSON pointer (it must start with '/')")
    return value


class _Rule(Strict):
    #: Names the rule in dead-letter reasons, flags and counters; default "<kind>:<field>".
    name: str | None = None
    action: QualityAction = "dead_letter"

    @property
    def rule_name(self) -> str:
        return self.name or f"{self.kind}:{getattr(self, 'field', '') or ''}".rstrip(":")  # type: ignore[attr-defined]


class _FieldRule(_Rule):
    field: str

    @field_validator("field")
    @classmethod
    def _is_pointer(cls, v: str) -> str:
        return _pointer(v)


class RequiredRule(_Rule):
    kind: Literal["required"]
    fields: tuple[str, ...] = Field(min_length=1)

    @field_validator("fields")
    @classmethod
    def _pointers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_pointer(p) for p in v)

    @property
    def rule_name(self) -> str:
        return self.name or "required:" + ",".join(self.fields)


class AllowedValuesRule(_FieldRule):
    kind: Literal["allowed_values"]
    values: tuple[Scalar, ...] = Field(min_length=1)


class TimestampRule(_FieldRule):
    kind: Literal["timestamp"]
    max_future_skew_s: float = Field(default=300.0, ge=0)
    max_age: str | float | None = None

    @field_validator("max_age")
    @classmethod
    def _duration(cls, v: str | float | None) -> str | float | None:
        if v is not None:
            parse_duration_s(v)
        return v


class PatternRule(_FieldRule):
    kind: Literal["pattern"]
    must_match: str | None = None
    must_not_match: str | None = None

    @model_validator(mode="after")
    def _one_regex(self) -> PatternRule:
        if self.must_match is None and self.must_not_match is None:
            raise ValueError(f"rule {self.rule_name!r}: set must_match or must_not_match")
        for regex in (self.must_match, self.must_not_match):
            if regex is not None:
                try:
                    re.compile(regex)
                except re.error as exc:
                    raise ValueError(f"rule {self.rule_name!r}: bad regex: {exc}") from None
        return self


class TextLengthRule(_Rule):
    kind: Literal["text_length"]
    min_chars: int | None = Field(default=None, ge=0)
    max_chars: int | None = Field(default=None, ge=1)
    min_tokens: int | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)


class NonTextShareRule(_Rule):
    kind: Literal["non_text_share"]
    max_share: float = Field(gt=0, le=1)


def _kind_of(value: Any) -> str | None:
    return value.get("kind") if isinstance(value, Mapping) else getattr(value, "kind", None)


# A callable discriminator: ``Strict``'s before-validator on "*" rules out ``discriminator="kind"``.
QualityRule = Annotated[
    Annotated[RequiredRule, Tag("required")] | Annotated[AllowedValuesRule, Tag("allowed_values")]
    | Annotated[TimestampRule, Tag("timestamp")] | Annotated[PatternRule, Tag("pattern")]
    | Annotated[TextLengthRule, Tag("text_length")]
    | Annotated[NonTextShareRule, Tag("non_text_share")],
    Discriminator(_kind_of)]
_RAW_RULES = (RequiredRule, AllowedValuesRule, TimestampRule, PatternRule)


class QualityRules(Strict):
    rules: tuple[QualityRule, ...] = ()

    @model_validator(mode="after")
    def _checks(self) -> QualityRules:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.rule_name in seen:
                raise ValueError(f"two quality rules are named {rule.rule_name!r}; give one a name")
            seen.add(rule.rule_name)
            if rule.action == "drop_field" and not isinstance(rule, _FieldRule):
                raise ValueError(f"rule {rule.rule_name!r}: drop_field needs a rule on one field "
                                 "(allowed_values, timestamp, pattern); use flag or dead_letter")
        return self


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the rules decided for one document. ``dead_letter_reason`` names the failed rule."""

    dead_letter_reason: str | None = None
    flags: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # JSON pointers removed from the raw doc
    failed_rules: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.failed_rules


@dataclass(frozen=True, slots=True)
class Checked:
    """Outcome of :meth:`QualityChecker.run`: the document to index (``None``: dead letter)."""

    verdict: Verdict
    document: FlowDocument | None


def drop_fields(raw: Mapping[str, Any], pointers: list[str]) -> dict[str, Any]:
    """A copy of ``raw`` without the fields at ``pointers`` (copies only the path to each)."""
    out: dict[str, Any] = dict(raw)
    for pointer in pointers:
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]
        node: Any = out
        for token in tokens[:-1]:
            child = node.get(token) if isinstance(node, dict) else (
                node[int(token)] if isinstance(node, list) and token.isdigit()
                and int(token) < len(node) else None)
            if isinstance(child, (dict, list)):
                child = dict(child) if isinstance(child, dict) else list(child)
                if isinstance(node, dict):
                    node[token] = child
                else:
                    node[int(token)] = child
            node = child
        last = tokens[-1]
        if isinstance(node, dict):
            node.pop(last, None)
        elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
            del node[int(last)]
    return out


def _timestamp_s(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) / (1000.0 if value > 1e11 else 1.0)  # ms since epoch
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return None
    return None


def non_text_share(text: str) -> float:
    """Share of characters that are not letters, marks, whitespace or punctuation."""
    if not text:
        return 0.0
    other = sum(1 for c in text if not (c.isalpha() or c.isspace()
                                        or unicodedata.category(c)[0] in "MP"))
    return other / len(text)


class QualityChecker:
    """Runs one binding's rules; pure except for its counters (plain ints, for metrics).

    ``clock`` gives unix seconds (timestamp rules); ``count_tokens`` is needed only by rules
    with ``min_tokens``/``max_tokens``.
    """

    def __init__(self, rules: QualityRules, *, clock: Callable[[], float] = time.time,
                 count_tokens: Callable[[str], int] | None = None) -> None:
        for rule in rules.rules:
            if isinstance(rule, TextLengthRule) and (rule.min_tokens is not None
                                                     or rule.max_tokens is not None) \
                    and count_tokens is None:
                raise ValueError(f"rule {rule.rule_name!r} counts tokens but no tokenizer was given")
        self.rules = rules.rules
        self._clock = clock
        self._count_tokens = count_tokens
        self._patterns = {r.rule_name: (re.compile(r.must_match) if r.must_match else None,
                                        re.compile(r.must_not_match) if r.must_not_match else None)
                          for r in self.rules if isinstance(r, PatternRule)}
        self.checked = 0
        self.failed: dict[str, int] = {r.rule_name: 0 for r in self.rules}
        self.dead_lettered = 0

    # -- one rule ------------------------------------------------------------------------------
    def _passes_raw(self, rule: Any, raw: Mapping[str, Any]) -> bool:
        if isinstance(rule, RequiredRule):
            return all(_present(raw, p) and resolve_pointer(raw, p) not in (None, "")
                       for p in rule.fields)
        if not _present(raw, rule.field):
            return True  # presence is the job of ``required``
        value = resolve_pointer(raw, rule.field)
        if isinstance(rule, AllowedValuesRule):
            items = value if isinstance(value, list) else [value]
            return all(_scalar_in(v, rule.values) for v in items)
        if isinstance(rule, TimestampRule):
            ts = _timestamp_s(value)
            if ts is None:
                return False
            now = self._clock()
            if ts > now + rule.max_future_skew_s:
                return False
            return rule.max_age is None or ts >= now - parse_duration_s(rule.max_age)
        must, must_not = self._patterns[rule.rule_name]
        if not isinstance(value, str):
            return False
        return (must is None or must.search(value) is not None) and \
            (must_not is None or must_not.search(value) is None)

    def _passes_doc(self, rule: Any, doc: FlowDocument) -> bool:
        text = "\n".join(s.text for s in doc.sections)
        if isinstance(rule, NonTextShareRule):
            return non_text_share(text) <= rule.max_share
        n = len(text)
        if (rule.min_chars is not None and n < rule.min_chars) or \
                (rule.max_chars is not None and n > rule.max_chars):
            return False
        if rule.min_tokens is not None or rule.max_tokens is not None:
            assert self._count_tokens is not None
            t = self._count_tokens(text)
            if (rule.min_tokens is not None and t < rule.min_tokens) or \
                    (rule.max_tokens is not None and t > rule.max_tokens):
                return False
        return True

    # -- a document ----------------------------------------------------------------------------
    def check(self, raw: Mapping[str, Any], doc: FlowDocument | None = None) -> Verdict:
        """Raw rules always; document rules only when ``doc`` is given. Does not count."""
        reason: str | None = None
        flags: list[str] = []
        dropped: list[str] = []
        failed: list[str] = []
        for rule in self.rules:
            if isinstance(rule, _RAW_RULES):
                ok = self._passes_raw(rule, raw)
            elif doc is None or doc.is_delete:
                continue
            else:
                ok = self._passes_doc(rule, doc)
            if ok:
                continue
            failed.append(rule.rule_name)
            if rule.action == "dead_letter":
                reason = reason or f"quality rule {rule.rule_name!r} failed"
            elif rule.action == "flag":
                flags.append(rule.rule_name)
            else:
                dropped.append(rule.field)  # type: ignore[union-attr]
        return Verdict(reason, flags, dropped, failed)

    def run(self, raw: Mapping[str, Any], parse: Callable[[Mapping[str, Any]], FlowDocument]) -> Checked:
        """The whole order: raw rules → drop fields → ``parse`` → document rules → flags.

        ``parse`` errors (``DocumentInvalid``) propagate: the caller dead-letters as today.
        Deletes skip every rule (a delete carries only the key)."""
        if isinstance(raw.get("_meta"), Mapping) and raw["_meta"].get("op") == "d":
            return Checked(Verdict(), parse(raw))
        first = self.check(raw)
        if first.dead_letter_reason is not None:
            self._count(first)
            return Checked(first, None)
        reduced = drop_fields(raw, first.dropped) if first.dropped else raw
        doc = parse(reduced)
        second = self.check(reduced, doc)
        failed = first.failed_rules + [r for r in second.failed_rules if r not in first.failed_rules]
        verdict = Verdict(second.dead_letter_reason, list(dict.fromkeys(first.flags + second.flags)),
                          first.dropped, failed)
        self._count(verdict)
        if verdict.dead_letter_reason is not None:
            return Checked(verdict, None)
        if verdict.flags:
            doc = replace(doc, metadata={**doc.metadata, "quality_flags": list(verdict.flags)})
        return Checked(verdict, doc)

    def _count(self, verdict: Verdict) -> None:
        self.checked += 1
        self.dead_lettered += verdict.dead_letter_reason is not None
        for name in verdict.failed_rules:
            self.failed[name] += 1


def _present(raw: Any, pointer: str) -> bool:
    return resolve_pointer(raw, pointer) is not _ABSENT


def _scalar_in(value: Any, allowed: tuple[Scalar, ...]) -> bool:
    # bool is an int in Python: True must not pass for 1.
    return any(type(value) is type(a) and value == a for a in allowed) or (
        isinstance(value, (int, float)) and not isinstance(value, bool)
        and any(isinstance(a, (int, float)) and not isinstance(a, bool) and value == a
                for a in allowed))


class ValidRatioWindow:
    """Share of valid documents per collection over the last ``size`` outcomes or ``window_s``.

    Exactly one of ``size`` / ``window_s``. ``clock`` (monotonic seconds) is injected. ``ratio``
    is ``None`` before any outcome (no data is not 100% valid). O(1) per record, amortised.
    """

    def __init__(self, *, size: int | None = None, window_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if (size is None) == (window_s is None):
            raise ValueError("give exactly one of size (outcomes) or window_s (seconds)")
        if (size is not None and size < 1) or (window_s is not None and window_s <= 0):
            raise ValueError("size and window_s must be positive")
        self._size = size
        self._window_s = window_s
        self._clock = clock
        self._outcomes: dict[str, deque[tuple[float, bool]]] = {}
        self._valid: dict[str, int] = {}

    def record(self, collection: str, valid: bool) -> None:
        q = self._outcomes.setdefault(collection, deque())
        q.append((self._clock(), valid))
        self._valid[collection] = self._valid.get(collection, 0) + valid
        self._evict(collection)

    def _evict(self, collection: str) -> None:
        q = self._outcomes.get(collection)
        if not q:
            return
        horizon = None if self._window_s is None else self._clock() - self._window_s
        while q and ((self._size is not None and len(q) > self._size)
                     or (horizon is not None and q[0][0] < horizon)):
            _, valid = q.popleft()
            self._valid[collection] -= valid

    def ratio(self, collection: str) -> float | None:
        self._evict(collection)
        q = self._outcomes.get(collection)
        return self._valid[collection] / len(q) if q else None

    def counts(self, collection: str) -> tuple[int, int]:
        """(valid, total) in the window."""
        self._evict(collection)
        q = self._outcomes.get(collection)
        return (self._valid.get(collection, 0), len(q)) if q else (0, 0)

    def ratios(self) -> dict[str, float | None]:
        return {c: self.ratio(c) for c in list(self._outcomes)}
