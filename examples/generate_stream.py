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
  comes from a seeded ``random.Random`` per corpus copy and collection, no clock is read,
  documents are plain dicts built in a fixed order, and the JSON is written with fixed separators.
- Keys of Slack messages (their ``ts``) depend on the seed; examples/queries.json is written for
  the default seed 7.
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
NO_OPENER_WORDS = {"Honestly", "Yeah", "So", "Right", "Okay", "Look", "Yes", "No", "Sure", "Of", "Just",
                   "Mostly", "Probably", "Not", "Both", "Email", "Citations", "Germany", "Opportunities",
                   "Remote"}
PROPER_WORDS = {"Okta", "Salesforce", "Frankfurt", "Schrems", "Microsoft", "Teams", "Thanksgiving",
                "Dublin", "London", "Entra", "Azure", "GDPR", "Google", "Slack", "Gong", "Acme", "Nordwind",
                "Kestrel", "Quantum", "Orchid", "Helix", "Brightline", "Teams"}

BACKCHANNELS = ["Yeah.", "Right.", "Okay, that makes sense.", "Got it.", "Mm-hm.", "Sure.",
                "Understood.", "That's fair.", "Okay, good to know.", "Interesting.", "Perfect.",
                "Makes sense to me.", "Okay.", "Right, right.", "Good to hear.", "Fair enough."]

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

# Each topic has question/answer pairs asked by the customer (ext_qa) or by us (int_qa), and loose
# statements from either side (ext_a, int_a) used as elaboration. Slots in braces are filled per
# exchange, so a question and its answer name the same deal, month or identity provider.
TOPICS: dict[str, dict[str, list]] = {
    "usage": {
        "ext_qa": [
            ("Can you break usage down by team so I can show it to my VP?",
             "Yes, the admin console has a per-team view, and I can export it as a spreadsheet for your VP."),
            ("Is there a way to see which questions go unanswered?",
             "There's an unanswered-questions report, it lists searches with no click-through so your admins can fill the gaps."),
            ("How do other customers keep adoption up after the first ninety days?",
             "The ones that do best have one champion per team who shares good answers in Slack every week."),
            ("Do we pay for people who only log in once a month?",
             "Today a seat is a seat, but at renewal we can look at moving light users to a cheaper viewer tier."),
            ("Does the digest email count as usage?",
             "It doesn't count as a search, but clicks from the digest into an answer do show up on the dashboard."),
        ],
        "int_qa": [
            ("Which teams would you say get the most out of it today?",
             "Honestly the {team} live in it now, the Slack answers are the first thing they open in the morning."),
            ("Have you looked at the usage dashboard lately?",
             "I pulled the numbers before the call, we're around {pct} percent weekly active across licensed seats."),
            ("Are there groups who were licensed but never really got started?",
             "Adoption is uneven, our {team} use it daily but the {team2} barely logged in last quarter."),
            ("When people don't find an answer, what do they fall back to?",
             "Mostly they ping someone in Slack or dig through the CRM, which is exactly what we wanted to get away from."),
            ("What do people like most so far?",
             "The piece people mention most is {feature}, that one sold itself."),
            ("Is there a metric your leadership tracks that we should report on?",
             "My VP looks at time saved per rep, so anything that turns searches into hours helps me."),
        ],
        "ext_a": [
            "We had a dip in {month} when a group of new hires started without any training.",
            "Managers like the account briefs, they read them before QBRs instead of digging through the CRM.",
            "Where it falls down is older content, anything from before we connected the archive is missing.",
            "A couple of people complained that results felt noisy when they typed only two or three words.",
            "The new hires actually pick it up faster than the veterans, who still search their inbox first.",
            "Our team leads started sharing saved answers in the Monday stand-up, and that helped a lot.",
            "Some people still don't know the Slack bot exists, honestly.",
        ],
        "int_a": [
            "On our dashboard {metric} is up about {pct} percent since {month}, which is healthy for an account your size.",
            "That kind of dip is typical, when a cohort starts without the onboarding session usage lags for six to eight weeks.",
            "We can run a short refresher for the {team2}, thirty minutes usually does it.",
            "Short queries are a known weak spot, and the hybrid search in the latest release helps a lot there.",
            "I can send you a monthly adoption report so you're not pulling numbers by hand.",
            "If you connect the archive we'd backfill it over a weekend, with no downtime for your users.",
            "Most searches happen between nine and eleven in the morning, right before customer calls.",
            "The Slack bot answers about a third of questions without anyone opening the web app.",
            "We've seen accounts double their usage after turning on the weekly digest.",
        ],
    },
    "pricing": {
        "ext_qa": [
            ("What happens to the price if we drop seats at renewal?",
             "You can reduce seats at renewal by up to ten percent without changing the unit price, beyond that we'd re-quote."),
            ("Is the Salesforce connector extra or part of the platform fee?",
             "It's part of the platform fee on the enterprise tier, the only add-on is the API tier."),
            ("Can you send the quote in a format procurement can redline?",
             "Sure, I'll send it as a Word document along with the PDF."),
            ("Do you offer a ramp so we're not paying for all the seats from day one?",
             "We can ramp, for example half the new seats in the first six months and the rest after that."),
            ("What's the list price these days?",
             "List for the enterprise tier is {price} per seat per month, and that includes the connectors."),
        ],
        "int_qa": [
            ("Walk me through how approval works on your side once we agree on numbers.",
             "It goes to procurement first, then finance, and anything over a quarter million needs the CFO's signature."),
            ("Would a longer term be on the table if the pricing reflects it?",
             "If we commit for longer, we'd expect that to show up in the unit price, so yes, if the numbers work."),
            ("What seat count do you want to plan for, knowing you can true up later?",
             "The seat count is the tricky part because headcount plans aren't final until {month}."),
            ("Is there a budget number I should aim at so we don't go back and forth?",
             "Budget is tight this cycle, finance asked every team to come in flat or justify the increase."),
            ("Are you looking at other vendors for this?",
             "Procurement will compare this against {competitor}, they always ask for a second quote."),
        ],
        "ext_a": [
            "Our fiscal year starts in {month}, so the timing of the signature decides which budget it hits.",
            "I'd rather pay for active users than for every seat we provision.",
            "The last renewal went through with almost no questions, this year everything gets scrutinized.",
            "My boss will ask me what we get for the extra money, so I need a story, not just a number.",
            "We also need net-sixty payment terms, that's company policy.",
            "Finance will ask for the price per active user, so please show that on the quote.",
        ],
        "int_a": [
            "For a {term} term we can usually hold the per-seat price and add price protection.",
            "True-ups happen once a year, so you only pay for growth when it actually shows up.",
            "I can't commit to a discount on this call, but I'll take it to my VP with a clear business case.",
            "If the paperwork lands before quarter end I have more room to work with.",
            "I'll put two options in the quote, one with a longer term and one with flexible seats, so finance can compare.",
            "Multi-year terms also lock in the connector pricing, which goes up for new customers in the spring.",
            "I can include a few free admin seats, those don't count against the total.",
            "Our finance team needs the PO number on the order form, just so you're aware.",
        ],
    },
    "security": {
        "ext_qa": [
            ("Can you share the latest SOC 2 Type II report?",
             "Yes, our SOC 2 Type II covers the twelve months through September, and a bridge letter takes it to year end."),
            ("When was your last external penetration test?",
             "The pen test was done by an outside firm in {month}, no criticals and two mediums, both remediated."),
            ("Do you train any models on our data, even in aggregate?",
             "No, we don't train foundation models on customer data, full stop, and that's written into the DPA."),
            ("How do you handle encryption keys, is bring-your-own-key supported?",
             "Everything is encrypted at rest with AES-256, and customer-managed keys come with the enterprise tier."),
            ("What's your incident notification window if there's a breach?",
             "Contractually we notify within seventy-two hours, and in practice our runbook says twenty-four."),
            ("Which subprocessors touch customer content?",
             "The subprocessor list is on the trust portal, and we give thirty days notice before adding one."),
            ("Who at your company can access production data?",
             "Production access needs a second approver and every session is recorded, auditors ask about that a lot."),
        ],
        "int_qa": [
            ("Do you have a standard questionnaire, or are you fine with the CAIQ plus the SOC 2?",
             "Last time a vendor took two months to fill in our questionnaire, so if the CAIQ covers it I'm happy."),
            ("Who on your side owns the security review, and what's their usual turnaround?",
             "Our vendor-risk team scores every tool, it usually takes three to four weeks, and anything that touches customer calls is high risk by default."),
            ("Is there anything from last year's review that's still open?",
             "Just one item about log retention, which I think you already fixed."),
        ],
        "ext_a": [
            "{doc} is what they'll read first, so sending it early saves us a week.",
            "The security team will want a call with someone technical, not just documents.",
            "Audit season starts in {month}, so anything open after that gets painful.",
            "Our CISO reads the pen test summary personally, so that one matters.",
            "We had a vendor breach two years ago, so the bar is higher now.",
        ],
        "int_a": [
            "I'll get you access to the trust portal, everything there is watermarked per viewer.",
            "Happy to set up a call with our security lead, that's usually faster than going back and forth by email.",
            "We also run a bug bounty, and the summary of last year's findings is in the portal.",
            "We're also ISO 27001 certified, the certificate is on the portal next to the SOC 2.",
            "Every laptop is managed and encrypted, and we run phishing simulations every quarter.",
            "Customer data is logically separated per tenant, and each tenant has its own encryption key.",
        ],
    },
    "residency": {
        "ext_qa": [
            ("Where exactly is our data stored today?",
             "The EU cluster runs in Frankfurt, and the search index, the raw documents and the logs all stay there."),
            ("Does anything still get processed in the US?",
             "The only US touchpoint is billing metadata, no content, and that's listed in the DPA annex."),
            ("What about support access, can engineers outside Europe see our content?",
             "Support access from outside the EU is off by default and needs a ticket that you approve."),
            ("Are the embeddings treated as personal data in your DPA?",
             "We treat embeddings exactly like the source text, same retention and same deletion guarantees."),
            ("How quickly is data removed when we delete it?",
             "Deletion reaches the index within minutes, and backups age out after thirty-five days."),
        ],
        "int_qa": [
            ("Is Frankfurt acceptable, or do you need a specific country?",
             "Germany would be ideal, but the legal requirement is the EU, so Frankfurt works."),
            ("Does your legal team need a transfer impact assessment from us?",
             "Yes, the Schrems II discussion never really went away here, legal is very careful about transfers."),
            ("Are there other regulators we should plan for?",
             "Our auditors will ask for evidence, not just a sentence in a contract."),
        ],
        "ext_a": [
            "The works council has to approve any tool that processes employee conversations.",
            "GDPR is the baseline, and our own customers add their clauses on top of that.",
            "We need the data processing agreement to list the regions explicitly.",
            "Our own customers ask us the same questions, so we need answers we can pass on.",
            "Anything American in the chain makes our legal team nervous, even billing.",
        ],
        "int_a": [
            "We can provide a transfer impact assessment, legal has a template ready.",
            "Residency is set per workspace, so a future US subsidiary could live in a separate region.",
            "Our EU on-call engineers are based in Berlin and Lisbon, so incidents are handled inside the EU.",
            "Logs are kept for thirty days and then deleted, also inside the EU.",
            "The EU cluster is a separate deployment with its own on-call rotation, not a region flag on a US system.",
            "You can download an audit log of every support access to your workspace.",
        ],
    },
    "sso": {
        "ext_qa": [
            ("Do you support SAML with {idp}, and is SCIM provisioning included?",
             "SAML 2.0 works with {idp} out of the box, and SCIM is included on the enterprise plan."),
            ("Can we enforce SSO only and switch off password logins?",
             "Yes, once SSO is enforced password logins are disabled for everyone except one break-glass admin."),
            ("How do groups map to roles in your product?",
             "Groups come over through SCIM and you map them to roles in the admin console."),
            ("What happens to someone's saved answers when we deprovision them?",
             "Deprovisioned users lose access immediately, and their saved answers move to their manager."),
            ("Do both IdP-initiated and SP-initiated logins work?",
             "Both work, most teams use SP-initiated from the Slack app."),
        ],
        "int_qa": [
            ("Which attribute do you use as the unique identifier, email or employee ID?",
             "Email for now, although we've talked about moving to employee ID because of name changes."),
            ("Who on the IT side would own the SSO setup?",
             "Our IT team is small, so the less custom configuration the better, but one of our identity engineers will own it."),
            ("Do you want just-in-time provisioning as well, or SCIM only?",
             "We run {idp} for everything, and IT won't approve a tool without SCIM, so SCIM."),
        ],
        "ext_a": [
            "Deprovisioning is what our auditors care about, offboarding has to happen the same day.",
            "We've had vendors where the IdP-initiated flow worked but SP-initiated didn't.",
            "We rotate the signing certificate every year, so that needs to be painless.",
            "Multi-factor is enforced at the IdP, we don't want a second prompt in your app.",
        ],
        "int_a": [
            "If you send me the metadata XML I can check the configuration before you flip it on.",
            "We recommend testing with a small group first, then enforcing SSO for everyone.",
            "SCIM syncs every forty minutes from {idp}, and you can push a single user immediately.",
            "Session length is configurable, most customers choose twelve hours.",
            "We support several IdP connections per workspace, which helps after acquisitions.",
        ],
    },
    "latency": {
        "ext_qa": [
            ("What's the root cause, and what stops it from happening again?",
             "We've added a separate pool for background jobs so they can't starve interactive queries, and reindexing now runs with a hard IO limit."),
            ("Do you have an SLA on search latency or only on uptime?",
             "The uptime SLA is 99.9 percent monthly, latency is an objective today, not a contractual SLA."),
            ("Will we get a written postmortem?",
             "Yes, the postmortem will have the timeline, the root cause and every follow-up with an owner and a date."),
            ("How would we even know before our users tell us?",
             "You can subscribe to the status page per component, so search alerts reach your ops channel."),
        ],
        "int_qa": [
            ("Were particular regions or teams hit hardest?",
             "The {team} on the West Coast, because the slowdown landed right in their morning."),
            ("Would a monthly performance report be useful for your ops team?",
             "Yes, that would help, I had to explain to my VP why the tool we championed was the bottleneck."),
            ("Do you have your own synthetic checks against our API?",
             "Not yet, we got a status page notice but nothing that explained what actually happened."),
        ],
        "ext_a": [
            "Our reps noticed searches taking several seconds, and some just spun and never came back.",
            "That's not acceptable during peak season, it's exactly when the {team} need it most.",
            "Escalations came in from three regional managers on the same morning.",
            "Our peak is the six weeks from mid-November to New Year, everything else is secondary.",
            "When the tool is slow, people go back to asking each other in Slack and never come back.",
        ],
        "int_a": [
            "I want to start by apologizing, that's not the experience we promise.",
            "Our target is p95 under five hundred milliseconds for search, and we alert well before that.",
            "We're also moving large tenants' maintenance jobs to a separate overnight window.",
            "Any single tenant's background jobs are now capped at a quarter of the cluster's IO.",
            "Our on-call was paged within four minutes, but we should have updated the status page sooner.",
            "Let's review the capacity plan for your peak season together in January.",
        ],
    },
    "salesforce": {
        "ext_qa": [
            ("Does the integration write back to Salesforce, or only read?",
             "It reads {crm_obj} and writes summaries back as activities on the opportunity."),
            ("How often does it sync, real time or batched?",
             "Sync runs every fifteen minutes, and you can trigger it on demand from the admin page."),
            ("Can we choose which fields get written?",
             "Yes, field mapping is configurable per object, including custom fields."),
            ("What happens if a write fails, do we get an alert?",
             "Failed writes land in an error queue in the admin page, and you can retry them in bulk."),
            ("Whose permissions does the write-back use?",
             "Write-back uses an integration user, so permissions stay under your control."),
        ],
        "int_qa": [
            ("Which objects matter most to your reps?",
             "Opportunities first, then accounts, and our custom objects for the operations side."),
            ("Do you have a sandbox we can test against first?",
             "We have a full-copy sandbox that was refreshed last month, you can use that."),
            ("Is your integration user on a dedicated license?",
             "Yes, API limits are already a sore point with our Salesforce admin, so it has its own license."),
        ],
        "ext_a": [
            "Everything lives in Salesforce, reps won't open another tab for notes.",
            "We have a lot of custom objects, our admin built most of them years ago.",
            "We want call summaries written back onto the opportunity, not just linked.",
            "Field history tracking is on for most objects, so noisy updates show up in audits.",
            "Our admin will want to review every field we write to before go-live.",
        ],
        "int_a": [
            "We use the bulk API for backfills so we don't burn through your daily limits.",
            "Summaries are capped at thirty-two thousand characters, which is the long text field limit.",
            "Custom objects are added to the mapping once, after that they sync like standard ones.",
            "We respect validation rules, so a failed write tells you exactly which rule blocked it.",
            "You can limit write-back to opportunities above a certain stage.",
        ],
    },
    "onboarding": {
        "ext_qa": [
            ("What does a typical rollout plan look like for a company our size?",
             "Most rollouts go in two waves, admins and champions first, then everyone else two weeks later."),
            ("Who from your side runs the training sessions?",
             "Your CSM runs the admin training, and we do live sessions for end users plus recordings."),
            ("How long until people can actually search their own calls?",
             "Once the connectors are authorized, the backfill takes a day or two depending on volume."),
            ("Can the training be recorded for people who join later?",
             "Yes, every session is recorded, and we keep the end-user sessions to forty-five minutes with a cheat sheet afterwards."),
        ],
        "int_qa": [
            ("Who would be your internal champion for the rollout?",
             "Probably someone from enablement, they want recorded sessions so new hires can watch them later."),
            ("Do you want the training in person or remote?",
             "Remote for most people, people here hate long trainings and short sessions work much better."),
            ("Which teams should be in the pilot?",
             "We'd like to start with the {team} as a pilot group before going company wide."),
        ],
        "ext_a": [
            "The admins are the bottleneck, there are only a few of them for the whole org.",
            "Our people are spread over three time zones, so we'll need sessions at different times.",
            "We'd like the training material in our own template so it looks like internal content.",
        ],
        "int_a": [
            "We'll set up a shared Slack channel so your admins get answers quickly during the rollout.",
            "We'll also share a launch email template your leadership can send on day one.",
            "The admin training is two sessions of an hour each.",
            "We'll track activation per team and share it weekly during the first month.",
            "Champions get early access to new features, which keeps them engaged.",
        ],
    },
    "roadmap": {
        "ext_qa": [
            ("What's coming in the next couple of quarters?",
             "The big items are hybrid search, which just shipped, and speaker filters for call transcripts."),
            ("Is anything planned for {feature}?",
             "I can't give dates on everything, but I'm happy to set up a roadmap session with product."),
            ("Will you support Microsoft Teams as a source?",
             "Teams is in beta with a handful of customers, general availability is planned for {month}."),
            ("Can we get early access to new features?",
             "There's a customer advisory board that sees designs early, I can nominate you."),
        ],
        "int_qa": [
            ("If you could change one thing in the product tomorrow, what would it be?",
             "Citations, people don't trust an answer they can't verify."),
            ("Which sources beyond calls and Slack would add the most value for you?",
             "Teams, because half the company never moved to Slack."),
        ],
        "ext_a": [
            "We'd happily be a design partner if it means our feedback lands.",
            "Confluence would be great, our documentation is all there.",
            "Filtering by speaker would help our product team a lot.",
        ],
        "int_a": [
            "We're also working on citations that jump to the exact moment in the call recording.",
            "Speaker filters let you search only what the customer said, which people love for objection handling.",
            "A Confluence connector is in private preview right now.",
            "Answer quality evaluations run nightly, so regressions get caught before a release.",
        ],
    },
    "legal": {
        "ext_qa": [
            ("Is the DPA a separate document or part of the MSA?",
             "The DPA is its own document, so privacy counsel can review it in parallel."),
            ("Can we get the order form and the MSA as editable Word files?",
             "Of course, I'll send both as Word files today."),
            ("Can the auto-renewal clause be changed?",
             "Auto-renewal can switch to renewal by mutual agreement, that's a common request."),
        ],
        "int_qa": [
            ("Who on your legal team should our counsel talk to directly?",
             "Send it to our commercial counsel, she handles all software agreements."),
            ("Are there clauses that were hard stops with other vendors?",
             "Anything with uncapped indemnity goes to our general counsel, which adds two weeks."),
        ],
        "ext_a": [
            "Legal will send redlines on the MSA, mostly around liability and indemnity.",
            "Our standard is a mutual NDA first, then your paper for the order form.",
            "We need the governing law to be where we're headquartered, that's non-negotiable.",
            "Procurement will also send their supplier code of conduct to sign.",
        ],
        "int_a": [
            "Send the redlines whenever they're ready, our legal team turns them around within a week.",
            "We can work on your paper if that's easier, it just adds some time.",
            "Our standard payment terms are net thirty, but we can do net forty-five if procurement insists.",
            "The MSA is governed by Delaware law by default, but we can discuss that.",
        ],
    },
    "forecast": {  # internal only: the manager asks, a rep answers
        "ext_qa": [],
        "int_qa": [
            ("What's the risk on {deal}, honestly?", "{deal} is best case for me, the security review is the long pole."),
            ("Is {deal} real for this quarter or are we hoping?",
             "{deal} slipped a week, their champion is out but nothing changed on the deal itself."),
            ("Where are we on {deal}?", "{deal} is in commit, paper is with their procurement and I expect it this quarter."),
            ("Do we have an exec sponsor on {deal}?",
             "On {deal} we're single-threaded, I'm trying to get a meeting with their CFO."),
            ("Anything blocking {deal}?", "I need help from product on {deal}, they want a roadmap call before they sign."),
            ("Would you keep {deal} in commit?", "I'd keep {deal} out of commit until legal comes back with redlines."),
        ],
        "ext_a": [],
        "int_a": [
            "Pipeline coverage for next quarter is about three times, a little thin in EMEA.",
            "{deal} has a new economic buyer, so I'm redoing the business case.",
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
        self.memo: dict[str, str] = {}  # slot values of the current exchange

    # -- text -------------------------------------------------------------------------------
    def _slot(self, match: re.Match) -> str:
        name = match.group(1)
        if name not in self.memo:
            if name in self.fixed:
                value = self.fixed[name]
                self.memo[name] = value if isinstance(value, str) else self.rng.choice(value)
            elif name == "ext_first":
                self.memo[name] = self.rng.choice(self.external or self.internal).first
            else:
                self.memo[name] = self.rng.choice(SLOT_POOLS[name])
        return self.memo[name]

    def render(self, template: str) -> str:
        text = re.sub(r"\{(\w+)\}", self._slot, template)
        return text[0].upper() + text[1:]

    def pick(self, pool: list, k: int = 1) -> list:
        """k distinct entries of the pool, preferring the least used ones."""
        chosen: list = []
        for _ in range(min(k, len(pool))):
            candidates = [t for t in pool if t not in chosen]
            low = min(self.uses.get(str(t), 0) for t in candidates)
            entry = self.rng.choice([t for t in candidates if self.uses.get(str(t), 0) == low])
            self.uses[str(entry)] = self.uses.get(str(entry), 0) + 1
            chosen.append(entry)
        return chosen

    def with_opener(self, text: str) -> str:
        """Sometimes start with a spoken opener ('So, ...'), lower-casing a plain first word."""
        word = text.split(" ", 1)[0].rstrip(",")
        if (self.rng.random() >= 0.25 or word in NO_OPENER_WORDS or word in PROPER_WORDS
                or word.startswith("I'") or not re.fullmatch(r"[A-Z][a-z'-]+", word)):
            return text
        return self.rng.choice(OPENERS) + text[0].lower() + text[1:]

    def statements(self, pool: list[str], k: int) -> str:
        return " ".join(self.render(t) for t in self.pick(pool, k))

    # -- speakers ---------------------------------------------------------------------------
    def speaker(self, side: str, exclude: Person | None = None) -> Person:
        people = self.external if side == "ext" and self.external else self.internal
        candidates = [p for p in people if p != exclude] or people
        weights = [3 if p == people[0] else 1 for p in candidates]
        return self.rng.choices(candidates, weights=weights)[0]

    def say(self, who: Person, text: str) -> None:
        """Append a turn; consecutive sentences of one speaker become one turn, as in Gong."""
        if self.turns and self.turns[-1][0] == who.name:
            self.turns[-1] = (who.name, self.turns[-1][1] + " " + text)
        else:
            self.turns.append((who.name, text))
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

    def exchange(self, pools: dict) -> None:
        """One question and its answer, sometimes elaborated and acknowledged."""
        self.memo = {}
        internal_only = not self.external
        roll = self.rng.random()
        if roll < 0.06:
            self.say(self.speaker(self.rng.choice(["int", "ext"])), self.render(self.rng.choice(FILLERS)))
        elif roll < 0.18 and pools["ext_a"]:
            self.say(self.speaker("ext"), self.with_opener(self.statements(pools["ext_a"], 1)))
            self.say(self.speaker("int"), self.rng.choice(BACKCHANNELS) + " " + self.statements(pools["int_a"], 1))
        elif roll < 0.58 and pools["ext_qa"]:
            (question, answer), = self.pick(pools["ext_qa"])
            asker = self.speaker("ext")
            answerer = self.speaker("int")
            self.say(asker, self.with_opener(self.render(question)))
            self.say(answerer, self.render(answer))
            if self.rng.random() < 0.4:
                self.say(answerer, self.statements(pools["int_a"], 1))
            if self.rng.random() < 0.35:
                follow = self.rng.choice(BACKCHANNELS)
                if pools["ext_a"] and self.rng.random() < 0.5:
                    follow += " " + self.statements(pools["ext_a"], 1)
                self.say(asker, follow)
        else:
            (question, answer), = self.pick(pools["int_qa"])
            asker = self.internal[0] if internal_only else self.speaker("int")
            answerer = self.speaker("int" if internal_only else "ext", exclude=asker)
            self.say(asker, self.with_opener(self.render(question)))
            self.say(answerer, self.with_opener(self.render(answer)))
            elaboration = pools["int_a"] if internal_only else pools["ext_a"]
            if elaboration and self.rng.random() < 0.4:
                self.say(answerer, self.statements(elaboration, 1))
            if self.rng.random() < 0.35:
                follow = self.rng.choice(BACKCHANNELS)
                if not internal_only and self.rng.random() < 0.5:
                    follow += " " + self.statements(pools["int_a"], 1)
                self.say(asker, follow)

    def topic(self, name: str, words_target: int, facts: list[tuple[Person, str]] = ()) -> None:
        """About words_target words on one topic; the fact turns land 30-60% of the way in."""
        pools = TOPICS[name]
        start = self.words
        fact_at = int(words_target * self.rng.uniform(0.3, 0.6))
        pending = list(facts)
        while self.words - start < words_target:
            if pending and self.words - start >= fact_at:
                for who, text in pending:
                    self.say(who, text)
                    if self.rng.random() < 0.5:
                        self.say(self.speaker("int" if who.affiliation == "external" else "ext", exclude=who),
                                 self.rng.choice(BACKCHANNELS))
                pending = []
            else:
                self.exchange(pools)
        for who, text in pending:
            self.say(who, text)

    def next_steps(self, promises: list[tuple[Person, str]]) -> None:
        self.say(self.internal[0], "Let me recap what I heard so we're aligned on next steps.")
        for who, text in promises:
            self.say(who, text)
            self.say(self.speaker("ext" if who.affiliation == "internal" else "int", exclude=who),
                     self.rng.choice(BACKCHANNELS))

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
                ("usage", 1400, [
                    (raj, "On seats, we go from twelve hundred to fourteen hundred and fifty. The extra two hundred "
                          "and fifty are the Columbus support center, which moves over to us in February after the "
                          "reorg, and they'll need licenses from their first week."),
                ]),
                ("pricing", 2100, [
                    (dana, "Here's where our CFO landed after the budget review. She will sign a three-year agreement, "
                           "but only if the yearly price increase is capped at four percent and that cap is written "
                           "into the order form itself. Anything above four percent goes back to the board, and the "
                           "board doesn't meet again until March, so that would blow our timeline."),
                    (LEO, "Understood, a four percent ceiling on the annual uplift for all three years. I'll need "
                          "to run it by my VP, but it's the kind of ask we can usually accommodate on a multi-year term."),
                ]),
                ("roadmap", 1300, []),
                ("security", 1300, [
                    (raj, "Our vendor-risk team flagged that the SOC 2 report stops at September thirtieth, so they "
                          "want the bridge letter covering October through December before the renewal is signed."),
                ]),
                ("legal", 1300, [
                    (dana, "One more thing from legal. The Munich subsidiary signed its own contract with you last "
                           "spring, and we want this renewal to co-terminate with it so there's a single renewal date "
                           "next time."),
                ]),
                ("onboarding", 1200, []),
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
                ("onboarding", 1700, [
                    (maya, "The pilot is the patient access center in Tucson, sixty schedulers on two shifts. If they "
                           "like it, the call center in Phoenix follows in March."),
                ]),
                ("sso", 2100, [
                    (ben, "So here's what I found. Every login from Okta bounced with an invalid assertion error. I "
                          "captured a SAML trace, and our app integration was sending the NameID in the unspecified "
                          "format, while your side expects an email address."),
                    (PRIYA, "Right, and there's a second problem in that trace: the assertion timestamps were about "
                            "three minutes ahead of our clock, beyond the two-minute skew we tolerate. If you switch "
                            "the NameID format to emailAddress and fix NTP on the host that signs the assertions, the "
                            "logins should go through."),
                ]),
                ("security", 1600, [
                    (maya, "Our compliance office signed the BAA last week. The condition is that the Slack connector "
                           "skips every channel whose name starts with clinical, nothing patient-related goes in."),
                ]),
                ("usage", 1300, []),
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


# ---------------------------------------------------------------------------------------------
# Slack messages
# ---------------------------------------------------------------------------------------------

CHANNELS = {
    "deal-acme": "C024BE91L",
    "incidents": "C05K1NC1D",
    "releases": "C03REL0SE",
    "intl-sales": "C06INTL7Z",
    "eng-memory": "C04ENG5RC",
}
USERS = {
    "leo": "U0G9QF9C6", "priya": "U0G9QF9C7", "tom": "U0G9QF9C8", "marcus": "U0H1MC2AB",
    "hannah": "U0H2HV3CD", "sam": "U0H3SR4EF", "mpatel": "U0H4MP5GH", "aiko": "U0H5AT6IJ",
    "yusuf": "U0H6YH7KL", "jonas": "U0H7JL8MN",
}


@dataclasses.dataclass
class SlackMessage:
    """One message of the scenario. `parent` names the thread's first message; `name` is a handle
    for later edits/deletes. `edits` are later versions: (time, new text or None, extra fields)."""

    name: str
    channel: str
    user: str
    published: str
    text: str
    parent: str | None = None
    reactions: list[dict] = dataclasses.field(default_factory=list)
    sentiment: float = 0.0
    thread_ts_on_parent: bool = False  # top-level message that carries thread_ts == ts
    extra: dict = dataclasses.field(default_factory=dict)
    exact_publish: bool = False


def slack_script() -> list[SlackMessage]:
    u = USERS
    m = SlackMessage
    return [
        # #deal-acme: the renewal thread
        m("acme", "deal-acme", "leo", "11-20 15:06:12",
          "Acme renewal update :memo: Dana confirmed they grow from 1,200 to 1,450 seats (Columbus support center "
          "joins in Feb) and want a 3-year term. Recording: "
          "<https://app.gong.io/call?id=7782342274025937895|Gong: Acme renewal review>",
          reactions=[{"name": "eyes", "count": 2}], sentiment=0.5),
        m("acme-priya", "deal-acme", "priya", "11-20 15:09:40",
          f"<@{u['leo']}> I can join the security follow-up. Do they still need the SOC 2 Type II bridge letter or "
          "just the report?", parent="acme", sentiment=0.3),
        m("acme-leo-bridge", "deal-acme", "leo", "11-20 15:14:03",
          "Both :sweat_smile: the report ends Sep 30 and their vendor-risk team wants the bridge letter for Oct–Dec.",
          parent="acme", sentiment=0.1),
        m("acme-hannah", "deal-acme", "hannah", "11-20 15:31:27",
          "Bridge letter is up on the trust portal: <https://trust.sophia.example/acme|Trust portal (Acme)>. "
          "Watermarked, link expires in 14 days :lock:", parent="acme", sentiment=0.4,
          reactions=[{"name": "pray", "count": 1}]),
        m("acme-tom", "deal-acme", "tom", "11-20 16:20:09",
          "Approved :white_check_mark: we can go to 12% off list on the 3-year, but only if Acme countersigns the "
          "order form by Dec 15. After that date the best I'll sign is 8%.",
          parent="acme", sentiment=0.45, reactions=[{"name": "raised_hands", "count": 3}]),
        m("acme-legal-sync", "deal-acme", "leo", "11-20 16:42:30",
          "Legal sync with Acme is set for Tuesday 3pm ET, invite going out now.", parent="acme", sentiment=0.2),
        # #eng-memory
        m("pinecone", "eng-memory", "mpatel", "11-22 11:24:51",
          "Filed <https://github.com/sophia-ai/ai-memory/issues/437|#437>: every upsert for the long Gong calls "
          "comes back 413 from Pinecone :confused: we stuff the whole flow_document into metadata.",
          thread_ts_on_parent=True, sentiment=-0.3),
        m("pinecone-sam", "eng-memory", "sam", "11-22 11:40:02",
          ":+1: the Nordwind security review call alone is ~60 KB of JSON, no way that fits.",
          parent="pinecone", sentiment=-0.1),
        # #intl-sales: CJK and RTL
        m("tokyo", "intl-sales", "aiko", "11-23 00:40:37",
          "東京リージョンでのデータ保管について、山田精機の情報システム部から来週月曜日までに回答が欲しいとのことです :pray: "
          f"<@{u['priya']}> 確認お願いできますか？", sentiment=0.2,
          extra={"language": "ja", "translation_en": None}),
        m("dubai", "intl-sales", "yusuf", "11-23 08:30:15",
          "العميل في دبي يطلب نسخة عربية من اتفاقية معالجة البيانات قبل نهاية الشهر، هل لدينا ترجمة معتمدة؟ :flag-ae:",
          sentiment=0.1, extra={"language": "ar"}),
        m("weaviate", "eng-memory", "mpatel", "11-23 10:02:44",
          "Anyone know why the Weaviate sink finds nothing for 東京 on the keyword side? Vector side works. "
          "Aiko filed <https://github.com/sophia-ai/ai-memory/issues/440|#440>.", sentiment=-0.2),
        m("weaviate-aiko", "eng-memory", "aiko", "11-23 10:15:09",
          f"<@{u['mpatel']}> I added the schema and a repro to the issue, happy to test on staging :bow:",
          parent="weaviate", sentiment=0.3),
        m("tokyo-priya", "intl-sales", "priya", "11-23 14:05:18",
          f"<@{u['aiko']}> ap-northeast-1 is on the roadmap for Q2, not committed yet. I'll write up what we can "
          "promise today (Frankfurt or us-east-1 with CMK) before Monday.", parent="tokyo", sentiment=0.2),
        m("acme-redlines", "deal-acme", "leo", "11-23 14:06:55",
          f"Acme legal redlines are in :scroll: they want the liability cap raised to 2x annual fees and a 30-day "
          f"termination for convenience clause. <@{u['tom']}> thoughts?", parent="acme", sentiment=-0.2),
        m("acme-tom-redlines", "deal-acme", "tom", "11-23 14:31:40",
          "2x cap is fine as long as data breach sits under a separate super-cap. Termination for convenience on a "
          "discounted multi-year is a hard no.", parent="acme", sentiment=-0.1),
        # #releases: v2.14 rollout
        m("release", "releases", "jonas", "11-23 15:02:27",
          ":package: ai-memory v2.14.0 is rolling out: hybrid search (BM25 + vectors), cross-encoder reranker, Gong "
          "speaker filters. Notes: <https://github.com/sophia-ai/ai-memory/releases/tag/v2.14.0|v2.14.0>",
          thread_ts_on_parent=True, reactions=[{"name": "rocket", "count": 6}], sentiment=0.6),
        m("release-pause", "releases", "jonas", "11-23 16:48:03",
          "Pausing the v2.14.0 rollout at 25% :double_vertical_bar: the new reranker doubled CPU on the query pods and "
          "p95 went from 310 ms to 780 ms.", parent="release", sentiment=-0.4),
        m("release-mpatel", "releases", "mpatel", "11-23 17:10:36",
          "We can rerank only the top 50 candidates instead of 200, PR incoming.", parent="release", sentiment=0.2),
        m("dubai-hannah", "intl-sales", "hannah", "11-23 17:35:50",
          f"<@{u['yusuf']}> we have a certified Arabic translation of the DPA from last year, checking it matches "
          "the current version :mag:", parent="dubai", sentiment=0.3),
        m("release-done", "releases", "jonas", "11-23 21:55:12",
          "v2.14.1 with the top-50 cap is at 100% :rocket: p95 back to 330 ms.", parent="release", sentiment=0.7,
          reactions=[{"name": "tada", "count": 4}]),
        m("release-priya", "releases", "priya", "11-23 22:03:28",
          "Nice! Customers on the EU cluster too?", parent="release", sentiment=0.4),
        m("release-eu", "releases", "jonas", "11-23 22:10:41",
          "EU goes tomorrow 08:00 CET, after the Nordwind change freeze ends.", parent="release", sentiment=0.2),
        # #incidents: the SEV-1
        m("sev1", "incidents", "sam", "11-24 14:09:00",
          f":rotating_light: SEV-1: search API returning 502s in eu-west since 14:05 UTC. Status page: "
          f"<https://status.sophia.example/incidents/8812|INC-8812>. War room is this thread in "
          f"<#{CHANNELS['incidents']}|incidents>.", thread_ts_on_parent=True, sentiment=-0.6, exact_publish=True),
        m("sev1-rate", "incidents", "mpatel", "11-24 14:09:21",
          "Error rate ~38% on /v1/search, ingest unaffected. pgbouncer shows `cl_waiting` climbing past 900.",
          parent="sev1", sentiment=-0.5),
        m("sev1-rollback", "incidents", "sam", "11-24 14:16:48",
          "Rolled back deploy 2026.11.23-2, no change. Looking at pool sizes next.", parent="sev1", sentiment=-0.4),
        m("sev1-oops", "incidents", "leo", "11-24 14:18:30",
          "can someone drop the Acme pricing sheet here? need it for my 2pm", parent="sev1", sentiment=0.0),
        m("sev1-cause", "incidents", "mpatel", "11-24 14:31:12",
          "Found it :mag: the autoscaler doubled query workers to 48 pods and each opens 40 connections, so we blew "
          "through pgbouncer's max_client_conn of 1000. Capping workers at 24 and raising default_pool_size.",
          parent="sev1", sentiment=-0.2, reactions=[{"name": "bulb", "count": 5}]),
        m("sev1-nul", "incidents", "sam", "11-24 14:36:05",
          "raw line from the LB log, note the stray byte: `upstream prematurely closed connection\u0000 while reading "
          "response header from upstream` :thinking_face:", parent="sev1", sentiment=-0.3),
        m("sev1-tickets", "incidents", "marcus", "11-24 14:44:57",
          "Brightline and Helix both opened tickets, replying with the status page link.", parent="sev1",
          sentiment=-0.2),
        m("sev1-resolved", "incidents", "sam", "11-24 14:53:19",
          "Recovered at 14:52 UTC :green_heart: 47 minutes of impact. Postmortem: "
          "<https://docs.sophia.example/pm/INC-8812|PM INC-8812>, review on Thursday.",
          parent="sev1", sentiment=0.3, reactions=[{"name": "green_heart", "count": 7}]),
        m("sev1-nordwind", "incidents", "hannah", "11-24 15:10:33",
          "Reminder: Nordwind's contract requires formal notice of any SEV-1 within 24h. I'll send it.",
          parent="sev1", sentiment=0.0),
        # later days
        m("acme-wave2", "deal-acme", "marcus", "11-25 09:00:48",
          f":tada: heads up <#{CHANNELS['intl-sales']}|intl-sales>: Acme's Munich office joins in wave 2 once the "
          "contracts co-terminate.", parent="acme", sentiment=0.5),
        m("orchid", "intl-sales", "marcus", "11-25 14:20:26",
          "Orchid Pharma kickoff went well :flag-pt: 40 admins in wave 1, in-person training in Lisbon on Jan 12.",
          sentiment=0.7, reactions=[{"name": "clap", "count": 3}]),
        m("thanks", "deal-acme", "tom", "11-25 21:47:02",
          "Happy Thanksgiving all :turkey: great week on Acme, let's get the signature by Dec 15.",
          sentiment=0.8, thread_ts_on_parent=True),
    ]


# later versions of scenario messages: (time, handle, new text or None for "same text", fields)
SLACK_EDITS = [
    ("11-24 13:10:05", "acme-legal-sync",
     "Legal sync with Acme moved to Wednesday 10am ET :calendar: Priya covers for me, I'm out at the dentist.",
     {"edited": {"user": USERS["leo"]}}),
    ("11-24 15:30:44", "sev1", None, {"reply_count": 7, "reactions": [{"name": "eyes", "count": 11},
                                                                      {"name": "rotating_light", "count": 4}]}),
]
SLACK_DELETES = [("11-24 14:20:02", "sev1-oops")]


def slack_ts(us: int) -> str:
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def sentiment_category(score: float) -> str:
    return "positive" if score >= 0.5 else "negative" if score <= -0.3 else "neutral"


def slack_events(rng: random.Random, clock: Clock, copy: int) -> list[Event]:
    events: list[Event] = []
    docs: dict[str, dict] = {}
    for msg in slack_script():
        publish_us = clock.at(msg.published, exact=msg.exact_publish and copy == 0)
        ts_us = publish_us - rng.randrange(1_200_000, 4_000_000)
        channel_id = CHANNELS[msg.channel]
        ts = slack_ts(ts_us)
        fields: dict = {"channel_id": channel_id, "channel_name": msg.channel, "ts": ts}
        permalink = f"https://sophia.slack.com/archives/{channel_id}/p{ts.replace('.', '')}"
        if msg.parent:
            parent_ts = docs[msg.parent]["ts"]
            fields["thread_ts"] = parent_ts
            permalink += f"?thread_ts={parent_ts}&cid={channel_id}"
        elif msg.thread_ts_on_parent:
            fields["thread_ts"] = ts
        fields.update({"user_id": USERS[msg.user], "user_name": msg.user, "text": msg.text,
                       "permalink": permalink})
        if not msg.parent:
            fields["reply_count"] = 0
        fields["reactions"] = msg.reactions
        fields["sentiment"] = msg.sentiment
        fields["sentiment_category"] = sentiment_category(msg.sentiment)
        fields["enriched_at"] = iso_utc(publish_us - rng.randrange(200_000, 900_000))
        fields.update(msg.extra)
        docs[msg.name] = fields
        events.append(Event(SLACK, publish_us, "c", fields))

    for when, name, text, changes in SLACK_EDITS:
        publish_us = clock.at(when)
        fields = dict(docs[name])
        if text is not None:
            fields["text"] = text
        for key, value in changes.items():
            fields[key] = value
        if "edited" in fields:
            fields["edited"] = dict(fields["edited"], ts=slack_ts(publish_us - rng.randrange(1_000_000, 3_000_000)))
        if "reply_count" in changes:
            fields["latest_reply"] = max(
                (e.fields["ts"] for e in events if e.fields.get("thread_ts") == fields["ts"]
                 and e.fields["ts"] != fields["ts"] and e.publish_us < publish_us),
                default=fields["ts"],
            )
        fields["enriched_at"] = iso_utc(publish_us - rng.randrange(200_000, 900_000))
        docs[name] = fields
        events.append(Event(SLACK, publish_us, "u", fields))

    for when, name in SLACK_DELETES:
        gone = docs[name]
        events.append(Event(SLACK, clock.at(when), "d", {"channel_id": gone["channel_id"], "ts": gone["ts"]}))
    return events


# ---------------------------------------------------------------------------------------------
# GitHub
# ---------------------------------------------------------------------------------------------

FENCE = "```"

ISSUE_412_V1 = f"""## Summary
After a Slack message is edited, `memory.search()` keeps returning the **old** text of the message next to
the new one. The edited version seems to be added as new chunks instead of replacing the old ones.

## Steps to reproduce
1. Post a message in a test channel: `Acme legal sync is Tuesday 3pm`.
2. Wait until it is indexed (~30 s).
3. Edit it to `Acme legal sync moved to Wednesday 10am`.
4. Search for `acme legal sync`.

{FENCE}python
from sophia_memory import Client

client = Client(namespace="slack")
for hit in client.search("acme legal sync", top_k=5):
    print(round(hit.score, 2), hit.key, hit.text[:60])
{FENCE}

## Expected
One hit per Slack message, with the edited text.

## Actual
{FENCE}
0.81 ['C07QA0TST', '1795188912.120044'] Acme legal sync is Tuesday 3pm
0.79 ['C07QA0TST', '1795188912.120044'] Acme legal sync moved to Wednesday 10am
{FENCE}

- worker 0.8.3, sink: qdrant 1.12
- happens for GitHub issue edits too
"""

ROOT_CAUSE_412 = """## Root cause
Point ids were derived from a hash of the chunk **text**, not from `(collection key, chunk index)`. An edit
changes the text, so it produced brand-new point ids and the old points were never overwritten or deleted.
Both versions stayed in the index until the nightly compaction, which does not run on Qdrant at all.

## Fix
- point id = uuid5 of `collection + packed key + chunk index` (#439)
- after upserting a new version, delete chunk indexes `>= new chunk count` for that key
- content hash is kept only to skip re-embedding unchanged chunks

"""
# The edit puts the root cause right under the summary and closes the issue.
ISSUE_412_V2 = ISSUE_412_V1.replace("## Steps to reproduce", ROOT_CAUSE_412 + "## Steps to reproduce") + (
    "\nClosing, fixed in v2.14.0.\n")

ISSUE_431_HEAD = f"""## What happens
When the spool holds an hour-long Gong call (~9k words, ~12k tokens after chunking), the embed stage sends
batches of 256 chunks to the TEI server and every request containing those chunks dies with
`httpx.ReadTimeout` after 30 s. The batch is retried 5 times and then dead-lettered, so the whole Nordwind
security review never becomes searchable. Small Slack documents that shared the batch are lost with it.

## Environment
- worker 0.8.3, TEI 1.6 on one L4, `--max-batch-tokens 16384`
- `embed.timeout_s: 30`, `embed.batch_size: 256`

## Ideas
- batch by token budget instead of chunk count
- on timeout, split the batch in two and retry the halves instead of resending the same batch

## Log
<details><summary>worker log, 17:00–17:29 UTC</summary>

{FENCE}
"""

ISSUE_437 = f"""## Summary
Upserts to Pinecone fail for every chunk of long Gong calls:

{FENCE}
pinecone.exceptions.PineconeApiException: (413)
Reason: Request Entity Too Large
HTTP response body: {{"code":3,"message":"Metadata size is 58213 bytes, which exceeds the limit of 40960 bytes per vector","details":[]}}
{FENCE}

We copy the whole `flow_document` into each vector's metadata (the way Estuary's own connector does), and an
hour-long transcript is ~60 KB of JSON. Pinecone caps metadata at **40 KB per vector**, so every chunk of such
a call is rejected. Because the batch of 100 fails as a whole, unrelated Slack chunks in it are lost too.

## Proposal
- keep only a few fields in metadata: `collection`, `key`, `chunk_index`, `title`, `url`, `published_at`,
  plus the chunk text truncated to 8 KB
- split upsert requests by bytes (2 MB request cap), not by count
- a single oversized record becomes a dead letter instead of failing the batch
"""

COMMENT_437 = """Checked the other sinks while I was at it:

- **Qdrant**: no per-point payload cap, but 256-point batches of Gong chunks hit the 32 MB request limit.
- **Weaviate**: fine so far, its batch endpoint streams.

So byte-based batching helps Qdrant too. I'd put the byte budget in the sink config, not hard-code it.
"""

PR_438 = f"""Fixes #437.

## Changes
- metadata is now a fixed allow-list plus `text` truncated to 8 KB
- upserts are split by serialized size, 2 MB per request
- a record over the metadata cap is dead-lettered with reason `metadata_too_large`

{FENCE}python
MAX_METADATA_BYTES = 40 * 1024
MAX_REQUEST_BYTES = 2 * 1024 * 1024


def batches_by_bytes(records, max_bytes=MAX_REQUEST_BYTES):
    batch, size = [], 0
    for record in records:
        n = len(json.dumps(record).encode())
        if batch and size + n > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += n
    if batch:
        yield batch
{FENCE}

## Testing
- unit tests for the splitter with records right at the limit
- replayed the Nordwind call from the dead-letter queue against a test index: 41 chunks, 0 errors
"""

REVIEW_438 = """nit: `json.dumps` runs twice per record on this path (once here, once in the client). Compute the size
once and carry it with the record.

Also: what happens when one record alone is bigger than `max_bytes`? Right now it becomes a batch of one and
still fails the request. Should that go to the dead letter too?
"""

ISSUE_440_V1 = f"""## Problem
Hybrid search on the Weaviate sink returns no BM25 hits for Japanese text. Searching `東京リージョン` finds the
#intl-sales message only through the vector side, with a low score, and pure keyword mode finds nothing.

## Schema
{FENCE}yaml
class: SlackChunk
vectorizer: none
properties:
  - name: text
    dataType: [text]
    tokenization: word
  - name: channel_name
    dataType: [text]
    tokenization: field
{FENCE}

## Repro
1. Index the message `東京リージョンでのデータ保管について…`
2. `GET /v1/search?q=東京リージョン&mode=keyword&collection=slack`
3. 0 results
"""

ISSUE_440_V2 = ISSUE_440_V1 + f"""
## Cause
`word` tokenization splits on every character that is not a letter or digit. Kanji and kana count as letters
and Japanese has no spaces, so a whole sentence becomes **one** token, and `東京リージョン` can never match it.

## Fix
Re-create the `text` property with `tokenization: trigram` (or `kagome_ja` where that module is enabled).
On staging, keyword recall for our 40 Japanese test queries went from 2/40 to 37/40. The index for that class
grows about 3x, which is fine at our size.
"""

COMMENT_440 = """staging で確認しました。trigram にしたら「東京」でもヒットします :+1:
One caveat: two-character queries like `東京` only match with trigram if we also index the text padded, see
the Weaviate docs on `trigram` and short terms.
"""

PR_442 = f"""## Why
Estuary delivers at-least-once, and a replayed transaction can bring back an **older** version of a document
after we already processed its delete. Without a record of the delete we would index it again.

## What
- new table `chunk_tombstones(collection, key_hash, deleted_clock)`
- the applier drops any version whose clock is `<=` the stored tombstone clock
- tombstones are kept for 30 days, then garbage-collected (replays older than that are not expected)

{FENCE}sql
CREATE TABLE IF NOT EXISTS chunk_tombstones (
    collection     TEXT        NOT NULL,
    key_hash       BYTEA       NOT NULL,
    deleted_clock  BIGINT      NOT NULL,
    deleted_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, key_hash)
);

CREATE INDEX IF NOT EXISTS chunk_tombstones_deleted_at_idx
    ON chunk_tombstones (deleted_at);

-- garbage collection, run hourly
DELETE FROM chunk_tombstones WHERE deleted_at < now() - interval '30 days';
{FENCE}

## Checklist
- [x] migration is idempotent
- [x] test: delete, then replay an older create, the key stays gone
- [ ] docs
"""

PR_446 = f"""Adds the values file for the Frankfurt deployment that Nordwind needs. Backups and the DR replica stay in
the EU (Dublin), nothing is replicated to us-east-1.

{FENCE}yaml
region: eu-central-1
worker:
  replicas: 3
  resources:
    requests: {{cpu: "2", memory: 4Gi}}
    limits: {{memory: 6Gi}}
  embed:
    timeout_s: 60
    max_batch_tokens: 16384
qdrant:
  url: https://qdrant.eu-central-1.internal:6333
  collection_prefix: eu_
backup:
  bucket: s3://sophia-memory-backups-eu
  region: eu-central-1
  dr_region: eu-west-1
  retention_days: 35
{FENCE}

- [x] `helm template` renders
- [x] reviewed with @hvogel for the residency wording
"""

ISSUE_448 = f"""Estuary's Dekaf exposes collections over the Kafka protocol. It would let us replay from an offset instead of
depending on webhook retries. Things to handle:

1. deletes arrive as **tombstones** (`deletions: kafka`) or with `_is_deleted` (`deletions: cdc`)
2. offsets are journal byte positions, so gaps are normal and must not look like data loss
3. there is no reduction, every version is streamed, so expect more versions per key

{FENCE}yaml
intake:
  kind: dekaf
  bootstrap: dekaf.estuary-data.com:9092
  username: sophia-ai/memory/dekaf
  deletions: cdc
{FENCE}
"""

RELEASE_2140 = """## Highlights
- **Hybrid search**: BM25 and vector results are fused with reciprocal rank fusion (k = 60). Short keyword
  queries such as ticket ids, SKU codes and error strings now find what they should.
- **Cross-encoder reranker** over the top candidates (default 200, configurable).
- **Gong speaker filters**: `speaker:"Dana Whitfield"` restricts results to one person's turns.

## Fixes
- Edited Slack messages and GitHub issues no longer leave stale chunks behind (#412).
- Pinecone upserts are split by size and stay under the metadata cap (#437, #438).

## Upgrade notes
- Qdrant 1.10 or newer is required for sparse vectors.
- Re-index once after upgrading so that BM25 statistics are built.
"""

SPAM_445 = ":rocket: Speed up your CI 10x with our cloud runners! Free trial, no card needed: https://fastci.example/promo"

LOG_MODULES = ["worker.intake", "worker.spool", "worker.chunk", "worker.batch", "worker.embed", "worker.sinks.qdrant"]
TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "/app/worker/embed.py", line 212, in embed_batch',
    "    resp = await self._client.post(\"/embed\", json=payload, timeout=self._timeout_s)",
    '  File "/usr/local/lib/python3.11/site-packages/httpx/_client.py", line 1854, in post',
    "    return await self.request(",
    '  File "/usr/local/lib/python3.11/site-packages/httpx/_transports/default.py", line 372, in handle_async_request',
    "    with map_httpcore_exceptions():",
    '  File "/usr/local/lib/python3.11/contextlib.py", line 158, in __exit__',
    "    self.gen.throw(typ, value, traceback)",
    "httpx.ReadTimeout: timed out",
]


def worker_log(rng: random.Random, start_us: int, lines: int) -> str:
    """A realistic worker log: steady intake and sinks, embed batches with long Gong docs timing out."""
    out: list[str] = []
    t = start_us
    batch = 340
    keys = ["['7790412256031142870']", "['7782342274025937895']", "['C024BE91L', '1795186772.412331']",
            "['I_kwDOKx7Ajc6412']", "['C05K1NC1D', '1795789500.000101']"]

    def emit(level: str, module: str, message: str) -> None:
        stamp = EPOCH + datetime.timedelta(microseconds=t)
        out.append(f"{stamp.strftime('%Y-%m-%dT%H:%M:%S')}.{t // 1000 % 1000:03d}Z {level:<5} {module:<19} {message}")

    while len(out) < lines:
        t += rng.randrange(20_000, 900_000)
        roll = rng.random()
        if roll < 0.22:
            emit("INFO", "worker.intake", f"request accepted binding=github docs={rng.randrange(1, 40)} "
                 f"bytes={rng.randrange(2_000, 900_000)} spool_ms={rng.randrange(2, 30)}")
        elif roll < 0.40:
            key = rng.choice(keys)
            emit("INFO", "worker.chunk", f"document chunked key={key} chunks={rng.randrange(1, 48)} "
                 f"tokens={rng.randrange(40, 12_500)}")
        elif roll < 0.55:
            emit("INFO", "worker.sinks.qdrant", f"points upserted count={rng.randrange(1, 256)} "
                 f"ms={rng.randrange(8, 400)}")
        elif roll < 0.62:
            emit("DEBUG", "worker.spool", f"segment fsynced seq={rng.randrange(10_000, 99_999)} "
                 f"bytes={rng.randrange(4_096, 1_048_576)}")
        elif roll < 0.64:
            emit("INFO", "uvicorn.access", '10.0.3.17:51422 - "GET /healthz HTTP/1.1" 200')
        else:
            batch += 1
            tokens = rng.randrange(9_000, 16_384)
            emit("INFO", "worker.batch", f"batch formed batch_id=b-{batch:06d} chunks=256 tokens={tokens}")
            if rng.random() < 0.55:
                emit("INFO", "worker.embed", f"batch embedded batch_id=b-{batch:06d} ms={rng.randrange(900, 9_000)}")
                continue
            for attempt in range(1, 6):
                t += 30_000_000 + rng.randrange(0, 50_000)
                emit("WARN", "worker.embed", f"embed request timed out batch_id=b-{batch:06d} "
                     f"attempt={attempt}/5 timeout_s=30.0 tokens={tokens}")
                if attempt == 5:
                    emit("ERROR", "worker.embed", f"embed failed, dead-lettering batch batch_id=b-{batch:06d} "
                         f"docs={rng.randrange(3, 30)} reason=ReadTimeout")
                    out.extend(TRACEBACK)
    return "\n".join(out[:lines])


def long_request_line(rng: random.Random) -> str:
    """The /embed request body that timed out, captured as one very long line."""
    sample = TranscriptWriter(rng, [NINA, HANNAH], [Person("Katrin Albers", "k@n.example", "external")],
                              {"idp": "Entra ID", "term": "two-year", "price": "fifty-two euros"})
    sample.topic("residency", 2600)
    inputs = [f"{who}: {text}" for who, text in sample.turns]
    return json.dumps({"inputs": inputs, "normalize": True, "truncate": False, "truncation_direction": "Right"},
                      ensure_ascii=False, separators=(",", ":"))


@dataclasses.dataclass
class GitHubDoc:
    """One GitHub object of the scenario and its versions: [(time, op, changed fields)]."""

    name: str
    kind: str
    number: int  # the issue/PR number, or the parent's number for comments
    comment_id: int | None = None
    title: str = ""
    author: str = ""
    labels: list[str] = dataclasses.field(default_factory=list)
    extra: dict = dataclasses.field(default_factory=dict)


def github_events(rng: random.Random, clock: Clock, copy: int) -> list[Event]:
    def n(number: int) -> int:  # keeps each copy's issue and PR numbers distinct
        return number + copy * 1000

    events: list[Event] = []
    current: dict[str, dict] = {}

    def base_fields(doc: GitHubDoc, created_us: int) -> dict:
        number = n(doc.number)
        if doc.kind in ("issue", "pull_request"):
            prefix = "I" if doc.kind == "issue" else "PR"
            path = "issues" if doc.kind == "issue" else "pull"
            fields = {"id": f"{prefix}_kwDOKx7Ajc6{number}", "kind": doc.kind, "repo": REPO, "number": number,
                      "title": doc.title}
            url = f"https://github.com/{REPO}/{path}/{number}"
        elif doc.kind == "release":
            fields = {"id": f"RE_kwDOKx7Ajc4{doc.comment_id + copy * 100_000}", "kind": "release", "repo": REPO,
                      "title": doc.title}
            url = f"https://github.com/{REPO}/releases/tag/{doc.extra['tag_name']}"
        else:
            cid = doc.comment_id + copy * 100_000
            prefix = "IC" if doc.kind == "issue_comment" else "PRRC"
            fields = {"id": f"{prefix}_kwDOKx7Ajc5{cid}", "kind": doc.kind, "repo": REPO, "parent_number": number,
                      "title": ""}
            anchor = f"issuecomment-{cid}" if doc.kind == "issue_comment" else f"discussion_r{cid}"
            url = f"https://github.com/{REPO}/{'pull' if doc.kind == 'review_comment' else 'issues'}/{number}#{anchor}"
        fields.update({"body": None, "author": doc.author, "state": "open", "labels": list(doc.labels), "url": url,
                       "created_at": iso_utc(created_us), "updated_at": iso_utc(created_us)})
        if doc.kind in ("issue_comment", "review_comment", "release"):
            del fields["state"]
        fields.update(doc.extra)
        return fields

    def publish(doc: GitHubDoc, when: str, body: str | None = None, exact: bool = False,
                delivered: str | None = None, **changes) -> None:
        publish_us = clock.at(when, exact=exact and copy == 0)
        if doc.name not in current:
            fields = base_fields(doc, publish_us - rng.randrange(2_000_000, 9_000_000))
            op = "c"
        else:
            fields = dict(current[doc.name])
            op = "u"
        if body is not None:
            fields["body"] = body
        fields.update(changes)
        fields["updated_at"] = iso_utc(publish_us - rng.randrange(1_000_000, 3_000_000))
        if "sentiment_category" not in fields:
            fields["sentiment_category"] = "neutral"
        current[doc.name] = fields
        delivered_us = clock.at(delivered) if delivered else None
        events.append(Event(GITHUB, publish_us, op, fields, delivered_us))

    def delete(doc: GitHubDoc, when: str) -> None:
        events.append(Event(GITHUB, clock.at(when), "d", {"id": current[doc.name]["id"]}))

    i412 = GitHubDoc("i412", "issue", 412, title="Memory search returns stale Slack threads after edits",
                     author="mpatel", labels=["bug", "memory", "search"])
    c412 = GitHubDoc("c412", "issue_comment", 412, comment_id=2501873311, author="srivera")
    i431 = GitHubDoc("i431", "issue", 431, title="Embedding requests time out after 30 s on hour-long Gong transcripts",
                     author="srivera", labels=["bug", "embeddings", "performance"],
                     extra={"triage": {"priority": "p1", "owner": "mpatel"}})
    c431 = GitHubDoc("c431", "issue_comment", 431, comment_id=2501990042, author="mpatel")
    i437 = GitHubDoc("i437", "issue", 437, title="Pinecone upsert fails with 413 Request Entity Too Large for Gong calls",
                     author="mpatel", labels=["bug", "sink:pinecone"])
    c437 = GitHubDoc("c437", "issue_comment", 437, comment_id=2503118820, author="srivera")
    p438 = GitHubDoc("p438", "pull_request", 438, title="Cap Pinecone metadata and split upserts by payload size",
                     author="mpatel", labels=["sink:pinecone"],
                     extra={"linked_issues": [437], "ai_summary": "Limits Pinecone metadata; batches by bytes."})
    r438 = GitHubDoc("r438", "review_comment", 438, comment_id=1850012345, author="srivera",
                     extra={"path": "worker/sinks/pinecone.py", "line": 88,
                            "diff_hunk": "@@ -80,6 +80,18 @@ def upsert(self, records):"})
    i440 = GitHubDoc("i440", "issue", 440, title="Weaviate keyword search finds nothing for Japanese Slack messages",
                     author="atanaka", labels=["bug", "sink:weaviate", "i18n"])
    c440 = GitHubDoc("c440", "issue_comment", 440, comment_id=2502240017, author="atanaka",
                     extra={"language": "ja"})
    rel = GitHubDoc("rel", "release", 0, comment_id=18840021, title="v2.14.0: hybrid search, reranker, Gong speaker filters",
                    author="jlindqvist", extra={"tag_name": "v2.14.0", "prerelease": False})
    p442 = GitHubDoc("p442", "pull_request", 442, title="Add chunk_tombstones table so late events can't resurrect deletes",
                     author="srivera", labels=["storage", "correctness"])
    i445 = GitHubDoc("i445", "issue", 445, title="Flaky: test_spool_replay_after_crash times out on CI",
                     author="jlindqvist", labels=["flaky-test", "ci"])
    s445 = GitHubDoc("s445", "issue_comment", 445, comment_id=2502771903, author="fastci-bot")
    p446 = GitHubDoc("p446", "pull_request", 446, title="Helm values for the EU (Frankfurt) deployment",
                     author="srivera", labels=["deploy", "eu"])
    i448 = GitHubDoc("i448", "issue", 448, title="Support Dekaf as an alternative intake",
                     author="mpatel", labels=["enhancement", "intake"])

    log_start = parse_utc_us(f"{YEAR}-11-20T17:00:00Z") + copy * COPY_SHIFT_US
    publish(i412, "11-20 16:05:51", ISSUE_412_V1, sentiment_category="at_risk")
    publish(i431, "11-20 17:30:18", ISSUE_431_HEAD + worker_log(rng, log_start, 3000) + f"\n{FENCE}\n</details>\n",
            sentiment_category="at_risk")
    publish(c412, "11-20 19:02:05", "Reproduced on staging with a GitHub issue edit as well: the old body's chunks "
            "are still returned with their original score. Qdrant shows both point sets for the same key.")
    publish(c431, "11-21 09:12:40", "Here is one of the requests that timed out, captured with `--trace-http` "
            "(one line, sorry):\n\n" + FENCE + "json\n" + long_request_line(rng) + "\n" + FENCE +
            "\n\nAll 256 inputs come from the same transcript, so one long call can starve a whole batch.")
    publish(i437, "11-22 11:10:27", ISSUE_437, sentiment_category="at_risk")
    # The newer version of #440 arrives first; its older first version is replayed a day later.
    publish(i440, "11-23 05:20:13", ISSUE_440_V1, delivered="11-24 08:00:31")
    publish(i440, "11-23 09:45:52", ISSUE_440_V2, labels=["bug", "sink:weaviate", "i18n", "has-fix"])
    publish(c440, "11-23 13:20:09", COMMENT_440)
    publish(rel, "11-23 15:10:46", RELEASE_2140, sentiment_category="positive")
    publish(p438, "11-23 16:05:33", PR_438)
    publish(r438, "11-23 19:20:58", REVIEW_438)
    publish(p442, "11-24 14:09:00", PR_442, exact=True)  # same tick as the SEV-1 Slack message
    publish(i412, "11-24 16:12:37", ISSUE_412_V2, state="closed", labels=["bug", "memory", "search", "fixed"])
    publish(i445, "11-24 18:30:22", None)  # body stays null
    publish(s445, "11-24 19:40:11", SPAM_445, reactions={"-1": 4})
    delete(s445, "11-24 20:05:49")
    publish(p446, "11-25 12:15:04", PR_446)
    publish(c437, "11-25 13:30:19", COMMENT_437)
    publish(i448, "11-25 18:20:55", ISSUE_448)

    # A delete keeps only the key; the late older #440 version keeps its old uuid (publish time).
    # Events stay in scenario order here; build_stream() sorts by delivery time.
    return events


# ---------------------------------------------------------------------------------------------
# Assembly
# ---------------------------------------------------------------------------------------------


def part_rng(seed: int, copy: int, part: str) -> random.Random:
    """One random stream per (copy, collection), so editing one collection's text leaves the other
    collections' keys and timestamps unchanged. A str seed is hashed with SHA-512 by
    random.Random, so it is stable across runs, machines and PYTHONHASHSEED."""
    return random.Random(f"{seed}/{copy}/{part}")


def build_stream(seed: int, scale: int) -> dict[str, list[dict]]:
    """All documents of the stream per collection, in delivery order, with `_meta` set."""
    events: list[Event] = []
    for copy in range(scale):
        for part, make_events in (("gong", gong_events), ("slack", slack_events), ("github", github_events)):
            rng = part_rng(seed, copy, part)
            events += make_events(rng, Clock(rng, copy * COPY_SHIFT_US), copy)

    first_us = min(event.publish_us for event in events)
    assert first_us == parse_utc_us(BASE_PUBLISH), "the scenario must start at BASE_PUBLISH"

    # UUIDs in publish order: documents published in the same tick get increasing counters.
    by_publish = sorted(range(len(events)), key=lambda i: (events[i].publish_us, i))
    uuids: dict[int, str] = {}
    previous_us, counter = None, 0
    for i in by_publish:
        counter = counter + 1 if events[i].publish_us == previous_us else 0
        previous_us = events[i].publish_us
        uuids[i] = gazette_uuid(events[i].publish_us, counter)

    streams: dict[str, list[dict]] = {name: [] for name in OUTPUT_FILES}
    for i in sorted(range(len(events)), key=lambda i: (events[i].delivery_us, events[i].publish_us, i)):
        event = events[i]
        streams[event.collection].append({"_meta": {"uuid": uuids[i], "op": event.op}, **event.fields})
    return streams


def encode(doc: dict) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def write_stream(out_dir: Path, streams: dict[str, list[dict]]) -> dict[str, int]:
    """Write the three files; returns bytes written per file name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for collection, file_name in OUTPUT_FILES.items():
        docs = streams[collection]
        if file_name.endswith(".jsonl"):
            text = "".join(encode(doc) + "\n" for doc in docs)
        else:  # one webhook request body: a JSON array, one element per line for readability
            text = "[\n" + ",\n".join(encode(doc) for doc in docs) + "\n]\n"
        data = text.encode("utf-8")
        (out_dir / file_name).write_bytes(data)
        sizes[file_name] = len(data)
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "stream",
                        help="output folder (default examples/stream)")
    parser.add_argument("--scale", type=int, default=1, help="number of corpus copies (default 1)")
    args = parser.parse_args(argv)
    if args.scale < 1:
        parser.error("--scale must be at least 1")
    streams = build_stream(args.seed, args.scale)
    sizes = write_stream(args.out, streams)
    for collection, file_name in OUTPUT_FILES.items():
        ops = [doc["_meta"]["op"] for doc in streams[collection]]
        print(f"{file_name}: {len(ops)} documents (c={ops.count('c')} u={ops.count('u')} d={ops.count('d')}), "
              f"{sizes[file_name]:,} bytes")


if __name__ == "__main__":
    main()
