"""Seeded corpora for the privacy tests and bench: raw documents of the three collection shapes.

``pii_corpus(seed, n)`` plants PII and secrets of every :class:`EntityType` in every field type
(title, Gong turn text and speaker, Slack text, GitHub body, account/channel names, labels, url)
and returns each document with the list of planted values. Cards are Luhn-valid, IBANs mod-97
valid, SSNs pass the SSA rules, phone numbers are ones ``phonenumbers`` calls valid (so the
corpus tests *finding* them in text, not libphonenumber's metadata).

``clean_corpus(seed, n)`` is business text full of look-alikes that are not PII: dates, prices,
order/invoice ids, versions, SKUs and part numbers, durations, timestamps, git SHAs, UUIDs
(not PII by decision), dotted 5-part versions, Slack/Gong ids.
"""

from __future__ import annotations

import base64
import json
import random
import re
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.us import ssn as stdnum_ssn

FIRST = ["Dana", "Leo", "Marcus", "Priya", "Raj", "Sofia", "Tomasz", "Aiko", "Fatima", "Olu",
         "Hannah", "Mateo", "Ingrid", "Kwame", "Lucia", "Nikhil", "Elena", "Jonas", "Mei", "Omar"]
LAST = ["Whitfield", "Park", "Chen", "Malhotra", "Okafor", "Lindqvist", "Novak", "Tanaka",
        "Haddad", "Moreau", "Castillo", "Brennan", "Ivanova", "Sorensen", "Adeyemi", "Kowalski"]
DOMAINS = ["acme.example", "sophia.example", "globex.co.uk", "initech.io", "mail.example.org"]
_B64URL = string.ascii_letters + string.digits + "-_"
_ALNUM = string.ascii_letters + string.digits


def _b64url(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def _email(r: random.Random) -> str:
    local = r.choice([f"{r.choice(FIRST)}.{r.choice(LAST)}", f"{r.choice(FIRST)}{r.randint(1, 99)}",
                      f"{r.choice(FIRST)[0]}{r.choice(LAST)}+crm"])
    email = f"{local}@{r.choice(DOMAINS)}"
    return email.lower() if r.random() < 0.6 else email


def _phone(r: random.Random) -> str:
    region = r.choice(["US", "US", "US", "GB", "DE", "FR", "IN", "BR", "AU", "JP"])
    base = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE
                                                if r.random() < 0.5 else
                                                phonenumbers.PhoneNumberType.FIXED_LINE)
    while True:
        national = str(base.national_number)
        digits = national[:-4] + "".join(r.choice(string.digits) for _ in range(4))
        number = phonenumbers.parse(f"+{base.country_code}{digits}")
        if phonenumbers.is_valid_number(number):
            break
    if region == "US":
        fmt = r.choice(["national", "dash", "dot", "intl", "e164"])
        n = str(number.national_number)
        return {"national": f"({n[:3]}) {n[3:6]}-{n[6:]}", "dash": f"{n[:3]}-{n[3:6]}-{n[6:]}",
                "dot": f"{n[:3]}.{n[3:6]}.{n[6:]}",
                "intl": phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL),
                "e164": phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)}[fmt]
    return phonenumbers.format_number(number, r.choice([phonenumbers.PhoneNumberFormat.INTERNATIONAL,
                                                        phonenumbers.PhoneNumberFormat.E164]))


def _card(r: random.Random) -> str:
    prefix, length = r.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15),
                               ("37", 15), ("6011", 16), ("65", 16), ("35", 16), ("4", 13)])
    body = prefix + "".join(r.choice(string.digits) for _ in range(length - len(prefix) - 1))
    number = body + luhn.calc_check_digit(body)
    assert luhn.is_valid(number)
    style = r.choice(["space", "dash", "none"])
    if style == "none" or length == 13:  # 13-digit Visa: printed unbroken
        return number
    sep = " " if style == "space" else "-"
    groups = [number[:4], number[4:10], number[10:]] if length == 15 else \
        [number[i:i + 4] for i in range(0, length, 4)]
    return sep.join(groups)


_IBAN_SHAPES = {"DE": "18n", "FR": "23n", "ES": "20n", "NL": "4a10n", "GB": "4a14n", "BE": "12n",
                "PL": "24n", "IT": "1a22n", "CH": "17n"}


def _iban(r: random.Random) -> str:
    country = r.choice(sorted(_IBAN_SHAPES))
    shape = _IBAN_SHAPES[country]
    bban = ""
    for count, kind in re.findall(r"(\d+)([an])", shape):
        pool = string.ascii_uppercase if kind == "a" else string.digits
        bban += "".join(r.choice(pool) for _ in range(int(count)))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    value = f"{country}{check:02d}{bban}"
    if not stdnum_iban.is_valid(value):  # a national check digit (FR, ES, BE, IT) failed: retry
        return _iban(r)
    return stdnum_iban.format(value) if r.random() < 0.6 else value


def _ssn(r: random.Random) -> str:
    while True:
        area = r.randint(1, 899)
        value = f"{area:03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"
        if stdnum_ssn.is_valid(value):
            return value if r.random() < 0.8 else value.replace("-", " ")


def _ip(r: random.Random) -> str:
    if r.random() < 0.6:
        return ".".join(str(r.randint(1, 254)) for _ in range(4))
    groups = [f"{r.randint(0, 0xffff):x}" for _ in range(8)]
    if r.random() < 0.5:
        return ":".join(groups)
    return f"2001:db8::{groups[5]}:{groups[6]}:{groups[7]}"


def _token(r: random.Random, n: int, pool: str = _ALNUM) -> str:
    return "".join(r.choice(pool) for _ in range(n))


def _aws(r: random.Random) -> str:
    return r.choice(["AKIA", "ASIA"]) + _token(r, 16, string.ascii_uppercase + string.digits)


def _github(r: random.Random) -> str:
    if r.random() < 0.2:
        return "github_pat_" + _token(r, 22) + "_" + _token(r, 59)
    return r.choice(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]) + _token(r, 36)


def _slack(r: random.Random) -> str:
    return (f"xox{r.choice('abposr')}-{r.randint(10**10, 10**12)}-{r.randint(10**10, 10**12)}-"
            + _token(r, 24))


def _sk(r: random.Random) -> str:
    return "sk-" + r.choice(["", "proj-", "svcacct-"]) + _token(r, 48, _ALNUM + "_-")


def _jwt(r: random.Random) -> str:
    header = _b64url({"alg": r.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"})
    payload = _b64url({"sub": str(r.randint(1, 10**6)), "exp": r.randint(1.7e9, 1.9e9)})
    return f"{header}.{payload}.{_token(r, 43, _B64URL)}"


def _pem(r: random.Random) -> str:
    kind = r.choice(["RSA ", "EC ", "OPENSSH ", ""])
    lines = [_token(r, 64, _ALNUM + "+/") for _ in range(r.randint(3, 8))]
    return f"-----BEGIN {kind}PRIVATE KEY-----\n" + "\n".join(lines) + f"\n-----END {kind}PRIVATE KEY-----"


def _url_credentials(r: random.Random) -> str:
    scheme = r.choice(["postgres", "https", "redis", "mysql", "amqp"])
    return f"{scheme}://{r.choice(LAST).lower()}:{_token(r, r.randint(8, 20))}@db{r.randint(1, 9)}.internal.example:5432/app"


def _assigned(r: random.Random) -> str:
    if r.random() < 0.4:
        return f"{r.choice(['password', 'PASSWORD', 'db_password', 'secret'])}={r.choice(['changeme', 'hunter2', 'Winter2026!', _token(r, 12)])}"
    key = r.choice(["token", "api_key", "secret_key", "AUTH_TOKEN", "access_key"])
    return r.choice([f"{key}={_token(r, 32)}", f'"{key}": "{_token(r, 28)}"', f"{key}: {_token(r, 40)}"])


#: type → value generator; "person" is planted through declared participants.
GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "email": _email, "phone": _phone, "card": _card, "iban": _iban, "ssn": _ssn, "ip": _ip,
    "aws_key": _aws, "github_token": _github, "slack_token": _slack, "api_key": _sk, "jwt": _jwt,
    "private_key": _pem, "url_credentials": _url_credentials, "assigned_secret": _assigned,
}

#: What must not survive masking, per type (for url/assigned secrets: the secret part only).
def secret_part(kind: str, value: str) -> str:
    if kind == "url_credentials":
        return value.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    if kind == "assigned_secret":
        return value.rsplit("=", 1)[-1] if "=" in value else value.rsplit(" ", 1)[-1].strip('"')
    if kind == "private_key":
        return value.splitlines()[1]
    return value


_SENTENCES = [
    "Please reach out via {v} before the renewal call.",
    "For the record: {v}",
    "They pasted {v} in the thread, can someone rotate it?",
    "Contact {v}, or escalate to the account team.",
    "Log line: connecting with {v} failed after 3 retries",
]


@dataclass
class Planted:
    kind: str
    value: str  # the substring that must be gone after masking
    field: str


@dataclass
class CorpusDocument:
    collection: str
    raw: dict[str, Any]
    planted: list[Planted] = field(default_factory=list)


def _meta(r: random.Random) -> dict[str, str]:
    """A Flow-style v1 UUID: its timestamp a publish time in late 2026, a random node."""
    ticks = int((1_795_000_000 + r.uniform(0, 3_000_000)) * 10_000_000) + 0x01B21DD213814000
    u = uuid.UUID(fields=(ticks & 0xFFFFFFFF, (ticks >> 32) & 0xFFFF, ((ticks >> 48) & 0x0FFF) | 0x1000,
                          0x80, 0, r.getrandbits(48)))
    return {"uuid": str(u), "op": "c"}


def pii_corpus(seed: int = 7, n_per_shape: int = 60) -> list[CorpusDocument]:
    r = random.Random(seed)
    kinds = sorted(GENERATORS)
    docs: list[CorpusDocument] = []
    counter = 0

    def plant(doc: CorpusDocument, field_name: str) -> str:
        nonlocal counter
        kind = kinds[counter % len(kinds)]
        counter += 1
        value = GENERATORS[kind](r)
        doc.planted.append(Planted(kind, secret_part(kind, value), field_name))
        return r.choice(_SENTENCES).format(v=value)

    def short(doc: CorpusDocument, field_name: str) -> str:
        """For one-line fields (names, labels): the value alone, sometimes with a word."""
        nonlocal counter
        kind = kinds[counter % len(kinds)]
        counter += 1
        value = GENERATORS[kind](r)
        doc.planted.append(Planted(kind, secret_part(kind, value), field_name))
        return value if r.random() < 0.5 else f"Acme {value}"

    for i in range(n_per_shape):
        people = [f"{f} {l}" for f, l in zip(r.sample(FIRST, 3), r.sample(LAST, 3), strict=True)]
        doc = CorpusDocument("gong", {})
        turns = []
        for t in range(6):
            speaker = people[t % 3]
            mention = people[(t + 1) % 3]
            if t % 2:
                mention = mention.split()[0]  # first name only
                doc.planted.append(Planted("person", mention, "turn"))
            else:
                doc.planted.append(Planted("person", mention, "turn"))
            turns.append({"speaker": speaker, "start_s": t * 7.5,
                          "text": f"Thanks {mention}. " + plant(doc, "turn")})
        doc.planted.append(Planted("person", people[0], "speaker"))
        doc.raw = {"_meta": _meta(r), "call_id": str(7782342274025937895 + i),
                   "title": f"Renewal review with {people[1]} " + short(doc, "title"),
                   "url": f"https://app.gong.io/call?id={7782342274025937895 + i}",
                   "started_at": "2026-11-20T13:42:24Z", "duration_s": 1830 + i,
                   "account_name": short(doc, "account_name"),
                   "participants": [{"name": p, "affiliation": "external"} for p in people],
                   "transcript": turns, "topics": ["pricing", short(doc, "topics")],
                   "action_items": [plant(doc, "action_items")]}
        doc.planted.append(Planted("person", people[1], "title"))
        docs.append(doc)

        user = r.choice(FIRST).lower() + str(i)
        doc = CorpusDocument("slack", {})
        doc.raw = {"_meta": _meta(r), "channel_id": "C024BE91L", "channel_name": "deal-acme",
                   "ts": f"{1795187170 + i}.646894", "user_id": f"U0G9QF9C{i:02d}", "user_name": user,
                   "text": f"{user} here. " + plant(doc, "slack_text") + " " + plant(doc, "slack_text"),
                   "permalink": f"https://sophia.slack.com/archives/C024BE91L/p{1795187170 + i}646894"}
        doc.planted.append(Planted("person", user, "slack_text"))
        docs.append(doc)

        author = r.choice(LAST).lower() + str(i)
        doc = CorpusDocument("github", {})
        doc.raw = {"_meta": _meta(r), "id": f"I_kwDOKx7Ajc{i}", "kind": "issue",
                   "repo": "sophia-ai/ai-memory", "number": 400 + i,
                   "title": "Stale Slack threads: " + short(doc, "title"),
                   "body": "## Steps\n1. " + plant(doc, "body") + "\n\n```\n" + plant(doc, "body")
                           + "\n```\n" + plant(doc, "body"),
                   "author": author, "state": "open", "labels": ["bug", short(doc, "labels")],
                   "url": f"https://github.com/sophia-ai/ai-memory/issues/{400 + i}"}
        docs.append(doc)
    return docs


_CLEAN = [
    "Order ORD-2026-{n:05d} shipped on 2026-11-{d:02d} for ${p:,}.{c:02d}; invoice INV-{y}-{n:04d} follows.",
    "We upgraded from v2.{a}.0 to v2.{b}.1 and the agent 10.{a}.0 build {sha} fixed it.",
    "SKU 555-0199-A and part 1234-5678-90 are back in stock; lead time {a} days, {b} weeks worst case.",
    "The call lasted {a}:{b:02d} (about {a} minutes) and started at 2026-11-20T13:{b:02d}:24Z.",
    "Request id {uuid} took {a}.{b} s at p99; the bundle 1.{a}.{b}.4.5 ships Friday.",
    "Renewal quote: {a},{b:03d} seats at $1,299.00 per month, 12% discount, net 30, PO 4500{n:06d}.",
    "Ticket #{n} moved to In Progress; commit {sha} reverts PR #{a}{b}.",
    "Budget line 2026-Q{q}: ${p:,} capex, {a}% headcount growth, ARR target ${b}M by 2027.",
    "Token budget: max_tokens={a}00 and key=production in the staging config; see config.yaml line {b}.",
    "Use std::vector and Foo::bar in the SDK; the ratio is {a}:{b} and the build is 2026.11.{d}.",
    "Dial-in code {a}{b} {d}{q}; room 4B, floor {q}; meeting id 845 {z} 1234 (Zoom).",
]


def clean_corpus(seed: int = 11, n: int = 400) -> list[str]:
    r = random.Random(seed)
    out = []
    for _ in range(n):
        fields = dict(n=r.randint(1, 99999), d=r.randint(1, 28), p=r.randint(100, 999999),
                      c=r.randint(0, 99), y=r.randint(2020, 2027), a=r.randint(1, 60),
                      b=r.randint(1, 59), q=r.randint(1, 4), z=r.randint(1000, 9999),
                      sha="".join(r.choice("0123456789abcdef") for _ in range(40)),
                      uuid=str(uuid.UUID(int=r.getrandbits(128))))
        out.append(" ".join(t.format(**fields) for t in r.sample(_CLEAN, 4)))
    return out
