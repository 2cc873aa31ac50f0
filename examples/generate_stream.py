#!/usr/bin/env python3
"""Write a deterministic sample Estuary webhook stream for the three enriched collections.

Usage:
    python examples/generate_stream.py [--seed 7] [--out examples/stream] [--scale 1]

Output files, each in delivery order:
    gong-calls-enriched.jsonl       one collection document per line
    slack-messages-enriched.jsonl   one collection document per line
    github-enriched.json            one JSON array, the way one webhook request carries it

Contract:
- Standard library only. The same (seed, scale) always gives the same bytes: every random choice
  comes from one seeded ``random.Random`` per corpus copy, no clock is read, documents are plain
  dicts built in a fixed order, and the JSON is written with fixed separators.
- ``_meta.uuid`` is a real v1 UUID whose timestamp is the publish time (see
  shared/reference/estuary.md section 2). Publish times increase through the whole stream, across
  the three files; the one exception is a deliberately late, older version of a GitHub issue,
  which keeps its original (older) UUID although it is delivered after its newer version.
- ``--scale K`` appends K-1 further copies of the corpus with distinct keys, new random text and
  UUIDs shifted by 14 days per copy, for benchmarks. Scale 1 stays under ~1 MB.

The cases the stream holds on purpose are listed in examples/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import random
import re
import uuid
from pathlib import Path

GONG = "sophia-ai/gong-calls-enriched"
SLACK = "sophia-ai/slack-messages-enriched"
GITHUB = "sophia-ai/github-enriched"
OUTPUT_FILES = {
    GONG: "gong-calls-enriched.jsonl",
    SLACK: "slack-messages-enriched.jsonl",
    GITHUB: "github-enriched.json",
}

BASE_PUBLISH = "2026-11-20T15:00:00Z"  # publish time of the first document of copy 0
GREGORIAN_TO_UNIX_TICKS = 0x01B21DD213814000  # 100 ns ticks from 1582-10-15 to 1970-01-01
PRODUCER_NODE = 0x0242AC120002  # the fixed producer id in every UUID's node field
COPY_SHIFT_US = 14 * 86_400 * 1_000_000  # how far each --scale copy moves in time
UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
YEAR = 2026
REPO = "sophia-ai/ai-memory"


# ---------------------------------------------------------------------------------------------
# Time and UUIDs
# ---------------------------------------------------------------------------------------------


def parse_utc_us(text: str) -> int:
    """'2026-11-20T15:00:00Z' -> microseconds since the Unix epoch (exact, no floats)."""
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso_utc(us: int) -> str:
    """Microseconds since the epoch -> '2026-11-20T15:00:00Z' (second precision, like the APIs)."""
    moment = EPOCH + datetime.timedelta(microseconds=us)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def gazette_uuid(publish_us: int, counter: int) -> str:
    """A v1 UUID laid out like Gazette's: timestamp = publish time, clock_seq = counter << 10.

    The top 4 of the 14 clock-sequence bits are the tick counter, the low 10 bits the transaction
    flags (0 here), and the node is the fixed producer id. ``uuid.UUID(u).time`` decodes back to
    the publish time in 100 ns ticks.
    """
    ticks = GREGORIAN_TO_UNIX_TICKS + publish_us * 10
    clock_seq = (counter & 0xF) << 10
    return str(
        uuid.UUID(
            fields=(
                ticks & 0xFFFFFFFF,
                (ticks >> 32) & 0xFFFF,
                ((ticks >> 48) & 0x0FFF) | 0x1000,
                0x80 | (clock_seq >> 8),
                clock_seq & 0xFF,
                PRODUCER_NODE,
            )
        )
    )


@dataclasses.dataclass
class Event:
    """One document version as published by Flow and delivered by the webhook."""

    collection: str
    publish_us: int
    op: str  # "c" | "u" | "d"
    fields: dict  # the document without _meta
    delivered_us: int | None = None  # set only for the late replay; otherwise = publish_us

    @property
    def delivery_us(self) -> int:
        return self.publish_us if self.delivered_us is None else self.delivered_us


class Clock:
    """Turns the scenario's 'MM-DD hh:mm:ss' times into publish microseconds for one copy."""

    def __init__(self, rng: random.Random, shift_us: int) -> None:
        self.rng = rng
        self.shift_us = shift_us

    def at(self, when: str, exact: bool = False) -> int:
        base = parse_utc_us(f"{YEAR}-{when.replace(' ', 'T')}Z")
        jitter = 0 if exact else self.rng.randrange(1, 1_000_000)
        return base + jitter + self.shift_us


# ---------------------------------------------------------------------------------------------
# Conversation text: slot pools, topic template pools, and the transcript writer
# ---------------------------------------------------------------------------------------------

SLOT_POOLS = {
    "team": ["support team", "account executives", "customer success managers", "solutions engineers",
             "renewals desk", "sales development reps", "onboarding specialists"],
    "team2": ["marketing folks", "finance analysts", "legal team", "partner managers",
              "product managers", "field engineers"],
    "feature": ["semantic search over call transcripts", "the Slack answer bot", "account briefs",
                "deal risk alerts", "the browser extension", "the weekly digest emails",
                "the saved answers library", "call highlights"],
    "metric": ["weekly active users", "searches per seat", "saved answers", "answers clicked through",
               "time to first answer"],
    "month": ["January", "February", "March", "April"],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday"],
    "pct": ["twelve", "fifteen", "eighteen", "twenty", "twenty-five", "thirty"],
    "competitor": ["Recallify", "DealVault", "one of the big suite vendors", "an internal build"],
    "doc": ["the SOC 2 Type II report", "the pen test summary", "the subprocessor list", "the DPA",
            "the security whitepaper", "the CAIQ questionnaire"],
    "crm_obj": ["opportunities", "accounts", "contacts", "activities", "cases"],
    "topicword": ["the renewal date", "the seat count", "the admin console", "the export",
                  "the audit log", "the retention setting"],
}

OPENERS = ["So, ", "Honestly, ", "Yeah, ", "I mean, ", "Okay, so ", "Right, and ", "To be fair, ",
           "From my side, ", "Just to add, ", "Look, "]
PROPER_WORDS = {"Okta", "Salesforce", "Frankfurt", "Schrems", "Microsoft", "Teams", "Thanksgiving",
                "Dublin", "London", "Entra", "Azure", "GDPR", "Google", "Slack", "Gong"}

BACKCHANNELS = ["Yeah.", "Right.", "Okay, that makes sense.", "Got it.", "Mm-hm.", "Sure.",
                "Understood.", "That's fair.", "Okay, good to know.", "Interesting.", "Yep, go ahead.",
                "Sorry, go on.", "Perfect.", "Makes sense to me.", "Okay.", "Right, right."]

FILLERS = [
    "Let me share my screen, tell me when you can see the dashboard.",
    "Sorry, you cut out for a second there, could you repeat the last part?",
    "I'm going to take a note on that so we don't lose it.",
    "Just so I'm answering the right question, you mean {topicword} specifically?",
    "That's a good question, and I'd rather give you a precise answer than guess.",
    "Hold on, I'm getting a lot of echo, let me switch headsets.",
    "Can everyone see the slide now, or is it still loading?",
    "Sorry, my dog decided this was the moment to bark at the mail carrier.",
    "Let me pull that up, one second.",
    "I think {ext_first} had a question on this earlier, do you want to jump in?",
    "We're at the half-hour mark, so let me keep us moving.",
    "I'll put the link in the chat so you have it.",
]

# Each topic has four pools: questions and statements from the customer (ext_q, ext_a) and from
# our side (int_q, int_a). Slots in braces are filled per use.
TOPICS: dict[str, dict[str, list[str]]] = {
    "usage": {
        "ext_a": [
            "Honestly the {team} live in it now, the Slack answers are the first thing they open in the morning.",
            "Adoption is uneven, our {team} use it daily but the {team2} barely logged in last quarter.",
            "The piece people mention most is {feature}, that one sold itself.",
            "We had a dip in {month} when a group of new hires started without any training.",
            "I pulled the numbers before the call and we're around {pct} percent weekly active across licensed seats.",
            "Managers like the account briefs, they read them before QBRs instead of digging through the CRM.",
            "Where it falls down is older content, anything from before we connected the archive is missing.",
            "A couple of people complained that results felt noisy when they typed only two or three words.",
            "The new hires actually pick it up faster than the veterans, who still search their inbox first.",
        ],
        "int_q": [
            "Which teams would you say get the most out of it today?",
            "Have you looked at the usage dashboard lately, or should I walk you through it?",
            "What does a normal day look like for someone on your {team} using {feature}?",
            "Are there groups who were licensed but never really got started?",
            "When people don't find an answer, what do they fall back to?",
            "Is there a metric your leadership tracks that we should be reporting on?",
        ],
        "int_a": [
            "On our dashboard {metric} is up about {pct} percent since {month}, which is healthy for an account your size.",
            "That kind of dip is typical, when a cohort starts without the onboarding session usage lags for six to eight weeks.",
            "We can run a short refresher for the {team2}, thirty minutes usually does it.",
            "Short queries are a known weak spot, and the hybrid search in the latest release helps a lot there.",
            "I can send you a monthly adoption report so you're not pulling numbers by hand.",
            "If you connect the archive we'd backfill it over a weekend, with no downtime for your users.",
            "The accounts that do best usually have one champion per team who shares good answers in Slack.",
        ],
        "ext_q": [
            "Can you break usage down by team so I can show it to my VP?",
            "Is there a way to see which questions go unanswered?",
            "How do other customers keep adoption up after the first ninety days?",
            "Do we pay for people who only log in once a month?",
        ],
    },
    "pricing": {
        "ext_a": [
            "Budget is tight this cycle, finance asked every team to come in flat or justify the increase.",
            "Procurement will compare this against {competitor}, they always ask for a second quote.",
            "The seat count is the tricky part because headcount plans aren't final until {month}.",
            "If we commit for longer, we'd expect that to show up in the unit price.",
            "Our fiscal year starts in {month}, so the timing of the signature decides which budget it hits.",
            "I'd rather pay for active users than for every seat we provision.",
            "The last renewal went through with almost no questions, this year everything gets scrutinized.",
            "My boss will ask me what we get for the extra money, so I need a story, not just a number.",
        ],
        "int_q": [
            "Walk me through how approval works on your side once we agree on numbers.",
            "Who besides you needs to sign off, procurement only or also finance leadership?",
            "Would a longer term be on the table if the pricing reflects it?",
            "What seat count do you want to plan for, knowing you can true up later?",
            "Is there a budget number I should aim at so we don't go back and forth?",
        ],
        "int_a": [
            "For a {term} term we can usually hold the per-seat price and add price protection.",
            "List price for the enterprise tier is {price} per seat per month, and that includes the connectors.",
            "True-ups happen once a year, so you only pay for growth when it actually shows up.",
            "I can't commit to a discount on this call, but I'll take it to my VP with a clear business case.",
            "Usage-based pricing exists for the API tier, but for seats the math usually works out better for you.",
            "If the paperwork lands before quarter end I have more room to work with.",
            "I'll put two options in the quote, one with a longer term and one with flexible seats, so finance can compare.",
        ],
        "ext_q": [
            "What happens to the price if we drop seats at renewal?",
            "Is the Salesforce connector extra or part of the platform fee?",
            "Can you send the quote in a format procurement can redline?",
            "Do you offer a ramp so we're not paying for all the seats from day one?",
        ],
    },
    "security": {
        "ext_q": [
            "Can you share the latest SOC 2 Type II report and the bridge letter?",
            "When was your last external penetration test, and who ran it?",
            "Do you train any models on our data, even in aggregate?",
            "How do you handle encryption keys, is bring-your-own-key supported?",
            "What's your incident notification window if there's a breach?",
            "Which subprocessors touch customer content?",
        ],
        "int_a": [
            "Our SOC 2 Type II covers the twelve months through September, and the bridge letter takes it to year end.",
            "The pen test was done by an outside firm in {month}, no criticals and two mediums, both remediated.",
            "We don't train foundation models on customer data, full stop, and that's written into the DPA.",
            "Everything is encrypted at rest with AES-256, and customer-managed keys come with the enterprise tier.",
            "Contractually we notify within seventy-two hours, and in practice our runbook says twenty-four.",
            "The subprocessor list is on the trust portal, and we give thirty days notice before adding one.",
            "I'll get you access to the trust portal, everything there is watermarked per viewer.",
            "Production access needs a second approver and every session is recorded, auditors ask about that a lot.",
        ],
        "ext_a": [
            "Our vendor-risk team scores every tool, and anything that touches customer calls is high risk by default.",
            "{doc} is what they'll read first, so sending it early saves us a week.",
            "Last time a vendor took two months to fill in our questionnaire, I'd like to avoid that.",
            "The security team will want a call with someone technical, not just documents.",
            "Audit season starts in {month}, so anything open after that gets painful.",
        ],
        "int_q": [
            "Do you have a standard questionnaire, or are you fine with the CAIQ plus the SOC 2?",
            "Who on your side owns the security review, and what's their usual turnaround?",
            "Is there anything from last year's review that's still open?",
        ],
    },
    "residency": {
        "ext_q": [
            "Where exactly is our data stored today, region and provider?",
            "If we're on the EU cluster, does anything still get processed in the US?",
            "What about support access, can engineers outside Europe see our content?",
            "Are the embeddings treated as personal data in your DPA?",
        ],
        "ext_a": [
            "The works council has to approve any tool that processes employee conversations.",
            "GDPR is the baseline, and our own customers add their clauses on top of that.",
            "The Schrems II discussion never really went away here, legal is very careful about transfers.",
            "We need the data processing agreement to list the regions explicitly.",
            "Our auditors will ask for evidence, not just a sentence in a contract.",
        ],
        "int_a": [
            "The EU cluster runs in Frankfurt, and the search index, the raw documents and the logs all stay there.",
            "Support access from outside the EU is off by default and needs a ticket that you approve.",
            "We treat embeddings exactly like the source text, same retention and same deletion guarantees.",
            "Deletion reaches the index within minutes, and backups age out after thirty-five days.",
            "The only US touchpoint is billing metadata, no content, and that's listed in the DPA annex.",
            "We can provide a transfer impact assessment, legal has a template ready.",
        ],
        "int_q": [
            "Is Frankfurt acceptable, or do you need a specific country?",
            "Does your legal team need a transfer impact assessment from us?",
            "Are there other regulators besides your data protection authority we should plan for?",
        ],
    },
    "sso": {
        "ext_q": [
            "Do you support SAML with {idp}, and is SCIM provisioning included?",
            "Can we enforce SSO only and switch off password logins?",
            "How do groups map to roles in your product?",
            "What happens to someone's saved answers when we deprovision them?",
        ],
        "ext_a": [
            "We run {idp} for everything, and IT won't approve a tool without SCIM.",
            "Deprovisioning is what our auditors care about, offboarding has to happen the same day.",
            "We've had vendors where the IdP-initiated flow worked but SP-initiated didn't.",
            "Our IT team is small, so the less custom configuration the better.",
        ],
        "int_a": [
            "SAML 2.0 works with {idp} out of the box, and SCIM is included on the enterprise plan.",
            "Once SSO is enforced, password logins are disabled for everyone except one break-glass admin.",
            "Groups come over through SCIM and you map them to roles in the admin console.",
            "Both IdP-initiated and SP-initiated flows work, most teams use SP-initiated from the Slack app.",
            "If you send me the metadata XML I can check the configuration before you flip it on.",
            "Deprovisioned users lose access immediately, and their saved answers move to their manager.",
        ],
        "int_q": [
            "Which attribute do you use as the unique identifier, email or employee ID?",
            "Who on the IT side would own the SSO setup?",
            "Do you want just-in-time provisioning as well, or SCIM only?",
        ],
    },
    "latency": {
        "ext_a": [
            "Our reps noticed searches taking several seconds, and some just spun and never came back.",
            "That's not acceptable during peak season, it's exactly when the {team} need it most.",
            "We got a status page notice but nothing that explained what actually happened.",
            "Escalations came in from three regional managers on the same morning.",
            "I had to explain to my VP why the tool we championed was the bottleneck.",
        ],
        "ext_q": [
            "What's the root cause, and what stops it from happening again?",
            "Do you have an SLA on search latency or only on uptime?",
            "Will we get a written postmortem?",
            "How would we even know before our users tell us?",
        ],
        "int_a": [
            "I want to start by apologizing, that's not the experience we promise.",
            "Our target is p95 under five hundred milliseconds for search, and we alert well before that.",
            "The postmortem will have the timeline, the root cause and every follow-up with an owner and a date.",
            "We've added a separate pool for background jobs so they can't starve interactive queries.",
            "The uptime SLA is 99.9 percent monthly, latency is an objective today, not a contractual SLA.",
            "You can subscribe to the status page per component, so search alerts reach your ops channel.",
        ],
        "int_q": [
            "Were particular regions or teams hit hardest?",
            "Would a monthly performance report be useful for your ops team?",
            "Do you have your own synthetic checks against our API?",
        ],
    },
    "salesforce": {
        "ext_a": [
            "Everything lives in Salesforce, reps won't open another tab for notes.",
            "We have a lot of custom objects, our admin built most of them years ago.",
            "API limits are already a sore point with our Salesforce admin.",
            "We want call summaries written back onto the opportunity, not just linked.",
            "Field history tracking is on for most objects, so noisy updates show up in audits.",
        ],
        "ext_q": [
            "Does the integration write back to Salesforce, or only read?",
            "How often does it sync, real time or batched?",
            "Can we choose which fields get written?",
            "What happens if a write fails, do we get an alert?",
        ],
        "int_a": [
            "The connector reads {crm_obj} and writes summaries back as activities on the opportunity.",
            "Sync runs every fifteen minutes, and you can trigger it on demand from the admin page.",
            "Field mapping is configurable per object, including custom fields.",
            "We use the bulk API for backfills so we don't burn through your daily limits.",
            "Write-back uses an integration user, so permissions stay under your control.",
            "Failed writes land in an error queue in the admin page, and you can retry them in bulk.",
        ],
        "int_q": [
            "Which objects matter most to your reps, {crm_obj} or something custom?",
            "Do you have a sandbox we can test against first?",
            "Is your integration user on a dedicated license?",
        ],
    },
    "onboarding": {
        "ext_q": [
            "What does a typical rollout plan look like for a company our size?",
            "Who from your side runs the training sessions?",
            "How long until people can actually search their own calls?",
            "Can the training be recorded for people who join later?",
        ],
        "ext_a": [
            "We'd like to start with a pilot group before going company wide.",
            "Our enablement team wants recorded sessions so new hires can watch them later.",
            "The admins are the bottleneck, there are only a few of them for the whole org.",
            "People here hate long trainings, short sessions work much better.",
        ],
        "int_a": [
            "Most rollouts go in two waves, admins and champions first, then everyone else two weeks later.",
            "Your CSM runs the admin training, and we do live sessions for end users plus recordings.",
            "Once the connectors are authorized, the backfill takes a day or two depending on volume.",
            "We'll set up a shared Slack channel so your admins get answers quickly during the rollout.",
            "We keep the end-user sessions to forty-five minutes, with a cheat sheet afterwards.",
        ],
        "int_q": [
            "Who would be your internal champion for the rollout?",
            "Do you want the training in person or remote?",
            "Which teams should be in the pilot?",
        ],
    },
    "roadmap": {
        "ext_q": [
            "What's coming in the next couple of quarters?",
            "Is anything planned for {feature}?",
            "Will you support Microsoft Teams as a source?",
            "Can we get early access to new features?",
        ],
        "int_a": [
            "The big items are hybrid search, which just shipped, and speaker filters for call transcripts.",
            "Teams as a source is in beta with a handful of customers, general availability is planned for {month}.",
            "We're also working on citations that jump to the exact moment in the call recording.",
            "I can't give dates on everything, but I'm happy to set up a roadmap session with product.",
            "There's a customer advisory board that sees designs early, I can nominate you.",
        ],
        "ext_a": [
            "Citations would be huge, people don't trust an answer they can't verify.",
            "Teams matters for us because half the company never moved to Slack.",
            "We'd happily be a design partner if it means our feedback lands.",
        ],
        "int_q": [
            "If you could change one thing in the product tomorrow, what would it be?",
            "Which sources beyond calls and Slack would add the most value for you?",
        ],
    },
    "legal": {
        "ext_a": [
            "Legal will send redlines on the MSA, mostly around liability and indemnity.",
            "Our standard is a mutual NDA first, then your paper for the order form.",
            "They always push on auto-renewal language, so expect that.",
            "Anything with uncapped indemnity goes to our general counsel, which adds two weeks.",
        ],
        "int_a": [
            "Send the redlines whenever they're ready, our legal team turns them around within a week.",
            "We can work on your paper if that's easier, it just adds some time.",
            "Auto-renewal can switch to renewal by mutual agreement, that's a common request.",
            "The DPA is its own document, so privacy counsel can review it in parallel.",
        ],
        "ext_q": [
            "Is the DPA a separate document or part of the MSA?",
            "Can we get the order form and the MSA as editable Word files?",
        ],
        "int_q": [
            "Who on your legal team should our counsel talk to directly?",
            "Are there clauses that were hard stops with other vendors?",
        ],
    },
    "forecast": {
        "int_a": [
            "{deal} is in commit, paper is with their procurement and I expect it this quarter.",
            "{deal} slipped a week, their champion is out but nothing changed on the deal itself.",
            "{deal} is best case for me, the security review is the long pole.",
            "I'd keep {deal} out of commit until legal comes back with redlines.",
            "{deal} has a new economic buyer, so I'm re-doing the business case.",
            "On {deal} we're single-threaded, I'm trying to get a meeting with their CFO.",
            "Pipeline coverage for next quarter is about three times, a little thin in EMEA.",
            "I need help from product on {deal}, they want a roadmap call before they sign.",
        ],
        "int_q": [
            "What's the risk on {deal}, honestly?",
            "Is {deal} real for this quarter or are we hoping?",
            "Where do we need exec help this week?",
            "Anything in commit that you'd move out today?",
        ],
    },
}

OPENING_PAIRS = [
    ("Hey {ext_first}, can you hear me okay?", "Yes, loud and clear. Sorry I'm a minute late, my previous meeting ran over."),
    ("No worries at all. How's your week been?", "Busy, it's planning season so everyone wants everything by Friday."),
    ("Are you taking any time off for Thanksgiving?", "Just Thursday and Friday, most of the team is out the whole week though."),
    ("Let me give it one more minute for everyone to join.", "Sure, I think my colleague is on the way."),
    ("Thanks for making the time today, I know it's a packed week.", "Of course, this one's been on my list for a while."),
    ("How's the weather on your side?", "Grey and cold, the usual for November."),
]
CLOSING_PAIRS = [
    ("Thanks everyone, this was really helpful.", "Likewise, thanks for the thorough answers."),
    ("Great, talk soon, and have a good rest of your week.", "You too, bye."),
    ("I'll send the summary within the hour.", "Perfect, thanks."),
    ("Enjoy the holiday if you're taking time off.", "Thanks, you too."),
]


@dataclasses.dataclass(frozen=True)
class Person:
    name: str
    email: str
    affiliation: str  # "internal" | "external"

    @property
    def first(self) -> str:
        return self.name.split()[0]

    def as_participant(self) -> dict:
        return {"name": self.name, "email": self.email, "affiliation": self.affiliation}


class TranscriptWriter:
    """Builds a spoken transcript from topic blocks, using each template as rarely as possible."""

    WORDS_PER_S = 2.6

    def __init__(self, rng: random.Random, internal: list[Person], external: list[Person],
                 fixed_slots: dict[str, list[str] | str]) -> None:
        self.rng = rng
        self.internal = internal
        self.external = external
        self.fixed = fixed_slots
        self.turns: list[tuple[str, str]] = []
        self.words = 0
        self.uses: dict[str, int] = {}

    # -- text -------------------------------------------------------------------------------
    def _slot(self, match: re.Match) -> str:
        name = match.group(1)
        if name in self.fixed:
            value = self.fixed[name]
            return value if isinstance(value, str) else self.rng.choice(value)
        if name == "ext_first":
            return self.rng.choice(self.external or self.internal).first
        return self.rng.choice(SLOT_POOLS[name])

    def render(self, template: str) -> str:
        return re.sub(r"\{(\w+)\}", self._slot, template)

    def pick(self, pool: list[str], k: int = 1) -> list[str]:
        """k distinct templates, preferring the least used ones."""
        chosen: list[str] = []
        for _ in range(min(k, len(pool))):
            candidates = [t for t in pool if t not in chosen]
            low = min(self.uses.get(t, 0) for t in candidates)
            template = self.rng.choice([t for t in candidates if self.uses.get(t, 0) == low])
            self.uses[template] = self.uses.get(template, 0) + 1
            chosen.append(template)
        return chosen

    def sentences(self, pool: list[str], k: int) -> str:
        parts = [self.render(t) for t in self.pick(pool, k)]
        if self.rng.random() < 0.3:
            first = parts[0]
            word = first.split(" ", 1)[0]
            if re.fullmatch(r"[A-Z][a-z']+,?", word) and word.rstrip(",") not in PROPER_WORDS and not word.startswith("I'"):
                first = first[0].lower() + first[1:]
            parts[0] = self.rng.choice(OPENERS) + first
        return " ".join(parts)

    # -- speakers ---------------------------------------------------------------------------
    def speaker(self, side: str) -> Person:
        people = self.external if side == "ext" and self.external else self.internal
        weights = [3] + [1] * (len(people) - 1)
        return self.rng.choices(people, weights=weights)[0]

    def say(self, who: Person | str, text: str) -> None:
        name = who if isinstance(who, str) else who.name
        self.turns.append((name, text))
        self.words += len(text.split())

    # -- blocks -----------------------------------------------------------------------------
    def opening(self, pairs: int = 3) -> None:
        for int_line, ext_line in self.rng.sample(OPENING_PAIRS, pairs):
            self.say(self.internal[0], self.render(int_line))
            self.say(self.speaker("ext"), self.render(ext_line))

    def agenda(self, items: list[str]) -> None:
        listed = ", then ".join(items[:-1]) + f", and finally {items[-1]}"
        self.say(self.internal[0], f"For today I had a few things in mind: first {listed}. Does that work for everyone?")
        self.say(self.speaker("ext"), self.rng.choice([
            "That works. If we have time at the end I'd like five minutes on next steps.",
            "Sounds good, that covers what I wanted to discuss.",
            "Yes, works for me. Let's keep an eye on the clock, I have a hard stop.",
        ]))

    def topic(self, name: str, words_target: int, facts: list[tuple[Person, str]] = ()) -> None:
        pools = TOPICS[name]
        start = self.words
        fact_at = int(words_target * self.rng.uniform(0.3, 0.6))
        pending = list(facts)
        while self.words - start < words_target:
            if pending and self.words - start >= fact_at:
                for who, text in pending:
                    self.say(who, text)
                    if self.rng.random() < 0.5:
                        other = "int" if who.affiliation == "external" else "ext"
                        self.say(self.speaker(other), self.rng.choice(BACKCHANNELS))
                pending = []
                continue
            roll = self.rng.random()
            if roll < 0.07:
                self.say(self.speaker(self.rng.choice(["int", "ext"])), self.render(self.rng.choice(FILLERS)))
            elif roll < 0.55 and pools.get("ext_q"):
                self.say(self.speaker("ext"), self.sentences(pools["ext_q"], 1))
                self.say(self.speaker("int"), self.sentences(pools["int_a"], self.rng.choice([1, 2, 2, 3])))
                if self.rng.random() < 0.4:
                    follow = self.rng.choice(BACKCHANNELS) + " " + self.sentences(pools.get("ext_a", pools["int_a"]), 1)
                    self.say(self.speaker("ext"), follow)
            else:
                self.say(self.speaker("int"), self.sentences(pools["int_q"], 1))
                answer_pool = pools.get("ext_a") or pools["int_a"]
                answer_side = "ext" if "ext_a" in pools else "int"
                self.say(self.speaker(answer_side), self.sentences(answer_pool, self.rng.choice([1, 2, 2, 3])))
                if self.rng.random() < 0.4:
                    self.say(self.speaker("int"), self.rng.choice(BACKCHANNELS) + " " + self.sentences(pools["int_a"], 1))
        for who, text in pending:
            self.say(who, text)

    def next_steps(self, promises: list[tuple[Person, str]]) -> None:
        self.say(self.internal[0], "Let me recap what I heard so we're aligned on next steps.")
        for who, text in promises:
            self.say(who, text)
            self.say(self.speaker("ext" if who.affiliation == "internal" else "int"), self.rng.choice(BACKCHANNELS))

    def closing(self) -> None:
        for int_line, ext_line in self.rng.sample(CLOSING_PAIRS, 2):
            self.say(self.internal[0], int_line)
            self.say(self.speaker("ext"), ext_line)

    # -- output -----------------------------------------------------------------------------
    def as_turns(self) -> tuple[list[dict], int]:
        """Gong's shape: [{'speaker', 'start_s', 'text'}], plus the call duration in seconds."""
        t = round(self.rng.uniform(3.0, 15.0), 1)
        out = []
        for name, text in self.turns:
            out.append({"speaker": name, "start_s": round(t, 1), "text": text})
            t += len(text.split()) / self.WORDS_PER_S + self.rng.uniform(0.3, 1.8)
        return out, int(t + self.rng.uniform(5, 40))

    def as_lines(self) -> tuple[str, int]:
        """The older enrichment's shape: one string of 'Name: text' lines."""
        turns, duration = self.as_turns()
        return "\n".join(f"{turn['speaker']}: {turn['text']}" for turn in turns), duration


# ---------------------------------------------------------------------------------------------
# Gong calls
# ---------------------------------------------------------------------------------------------

LEO = Person("Leo Park", "leo@sophia.example", "internal")
MARCUS = Person("Marcus Chen", "marcus@sophia.example", "internal")
PRIYA = Person("Priya Raman", "priya@sophia.example", "internal")
HANNAH = Person("Hannah Vogel", "hannah@sophia.example", "internal")
NINA = Person("Nina Schulz", "nina@sophia.example", "internal")
SAM = Person("Sam Rivera", "sam@sophia.example", "internal")
TOM = Person("Tom Okafor", "tom@sophia.example", "internal")


@dataclasses.dataclass
class CallSpec:
    """Everything about one Gong call except the filler talk, which the writer generates."""

    call_id: int
    title: str
    published: str  # 'MM-DD hh:mm:ss' in the scenario
    internal: list[Person]
    external: list[Person]
    fixed_slots: dict
    agenda: list[str]
    blocks: list[tuple[str, int, list[tuple[Person, str]]]]  # (topic, words, fact turns)
    promises: list[tuple[Person, str]]
    as_lines: bool  # transcript as one 'Name: text' string instead of a list of turns
    extra: dict  # enrichment fields: account, sentiment, topics, action items, unknown fields
    exact_publish: bool = False


def gong_specs() -> list[CallSpec]:
    dana = Person("Dana Whitfield", "dana@acme.example", "external")
    raj = Person("Raj Malhotra", "raj.malhotra@acme.example", "external")
    katrin = Person("Katrin Albers", "katrin.albers@nordwind-logistik.example", "external")
    jan = Person("Jan Becker", "jan.becker@nordwind-logistik.example", "external")
    maya = Person("Maya Ortiz", "maya.ortiz@helixhealth.example", "external")
    ben = Person("Ben Foster", "ben.foster@helixhealth.example", "external")
    carla = Person("Carla Mendes", "carla.mendes@brightline.example", "external")
    owen = Person("Owen Reed", "owen.reed@brightline.example", "external")
    eli = Person("Eli Navarro", "eli.navarro@quantumfreight.example", "external")
    grace = Person("Grace Kim", "grace.kim@quantumfreight.example", "external")
    victoria = Person("Victoria Hale", "victoria.hale@kestrelbank.example", "external")
    daniel = Person("Daniel Osei", "daniel.osei@kestrelbank.example", "external")
    sofia = Person("Sofia Almeida", "sofia.almeida@orchidpharma.example", "external")
    tiago = Person("Tiago Costa", "tiago.costa@orchidpharma.example", "external")

    return [
        CallSpec(
            call_id=7782342274025937895,
            title="Acme Corp <> Sophia renewal review",
            published="11-20 15:00:00",
            exact_publish=True,
            internal=[LEO, MARCUS],
            external=[dana, raj],
            fixed_slots={"term": "three-year", "price": "fifty-eight dollars", "idp": "Okta"},
            agenda=["where adoption stands", "the renewal and pricing", "what's on the roadmap",
                    "the security paperwork", "contract terms", "onboarding the new team"],
            blocks=[
                ("usage", 1300, [
                    (raj, "On seats, we go from twelve hundred to fourteen hundred and fifty. The extra two hundred "
                          "and fifty are the Columbus support center, which moves over to us in February after the "
                          "reorg, and they'll need licenses from their first week."),
                ]),
                ("pricing", 2000, [
                    (dana, "Here's where our CFO landed after the budget review. She will sign a three-year agreement, "
                           "but only if the yearly price increase is capped at four percent and that cap is written "
                           "into the order form itself. Anything above four percent goes back to the board, and the "
                           "board doesn't meet again until March, so that would blow our timeline."),
                    (LEO, "Understood, a four percent ceiling on the annual uplift for all three years. I'll need "
                          "to run it by my VP, but it's the kind of ask we can usually accommodate on a multi-year term."),
                ]),
                ("roadmap", 1200, []),
                ("security", 1200, [
                    (raj, "Our vendor-risk team flagged that the SOC 2 report stops at September thirtieth, so they "
                          "want the bridge letter covering October through December before the renewal is signed."),
                ]),
                ("legal", 1300, [
                    (dana, "One more thing from legal. The Munich subsidiary signed its own contract with you last "
                           "spring, and we want this renewal to co-terminate with it so there's a single renewal date "
                           "next time."),
                ]),
                ("onboarding", 1100, []),
            ],
            promises=[
                (LEO, "I'll send a revised three-year quote with the four percent cap on the annual uplift by Friday."),
                (MARCUS, "I'll share the SOC 2 bridge letter through the trust portal today."),
                (dana, "And I'll get our legal team to send the Munich contract so we can line up the dates."),
                (MARCUS, "I'll put together an onboarding plan for the Columbus support center for February."),
            ],
            as_lines=False,
            extra={
                "account_id": "0015g00000XyZ12", "account_name": "Acme Corp",
                "sentiment": 0.42, "sentiment_category": "neutral",
                "topics": ["pricing", "renewal", "seat expansion", "security review", "contract terms"],
                "action_items": ["send revised 3-year quote with 4% annual uplift cap by Friday",
                                 "share SOC 2 bridge letter via trust portal",
                                 "align renewal date with Munich subsidiary contract",
                                 "plan onboarding for Columbus support center in February"],
                "crm_opportunity_id": "0065g00000Op1AcQAJ",
                "talk_ratio": {"internal": 0.46, "external": 0.54},
            },
        ),
        CallSpec(
            call_id=7790412256031142870,
            title="Nordwind Logistik <> Sophia | security & data residency review",
            published="11-20 18:10:44",
            internal=[NINA, HANNAH, PRIYA],
            external=[katrin, jan],
            fixed_slots={"term": "two-year", "price": "fifty-two euros", "idp": "Entra ID"},
            agenda=["the security documentation", "where data lives and who can access it",
                    "single sign-on and provisioning", "the DPA and contract", "the roadmap",
                    "how a rollout would look"],
            blocks=[
                ("security", 1700, [
                    (jan, "Our vendor-risk process uses our own questionnaire, two hundred and twelve questions, and "
                          "we don't accept a CAIQ instead. Section nine is about subprocessors and that is where most "
                          "vendors fail with us."),
                ]),
                ("residency", 2000, [
                    (katrin, "For us the question is not only the primary copy. The backups, the snapshots of the vector "
                             "index and the disaster recovery replica must also stay inside the European Union. If the "
                             "failover region is Ireland, next to Frankfurt, that is fine for us. If it is anywhere in "
                             "the United States, the project stops there."),
                    (HANNAH, "That matches how the EU cluster is built. The disaster recovery replica lives in Dublin, "
                             "in eu-west-1, and the encrypted backups stay in Frankfurt, so no copy of your content "
                             "ever leaves the EU, including during a failover."),
                ]),
                ("sso", 1400, [
                    (jan, "We use Entra ID, and our auditors require that a leaver loses access to every system within "
                          "four hours, so SCIM deprovisioning is not optional for us."),
                ]),
                ("legal", 1300, [
                    (katrin, "The works council meets on the third of December. Before that I need the DPA annex that "
                             "names Frankfurt and Dublin as the only processing locations, otherwise it goes to January."),
                ]),
                ("roadmap", 900, []),
                ("onboarding", 800, []),
            ],
            promises=[
                (HANNAH, "I'll send the SOC 2 Type II report and the pen test summary through the trust portal."),
                (HANNAH, "I'll confirm in writing that the DR replica and backups stay in Dublin and Frankfurt."),
                (NINA, "I'll get you the DPA annex that lists the processing locations before the works council."),
                (PRIYA, "And I'll set up a SCIM test tenant with Entra ID for Jan's team."),
            ],
            as_lines=True,
            extra={
                "account_id": "0015g00000NwL7QAAV", "account_name": "Nordwind Logistik GmbH",
                "sentiment": 0.12, "sentiment_category": "neutral",
                "topics": ["security review", "data residency", "GDPR", "SSO/SCIM", "DPA"],
                "action_items": ["send SOC 2 Type II report and pen test summary",
                                 "confirm in writing that DR replica and backups stay in the EU",
                                 "send DPA annex listing Frankfurt and Dublin before Dec 3 works council",
                                 "set up SCIM test tenant with Entra ID"],
                "language": "en-US",
                "_enrichment_version": "gong-enrich@2.3.0",
            },
        ),
        CallSpec(
            call_id=7791873301248876514,
            title="Helix Health onboarding: SSO setup and rollout plan",
            published="11-23 18:40:05",
            internal=[MARCUS, PRIYA],
            external=[maya, ben],
            fixed_slots={"term": "two-year", "price": "fifty-five dollars", "idp": "Okta"},
            agenda=["the rollout plan", "the single sign-on problems", "HIPAA and the BAA",
                    "early usage", "the roadmap", "the Salesforce connection"],
            blocks=[
                ("onboarding", 1600, [
                    (maya, "The pilot is the patient access center in Tucson, sixty schedulers on two shifts. If they "
                           "like it, the call center in Phoenix follows in March."),
                ]),
                ("sso", 2000, [
                    (ben, "So here's what I found. Every login from Okta bounced with an invalid assertion error. I "
                          "captured a SAML trace, and our app integration was sending the NameID in the unspecified "
                          "format, while your side expects an email address."),
                    (PRIYA, "Right, and there's a second problem in that trace: the assertion timestamps were about "
                            "three minutes ahead of our clock, beyond the two-minute skew we tolerate. If you switch "
                            "the NameID format to emailAddress and fix NTP on the host that signs the assertions, the "
                            "logins should go through."),
                ]),
                ("security", 1500, [
                    (maya, "Our compliance office signed the BAA last week. The condition is that the Slack connector "
                           "skips every channel whose name starts with clinical, nothing patient-related goes in."),
                ]),
                ("usage", 1200, []),
                ("roadmap", 1000, []),
                ("salesforce", 900, []),
            ],
            promises=[
                (ben, "I'll switch the NameID format to emailAddress in Okta and get the NTP fixed on the IdP host."),
                (PRIYA, "Once that's done I'll retest SP-initiated and IdP-initiated logins with you."),
                (MARCUS, "I'll exclude the clinical channels in the Slack connector before the backfill starts."),
                (MARCUS, "And I'll schedule the pilot training for the patient access team."),
            ],
            as_lines=False,
            extra={
                "account_id": "0015g00000HxH3aAAF", "account_name": "Helix Health",
                "sentiment": 0.55, "sentiment_category": "positive",
                "topics": ["onboarding", "SSO/SAML", "Okta", "HIPAA", "rollout"],
                "action_items": ["switch Okta NameID format to emailAddress",
                                 "fix NTP on the IdP host and retest SSO",
                                 "exclude clinical-* Slack channels from the connector",
                                 "schedule pilot training for the patient access team"],
                "call_brief": "Helix is onboarding; SSO blocked by SAML config; BAA signed.",
            },
        ),
        CallSpec(
            call_id=7793120458876630021,
            title="Brightline Retail: search latency incident debrief",
            published="11-24 17:05:31",
            internal=[MARCUS, SAM],
            external=[carla, owen],
            fixed_slots={"term": "one-year", "price": "fifty dollars", "idp": "Google Workspace"},
            agenda=["what happened during the incident", "what we're changing", "how your teams use search now"],
            blocks=[
                ("latency", 2200, [
                    (SAM, "During your Black Friday preview event on the eighteenth, search p95 climbed to four point "
                          "eight seconds for about ninety minutes. The root cause was a full reindex we had started for "
                          "another tenant on the same cluster, and it saturated the vector store's disk IO."),
                    (MARCUS, "As a goodwill gesture we're crediting ten percent of your November invoice, and you'll "
                             "have that in writing by Monday together with the postmortem."),
                    (carla, "And then this morning's errors on top of it didn't help, my team had a rough day."),
                ]),
                ("usage", 900, []),
                ("roadmap", 800, []),
            ],
            promises=[
                (SAM, "I'll send the written postmortem for the November eighteenth incident."),
                (MARCUS, "I'll make sure the ten percent credit is on the November invoice."),
            ],
            as_lines=True,
            extra={
                "account_id": "0015g00000BrT9kAAB", "account_name": "Brightline Retail",
                "sentiment": -0.38, "sentiment_category": "negative",
                "topics": ["incident", "latency", "service credit", "peak season"],
                "action_items": ["send postmortem for Nov 18 latency incident",
                                 "apply 10% credit to November invoice",
                                 "share monthly performance report"],
            },
        ),
        CallSpec(
            call_id=7794455102387719043,
            title="Quantum Freight: Salesforce integration deep dive",
            published="11-25 16:10:12",
            internal=[PRIYA, LEO],
            external=[eli, grace],
            fixed_slots={"term": "two-year", "price": "fifty-five dollars", "idp": "Okta"},
            agenda=["how the Salesforce sync works", "the errors you're seeing", "the rollout to the freight desks"],
            blocks=[
                ("salesforce", 2000, [
                    (eli, "The sync works for standard opportunities, but it fails on our custom object "
                          "Shipment_Lane__c. The write-back errors out with a field integrity exception on the lane "
                          "rate field, every single time."),
                    (PRIYA, "And separately you're hitting the daily cap of a hundred thousand API calls by mid "
                            "afternoon, so we'll move the backfill to the Bulk API and run it overnight."),
                ]),
                ("onboarding", 900, []),
            ],
            promises=[
                (PRIYA, "I'll map the Shipment_Lane__c fields in the connector and test the write-back in your sandbox."),
                (LEO, "I'll send the updated order form with the Salesforce connector line item."),
            ],
            as_lines=False,
            extra={
                "account_id": "0015g00000QfR2mAAF", "account_name": "Quantum Freight",
                "sentiment": 0.31, "sentiment_category": "neutral",
                "topics": ["Salesforce integration", "custom objects", "API limits"],
                "action_items": ["map Shipment_Lane__c fields in the connector",
                                 "move backfill to the Bulk API overnight",
                                 "test write-back in the Quantum Freight sandbox"],
            },
        ),
        CallSpec(
            call_id=7795560013394410087,
            title="Kestrel Bank discovery: research ops and pricing",
            published="11-25 19:30:40",
            internal=[LEO, HANNAH],
            external=[victoria, daniel],
            fixed_slots={"term": "three-year", "price": "sixty pounds", "idp": "Entra ID"},
            agenda=["your research operations", "pricing models", "security", "deployment options"],
            blocks=[
                ("pricing", 1800, [
                    (victoria, "We have about three thousand analysts, but maybe a third of them search heavily. I'd "
                               "much rather pay per thousand queries than license every analyst."),
                ]),
                ("security", 1400, []),
                ("residency", 1500, [
                    (daniel, "Under the PRA's outsourcing rules this is a material arrangement for us, so the "
                             "deployment has to run in our own AWS account in London, eu-west-2, with our keys."),
                ]),
                ("roadmap", 900, []),
            ],
            promises=[
                (LEO, "I'll send a usage-based pricing proposal for three thousand analysts."),
                (HANNAH, "I'll share our reference architecture for a customer-hosted deployment."),
            ],
            as_lines=False,
            extra={
                "account_id": "0015g00000KsB4dAAF", "account_name": "Kestrel Bank plc",
                "sentiment": 0.6, "sentiment_category": "positive",
                "topics": ["discovery", "pricing", "private deployment", "outsourcing regulation"],
                "action_items": ["send usage-based pricing proposal",
                                 "share reference architecture for customer-hosted deployment"],
                "crm_opportunity_id": "0065g00000Op7KsQAJ",
            },
        ),
        CallSpec(
            call_id=7796102234475510034,
            title="Weekly forecast sync",
            published="11-20 21:15:20",
            internal=[TOM, LEO, NINA, MARCUS],
            external=[],
            fixed_slots={"deal": ["Acme", "Nordwind", "Kestrel", "Quantum Freight", "Orchid"]},
            agenda=["commit", "best case", "pipeline for next quarter"],
            blocks=[
                ("forecast", 1100, [
                    (LEO, "Acme is commit at four hundred twenty thousand for three years, the only open item is the "
                          "uplift cap, and I'd like your blessing on that today."),
                    (NINA, "Nordwind stays best case until the works council signs off, that's early December at the "
                           "earliest."),
                ]),
            ],
            promises=[],
            as_lines=True,
            extra={},  # the call that lacks every optional field
        ),
        CallSpec(
            call_id=7797233345586621098,
            title="Orchid Pharma kickoff",
            published="11-25 13:50:08",
            internal=[MARCUS, PRIYA],
            external=[sofia, tiago],
            fixed_slots={"term": "two-year", "price": "fifty-five euros", "idp": "Azure AD"},
            agenda=["introductions", "the rollout plan", "single sign-on", "security questions"],
            blocks=[
                ("onboarding", 1500, [
                    (sofia, "Wave one is forty admins from the commercial and medical affairs teams. We'd like to do "
                            "their training in person at our Lisbon office on January twelfth."),
                ]),
                ("sso", 900, []),
                ("security", 600, []),
            ],
            promises=[
                (MARCUS, "I'll book the Lisbon training for January twelfth and send the agenda."),
                (PRIYA, "I'll send the Azure AD SAML setup guide to Tiago."),
            ],
            as_lines=False,
            extra={
                "account_id": "0015g00000OrP5sAAF", "account_name": "Orchid Pharma S.A.",
                "sentiment": 0.7, "sentiment_category": "positive",
                "topics": ["kickoff", "onboarding", "training", "Azure AD"],
                "action_items": ["book Lisbon admin training for Jan 12", "send Azure AD SAML setup guide"],
            },
        ),
    ]


def gong_events(rng: random.Random, clock: Clock, copy: int) -> list[Event]:
    events = []
    for spec in gong_specs():
        writer = TranscriptWriter(rng, spec.internal, spec.external, spec.fixed_slots)
        if spec.external:
            writer.opening(pairs=3 if sum(w for _, w, _ in spec.blocks) > 5000 else 2)
            writer.agenda(spec.agenda)
        else:
            writer.say(TOM, "Okay, let's go through the board, commit first, then best case, then pipeline.")
        for topic, words, facts in spec.blocks:
            writer.topic(topic, words, facts)
        if spec.promises:
            writer.next_steps(spec.promises)
        if spec.external:
            writer.closing()
        transcript, duration_s = writer.as_lines() if spec.as_lines else writer.as_turns()

        publish_us = clock.at(spec.published, exact=spec.exact_publish and copy == 0)
        enriched_us = publish_us - rng.randrange(1_000_000, 4_000_000)
        ended_us = enriched_us - rng.randrange(8, 25) * 60_000_000
        started_us = (ended_us - duration_s * 1_000_000) // 1_000_000 * 1_000_000
        call_id = str(spec.call_id + copy * 1_000_003)
        fields: dict = {"call_id": call_id, "title": spec.title}
        if spec.extra:
            fields["url"] = f"https://app.gong.io/call?id={call_id}"
        fields["started_at"] = iso_utc(started_us)
        if spec.extra:
            fields["duration_s"] = duration_s
            fields["account_id"] = spec.extra["account_id"]
            fields["account_name"] = spec.extra["account_name"]
            fields["participants"] = [p.as_participant() for p in spec.internal + spec.external]
        fields["transcript"] = transcript
        for name, value in spec.extra.items():
            if name not in ("account_id", "account_name"):
                fields[name] = value
        if spec.extra:
            fields["enriched_at"] = iso_utc(enriched_us)
        fields["source_system"] = "gong_v2_mcp"
        events.append(Event(GONG, publish_us, "c", fields))
    return events
