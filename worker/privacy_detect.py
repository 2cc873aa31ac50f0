"""PII and secret detection: text → non-overlapping, typed :class:`Span` s. Pure, no I/O.

Detectors and what backs each one:

===================  ===========================================================================
``email``            regex (local@domain.tld); normalised lowercase
``phone``            ``phonenumbers`` (``PhoneNumberMatcher``, leniency VALID) run only on
                     digit runs a cheap regex finds; national formats use ``default_region``;
                     normalised to E.164
``card``             regex on known IIN prefixes (Visa, Mastercard, Amex, Discover, JCB, Diners),
                     13–19 digits with one kind of separator, kept only if ``stdnum.luhn`` passes
``iban``             regex, kept only if ``stdnum.iban`` passes (country length + mod-97)
``ssn``              ``ddd-dd-dddd`` / ``ddd dd dddd``, kept only if ``stdnum.us.ssn`` passes
                     (area not 000/666/9xx, group not 00, serial not 0000, known fakes)
``ip``               IPv4/IPv6 candidates validated by ``ipaddress``; a 4-part dotted number glued
                     to a letter or to a 5th part (``v1.2.3.4``, ``1.2.3.4.5``) is a version
``person``           only names the document declares (see :mod:`worker.privacy`), or an optional
                     :class:`NerBackend`
secrets              AWS access key ids (AKIA/ASIA/ABIA/ACCA), GitHub tokens (ghp_ gho_ ghu_ ghs_
                     ghr_ github_pat_), Slack tokens (xox[abposr]-), ``sk-`` API keys, JWTs (header
                     must decode to JSON with ``alg``), PEM private keys (whole block; an
                     unterminated block runs to its last base64 line), ``user:password@`` in URLs
                     (the whole userinfo), and values assigned to secret-looking keys
===================  ===========================================================================

Assigned values (``key=``, ``token:``, ``"api_key": "…"``): after a *password-like* key
(password, passwd, pwd, secret, …) the value is always a secret, low entropy or not —
``password=changeme`` is a real, weak password and is redacted. After a *key/token-like* key the
value must look random: ≥ 12 characters, Shannon entropy ≥ 3.0 bits/char and at least two
character classes, so ``token=production`` or ``key: renewal`` are kept. Placeholders
(``${TOKEN}``, ``<token>``, ``***``, ``[REDACTED]``) are kept.

Overlaps are resolved deterministically: secrets beat PII, PII beats names; within one tier the
longest span wins, then the earliest. UUIDs, git SHAs, version strings and Slack/Gong ids are not
PII and no detector targets them.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import orjson
import phonenumbers
from phonenumbers import Leniency, PhoneNumberFormat, PhoneNumberMatcher
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.us import ssn as stdnum_ssn


class EntityType(StrEnum):
    # personal data: the policy chooses redact / pseudonymize / keep
    EMAIL = "email"
    PHONE = "phone"
    CARD = "card"
    IBAN = "iban"
    SSN = "ssn"
    IP = "ip"
    PERSON = "person"
    # secrets: always redacted
    AWS_KEY = "aws_key"
    GITHUB_TOKEN = "github_token"
    SLACK_TOKEN = "slack_token"
    API_KEY = "api_key"  # sk-… keys
    JWT = "jwt"
    PRIVATE_KEY = "private_key"
    URL_CREDENTIALS = "url_credentials"
    ASSIGNED_SECRET = "assigned_secret"

    @property
    def is_secret(self) -> bool:
        return self not in _PII

    @property
    def placeholder(self) -> str:
        return f"[{self.value.upper()}]"


_PII = frozenset({EntityType.EMAIL, EntityType.PHONE, EntityType.CARD, EntityType.IBAN,
                  EntityType.SSN, EntityType.IP, EntityType.PERSON})
_RANK = {t: i for i, t in enumerate((EntityType.CARD, EntityType.IBAN, EntityType.SSN,
                                      EntityType.IP, EntityType.EMAIL, EntityType.PHONE))}
PII_TYPES: tuple[EntityType, ...] = tuple(t for t in EntityType if t in _PII)
SECRET_TYPES: tuple[EntityType, ...] = tuple(t for t in EntityType if t not in _PII)


@dataclass(frozen=True, slots=True)
class Span:
    """``text[start:end]`` is an entity of ``type``; ``normalized`` is what pseudonyms key on."""

    start: int
    end: int
    type: EntityType
    normalized: str

    @property
    def tier(self) -> int:
        return 2 if self.type.is_secret else (0 if self.type is EntityType.PERSON else 1)

    @property
    def rank(self) -> int:
        """Tie-break between equal spans: the stricter detector wins (an IPv4 "224.54.158.97"
        is also a valid US phone number written with dots)."""
        return _RANK.get(self.type, len(_RANK))


class NerBackend(Protocol):
    """Optional person-name finder (GLiNER, an HF token classifier, …).

    The composition root builds one only when its model is present on local disk, and never
    downloads; :class:`Detector` works without it. ``find`` returns spans of type ``PERSON``
    whose ``normalized`` is the lowercased name.
    """

    def find(self, text: str) -> list[Span]: ...


# -- secrets -------------------------------------------------------------------------------------

_AWS = re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b")
_GITHUB = re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b")
_SLACK = re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")
_SK = re.compile(r"(?<![\w-])sk-[A-Za-z0-9_-]{20,}")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_PEM = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
                  r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
                  r"|(?:[ \t]*\r?\n[ \t]*(?:[A-Za-z0-9+/=]+|[A-Za-z-]+: ?.*))*)")
_URL_USERINFO = re.compile(r"://([^\s:/@]*:[^\s/@]+)@")
_PASSWORD_WORDS = r"pass(?:word|wd|phrase)?|pwd|secret|client_secret|secret_key|private_key"
#: The key's last word, then ``=`` / ``:`` and the value. The rest of the key name is found by
#: scanning back (a leading ``[\w.-]*`` in the regex would be tried at every position).
_ASSIGNED = re.compile(
    r"(?i)(?:key|token|secret|auth|credentials?|pass(?:word|wd|phrase)?|pwd)[\"']?"
    r"(?:[ \t]*=[ \t]*|:[ \t]*)[\"']?([^\s\"',;&<>)\]}]{4,})")
_KEY_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
_PASSWORD_KEY = re.compile(r"(?i)(?:^|[_.-])(?:" + _PASSWORD_WORDS + r")$")
_PLACEHOLDER = re.compile(r"^(?:\$\{?[\w.-]+\}?|%[\w]+%?|\*+|x+|X+|\[[A-Z_]+(?::[0-9a-f]+)?\]|"
                          r"<[^>]*|\.\.\.|changeit_placeholder)$")
#: Random-looking value after a key/token-like key: length, bits/char, character classes.
MIN_SECRET_CHARS = 12
MIN_SECRET_ENTROPY = 3.0


def shannon_entropy(value: str) -> float:
    """Bits per character of ``value``'s character distribution."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values()) if n else 0.0


def _looks_random(value: str) -> bool:
    classes = sum((any(c.islower() for c in value), any(c.isupper() for c in value),
                   any(c.isdigit() for c in value), any(not c.isalnum() for c in value)))
    return (len(value) >= MIN_SECRET_CHARS and classes >= 2
            and shannon_entropy(value) >= MIN_SECRET_ENTROPY)


def _jwt_header_ok(token: str) -> bool:
    head = token.split(".", 1)[0]
    try:
        header = orjson.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(header, dict) and "alg" in header


#: (literal that every match contains, regex, type): ``in`` is a C scan, far cheaper than ``re``.
_TOKEN_SECRETS = (
    (("AKIA", "ASIA", "ABIA", "ACCA"), _AWS, EntityType.AWS_KEY),
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"), _GITHUB, EntityType.GITHUB_TOKEN),
    (("xox",), _SLACK, EntityType.SLACK_TOKEN),
    (("sk-",), _SK, EntityType.API_KEY),
)
_KEY_HINTS = ("key", "token", "secret", "auth", "credential", "pass", "pwd")


def _secrets(text: str, out: list[Span]) -> None:
    for literals, regex, kind in _TOKEN_SECRETS:
        if any(lit in text for lit in literals):
            for m in regex.finditer(text):
                out.append(Span(m.start(), m.end(), kind, m.group()))
    if "eyJ" in text:
        for m in _JWT.finditer(text):
            if _jwt_header_ok(m.group()):
                out.append(Span(m.start(), m.end(), EntityType.JWT, m.group()))
    if "PRIVATE KEY" in text:
        for m in _PEM.finditer(text):
            out.append(Span(m.start(), m.end(), EntityType.PRIVATE_KEY, ""))
    if "://" in text:
        for m in _URL_USERINFO.finditer(text):
            out.append(Span(m.start(1), m.end(1), EntityType.URL_CREDENTIALS, m.group(1)))
    lowered = text.lower()
    if not any(hint in lowered for hint in _KEY_HINTS):
        return
    for m in _ASSIGNED.finditer(text):
        value = m.group(1)
        if _PLACEHOLDER.match(value):
            continue
        start = m.start()
        while start > 0 and text[start - 1] in _KEY_CHARS:
            start -= 1
        key = text[start:m.start(1)].rstrip("\"' \t=:")
        if _PASSWORD_KEY.search(key) or _looks_random(value):
            out.append(Span(m.start(1), m.end(1), EntityType.ASSIGNED_SECRET, value))


# -- personal data -------------------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
                    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b")
_IIN = r"(?:4\d|5[1-5]|2[2-7]|3[47]|3[068]|35|6[045])"
_CARD = re.compile(r"(?<![\w-])" + _IIN + r"\d{2}(?:(?P<sep>[ -]?)\d{2,6}){2,5}(?![\w-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_SSN = re.compile(r"(?<![\w-])\d{3}([- ])\d{2}\1\d{4}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
                   r"(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{0,4})(?:%[A-Za-z0-9]+)?(?![\w:])")
#: Where a phone number could be: a run of ≥ 7 digits with phone separators (cheap prefilter
#: so ``phonenumbers`` runs on a few short strings, not on the whole text).
_PHONE_CANDIDATE = re.compile(r"(?<![\w.-])[+(]?\b\d[\d \t().\-/\u00a0]{5,22}\d"
                              r"(?:\s*(?:x|ext\.?)\s*\d{1,6})?(?![\w-])")


def _phones(text: str, region: str, out: list[Span], base: int = 0) -> None:
    for c in _PHONE_CANDIDATE.finditer(text):
        chunk = c.group()
        if sum(ch.isdigit() for ch in chunk) < 7:
            continue
        for m in PhoneNumberMatcher(chunk, region, leniency=Leniency.VALID):
            start = base + c.start() + m.start
            e164 = phonenumbers.format_number(m.number, PhoneNumberFormat.E164)
            out.append(Span(start, start + len(m.raw_string), EntityType.PHONE, e164))


def _cards(text: str, out: list[Span], base: int = 0) -> None:
    for m in _CARD.finditer(text):
        raw = m.group()
        digits = raw.replace(" ", "").replace("-", "")
        if len(set(c for c in raw if not c.isdigit())) > 1 or not 13 <= len(digits) <= 19:
            continue
        if luhn.is_valid(digits):
            out.append(Span(base + m.start(), base + m.end(), EntityType.CARD, digits))


def _ibans(text: str, out: list[Span]) -> None:
    for m in _IBAN.finditer(text):
        # The regex is greedy: a trailing uppercase word can ride along; shorten group by group.
        candidate = m.group()
        while len(candidate.replace(" ", "")) >= 15:
            if stdnum_iban.is_valid(candidate):
                out.append(Span(m.start(), m.start() + len(candidate), EntityType.IBAN,
                                stdnum_iban.compact(candidate)))
                break
            cut = candidate.rfind(" ")
            candidate = candidate[:cut] if cut > 0 else candidate[:-1]


def _ssns(text: str, out: list[Span], base: int = 0) -> None:
    for m in _SSN.finditer(text):
        digits = m.group().replace(" ", "").replace("-", "")
        if stdnum_ssn.is_valid(digits):
            out.append(Span(base + m.start(), base + m.end(), EntityType.SSN, digits))


def _ipv4s(text: str, out: list[Span], base: int = 0) -> None:
    for m in _IPV4.finditer(text):
        try:
            out.append(Span(base + m.start(), base + m.end(), EntityType.IP,
                            str(ipaddress.IPv4Address(m.group()))))
        except ValueError:
            pass  # not an address (999.1.1.1): nothing to mask


def _ipv6s(text: str, out: list[Span]) -> None:
    for m in _IPV6.finditer(text):
        value = m.group()
        groups = [g for g in value.split("%")[0].split(":") if g]
        if len(groups) < 3 and value != "::1":
            continue  # "a::b", "Foo::bar": code, not an address
        try:
            addr = ipaddress.IPv6Address(value)
        except ValueError:
            continue
        out.append(Span(m.start(), m.end(), EntityType.IP, str(addr)))


#: Every phone, card, SSN and IPv4 holds a run like this; the detectors run only on these runs
#: (padded so their edge checks see the neighbouring characters), not on the whole text.
_DIGIT_RUN = re.compile(r"\d[\d \t().\-/\u00a0]{5,}\d")
_PAD_BEFORE, _PAD_AFTER = 2, 12  # after: room for a phone extension ("x 204")


def _digit_runs(text: str, region: str, out: list[Span]) -> None:
    n = len(text)
    for run in _DIGIT_RUN.finditer(text):
        base = max(0, run.start() - _PAD_BEFORE)
        window = text[base:min(n, run.end() + _PAD_AFTER)]
        _phones(window, region, out, base)
        _cards(window, out, base)
        _ssns(window, out, base)
        _ipv4s(window, out, base)


def resolve_overlaps(spans: Iterable[Span]) -> list[Span]:
    """Keep a non-overlapping subset: higher tier first, then longer, then the stricter type,
    then earlier; returned sorted by position."""
    chosen: list[Span] = []
    taken: list[tuple[int, int]] = []
    for s in sorted(spans, key=lambda s: (-s.tier, s.start - s.end, s.rank, s.start)):
        if s.end <= s.start:
            continue
        if any(s.start < e and b < s.end for b, e in taken):
            continue
        chosen.append(s)
        taken.append((s.start, s.end))
    chosen.sort(key=lambda s: s.start)
    return chosen


class Detector:
    """Finds every entity in a text. Thread-safe (compiled regexes, no mutable state).

    ``names`` are regexes (:func:`name_pattern`) for the person names to find in this text.
    """

    def __init__(self, *, default_region: str = "US", ner: NerBackend | None = None) -> None:
        self.default_region = default_region
        self.ner = ner

    def detect(self, text: str, *, names: Sequence[tuple[re.Pattern[str], dict[str, str]]] = (),
               ) -> list[Span]:
        if not text:
            return []
        spans: list[Span] = []
        _secrets(text, spans)
        if "@" in text:
            spans.extend(Span(m.start(), m.end(), EntityType.EMAIL, m.group().lower())
                         for m in _EMAIL.finditer(text))
        _digit_runs(text, self.default_region, spans)
        _ibans(text, spans)
        if "::" in text or text.count(":") >= 7:
            _ipv6s(text, spans)
        for regex, canonical in names:
            for m in regex.finditer(text):
                key = normalize_name(m.group())
                spans.append(Span(m.start(), m.end(), EntityType.PERSON, canonical.get(key, key)))
        if self.ner is not None:
            spans.extend(self.ner.find(text))
        return resolve_overlaps(spans)


def normalize_name(name: str) -> str:
    return " ".join(name.casefold().split())


def name_pattern(full: Iterable[str], parts: Iterable[str]) -> re.Pattern[str] | None:
    """Whole-word regex: ``full`` names case-insensitively (any spacing), ``parts`` (single given
    or family names) only capitalised as written, so "dana" in a URL or "will" the verb stay."""
    full_alts = sorted({normalize_name(n) for n in full if n.strip()}, key=len, reverse=True)
    part_alts = sorted(set(parts), key=len, reverse=True)
    alts = [r"(?i:" + r"\s+".join(map(re.escape, n.split())) + ")" for n in full_alts]
    alts += [re.escape(p) for p in part_alts]
    if not alts:
        return None
    return re.compile(r"(?<![\w@.])(?:" + "|".join(alts) + r")(?![\w@]|\.\w)")
