#!/usr/bin/env python3
"""Write the hard retrieval evaluation set: a small Estuary stream and the queries that grade it.

Usage (from the repository root):
    .venv/bin/python examples/generate_hard.py [--seed 11] [--out examples/hard]
        [--queries examples/queries-hard.json]

Output:
    <out>/gong-calls-enriched.jsonl      one document per line     } the same three files and
    <out>/slack-messages-enriched.jsonl  one document per line     } formats as examples/stream/,
    <out>/github-enriched.json           one JSON array            } each in delivery order
    <queries>                            the eval query file:
        {"name", "description", "queries": [{"id", "text", "relevant", "kind", "note"}]}

The cases (listed in examples/README.md, "Hard retrieval set"):
- long-document: one ~9,000-word, 400+-turn quarterly business review that talks about the CRM,
  the timeline, the integration, the roadmap and the renewal without ever answering anything, and
  short calls with the same customer that each answer one specific question almost word for word;
- near-duplicate: Slack messages and GitHub issues that share their text but one decisive fact
  (customer, region, version, release branch, date);
- exact-term: ticket keys, error strings, acronyms, a person, a company, a version; each term
  occurs in a known set of documents, among look-alikes (INC-4281 next to INC-4821);
- paraphrase: plain-language controls with no term shared on purpose.

Contract:
- The same seed always gives the same bytes. Every random choice (call ids, Slack ts, timing
  jitter, the review's wording, small talk) comes from ``random.Random(seed)``, used in one
  fixed order; no clock is read. Of the keys only Slack ts and Gong call ids depend on the
  seed, and with them the ids in the relevance lists.
- ``relevant`` holds worker document ids, computed by ``worker.ids.document_id`` from the keys
  (gong: call_id; slack: channel_id, ts; github: id). Every document is a single ``c`` version.
- ``_meta.uuid`` is a v1 UUID whose time is the publish time (generate_stream.gazette_uuid);
  documents are written in publish order, which is the delivery order.
- Relevance is checked before anything is written (``verify_relevance``): an exact term occurs
  in exactly its relevant documents, a near-duplicate's fact in its document and in none of its
  siblings, a long-document answer in its short call and never in the review, and the review
  holds none of the words that would let it answer. A failed check raises SetInvalid and writes
  nothing; the ~600 KB size budget is checked after writing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # worker.ids from the repo root; generate_stream

from generate_stream import (GITHUB, GONG, SLACK, Person, gazette_uuid, iso_utc,  # noqa: E402
                             parse_utc_us, sentiment_category, slack_ts, write_stream)

from worker.ids import document_id  # noqa: E402

YEAR = 2026
SOURCES = {GONG: "gong", SLACK: "slack", GITHUB: "github"}
MAX_TOTAL_BYTES = 600 * 1024


# ---------------------------------------------------------------------------------------------
# Documents and queries
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Doc:
    """One document of the set. ``handle`` is how queries name it; ``fields`` lack ``_meta``."""

    handle: str
    collection: str
    publish_us: int
    fields: dict

    @property
    def key(self) -> tuple[str, ...]:
        if self.collection == GONG:
            return (self.fields["call_id"],)
        if self.collection == SLACK:
            return (self.fields["channel_id"], self.fields["ts"])
        return (self.fields["id"],)

    @property
    def doc_id(self) -> str:
        return document_id(SOURCES[self.collection], self.key)

    def text(self) -> str:
        """Everything a retriever can match: title and text, speakers included."""
        f = self.fields
        if self.collection == GONG:
            transcript = f["transcript"]
            if isinstance(transcript, list):
                transcript = "\n".join(f"{t['speaker']}: {t['text']}" for t in transcript)
            return f"{f['title']}\n{transcript}"
        if self.collection == SLACK:
            return f["text"]
        return f"{f.get('title') or ''}\n{f.get('body') or ''}"


@dataclasses.dataclass
class Query:
    """One eval query. ``evidence`` is what check_queries looks for: the exact term, the decisive
    fact, or the answer phrase; ``siblings`` are the near-duplicates that must lack the fact."""

    id: str
    kind: str  # "exact-term" | "near-duplicate" | "long-document" | "paraphrase"
    text: str
    relevant: list[str]  # handles
    note: str
    evidence: str = ""
    siblings: list[str] = dataclasses.field(default_factory=list)


class Clock:
    """'MM-DD hh:mm:ss' of December 2026 -> publish microseconds, with sub-second jitter."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def at(self, when: str) -> int:
        return parse_utc_us(f"{YEAR}-{when.replace(' ', 'T')}Z") + self.rng.randrange(1, 1_000_000)


# ---------------------------------------------------------------------------------------------
# People and accounts (all fictional)
# ---------------------------------------------------------------------------------------------

ROSA = Person("Rosa Delgado", "rosa@sophia.example", "internal")  # customer success
LUIS = Person("Luis Moreno", "luis@sophia.example", "internal")  # account executive
AMIR = Person("Amir Haddad", "amir@sophia.example", "internal")  # solutions engineer
BEN = Person("Ben Kowalski", "ben@sophia.example", "internal")  # support engineer
FARAH = Person("Farah Nasser", "farah@sophia.example", "internal")  # onboarding

HARRIET = Person("Harriet Lindqvist", "harriet@maplestone.example", "external")  # VP store ops
COLETTE = Person("Colette Brandt", "colette@maplestone.example", "external")  # RevOps
DESMOND = Person("Desmond Osei", "desmond@maplestone.example", "external")  # IT, integrations
PATRICK = Person("Patrick Oduya", "patrick@maplestone.example", "external")  # procurement

INGRID = Person("Ingrid Solberg", "ingrid@halvorsen-dental.example", "external")
TOBIAS = Person("Tobias Reyes", "tobias@halvorsen-dental.example", "external")
INGA = Person("Inga Solheim", "inga@pinecrest-health.example", "external")
MARCO = Person("Marco Bellini", "marco@pinecrest-health.example", "external")

MAPLESTONE = ("0015g00000MpL4kQAE", "Maplestone Group")
HALVORSEN = ("0015g00000HvD7rQAF", "Halvorsen Dental")
PINECREST = ("0015g00000PcH2tQAG", "Pinecrest Health")

BACKCHANNELS = ["Yeah.", "Right.", "Okay, that makes sense.", "Got it.", "Mm-hm.", "Sure.", "Understood.",
                "That's fair.", "Okay.", "Right, right.", "Fair enough.", "Good to hear.", "Makes sense."]
SMALL_TALK = [
    ("Hi {ext}, can you hear me all right?", "Yes, all good. Sorry, I was just finishing another call."),
    ("How's December treating you so far?", "Busy, everyone wants everything done before the holidays."),
    ("Are you in the office today or at home?", "At home today, so apologies if the dog joins us."),
    ("Thanks for making time, I know it's a busy week.", "Of course, this one was on my list."),
    ("Did the snow reach you yet?", "Not yet, just grey and cold."),
]
GOODBYES = [
    ("Thanks, this was really helpful.", "Likewise, talk soon."),
    ("Great, have a good rest of your week.", "You too, bye."),
    ("I'll send a short summary after the call.", "Perfect, thank you."),
]
# Talk that every short call has and that answers nothing.
CALL_CHATTER = [
    ("Let me share my screen, tell me when you can see it.", "Yes, I can see it now."),
    ("Is everyone who needs to be here on the call?", "Yes, that's everyone from our side."),
    ("Do you mind if I record this so I can write up notes afterwards?", "No problem, go ahead."),
    ("Anything changed on your side since we last spoke?", "Not much, mostly the usual end-of-year rush."),
    ("I'll keep this short, I know you have a lot going on.", "Appreciated, I have another call right after."),
    ("Any other questions before we wrap up?", "No, I think that covers it for today."),
    ("I'll write this up and share it in the channel.", "Great, that helps me forward it internally."),
    ("Sorry, you froze for a second, could you repeat that last bit?",
     "Sure, I said we can look at the rest together next week."),
]
ACK = "~"  # in a call script: a backchannel from someone on the other side


# ---------------------------------------------------------------------------------------------
# The long call: a quarterly business review that never gets specific
# ---------------------------------------------------------------------------------------------

# Per theme: questions the customer asks (q_ext) and we ask (q_int), our generic answers (a_int)
# and the customer's generic statements (a_ext). None of them holds a date, a number, a reason or
# a name of a system: every specific answer lives in a short call (see QBR_MUST_NOT_SAY).
QBR_THEMES: dict[str, dict[str, list[str]]] = {
    "adoption": {
        "q_ext": ["How are we doing on adoption compared to similar customers?",
                  "Is usage where you expected it to be at this point?",
                  "Which teams are getting the most out of it?",
                  "Are there groups we should be nudging harder?"],
        "q_int": ["How do your teams feel about it day to day?",
                  "What do you hear from the {team} when you ask them about it?",
                  "Where do people still fall back to the old way of finding things?",
                  "Is there anything slowing people down right now?",
                  "How are the {team} finding it compared to the old way?"],
        "a_int": ["Adoption looks healthy overall, and the trend is going the right way.",
                  "The {team} are the most active group, which matches what we see at similar retailers.",
                  "Usage is steady, with the usual dip around holidays and busy weeks.",
                  "We can run another enablement session for the {team} if that helps.",
                  "The teams that have a champion tend to use it much more than the others."],
        "a_ext": ["People like it, but they still ask each other first out of habit.",
                  "The {team} are using it more than I expected, honestly.",
                  "Some people still don't know where to find it.",
                  "It's become part of the routine for the {team}, which is great to see.",
                  "When it works people love it, and when it doesn't they tell me about it."],
    },
    "crm": {
        "q_ext": ["How does the CRM piece fit into all of this going forward?",
                  "Will the CRM side keep working the way it does today through all the changes?",
                  "Is there anything you need from us on the CRM side right now?",
                  "How do other customers handle big CRM changes with you?"],
        "q_int": ["How is the CRM project going on your side?",
                  "Where does the CRM work stand overall?",
                  "Who on your side is driving the CRM work these days?",
                  "What worries you most about the CRM right now?",
                  "How are the {team} coping with all the CRM changes?",
                  "Is the CRM still where the {team} start their day?"],
        "a_int": ["We've supported a lot of customers through CRM changes, and it's usually smoother than "
                  "people expect.",
                  "The CRM connector is one of our most used pieces, so it gets a lot of attention from our side.",
                  "Whatever you decide on the CRM, we'll plan the connector work around it.",
                  "We'll want to stay close to the CRM project so nothing surprises either of us.",
                  "For the CRM side, the working sessions are the right place for the details.",
                  "Once you know when the CRM migration needs to be finished, we'll line up the connector work "
                  "behind it."],
        "a_ext": ["The CRM migration is a big lift for everyone, and it comes up in every leadership meeting.",
                  "There are a lot of moving parts with the CRM right now.",
                  "The CRM is still the center of everything for the {team}, so it has to keep working.",
                  "We'll share more on the CRM plan once a few open questions are settled.",
                  "Honestly, the CRM data is messier than we'd like, and that's on us.",
                  "The migration is on everyone's mind, and the CRM team is stretched thin.",
                  "When the CRM migration has to be finished, and why, is the question I get every week.",
                  "Which CRM objects we migrate first is still being worked out, so I can't give you the order yet.",
                  "We need the CRM migration finished on time, and we'll share the plan once it's signed off."],
    },
    "integration": {
        "q_ext": ["Is there anything on the integration side we should be worried about?",
                  "How stable has the integration been from your point of view?",
                  "Do you see any risk in the integration as things change on our side?",
                  "What does a healthy integration look like for a customer like us?"],
        "q_int": ["How is the integration working for your team at the moment?",
                  "Has the integration been giving you any trouble lately?",
                  "Who should we loop in on integration questions going forward?",
                  "Are there other integrations you're thinking about?",
                  "Do the {team} notice when the integration has a bad day?",
                  "How much of the integration work sits with your IT team?"],
        "a_int": ["The integration is in good shape overall, and we watch it closely.",
                  "We can schedule an integration health check with our solutions engineer whenever you like.",
                  "Every integration has its quirks, and we've seen most of them before.",
                  "We'd like the integration to be boring, honestly, just reliable in the background.",
                  "If something looks off with the integration, the support team will flag it early."],
        "a_ext": ["The integration is critical for us, it's what makes the whole thing useful.",
                  "Our IT team owns most of the integration work, and they have a lot on their plate.",
                  "We've had a few hiccups with the integration, nothing we can't work through together.",
                  "Every integration we add is another thing someone has to maintain.",
                  "The integration mostly just works, which is what we want.",
                  "Let's keep the integration conversation going in the working sessions.",
                  "Some mornings the CRM sync isn't where people expect it, and we'd like to understand why.",
                  "Why the integration stops syncing now and then is something the support team is looking into.",
                  "The warehouse side of the integration has its own timeline, and leadership cares about it."],
    },
    "timeline": {
        "q_ext": ["What does the timeline look like from your side?",
                  "Is the timeline we talked about last quarter still realistic?",
                  "How much room is there in the timeline if things move on our side?",
                  "When should we expect to have a clearer picture of the timeline?"],
        "q_int": ["How is the overall timeline looking on your side?",
                  "Has anything changed in the timeline since we last spoke?",
                  "What would help you most with the timeline?",
                  "Are there dependencies in the timeline we should know about?",
                  "How does the timeline look for the {team}?",
                  "Who signs off on the timeline on your side?"],
        "a_int": ["We'll fit our plan around your timeline, that's the easy part for us.",
                  "Timeline-wise, we'd rather be realistic than optimistic.",
                  "We can adjust the timeline on our side once you have more clarity.",
                  "As long as we hear about timeline changes early, we can handle them.",
                  "We'll keep the timeline on the agenda for every check-in."],
        "a_ext": ["The timeline is the thing my leadership asks about most.",
                  "There's a lot happening this year, so the timeline has to fit around everything else.",
                  "We're broadly aligned on the timeline, we just need to keep checking in.",
                  "We'll revisit the timeline once a few decisions are made internally.",
                  "If the timeline slips on our side, I'll let you know as soon as I know.",
                  "Honestly, the timeline is still moving, and I don't want to commit to anything yet.",
                  "Leadership wants a deadline for every piece, the CRM migration, the warehouse, the rollout.",
                  "The deadline question keeps coming up, and I don't have a clean answer today."],
    },
    "roadmap": {
        "q_ext": ["What's on the roadmap that we should be excited about?",
                  "Where does the roadmap go over the next couple of releases?",
                  "How do customer requests make it onto the roadmap?",
                  "Is there a way for us to influence the roadmap?"],
        "q_int": ["Which roadmap items matter most to your team?",
                  "Is there anything on the roadmap you'd like to see sooner?",
                  "What would you add to the roadmap if you could?",
                  "Would a roadmap session with our product team be useful?",
                  "What do the {team} ask for most?",
                  "How should we prioritise the roadmap for the {team}?"],
        "a_int": ["The roadmap has a lot in it for retailers, and we can go through it in detail.",
                  "Customer feedback shapes the roadmap more than people think.",
                  "We can set up a roadmap session with product, they like talking to customers directly.",
                  "I'll send the roadmap summary after the call so your team can react to it.",
                  "Some roadmap items are still being scoped, so I'll keep it high level today."],
        "a_ext": ["The roadmap looks promising, and we'll come back with our priorities.",
                  "There are a few roadmap items we care about, we'll send a list.",
                  "On the roadmap, our priorities haven't changed much since last quarter.",
                  "We'd love anything on the roadmap that helps the stores.",
                  "A roadmap session with product would be useful for the {team}.",
                  "There's one roadmap item the stores are waiting for, and we'll want to talk about it separately.",
                  "Whether any roadmap feature blocks the rollout is a question for the next session."],
    },
    "support": {
        "q_ext": ["How are our support tickets trending?",
                  "Is there anything in the support queue we should know about?",
                  "What's the best way to escalate when something is urgent?",
                  "Are the response times where they should be?"],
        "q_int": ["How has the support experience been for your team?",
                  "Were you happy with how the last few tickets were handled?",
                  "Is there anything the support team should do differently?",
                  "Do your admins know how to reach support quickly?",
                  "How do the {team} report problems today?"],
        "a_int": ["Support tickets are trending down, and most of them are how-to questions.",
                  "The support team has a few open items with {ext_first}, and they're all moving.",
                  "For anything urgent, the shared channel is the fastest way to reach us.",
                  "We review every escalation in our weekly support meeting.",
                  "Response times are within what we committed to."],
        "a_ext": ["Support has been responsive, and people appreciate that.",
                  "There's one ticket that's been open longer than I'd like, but it's moving.",
                  "Our admins know how to reach you, that part works.",
                  "Most of our tickets are small things, which is a good sign.",
                  "When we had issues, the support team was quick to jump in.",
                  "Some documents people expect to find don't show up in search, and nobody has told me why yet.",
                  "The store teams say certain documents are missing from search, but it's not clear which ones."],
    },
    "renewal": {
        "q_ext": ["What should we expect for the renewal process this time?",
                  "Is there anything about the renewal we should start on early?",
                  "How do other customers approach the renewal conversation with you?",
                  "What does the renewal look like from your side?"],
        "q_int": ["How are you thinking about the renewal at this point?",
                  "Who on your side will be involved in the renewal?",
                  "What will leadership want to see before the renewal?",
                  "Is there anything that could complicate the renewal?",
                  "How will the {team} weigh in on the renewal?",
                  "Is the renewal on your leadership's radar yet?"],
        "a_int": ["We want the renewal to be a simple conversation, and we'll start early.",
                  "For the renewal, we'll put together a value summary with your usage and time saved.",
                  "The renewal can reflect how the rollout evolves, we're flexible on structure.",
                  "Let's not get into renewal numbers today, Luis will set up a separate call.",
                  "We'll make sure procurement has what they need for the renewal well ahead of time."],
        "a_ext": ["We're happy overall, and I expect the renewal to be a conversation, not a fight.",
                  "Procurement will have their process for the renewal, as always.",
                  "Leadership will want to see adoption and time saved before the renewal.",
                  "We're still working out what the renewal should look like.",
                  "The renewal will come down to whether the rollout keeps its momentum.",
                  "I'd like the renewal to be boring, honestly.",
                  "How many seats we renew with is a conversation for procurement and finance.",
                  "Procurement has opinions about how the renewal should line up with our other contracts.",
                  "Why the renewal might look different this time is something procurement will explain."],
    },
}
# The specific questions come up in the review too, but each is only restated and put off: the
# review holds the question words, never the answer (which QBR_MUST_NOT_SAY enforces).
QBR_ECHOES: dict[str, list[tuple[str, str]]] = {
    "crm": [("When does the CRM migration need to be finished?",
             "When the CRM migration has to be finished, and why, is exactly what we're still working out."),
            ("Do you know yet when the CRM migration has to be done, and why then?",
             "Not in a way I can share, the when and the why of the CRM migration are still being discussed."),
            ("Which CRM objects are you migrating first?",
             "Which CRM objects we migrate first isn't settled yet, the order is still open."),
            ("What goes first in the CRM migration?",
             "What we migrate first in the CRM is still open, the team hasn't agreed on an order.")],
    "integration": [("Why does the CRM integration stop syncing overnight?",
                     "Why the integration stops syncing overnight is a good question, we don't know yet."),
                    ("Any idea why the sync stops overnight?",
                     "No idea yet why the sync stops overnight, support is still digging.")],
    "timeline": [("What's the deadline for the warehouse export?",
                  "The deadline for the warehouse export hasn't been pinned down, I'll confirm it later."),
                 ("When does the data warehouse export have to be live?",
                  "When the warehouse export has to be live is still being decided on our side.")],
    "roadmap": [("Which roadmap feature are you blocked on?",
                 "Which roadmap feature we're blocked on is something we want to cover in a separate session."),
                ("Is any roadmap item blocking you today?",
                 "Whether a roadmap item blocks us is a conversation for the next session.")],
    "support": [("Why are the store policy documents missing from search?",
                 "Why the store policy documents are missing from search is still being looked at."),
                ("Have you found out why some store documents don't show up in search?",
                 "Not yet, nobody has told me why those store documents are missing.")],
    "renewal": [("How many seats do you expect to renew, and why fewer?",
                 "How many seats we renew, and why, is still with finance, I can't say today."),
                ("Will the seat count change at the renewal?",
                 "The seat count for the renewal is still open, finance has the numbers."),
                ("Why would procurement want the renewal dates lined up with other contracts?",
                 "Why procurement wants the renewal dates lined up is something they'll explain themselves.")],
}
QBR_DEFLECTIONS = [
    "That's a fair question, and I'd rather come back with something concrete than guess.",
    "Let's take that one to the working session, it deserves more time than we have today.",
    "We're still working through that internally, so I don't want to give you a half answer.",
    "I'll follow up on that in writing after the call.",
    "Good question, let me check with the team and get back to you.",
    "Honestly, it depends on a few decisions that haven't been made yet.",
]
QBR_FILLERS = [
    "Let me share my screen, tell me when you can see the slide.",
    "Sorry, you cut out for a second, could you say that again?",
    "I'm taking a note on that so we don't lose it.",
    "Let me keep us moving so we get through everything.",
    "I'll put the link in the chat.",
    "Can everyone see the dashboard now?",
]
QBR_OPENERS = ["So, ", "Right, and ", "I mean, ", "Okay, so ", "To be fair, ", "From my side, ", "Look, "]
OPENABLE = {"The", "We", "We'll", "We've", "We're", "We'd", "There", "There's", "Some", "Every", "Our", "Support",
            "Usage", "Adoption", "Leadership", "Procurement", "People", "Most", "When", "Which", "Why", "How"}
QBR_TEAMS = ["store managers", "regional managers", "service team", "sales team", "merchandising team",
             "finance team", "store staff"]
QBR_AGENDA = ["adoption", "crm", "integration", "timeline", "roadmap", "support", "renewal"]
# Words that would let the review answer a query, or match an exact term or decisive fact.
QBR_MUST_NOT_SAY = re.compile(
    r"\d|\b(?:January|February|March|April|June|July|August|September|October|November|December|"
    r"co-term|fiscal|viewer|offline|tablet|wifi|Snowflake|board pack|SharePoint|backup|limit|contacts|"
    r"Salesforce|Dynamics|"
    r"SCIM|SOC|HIPAA|BAA|BYOK|INC-|OPS-|SUP-|x509|SQLSTATE|OOM|ECONNRESET|ERR_|Ingrid|Solberg|"
    r"Brackenridge|Tidewater|Corvane|Halvorsen|-west-|-east-|southeast|release-)", re.IGNORECASE)


class QbrWriter:
    """Writes the review turn by turn, each template as rarely as possible, until a word target."""

    def __init__(self, rng: random.Random, internal: list[Person], external: list[Person]) -> None:
        self.rng = rng
        self.internal = internal
        self.external = external
        self.turns: list[tuple[Person, str]] = []
        self.words = 0
        self.uses: dict[str, int] = {}

    def fill(self, template: str) -> str:
        text = template.replace("{team}", self.rng.choice(QBR_TEAMS))
        return text.replace("{ext_first}", self.rng.choice(self.external[1:]).first)

    def pick(self, pool: list[str]) -> str:
        low = min(self.uses.get(t, 0) for t in pool)
        choice = self.rng.choice([t for t in pool if self.uses.get(t, 0) == low])
        self.uses[choice] = self.uses.get(choice, 0) + 1
        return self.fill(choice)

    def who(self, side: str, exclude: Person | None = None) -> Person:
        people = [p for p in (self.internal if side == "int" else self.external) if p != exclude]
        return self.rng.choices(people, weights=[3] + [1] * (len(people) - 1))[0]

    def say(self, who: Person, text: str) -> None:
        first = text.split(" ", 1)[0]
        if self.rng.random() < 0.2 and first in OPENABLE:
            text = f"{self.rng.choice(QBR_OPENERS)}{text[0].lower()}{text[1:]}"
        if self.turns and self.turns[-1][0] == who:
            self.turns[-1] = (who, f"{self.turns[-1][1]} {text}")
        else:
            self.turns.append((who, text))
        self.words += len(text.split())

    def exchange(self, theme: str) -> None:
        pools = QBR_THEMES[theme]
        roll = self.rng.random()
        if theme in QBR_ECHOES and self.rng.random() < 0.2:
            asker, answerer = self.who("int"), self.who("ext")
            question = self.pick([q for q, _ in QBR_ECHOES[theme]])
            restated = dict(QBR_ECHOES[theme])[question]
            self.say(asker, question)
            self.say(answerer, restated)
            if self.rng.random() < 0.5:
                self.say(self.who("ext", exclude=answerer), self.pick(pools["a_ext"]))
        elif roll < 0.08:
            self.say(self.who(self.rng.choice(["int", "ext"])), self.pick(QBR_FILLERS))
        elif roll < 0.48:
            asker, answerer = self.who("ext"), self.who("int")
            self.say(asker, self.pick(pools["q_ext"]))
            answer = self.pick(QBR_DEFLECTIONS) if self.rng.random() < 0.3 else self.pick(pools["a_int"])
            self.say(answerer, answer)
            if self.rng.random() < 0.5:
                self.say(answerer, self.pick(pools["a_int"]))
            if self.rng.random() < 0.3:
                self.say(asker, self.rng.choice(BACKCHANNELS))
        elif roll < 0.86:
            asker, answerer = self.who("int"), self.who("ext")
            self.say(asker, self.pick(pools["q_int"]))
            self.say(answerer, self.pick(pools["a_ext"]))
            if self.rng.random() < 0.45:
                self.say(answerer, self.pick(pools["a_ext"]))
            if self.rng.random() < 0.3:
                self.say(asker, self.rng.choice(BACKCHANNELS))
        else:  # a remark from another theme: the review keeps circling back
            other = QBR_THEMES[self.rng.choice(QBR_AGENDA)]
            self.say(self.who("ext"), self.pick(other["a_ext"]))
            self.say(self.who("int"), f"{self.rng.choice(BACKCHANNELS)} {self.pick(other['a_int'])}")

    def write(self, words_per_theme: int) -> list[tuple[Person, str]]:
        host = self.internal[0]
        plain = [pair for pair in SMALL_TALK if not QBR_MUST_NOT_SAY.search(" ".join(pair))]
        for line, reply in self.rng.sample(plain, 3):
            self.say(host, line.replace("{ext}", self.external[0].first))
            self.say(self.who("ext"), reply)
        self.say(host, "For today I'd like to cover adoption, then the CRM work, the integration, the timeline, "
                       "the roadmap, support, and finally the renewal. Does that work for everyone?")
        self.say(self.external[0], "That works. Let's keep an eye on the clock, I have a hard stop.")
        for theme in QBR_AGENDA:
            start = self.words
            self.say(host, f"Okay, let's move on to {theme.replace('crm', 'the CRM')}.")
            while self.words - start < words_per_theme:
                self.exchange(theme)
        self.say(host, "Let me recap: we'll go deeper on the CRM and the integration in the working sessions, "
                       "I'll send the roadmap summary, and Luis will set up the renewal conversation.")
        self.say(self.external[0], "Sounds good. Thanks everyone, this was a good review.")
        for line, reply in self.rng.sample(GOODBYES, 2):
            self.say(host, line)
            self.say(self.who("ext"), reply)
        return self.turns


# ---------------------------------------------------------------------------------------------
# The short calls: each answers one or two specific questions almost word for word
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CallSpec:
    handle: str
    title: str
    published: str
    account: tuple[str, str]
    internal: list[Person]
    external: list[Person]
    script: list[tuple[Person, str]]  # ACK as text: a backchannel from the other side
    sentiment: float
    topics: list[str]
    action_items: list[str]
    as_lines: bool = False  # the older enrichment's single 'Name: text' string


def short_calls() -> list[CallSpec]:
    return [
        CallSpec(
            "crm-migration", "Maplestone Group onboarding: CRM migration plan", "12-02 16:05:30", MAPLESTONE,
            [FARAH, AMIR], [COLETTE, DESMOND], [
                (FARAH, "The goal for today is to line up our onboarding with your CRM migration, so the connector "
                        "points at the right system at the right time."),
                (COLETTE, "Good, because the migration drives everything we do this spring."),
                (FARAH, "Let's start with the date. When does the CRM migration need to be finished?"),
                (COLETTE, "The hard deadline is April 30. Our Salesforce contract ends on April 30 and legal refused "
                          "to sign another extension, so the migration to Dynamics 365 has to be finished by then. "
                          "There is no slack at all."),
                (AMIR, ACK),
                (AMIR, "Understood. So until April 30 we keep the Salesforce connector running, and we switch to the "
                       "Dynamics connector before the contract ends."),
                (DESMOND, "Right. And we'd like a couple of weeks where both are connected so we can compare answers."),
                (AMIR, "We can run both connectors side by side, answers cite whichever system the record lives in."),
                (FARAH, "Which CRM objects are you migrating first?"),
                (DESMOND, "We migrate accounts and contacts first, in the first sprint, then open opportunities. "
                          "Cases go last, because the service team is still cleaning them up."),
                (AMIR, "That order works well for us. Accounts and contacts are what the account briefs lean on most."),
                (COLETTE, "How long does a re-sync take when we cut over?"),
                (AMIR, "For your volume a full re-sync of accounts and contacts takes a few hours, and it runs in the "
                       "background, so nobody loses search in the meantime."),
                (DESMOND, "Do we need to change anything in the field mappings?"),
                (AMIR, "Custom fields need a mapping file. If you send me the list of custom fields in Dynamics, "
                       "I'll prepare it."),
                (DESMOND, "I'll send the field list by Friday."),
                (FARAH, "Who on your side owns the cut-over weekend?"),
                (DESMOND, "My team does, together with the Dynamics partner. Colette signs off on the data checks."),
                (COLETTE, "And I want the sales team trained on the new record links before the cut-over, not after."),
                (FARAH, "We'll schedule a short training for the sales team two weeks before the switch."),
                (COLETTE, ACK),
                (AMIR, "So next steps: Desmond sends the custom field list, I prepare the mapping, and Farah books "
                       "the sales training."),
            ], 0.35, ["onboarding", "CRM migration", "Dynamics 365", "connectors"],
            ["send Dynamics custom field list by Friday", "prepare connector field mapping",
             "book sales team training before cut-over"]),
        CallSpec(
            "sync-overnight", "Maplestone Group support: CRM sync stops overnight", "12-03 15:20:44", MAPLESTONE,
            [BEN], [DESMOND], [
                (BEN, "I'm calling about the ticket you opened on the CRM integration. I've logged it as SUP-2290 so "
                      "you can follow it."),
                (DESMOND, "Thanks. The symptom is simple: the integration stops syncing overnight, and every morning "
                          "the updates from the evening are missing until about seven."),
                (BEN, "I looked at the logs for the last week. Every night from around one in the morning our sync "
                      "is rejected by Salesforce and keeps retrying until the morning."),
                (DESMOND, "Rejected why, exactly?"),
                (BEN, "Your nightly data export job runs under the same integration user as our sync. It uses up the "
                      "daily API request limit for that user, so our requests are refused until the limit frees up "
                      "in the morning."),
                (DESMOND, "That would explain it. The export job was moved to the integration user last month when "
                          "we cleaned up licenses."),
                (BEN, "Exactly. The fix is to give our sync its own integration user, or to move the export job back "
                      "to its own user."),
                (DESMOND, "I'd rather create a dedicated user for you. What permissions does it need?"),
                (BEN, "Read access to accounts, contacts, opportunities and cases, plus API access. I'll put the "
                      "permission set in the ticket."),
                (DESMOND, "And once the user exists, do we have to reconnect?"),
                (BEN, "Yes, you reconnect the CRM integration with the new user in the admin console. It takes a "
                      "minute and doesn't trigger a full re-sync."),
                (DESMOND, "Will we lose the changes from last night?"),
                (BEN, "No, the sync catches up from where it stopped. Nothing is lost, it's only delayed."),
                (DESMOND, ACK),
                (BEN, "I'll update SUP-2290 with the permission set and keep it open until you confirm two clean "
                      "nights."),
            ], -0.1, ["support", "CRM integration", "API limits"],
            ["create a dedicated integration user", "update SUP-2290 with the permission set"]),
        CallSpec(
            "renewal-prep", "Maplestone Group renewal prep with procurement", "12-04 18:10:05", MAPLESTONE,
            [LUIS, ROSA], [PATRICK, COLETTE], [
                (LUIS, "Thanks for joining. I wanted to get ahead of the renewal paperwork so nothing lands at the "
                       "last minute."),
                (PATRICK, "Appreciated. Procurement has one big request, so let me start there."),
                (PATRICK, "We want the renewal co-termed to September 30. Procurement consolidates every software "
                          "contract onto our fiscal year, which starts October 1, so anything that renews mid-year "
                          "gets co-termed."),
                (LUIS, "That's doable. We'd prorate the months between the current end date and September 30."),
                (PATRICK, "Prorated is fine, as long as the unit price stays the same."),
                (ROSA, "Colette, do you have a view on the seat count yet?"),
                (COLETTE, "Yes. We'll renew 340 seats instead of 400, because the store managers are moving to viewer "
                          "licenses. They read answers but never build anything."),
                (LUIS, "Viewer licenses are a separate line on the order form, so 340 full seats plus the viewers. "
                       "I'll quote both."),
                (COLETTE, "Good. My CFO will ask why the total didn't drop more, so make the viewer price clear."),
                (PATRICK, "Payment terms stay at net sixty."),
                (LUIS, "Net sixty is fine."),
                (PATRICK, "Who signs on your side?"),
                (LUIS, "Our VP of sales signs, usually within two days of your signature."),
                (ROSA, "And the usage numbers from the review should help with the business case."),
                (COLETTE, ACK),
                (LUIS, "I'll send the co-termed quote with 340 seats and the viewer line by next Wednesday."),
            ], 0.3, ["renewal", "procurement", "pricing", "seats"],
            ["send co-termed quote: 340 seats plus viewer licenses"]),
        CallSpec(
            "offline-mode", "Maplestone Group roadmap check-in: offline mode", "12-03 19:45:10", MAPLESTONE,
            [AMIR, ROSA], [HARRIET], [
                (AMIR, "Harriet, you asked for a roadmap check-in, so I brought the product plan for the next two "
                       "releases."),
                (HARRIET, "Thanks. I'll be blunt, there's one item I care about."),
                (HARRIET, "The one roadmap item we're blocked on is offline mode for the store tablets. Half our "
                          "stores have patchy wifi in the back room, so without offline mode we can't roll out to all "
                          "120 stores, and it has to ship before the holiday peak in October."),
                (AMIR, "Offline mode is planned. The first version caches the saved answers and the last week of "
                       "store announcements on the tablet."),
                (HARRIET, "Caching saved answers is most of what store staff need."),
                (ROSA, "What happens if it slips past October?"),
                (HARRIET, "Then the stores keep the printed binders for another year, and the rollout stops at the "
                          "forty stores with good wifi."),
                (AMIR, "We'll put you in the beta so you can test on real tablets."),
                (HARRIET, "Yes please, we can test in the two stores near headquarters."),
                (ROSA, "Anything else on the roadmap you want us to track?"),
                (HARRIET, "The digest and the admin reports are nice to have. Offline mode is the one that decides "
                          "the rollout."),
                (AMIR, ACK),
            ], 0.1, ["roadmap", "offline mode", "store rollout"],
            ["add Maplestone to the offline mode beta", "share offline mode release plan"]),
        CallSpec(
            "warehouse-export", "Maplestone Group integration kickoff: data warehouse export", "12-02 20:30:55",
            MAPLESTONE, [AMIR], [DESMOND, COLETTE], [
                (AMIR, "This kickoff is about getting usage data into your warehouse, so let's start with what you "
                       "need and by when."),
                (DESMOND, "The Snowflake export has to be live by the end of February, because the board pack in "
                          "March is built from the warehouse and our CFO wants adoption numbers in it."),
                (AMIR, "The export writes usage and answer events into a Snowflake share, one table per event type."),
                (COLETTE, "Which fields do we get?"),
                (AMIR, "User, team, time, whether an answer was clicked, and the source of the cited document. Never "
                       "the query text itself."),
                (DESMOND, "How often is it refreshed?"),
                (AMIR, "Hourly. The first load backfills everything since your go-live."),
                (DESMOND, "We'll need a service account on the Snowflake side for the share."),
                (AMIR, "I'll send the setup steps, it's a reader account and two grants."),
                (COLETTE, ACK),
            ], 0.4, ["integration", "data warehouse", "Snowflake", "reporting"],
            ["send Snowflake share setup steps", "confirm export fields with Colette"]),
        CallSpec(
            "policy-docs", "Maplestone Group support: store policy documents missing", "12-05 16:40:20", MAPLESTONE,
            [BEN], [HARRIET, DESMOND], [
                (HARRIET, "Store staff ask about return policies, and the answers never cite the store policy "
                          "documents. They cite old emails instead."),
                (BEN, "I checked the connector. The store policy PDFs live in a SharePoint site called Store "
                      "Operations, and that site was never connected. The connector only indexes the sites you add, "
                      "and Store Operations was created after the initial setup."),
                (DESMOND, "So we just add the site?"),
                (BEN, "Yes, add Store Operations in the admin console under SharePoint sources. The first sync "
                      "takes about an hour."),
                (HARRIET, "Will the old emails still show up?"),
                (BEN, "They will, but the policy documents rank above them once they're indexed, since they match the "
                      "questions better."),
                (DESMOND, ACK),
                (BEN, "I'll stay on the ticket until you see the policy documents in answers."),
            ], 0.0, ["support", "SharePoint", "missing content"],
            ["add the Store Operations SharePoint site as a source"], as_lines=True),
        CallSpec(
            "scim", "Halvorsen Dental onboarding: SSO and SCIM provisioning", "12-01 21:15:00", HALVORSEN,
            [FARAH, AMIR], [INGRID, TOBIAS], [
                (INGRID, "We have sixty clinics and staff turnover is high. Hygienists and front desk staff move "
                         "between clinics all the time, and I don't want my team creating accounts by hand."),
                (AMIR, "That's what SCIM provisioning is for. Okta creates the account when someone is added to a "
                       "clinic group, updates it when they move, and deactivates it the day they leave."),
                (INGRID, "Sign-in is already done with SAML, so this is only SCIM provisioning?"),
                (AMIR, "Right. SAML handles sign-in, SCIM provisioning handles the account lifecycle. You generate a "
                       "SCIM token in the admin console and paste it into the Okta app."),
                (TOBIAS, "Can the clinic groups map to teams?"),
                (AMIR, "Yes, group push maps each Okta group to a team, so the usage reports come per clinic."),
                (INGRID, "What happens to saved answers when someone leaves?"),
                (AMIR, "They stay. Ownership moves to the team."),
                (INGRID, "Good. Who do I talk to if provisioning fails?"),
                (FARAH, "Support, and we'll set up a shared channel for the rollout."),
                (TOBIAS, ACK),
            ], 0.5, ["onboarding", "SCIM", "Okta", "SSO"],
            ["send SCIM setup guide for Okta", "open a shared Slack channel with Halvorsen IT"]),
        CallSpec(
            "baa", "Pinecrest Health security review", "12-04 14:50:33", PINECREST,
            [LUIS, AMIR], [INGA, MARCO], [
                (INGA, "Before any patient data goes in, we need a signed HIPAA BAA. That's not negotiable for us."),
                (LUIS, "We sign a HIPAA BAA with every healthcare customer. Legal can send our standard BAA this week, "
                       "or review your paper if you prefer."),
                (MARCO, "We prefer our own BAA template, it includes breach notification within five business days."),
                (LUIS, "Five business days is in line with what we already commit to."),
                (INGA, "How is the data encrypted at rest?"),
                (AMIR, "AES-256 at rest and TLS 1.2 or higher in transit. The keys are managed by our cloud provider's "
                       "key service and rotated every year."),
                (MARCO, "And audit logs?"),
                (AMIR, "Every admin action and every export is in the audit log, kept for a year."),
                (INGA, "What about penetration testing?"),
                (LUIS, "An independent firm tests us every year, and we share the executive summary under NDA."),
                (MARCO, ACK),
            ], 0.2, ["security review", "HIPAA", "encryption", "audit log"],
            ["send Pinecrest BAA redlines to legal", "share pen test executive summary under NDA"]),
    ]


def render_script(rng: random.Random, spec: CallSpec) -> list[tuple[Person, str]]:
    """Small talk and chatter, the script (ACKs become backchannels), more chatter, goodbyes."""
    host, guest = spec.internal[0], spec.external[0]
    chatter = rng.sample(CALL_CHATTER, 4)
    turns: list[tuple[Person, str]] = []
    for line, reply in rng.sample(SMALL_TALK, 2) + chatter[:2]:
        turns += [(host, line.replace("{ext}", guest.first)), (guest, reply)]
    for who, text in spec.script:
        turns.append((who, rng.choice(BACKCHANNELS) if text == ACK else text))
    for line, reply in chatter[2:] + [rng.choice(GOODBYES)]:
        turns += [(host, line), (guest, reply)]
    return turns


def merge_turns(turns: list[tuple[Person, str]]) -> list[tuple[Person, str]]:
    """Consecutive sentences of one speaker are one turn, as in Gong."""
    out: list[tuple[Person, str]] = []
    for who, text in turns:
        if out and out[-1][0] == who:
            out[-1] = (who, f"{out[-1][1]} {text}")
        else:
            out.append((who, text))
    return out


def gong_doc(rng: random.Random, clock: Clock, handle: str, title: str, published: str,
             account: tuple[str, str], internal: list[Person], external: list[Person],
             turns: list[tuple[Person, str]], *, sentiment: float, topics: list[str],
             action_items: list[str], as_lines: bool = False) -> Doc:
    t = round(rng.uniform(3.0, 15.0), 1)
    transcript = []
    for who, text in merge_turns(turns):
        transcript.append({"speaker": who.name, "start_s": round(t, 1), "text": text})
        t += len(text.split()) / 2.6 + rng.uniform(0.3, 1.8)
    duration_s = int(t + rng.uniform(5, 40))
    publish_us = clock.at(published)
    enriched_us = publish_us - rng.randrange(1_000_000, 4_000_000)
    ended_us = enriched_us - rng.randrange(8, 25) * 60_000_000
    started_us = (ended_us - duration_s * 1_000_000) // 1_000_000 * 1_000_000
    call_id = str(rng.randrange(7_800_000_000_000_000_000, 7_900_000_000_000_000_000))
    fields = {
        "call_id": call_id,
        "title": title,
        "url": f"https://app.gong.io/call?id={call_id}",
        "started_at": iso_utc(started_us),
        "duration_s": duration_s,
        "account_id": account[0],
        "account_name": account[1],
        "participants": [p.as_participant() for p in internal + external],
        "transcript": ("\n".join(f"{x['speaker']}: {x['text']}" for x in transcript) if as_lines
                       else transcript),
        "sentiment": sentiment,
        "sentiment_category": sentiment_category(sentiment),
        "topics": topics,
        "action_items": action_items,
        "enriched_at": iso_utc(enriched_us),
        "source_system": "gong_v2_mcp",
    }
    return Doc(handle, GONG, publish_us, fields)


def gong_docs(rng: random.Random, clock: Clock) -> list[Doc]:
    internal, external = [ROSA, LUIS, AMIR], [HARRIET, COLETTE, DESMOND, PATRICK]
    qbr = QbrWriter(rng, internal, external).write(words_per_theme=1250)
    docs = [gong_doc(rng, clock, "qbr", "Maplestone Group <> Sophia quarterly business review", "12-01 17:40:12",
                     MAPLESTONE, internal, external, qbr, sentiment=0.25,
                     topics=["QBR", "adoption", "CRM", "integration", "roadmap", "renewal"],
                     action_items=["schedule CRM working session", "send roadmap summary",
                                   "set up renewal conversation"])]
    for spec in short_calls():
        docs.append(gong_doc(rng, clock, spec.handle, spec.title, spec.published, spec.account, spec.internal,
                             spec.external, render_script(rng, spec), sentiment=spec.sentiment, topics=spec.topics,
                             action_items=spec.action_items, as_lines=spec.as_lines))
    return docs


# ---------------------------------------------------------------------------------------------
# Slack
# ---------------------------------------------------------------------------------------------

CHANNELS = {
    "renewals": "C08RNWL2Q", "incidents": "C08INC7XR", "eng-platform": "C08PLT3KD",
    "support-escalations": "C08SUP5EZ", "security-questions": "C08SEC1QA", "releases": "C08REL9MB",
    "deal-halvorsen": "C08HLV4DN", "announcements": "C08ANN2OP",
}
USERS = {
    "rosa": "U08RD1A2B", "luis": "U08LM3C4D", "amir": "U08AH5E6F", "ben": "U08BK7G8H", "farah": "U08FN9J1K",
    "kenji": "U08KW2L3M", "olga": "U08OP4N5P", "marta": "U08MS6Q7R", "theo": "U08TB8S9T",
}
REPO = "sophia-ai/ai-memory"
INFRA = "sophia-ai/platform-infra"


def issue_link(number: int) -> str:
    return f"<https://github.com/{REPO}/issues/{number}|#{number}>"


RENEWAL_RISK = ("Renewal risk :warning: {customer}: our champion left last week and the new VP hasn't logged in "
                "once. Renewal is in 60 days. Need an exec sponsor call before we send the quote, can someone from "
                "leadership join?")
LATENCY = (":rotating_light: Elevated search latency in {region}: p95 is above 2 s since 09:10 UTC, ingest looks "
           "normal. Investigating, updates in this thread.")
MAINTENANCE = ("Scheduled maintenance :wrench: Saturday, {date}, 02:00-04:00 UTC: Postgres minor upgrade on the "
               "metadata cluster. Search stays up, ingest pauses and catches up afterwards.")


@dataclasses.dataclass
class SlackSpec:
    handle: str
    channel: str
    user: str
    published: str
    text: str
    sentiment: float
    parent: str | None = None  # handle of the thread's first message
    thread_top: bool = False  # a top-level message that carries thread_ts == ts
    reactions: list[dict] = dataclasses.field(default_factory=list)


def slack_script() -> list[SlackSpec]:
    s = SlackSpec
    return [
        s("renewal-corvane", "renewals", "rosa", "12-01 15:02:10", RENEWAL_RISK.format(customer="Corvane Retail"),
          -0.4, reactions=[{"name": "eyes", "count": 2}]),
        s("scim-ingrid", "deal-halvorsen", "farah", "12-01 22:40:31",
          "Halvorsen Dental update :tada: Ingrid Solberg signed off on the pilot, 60 clinics go live after the "
          "holidays. Training starts the first week of January.", 0.7, reactions=[{"name": "clap", "count": 4}]),
        s("latency-eu", "incidents", "kenji", "12-02 09:14:22", LATENCY.format(region="eu-west-1"), -0.5,
          thread_top=True),
        s("inc-4812", "incidents", "kenji", "12-02 09:41:05",
          "INC-4812 closed as a false alarm: the synthetic search probe was still pointed at the old staging "
          "endpoint. No customer impact.", 0.1, parent="latency-eu"),
        s("renewal-tidewater", "renewals", "luis", "12-02 11:30:48",
          RENEWAL_RISK.format(customer="Tidewater Freight"), -0.4),
        s("econnreset", "eng-platform", "olga", "12-02 13:05:17",
          "Estuary webhook deliveries to the worker fail with `ECONNRESET` every few minutes. The ALB idle timeout "
          "is 60 s but the sender keeps connections alive for 75 s, so the load balancer closes them first. "
          "Raising the idle timeout to 120 s.", -0.2, reactions=[{"name": "bulb", "count": 3}]),
        s("econnrefused", "eng-platform", "olga", "12-02 13:52:40",
          "Heads up: webhook deliveries fail with `ECONNREFUSED` for a few seconds during every worker deploy. "
          "Expected, the sender retries, no action needed.", 0.0),
        s("latency-us", "incidents", "kenji", "12-02 14:20:39", LATENCY.format(region="us-east-1"), -0.5,
          thread_top=True),
        s("timeouts-resolved", "incidents", "kenji", "12-02 16:02:54",
          f"Search timeouts on the shared cluster are over :white_check_mark: 52 minutes of impact. I'll write up "
          f"the root cause in the postmortem: {issue_link(620)}", 0.3,
          thread_top=True, reactions=[{"name": "green_heart", "count": 5}]),
        s("sso-ashgrove", "support-escalations", "ben", "12-02 16:40:19",
          "Ashgrove Bank wants SAML single sign-on with Azure AD for the pilot, and their BYOD policy means half the "
          "users sign in from personal phones. Until then their admins upload new users from a CSV every Monday "
          "and remove leavers by hand :sweat_smile:", -0.1),
        s("soc2", "security-questions", "luis", "12-02 17:45:12",
          f"Quillfeather Labs procurement needs our SOC 2 Type II report plus the bridge letter before they sign on "
          f"Friday. <@{USERS['marta']}> where's the latest one?", 0.1),
        s("ssl-mismatch", "support-escalations", "ben", "12-03 10:12:40",
          "Corvane Retail users see ERR_SSL_VERSION_OR_CIPHER_MISMATCH in Chrome when they open answers on their "
          "custom domain. Their proxy only negotiates TLS 1.0 and we require TLS 1.2 or newer. Asked their IT to "
          "update the proxy profile.", -0.3),
        s("latency-ap", "incidents", "kenji", "12-03 11:48:03", LATENCY.format(region="ap-southeast-2"), -0.5,
          thread_top=True),
        s("iso-pentest", "security-questions", "rosa", "12-03 13:27:55",
          "Ashgrove Bank's security team asks for our ISO 27001 certificate, the SOC 3 report and the latest pen "
          "test summary before the pilot. Do we share the full pen test report or only the executive summary?", 0.0),
        s("renewal-halvorsen", "renewals", "farah", "12-03 16:33:29",
          RENEWAL_RISK.format(customer="Halvorsen Dental"), -0.4, reactions=[{"name": "eyes", "count": 1}]),
        s("sup-2209", "support-escalations", "ben", "12-03 18:05:44",
          "SUP-2209: Tidewater's kiosk machines get `ERR_SSL_PROTOCOL_ERROR` in the browser extension. "
          "Their image is missing the new root CA bundle, sent them the update steps.", -0.2),
        s("maint-13", "announcements", "kenji", "12-04 09:00:15", MAINTENANCE.format(date="December 13"), 0.0,
          reactions=[{"name": "white_check_mark", "count": 3}]),
        s("dpa-oakhurst", "security-questions", "marta", "12-04 10:05:51",
          "Legal update: the DPA with Oakhurst Insurance is countersigned, and the subprocessor list is attached as "
          "an annex. GDPR questions from their side come to me.", 0.4, reactions=[{"name": "tada", "count": 2}]),
        s("byok", "security-questions", "luis", "12-04 12:18:36",
          "Oakhurst Insurance asks whether we support BYOK: they want the vector store encrypted with a key from "
          "their own AWS KMS account, and the ability to revoke it. Is that on the roadmap?", 0.0),
        s("brackenridge-slack", "support-escalations", "ben", "12-04 15:51:02",
          f"Brackenridge Capital escalated :rotating_light: answers still quote Slack messages they deleted last "
          f"week. Filed {issue_link(628)}, looks like the deletes never reach the Pinecone index.", -0.6,
          reactions=[{"name": "eyes", "count": 4}]),
        s("release-2213-slack", "releases", "theo", "12-05 10:30:27",
          ":package: ai-memory v2.21.3 is out: fixes the duplicate chunks after webhook replays and the slow "
          "Weaviate batch deletes. Notes: <https://github.com/sophia-ai/ai-memory/releases/tag/v2.21.3|v2.21.3>",
          0.6, thread_top=True, reactions=[{"name": "rocket", "count": 6}]),
        s("maint-27", "announcements", "kenji", "12-05 14:00:48", MAINTENANCE.format(date="December 27"), 0.0),
    ]


def slack_docs(rng: random.Random, clock: Clock) -> list[Doc]:
    docs: dict[str, Doc] = {}
    for spec in slack_script():
        publish_us = clock.at(spec.published)
        ts = slack_ts(publish_us - rng.randrange(1_200_000, 4_000_000))
        channel_id = CHANNELS[spec.channel]
        fields: dict = {"channel_id": channel_id, "channel_name": spec.channel, "ts": ts}
        permalink = f"https://sophia.slack.com/archives/{channel_id}/p{ts.replace('.', '')}"
        if spec.parent:
            parent = docs[spec.parent].fields
            fields["thread_ts"] = parent["ts"]
            permalink += f"?thread_ts={parent['ts']}&cid={channel_id}"
            parent["reply_count"] += 1
        elif spec.thread_top:
            fields["thread_ts"] = ts
        fields.update({"user_id": USERS[spec.user], "user_name": spec.user, "text": spec.text,
                       "permalink": permalink})
        if not spec.parent:
            fields["reply_count"] = 0
        fields.update({"reactions": spec.reactions, "sentiment": spec.sentiment,
                       "sentiment_category": sentiment_category(spec.sentiment),
                       "enriched_at": iso_utc(publish_us - rng.randrange(200_000, 900_000))})
        docs[spec.handle] = Doc(spec.handle, SLACK, publish_us, fields)
    return list(docs.values())


# ---------------------------------------------------------------------------------------------
# GitHub
# ---------------------------------------------------------------------------------------------

FENCE = "```"
STUCK_BATCHES = f"""## What happened
After upgrading the worker to {{version}}, embedding batches stay in `pending` and never reach the sinks. The spool
keeps growing (about 40k documents after two hours) and `/health` still reports ok.

## Steps to reproduce
1. Upgrade the worker image to `{{version}}` with the same `configs/production.yaml`.
2. Replay the Gong collection from the start.
3. Watch `memory_worker_batches_pending` on the metrics endpoint.

## Logs
{FENCE}
level=info msg="batch queued" chunks=256 tokens=61440
level=warn msg="engine idle" waited_ms=30000
{FENCE}

## Expected
Batches are embedded and written within seconds, as before the upgrade.
"""
FIXED_ON_BRANCH = ("Confirmed fixed on the `{branch}` branch :tada: batches drain again after the engine restart "
                   "fix. Closing once the backport PR is merged.")
POSTMORTEM = """## Summary
{summary}

## Root cause
{cause}

## Timeline (UTC)
{timeline}

## Action items
{actions}
"""


@dataclasses.dataclass
class GitHubSpec:
    handle: str
    kind: str  # issue | pull_request | issue_comment | release
    repo: str
    number: int  # issue/PR number; for comments the parent's; for releases a sequence
    published: str
    author: str
    title: str
    body: str
    labels: list[str] = dataclasses.field(default_factory=list)
    state: str = "open"
    sentiment: str = "neutral"
    comment_id: int = 0
    extra: dict = dataclasses.field(default_factory=dict)


def github_script() -> list[GitHubSpec]:
    g = GitHubSpec
    stuck = "Embedding batches stuck in pending after upgrading to {version}"
    return [
        g("stuck-2151", "issue", REPO, 601, "12-01 16:20:05", "olga", stuck.format(version="v2.15.1"),
          STUCK_BATCHES.format(version="v2.15.1"), ["bug", "ingest"], sentiment="at_risk"),
        g("postmortem-4281", "issue", REPO, 596, "12-01 19:05:44", "kenji",
          "Postmortem INC-4281: search errors after an internal DNS change",
          POSTMORTEM.format(
              summary="For 38 minutes about a third of search requests returned 503 from the query gateways.",
              cause="A DNS record for the query service was changed with a 24-hour TTL, so half of the gateways "
                    "kept resolving the old address and sent queries to drained nodes.",
              timeline="- 13:02 DNS change applied\n- 13:09 first 503 alerts\n- 13:31 gateways restarted\n"
                       "- 13:40 recovered",
              actions="- [x] Lower the TTL of service records to 60 s\n- [ ] Health-check upstreams before use"),
          ["postmortem", "incident"], state="closed"),
        g("stuck-2162", "issue", REPO, 604, "12-02 08:45:31", "mpatel", stuck.format(version="v2.16.2"),
          STUCK_BATCHES.format(version="v2.16.2"), ["bug", "ingest"], sentiment="at_risk"),
        g("ops-1178", "pull_request", INFRA, 85, "12-02 10:10:19", "kenji",
          "Alert when spool disk usage passes 80% (OPS-1178)",
          "Implements OPS-1178.\n\n## What\n- A Prometheus rule on `memory_worker_spool_bytes` divided by the volume "
          "size.\n- Pages the on-call at 80%, opens a ticket at 70%.\n\n## Why\nA full spool stops intake, and we "
          "only noticed the last time from the webhook sender's retries.\n", ["monitoring", "ops"]),
        g("oomkilled", "issue", REPO, 609, "12-02 12:25:50", "mpatel",
          "Embed pods OOMKilled on Gong calls with 500+ turns",
          "## What happened\nThe embed deployment restarts every few minutes while the Gong backfill runs. "
          "`kubectl describe pod` shows:\n\n" + FENCE + "\n    Last State:     Terminated\n"
          "      Reason:       OOMKilled\n      Exit Code:    137\n" + FENCE + "\n\nThe pods have a 4 GiB limit. "
          "Memory climbs when a batch holds chunks of the hour-long calls: the tokenizer output for every turn is "
          "kept for the whole document.\n\n## Proposal\n- Tokenize turns as a stream instead of materializing the "
          "whole call.\n- Derive `max_batch_tokens` per pod from its memory limit.\n",
          ["bug", "embed", "memory"], sentiment="at_risk"),
        g("memory-compaction", "issue", REPO, 611, "12-02 15:40:03", "olga",
          "Worker memory grows steadily during spool compaction",
          "## What happened\nWhile the spool compacts, the worker's RSS grows from 1.2 GiB to about 6 GiB and only "
          "drops after compaction finishes. The kernel OOM killer never fired and the worker survives, but the "
          "node gets close to its memory limit and the metrics sidecar on it went into `CrashLoopBackOff` twice."
          "\n\n## Notes\n- Compaction reads whole segments into memory.\n- Reading "
          "segment by segment should keep it flat.\n", ["performance", "spool"]),
        g("postmortem-4821", "issue", REPO, 620, "12-02 17:30:22", "kenji",
          "Postmortem INC-4821: search timeouts during a tenant reindex",
          POSTMORTEM.format(
              summary="For 52 minutes about 30% of search requests on the shared cluster timed out.",
              cause="A full reindex for one tenant saturated disk IOPS on the shared Qdrant nodes. Search queries "
                    "queued behind the reindex writes and hit the 10 s gateway timeout.",
              timeline="- 14:05 tenant reindex started\n- 14:12 first timeout alerts\n- 14:40 reindex paused\n"
                       "- 14:57 recovered",
              actions="- [ ] Per-tenant IO limits for reindex jobs\n- [ ] Run full reindexes on a separate node pool"),
          ["postmortem", "incident", "qdrant"]),
        g("fixed-218", "issue_comment", REPO, 601, "12-02 19:12:37", "olga", "",
          FIXED_ON_BRANCH.format(branch="release-2.18"), ["bug", "ingest"], comment_id=2601190331),
        g("socket-hang-up", "issue", REPO, 613, "12-03 09:20:11", "olga",
          "Webhook sender logs 'socket hang up' when the spool is full",
          "When the spool reaches `max_spool_bytes`, the worker stops reading request bodies and the Estuary webhook "
          "sender logs `socket hang up` after 30 s, then retries at once. During worker restarts it logs "
          "`ECONNREFUSED` instead, which is expected.\n\n## Proposal\nAnswer `503` with `Retry-After` instead "
          "of leaving the connection open.\n", ["bug", "intake"]),
        g("stuck-2173", "issue", REPO, 607, "12-03 10:55:48", "aiko", stuck.format(version="v2.17.3"),
          STUCK_BATCHES.format(version="v2.17.3"), ["bug", "ingest"], sentiment="at_risk"),
        g("ops-1187", "pull_request", INFRA, 88, "12-03 12:35:26", "kenji",
          "Rotate Qdrant API keys without downtime (OPS-1187)",
          "Implements OPS-1187.\n\n## What\n- The worker reads the key from a mounted secret file and reloads it "
          "when the file changes, so no restart is needed.\n- During a rotation the old and the new key are both "
          "accepted for one hour.\n- A CronJob rotates the key every 30 days and records each rotation in the "
          "audit log.\n", ["security", "qdrant", "ops"]),
        g("x509", "issue", REPO, 622, "12-03 14:48:09", "mpatel",
          "Weaviate sink fails behind a corporate proxy: x509: certificate signed by unknown authority",
          "## What happened\nOn a customer-hosted install behind a TLS-inspecting proxy, every batch write fails. "
          "The sidecar logs:\n\n" + FENCE + "\nPost \"https://weaviate.internal.example/v1/batch/objects\": x509: "
          "certificate signed by unknown authority\n" + FENCE + "\n\n## Workaround\nMount the proxy's CA "
          "certificate and point `SSL_CERT_FILE` at the bundle.\n\n## Fix\nA `ca_bundle` option on the Weaviate "
          "sink.\n", ["bug", "sink:weaviate", "tls"]),
        g("fixed-219", "issue_comment", REPO, 607, "12-03 17:02:14", "aiko", "",
          FIXED_ON_BRANCH.format(branch="release-2.19"), ["bug", "ingest"], comment_id=2607481105),
        g("tls-timeout", "issue", REPO, 624, "12-04 08:30:40", "olga",
          "Pinecone sink: TLS handshake timeout from the Frankfurt cluster",
          "About one upsert in two hundred fails with `TLS handshake timeout` from the Frankfurt cluster; the retry "
          "succeeds. Suspect the NAT gateway's connection tracking table fills up during backfills.\n\n"
          "## Next\n- Reuse HTTP connections across batches.\n- Graph NAT port usage.\n", ["bug", "sink:pinecone"]),
        g("sqlstate", "issue", REPO, 626, "12-04 11:05:57", "mpatel",
          "Ledger on Postgres: SQLSTATE 53300 during backfill",
          "During a full backfill with 16 ingest workers the ledger writes fail:\n\n" + FENCE + "\nFATAL: sorry, "
          "too many clients already (SQLSTATE 53300)\n" + FENCE + "\n\nEach ingest worker opens its own pool of 10 "
          "connections, so 16 workers need 160 and the server allows 100.\n\n## Fix\nOne shared pool per process, "
          "sized from the server's `max_connections`.\n", ["bug", "ledger", "postgres"]),
        g("deadlock", "issue", REPO, 627, "12-04 13:40:12", "olga",
          "Ledger: deadlock detected when two workers ack the same batch",
          "Two ingest workers that ack overlapping batches abort each other:\n\n" + FENCE + "\nERROR: deadlock "
          "detected (SQLSTATE 40P01)\n" + FENCE + "\n\nThe acks lock ledger rows in a different order. Sorting "
          "the document ids before the update fixes it.\n", ["bug", "ledger", "postgres"]),
        g("brackenridge-issue", "issue", REPO, 628, "12-04 16:10:33", "mpatel",
          "Deleted Slack messages still returned by search (Brackenridge Capital escalation)",
          "## What happened\nBrackenridge Capital reports that answers quote Slack messages they deleted a week ago."
          "\n\n## Findings\n- The delete (`op: d`) reaches the worker and the local sink.\n- On Pinecone the delete by "
          "id prefix is skipped when the document has more than 100 chunks, so its chunks stay searchable.\n\n"
          "## Fix\nPage through the chunk ids and delete them in batches.\n",
          ["bug", "sink:pinecone", "customer"], sentiment="at_risk"),
        g("release-2200", "release", REPO, 1, "12-04 18:22:16", "theo", "v2.20.0",
          "## Features\n- Hybrid search in the local sink (keyword and vector, fused by reciprocal rank)\n"
          "- `memory-worker check` prints the effective config with secrets masked\n\n## Fixes\n- Spool compaction "
          "no longer blocks intake (#598)\n\n## Upgrade notes\nThe LanceDB table gains a full-text index; the first "
          "start builds it, which takes a few minutes on large stores.\n",
          sentiment="positive", comment_id=4410020, extra={"tag_name": "v2.20.0", "prerelease": False}),
        g("release-2213", "release", REPO, 2, "12-05 10:20:51", "theo", "v2.21.3",
          "## Fixes\n- Duplicate chunks after webhook replays of the same document version (#612)\n- Weaviate sink: "
          "batch deletes no longer time out on large tenants (#615)\n- Slack edits keep their thread context in the "
          "chunk header (#618)\n\n## Upgrade notes\nNo config changes. Restart the workers one at a time; the spool "
          "drains before shutdown.\n",
          sentiment="positive", comment_id=4410031, extra={"tag_name": "v2.21.3", "prerelease": False}),
        g("cjk", "issue", REPO, 631, "12-05 13:15:29", "aiko", "Keyword search finds nothing for Japanese text",
          "The keyword side of hybrid search splits on whitespace, so a Japanese message such as "
          "`東京リージョンのデータ保管` is a single token and a query for `東京` matches nothing. "
          "The vector side works.\n\n## Proposal\nCharacter bigrams for CJK scripts in the keyword index.\n",
          ["bug", "search", "i18n"]),
    ]


def github_doc(rng: random.Random, clock: Clock, spec: GitHubSpec) -> Doc:
    publish_us = clock.at(spec.published)
    created_us = publish_us - rng.randrange(2_000_000, 9_000_000)
    node = "kwDOLm4Hq" if spec.repo == REPO else "kwDOPf2Zx"
    if spec.kind in ("issue", "pull_request"):
        prefix, path = ("I", "issues") if spec.kind == "issue" else ("PR", "pull")
        fields = {"id": f"{prefix}_{node}6{spec.number}", "kind": spec.kind, "repo": spec.repo,
                  "number": spec.number, "title": spec.title}
        url = f"https://github.com/{spec.repo}/{path}/{spec.number}"
    elif spec.kind == "release":
        fields = {"id": f"RE_{node}4{spec.comment_id}", "kind": "release", "repo": spec.repo, "title": spec.title}
        url = f"https://github.com/{spec.repo}/releases/tag/{spec.extra['tag_name']}"
    else:
        fields = {"id": f"IC_{node}5{spec.comment_id}", "kind": spec.kind, "repo": spec.repo,
                  "parent_number": spec.number, "title": ""}
        url = f"https://github.com/{spec.repo}/issues/{spec.number}#issuecomment-{spec.comment_id}"
    fields.update({"body": spec.body, "author": spec.author})
    if spec.kind in ("issue", "pull_request"):
        fields["state"] = spec.state
    fields.update({"labels": spec.labels, "url": url, "created_at": iso_utc(created_us),
                   "updated_at": iso_utc(publish_us - rng.randrange(1_000_000, 3_000_000)),
                   "sentiment_category": spec.sentiment})
    fields.update(spec.extra)
    return Doc(spec.handle, GITHUB, publish_us, fields)


# ---------------------------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------------------------

LONG_NOTE = ("The review is the same account's ~9,000-word call that mentions {topic} dozens of times and never "
              "answers; ")


def queries() -> list[Query]:
    q = Query
    ex, nd, ld, pa = "exact-term", "near-duplicate", "long-document", "paraphrase"
    return [
        # exact terms: typed the way people type them
        q("exact-inc-4821", ex, "INC-4821 root cause", ["postmortem-4821"],
          "Incident key; the INC-4281 postmortem has the same template and INC-4812 is a Slack look-alike.",
          "INC-4821"),
        q("exact-ops-1187", ex, "OPS-1187", ["ops-1187"],
          "Jira key alone; OPS-1178 is a sibling infra PR with the same shape.", "OPS-1187"),
        q("exact-oomkilled", ex, "OOMKilled", ["oomkilled"],
          "Kubernetes reason string; a memory-growth issue mentions the OOM killer and CrashLoopBackOff.", "OOMKilled"),
        q("exact-econnreset", ex, "ECONNRESET", ["econnreset"],
          "Error code alone; a Slack message has ECONNREFUSED, an issue describes hung-up webhook connections.",
          "ECONNRESET"),
        q("exact-ssl-cipher", ex, "ERR_SSL_VERSION_OR_CIPHER_MISMATCH", ["ssl-mismatch"],
          "Browser error string; ERR_SSL_PROTOCOL_ERROR and other TLS documents are look-alikes.",
          "ERR_SSL_VERSION_OR_CIPHER_MISMATCH"),
        q("exact-soc2", ex, "SOC 2 Type II report", ["soc2"],
          "Compliance term; a request for the SOC 3 report and ISO 27001 certificate is the look-alike.",
          "SOC 2 Type II"),
        q("exact-scim", ex, "SCIM provisioning", ["scim"],
          "Acronym; a bank's SAML sign-on with CSV user uploads and other onboarding calls are close in meaning.",
          "SCIM"),
        q("exact-hipaa-baa", ex, "HIPAA BAA", ["baa"],
          "Two acronyms; a countersigned DPA and other security requests are close in meaning.", "HIPAA BAA"),
        q("exact-ingrid-solberg", ex, "Ingrid Solberg", ["scim", "scim-ingrid"],
          "Person's name; Inga Solheim speaks in another call.", "Ingrid Solberg"),
        q("exact-brackenridge", ex, "Brackenridge Capital", ["brackenridge-slack", "brackenridge-issue"],
          "Company name in a Slack escalation and the GitHub issue it filed.", "Brackenridge Capital"),
        q("exact-v2213", ex, "v2.21.3 release notes", ["release-2213", "release-2213-slack"],
          "Version alone: the release and its Slack announcement; v2.20.0 and three other versions are near.",
          "v2.21.3"),
        q("exact-sup-2290", ex, "SUP-2290", ["sync-overnight"],
          "Support ticket key spoken in a call; SUP-2209 is a Slack escalation.", "SUP-2290"),
        q("exact-byok", ex, "BYOK", ["byok"],
          "Acronym; BYOD, encryption at rest and key rotation appear elsewhere.", "BYOK"),
        q("exact-x509", ex, "x509 unknown authority", ["x509"],
          "Go TLS error; other documents are about TLS timeouts and untrusted certificates.", "x509"),
        q("exact-sqlstate", ex, "SQLSTATE 53300", ["sqlstate"],
          "Postgres error code; SQLSTATE 40P01 is in a sibling ledger issue.", "SQLSTATE 53300"),
        # near-duplicates: the query names the one fact that differs
        q("near-renewal-tidewater", nd, "Tidewater Freight renewal risk", ["renewal-tidewater"],
          "Three renewal-risk messages share their text and differ only in the customer.", "Tidewater Freight",
          ["renewal-corvane", "renewal-halvorsen"]),
        q("near-renewal-halvorsen", nd, "Halvorsen Dental renewal champion left", ["renewal-halvorsen"],
          "Same template as two other customers; Halvorsen also appears in its onboarding call.", "Halvorsen Dental",
          ["renewal-corvane", "renewal-tidewater"]),
        q("near-renewal-corvane", nd, "Corvane Retail exec sponsor call for renewal", ["renewal-corvane"],
          "Same template as two other customers; Corvane also appears in an SSL escalation.", "Corvane Retail",
          ["renewal-tidewater", "renewal-halvorsen"]),
        q("near-latency-ap", nd, "search latency alert ap-southeast-2", ["latency-ap"],
          "Three identical latency alerts differ only in the region.", "ap-southeast-2",
          ["latency-eu", "latency-us"]),
        q("near-latency-eu", nd, "eu-west-1 elevated search latency", ["latency-eu"],
          "Three identical latency alerts differ only in the region.", "eu-west-1",
          ["latency-us", "latency-ap"]),
        q("near-stuck-2162", nd, "batches stuck pending after upgrading to v2.16.2", ["stuck-2162"],
          "Three issues from one template differ only in the version.", "v2.16.2",
          ["stuck-2151", "stuck-2173"]),
        q("near-stuck-2173", nd, "v2.17.3 embedding batches stuck", ["stuck-2173"],
          "Three issues from one template differ only in the version.", "v2.17.3",
          ["stuck-2151", "stuck-2162"]),
        q("near-maintenance-27", nd, "maintenance window December 27", ["maint-27"],
          "Two maintenance announcements differ only in the date.", "December 27", ["maint-13"]),
        q("near-fixed-219", nd, "confirmed fixed on release-2.19", ["fixed-219"],
          "Two comments differ only in the release branch.", "release-2.19", ["fixed-218"]),
        q("near-fixed-218", nd, "release-2.18 backport confirmed", ["fixed-218"],
          "Two comments differ only in the release branch.", "release-2.18", ["fixed-219"]),
        # long document: the short call answers, the review fills every chunk slot
        q("long-crm-deadline", ld, "when does Maplestone need the CRM migration finished and why", ["crm-migration"],
          LONG_NOTE.format(topic="the CRM migration and its timeline") + "the onboarding call gives the date and "
          "the reason.", "Our Salesforce contract ends on April 30"),
        q("long-crm-order", ld, "which CRM objects does Maplestone migrate first", ["crm-migration"],
          LONG_NOTE.format(topic="the CRM") + "the onboarding call lists the migration order.",
          "We migrate accounts and contacts first"),
        q("long-sync-overnight", ld, "why does the Maplestone CRM integration stop syncing overnight",
          ["sync-overnight"], LONG_NOTE.format(topic="the integration") + "a support call gives the cause.",
          "uses up the daily API request limit"),
        q("long-renewal-coterm", ld, "why does Maplestone want the renewal co-termed", ["renewal-prep"],
          LONG_NOTE.format(topic="the renewal") + "the procurement call gives the reason.",
          "consolidates every software contract onto our fiscal year"),
        q("long-renewal-seats", ld, "how many seats will Maplestone renew and why fewer", ["renewal-prep"],
          LONG_NOTE.format(topic="the renewal") + "the procurement call gives the number and the reason.",
          "We'll renew 340 seats instead of 400"),
        q("long-roadmap-blocker", ld, "which roadmap feature is Maplestone blocked on", ["offline-mode"],
          LONG_NOTE.format(topic="the roadmap") + "a check-in names the one blocking item.",
          "The one roadmap item we're blocked on is offline mode"),
        q("long-warehouse-deadline", ld, "deadline for Maplestone's data warehouse export", ["warehouse-export"],
          LONG_NOTE.format(topic="the integration and the timeline") + "the kickoff gives the date and the reason.",
          "has to be live by the end of February"),
        q("long-policy-docs", ld, "why are Maplestone's store policy documents missing from search", ["policy-docs"],
          LONG_NOTE.format(topic="the integration") + "a support call (old 'Name: text' transcript) gives the "
          "cause.", "that site was never connected"),
        # paraphrase controls: no shared term on purpose
        q("para-account-lifecycle", pa,
          "automatically create and disable accounts for dental clinic staff from their identity provider", ["scim"],
          "Control: the meaning matches, the acronym is not in the query."),
        q("para-deleted-messages", pa, "search still shows Slack messages that people already deleted",
          ["brackenridge-slack", "brackenridge-issue"], "Control: both the escalation and its GitHub issue answer it."),
        q("para-japanese", pa, "why do searches in Japanese return no keyword matches", ["cjk"],
          "Control: a plain description of the CJK tokenizer issue."),
        q("para-patient-data", pa, "hospital group needs a signed agreement covering patient data before go-live",
          ["baa"], "Control: the meaning of a HIPAA BAA without the acronym."),
        q("para-idle-timeout", pa, "load balancer drops idle webhook connections before the sender closes them",
          ["econnreset"], "Control: the cause of the ECONNRESET without the error code."),
        q("para-out-of-memory", pa, "pods get killed for running out of memory on very long call transcripts",
          ["oomkilled"], "Control: the OOMKilled issue in plain words."),
        q("para-bank-security", pa, "bank prospect wants our security certification and penetration test results",
          ["iso-pentest"], "Control: the ISO 27001 and pen test request in other words."),
    ]


# ---------------------------------------------------------------------------------------------
# Assembly and checks
# ---------------------------------------------------------------------------------------------


def build(seed: int) -> tuple[list[Doc], list[Query]]:
    """All documents in publish (= delivery) order, and the queries."""
    rng = random.Random(seed)
    clock = Clock(rng)
    docs = gong_docs(rng, clock) + slack_docs(rng, clock) + [github_doc(rng, clock, s) for s in github_script()]
    docs.sort(key=lambda d: d.publish_us)
    return docs, queries()


class SetInvalid(Exception):
    """The generated set breaks one of its own relevance claims: fix the script, not the output."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise SetInvalid(message)


def resolve(docs: list[Doc], handles: list[str]) -> list[Doc]:
    by_handle = {d.handle: d for d in docs}
    require(len(by_handle) == len(docs), "two documents share a handle")
    missing = [h for h in handles if h not in by_handle]
    require(not missing, f"no document with handle {missing}")
    return [by_handle[h] for h in handles]


def verify_relevance(docs: list[Doc], qs: list[Query]) -> None:
    """The relevance claims of the queries hold in the documents (see the module contract).
    Exact terms are matched case-insensitively, the way a keyword index sees them."""
    require(len({q.id for q in qs}) == len(qs), "two queries share an id")
    require(len({d.doc_id for d in docs}) == len(docs), "two documents share a document id")
    qbr = next(d for d in docs if d.handle == "qbr")
    qbr_turns = qbr.fields["transcript"]
    qbr_words = sum(len(t["text"].split()) for t in qbr_turns)
    require(len(qbr_turns) >= 400 and 8500 <= qbr_words <= 10000,
            f"the review has {len(qbr_turns)} turns and {qbr_words} words, not 400+ and ~9,000")
    leaked = QBR_MUST_NOT_SAY.search(qbr.text().split("\n", 1)[1])
    require(not leaked, f"the review says {leaked and leaked.group()!r}")
    for q in qs:
        relevant = resolve(docs, q.relevant)
        if q.kind == "exact-term":
            holding = sorted(d.handle for d in docs if q.evidence.lower() in d.text().lower())
            require(holding == sorted(q.relevant), f"{q.id}: {q.evidence!r} is in {holding}, not {q.relevant}")
        elif q.kind == "near-duplicate":
            require(all(q.evidence in d.text() for d in relevant), f"{q.id}: fact missing from its document")
            require(not any(q.evidence in d.text() for d in resolve(docs, q.siblings)),
                    f"{q.id}: a sibling holds the decisive fact {q.evidence!r}")
        elif q.kind == "long-document":
            require(all(q.evidence in d.text() for d in relevant), f"{q.id}: answer missing from its call")
            require(q.evidence not in qbr.text(), f"{q.id}: the review holds the answer")


def stream_of(docs: list[Doc]) -> dict[str, list[dict]]:
    streams: dict[str, list[dict]] = {GONG: [], SLACK: [], GITHUB: []}
    previous_us, counter = None, 0
    for doc in docs:
        counter = counter + 1 if doc.publish_us == previous_us else 0
        previous_us = doc.publish_us
        meta = {"uuid": gazette_uuid(doc.publish_us, counter), "op": "c"}
        streams[doc.collection].append({"_meta": meta, **doc.fields})
    return streams


def query_file(docs: list[Doc], qs: list[Query], seed: int) -> dict:
    return {
        "name": "hard",
        "description": (f"Hard retrieval cases over examples/hard/ (generate_hard.py, seed {seed}): a ~9,000-word "
                        "review call that never answers next to short calls that do, near-duplicate messages and "
                        "issues that differ in one fact, exact terms among look-alikes, and paraphrase controls. "
                        "Binary relevance; relevant lists worker document ids."),
        "queries": [{"id": q.id, "text": q.text, "relevant": [d.doc_id for d in resolve(docs, q.relevant)],
                     "kind": q.kind, "note": q.note} for q in qs],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=11, help="random seed (default 11)")
    parser.add_argument("--out", type=Path, default=HERE / "hard", help="stream folder (default examples/hard)")
    parser.add_argument("--queries", type=Path, default=HERE / "queries-hard.json",
                        help="query file (default examples/queries-hard.json)")
    args = parser.parse_args(argv)

    docs, qs = build(args.seed)
    verify_relevance(docs, qs)
    streams = stream_of(docs)
    queries_text = json.dumps(query_file(docs, qs, args.seed), ensure_ascii=False, indent=2) + "\n"
    sizes = write_stream(args.out, streams)
    args.queries.write_text(queries_text, encoding="utf-8")
    total = sum(sizes.values()) + len(queries_text.encode())
    require(total <= MAX_TOTAL_BYTES, f"{total:,} bytes written, above the {MAX_TOTAL_BYTES:,} budget")
    for collection, docs_of in streams.items():
        print(f"{collection}: {len(docs_of)} documents")
    kinds = {kind: sum(q.kind == kind for q in qs) for kind in dict.fromkeys(q.kind for q in qs)}
    print(f"{args.queries.name}: {len(qs)} queries ({', '.join(f'{k} {n}' for k, n in kinds.items())}); "
          f"{total:,} bytes in all")


if __name__ == "__main__":
    main()
