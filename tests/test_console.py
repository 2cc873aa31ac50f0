"""The web console (worker/console/): its pages over real HTTP, then in a real headless browser.

The fast tests serve a real worker (``start_worker``) and talk to its admin listener with httpx,
reading pages with the standard library's HTML parser. The browser test drives Debian's
``chromium`` through ``chromedriver`` with Selenium: no console errors on any page, the overview
updating live, a dead letter replayed by clicking, a search, a purge; screenshots land in
``artifacts/screenshots/`` (gitignored; CI keeps them as artifacts).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import orjson
import pytest

from conftest import REPO, make_config
from test_service import (
    DELIVERY_DEADLINE_S,
    GITHUB,
    GONG,
    QUERY_TOKEN,
    SLACK,
    T0,
    WEBHOOK_TOKEN,
    github_doc,
    rows_of,
    serving,
    slack_doc,
    slack_id,
    start_worker,  # noqa: F401 - the fixture
)

CONSOLE = REPO / "worker" / "console"
SCREENSHOTS = REPO / "artifacts" / "screenshots"
PAGES = ("/console/", "/console/fragments/overview", "/console/dead-letters", "/console/search",
         "/console/config")
#: A quality rule that dead-letters a document at the prepare stage; removing it is "the fix".
QUARANTINE = {"kind": "pattern", "field": "/text", "must_not_match": "QUARANTINE", "name": "no-quarantine"}


# -- helpers ------------------------------------------------------------------------------------

_BLOCKS = frozenset(("td", "th", "tr", "li", "p", "dt", "dd", "div", "section", "h1", "h2", "h3", "pre"))


class Page(HTMLParser):
    """The parts of a page the tests look at: visible text, elements by id, forms, <mark>s."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.text_parts: list[str] = []
        self.ids: dict[str, str] = {}
        self.marks: list[str] = []
        self.links: list[str] = []
        self.external: list[str] = []
        self._open: list[tuple[str, str | None, list[str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in ("src", "href"):
            if tag in ("script", "link", "img", "iframe") and (a.get(name) or "").startswith(("http:", "https:", "//")):
                self.external.append(a[name] or "")
        if tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        if tag in ("meta", "link", "input", "br", "img", "hr"):
            return
        self._open.append((tag, a.get("id"), []))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, elt_id, parts = self._open.pop()
            text = "".join(parts)
            if elt_id:
                self.ids[elt_id] = text
            if open_tag == "mark":
                self.marks.append(text)
            if self._open:  # a block's or a cell's text stays a word apart from its neighbours'
                self._open[-1][2].append(f" {text} " if open_tag in _BLOCKS else text)
            if open_tag == tag:
                return

    def handle_data(self, data: str) -> None:
        self.text_parts.append(data)
        if self._open:
            self._open[-1][2].append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.text_parts).split())

    def by_id(self, elt_id: str) -> str:
        return " ".join(self.ids[elt_id].split())


def origin_of(http: httpx.Client) -> str:
    url = http.base_url
    return f"{url.scheme}://{url.host}:{url.port}"


def post_form(http: httpx.Client, path: str, data: dict | None = None, **headers: str) -> httpx.Response:
    """A form POST as a console page sends it (same Origin) unless ``headers`` say otherwise."""
    sent = {"Origin": origin_of(http), **{k.replace("_", "-"): v for k, v in headers.items()}}
    return http.post(path, data=data or {}, headers={k: v for k, v in sent.items() if v is not None})


def wait_for(predicate, what: str, deadline_s: float = DELIVERY_DEADLINE_S):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + deadline_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def invalid_slack(text: str, **extra) -> dict:  # noqa: ANN003
    """A Slack message with no ``ts``: intake files it as a ``validate`` dead letter."""
    doc = slack_doc("0", text, at=T0, **extra)
    del doc["ts"]
    return doc


def quarantine_config(tmp_path: Path, *, rule: bool):  # noqa: ANN201
    slack = {"collection": SLACK, "preset": "slack_message"}
    if rule:
        slack["quality"] = {"rules": [QUARANTINE]}
    return make_config(tmp_path, bindings=[slack, {"collection": GITHUB, "preset": "github_document"}])


def quarantined(service_factory, tmp_path: Path, doc: dict) -> int:  # noqa: ANN001
    """Run a worker whose quality rule dead-letters ``doc`` (stage ``quality``), then stop it.
    Returns the entry's id; the next worker on ``tmp_path`` starts without the rule: the fix."""
    service = service_factory(quarantine_config(tmp_path, rule=True))
    with serving(service) as client:
        assert client.post(SLACK, [doc]).json()["accepted"] == 1
        client.wait_delivered()
        [entry] = wait_for(lambda: service.rt.dead_letters.list(), "the quality rule to file it")
    assert entry.stage == "quality" and "no-quarantine" in entry.reason
    return entry.id


# -- every page ---------------------------------------------------------------------------------

def test_every_page_is_html_with_the_nav_and_strict_headers(start_worker):
    client, service = start_worker()
    client.post(SLACK, [invalid_slack("no ts here")])
    [entry] = service.rt.dead_letters.list()
    assert client.admin.get("/", follow_redirects=False).headers["location"] == "/console/"
    for path in (*PAGES, f"/console/dead-letters/{entry.id}", f"/console/search?text=renewal"):
        r = client.admin.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
        assert r.headers["cache-control"] == "no-store" and r.headers["x-frame-options"] == "DENY"
        page = Page(r.text)
        assert page.external == [], f"{path} loads from outside: {page.external}"
        if "fragments" not in path:
            assert {"/console/", "/console/dead-letters", "/console/search", "/console/config"} <= set(page.links)
            assert "Sign out" not in page.text  # no admin token: nobody to sign out
    js = client.admin.get("/console/static/htmx.min.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert "no-store" not in js.headers.get("cache-control", "")
    assert client.admin.get("/console/dead-letters/999999").status_code == 404
    assert client.admin.get("/console/dead-letters/not-a-number").status_code == 404


def test_vendored_htmx_is_the_published_2x_file():
    lines = (CONSOLE / "static" / "htmx.min.js").read_bytes().split(b"\n", 1)
    assert lines[0].startswith(b"/*! htmx 2.0.11 ") and b"0BSD" in lines[0]
    # npm htmx.org@2.0.11 dist/htmx.min.js, byte for byte after our header line
    assert hashlib.sha256(lines[1]).hexdigest() == \
        "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"
    readme = (CONSOLE / "static" / "README.md").read_text()
    assert "2.0.11" in readme and "Zero-Clause BSD" in readme


# -- overview -----------------------------------------------------------------------------------

def test_overview_shows_each_sink_its_backlog_throughput_budgets_and_model(start_worker):
    client, service = start_worker(deliver=False)
    client.post(SLACK, [slack_doc(f"20.{i}", f"overview message {i}", at=T0 + i) for i in range(3)])
    client.post(SLACK, [invalid_slack("invalid: no ts")])
    waiting = Page(client.admin.get("/console/").text)
    assert waiting.by_id("sink-local-behind") == "1"  # one spool entry, not yet prepared
    assert waiting.by_id("sink-local-upserts") == "0"

    service.start()
    client.wait_delivered()
    page = Page(client.admin.get("/console/fragments/overview").text)
    upserts = client.metrics()['memory_worker_sink_upserts_total{sink="local"}']
    assert upserts == 3
    assert page.by_id("sink-local-upserts") == "3" and page.by_id("sink-local-behind") == "0"
    assert "ok" in page.by_id("sink-local")
    assert page.by_id("documents-accepted") == "3" and page.by_id("dead-letter-count") == "1"
    assert "all-minilm-l6-v2" in page.text and "cpu" in page.text
    assert "of 4.0 GiB" in page.text and "of 2.0 GiB" in page.text  # spool and prepared budgets
    assert "trouble" not in page.ids


def test_a_secret_in_a_failing_sinks_error_shows_masked_on_the_overview(start_worker):
    from worker.errors import SinkUnavailable

    client, service = start_worker(deliver=False)
    leaked = f"HTTP 401 from the vendor: sent Authorization: Bearer {WEBHOOK_TOKEN}, key {QUERY_TOKEN}"

    def upsert(records):  # noqa: ANN001, ANN202 - the vendor refuses, echoing what it was sent
        raise SinkUnavailable(leaked)

    service.rt.sinks["local"].upsert = upsert
    client.post(SLACK, [slack_doc("21.1", "refused by the store", at=T0)])
    service.start()
    def failing_overview() -> str | None:
        html = client.admin.get("/console/").text
        return html if "HTTP 401 from the vendor" in html else None

    html = wait_for(failing_overview, "the failure on the overview")
    page = Page(html)
    assert "failing" in page.by_id("sink-local") and "HTTP 401 from the vendor" in page.by_id("trouble")
    assert "***" in page.by_id("sink-local")
    assert WEBHOOK_TOKEN not in html and QUERY_TOKEN not in html


# -- dead letters -------------------------------------------------------------------------------

def test_a_dead_letter_document_is_shown_escaped_never_as_markup(start_worker):
    client, service = start_worker()
    script = "<script>alert('dead letter')</script>"
    client.post(SLACK, [invalid_slack(script, user_name="<img src=x onerror=alert(1)>")])
    [entry] = service.rt.dead_letters.list()

    listing = client.admin.get("/console/dead-letters")
    assert f'href="/console/dead-letters/{entry.id}"' in listing.text
    shown = client.admin.get(f"/console/dead-letters/{entry.id}").text
    assert "<script>alert" not in shown and "<img src=x" not in shown
    assert "&lt;script&gt;alert(" in shown and "&lt;img src=x onerror=alert(1)&gt;" in shown
    raw = Page(shown).by_id("raw")
    assert orjson.loads(raw) == entry.raw  # the document as stored, pretty-printed
    assert "ts" in Page(shown).by_id("reason")


def test_dead_letter_reasons_are_shown_with_secrets_masked(start_worker):
    client, service = start_worker()
    service.rt.dead_letters.add(SLACK, None, "sink:local", f"record x#0: 403, sent Bearer {WEBHOOK_TOKEN}",
                                {"record_id": "x#0", "doc_id": "x"})
    [entry] = service.rt.dead_letters.list()
    for path in ("/console/dead-letters", f"/console/dead-letters/{entry.id}"):
        html = client.admin.get(path).text
        assert WEBHOOK_TOKEN not in html and "403, sent Bearer ***" in html, path


def test_dead_letters_filter_by_collection_and_stage(start_worker):
    client, service = start_worker()
    client.post(SLACK, [invalid_slack("slack one"), invalid_slack("slack two")])
    client.post(GITHUB, [{"_meta": {"op": "u"}, "title": "no id, no uuid"}])
    service.rt.dead_letters.add(SLACK, "['C1', '9.9']", "sink:local", "record slack:C1/9.9#0: too large",
                                {"record_id": "slack:C1/9.9#0", "doc_id": "slack:C1/9.9"})

    def listed(**params: str) -> tuple[str, list[str]]:
        page = Page(client.admin.get("/console/dead-letters", params=params).text)
        rows = [line for line in page.by_id("dead-letters").split("  ") if line]
        return page.by_id("matched"), rows

    assert listed()[0].startswith("4 of 4")
    assert listed(collection=SLACK)[0].startswith("3 of 4")
    assert listed(collection=GITHUB)[0].startswith("1 of 4")
    assert listed(stage="sink:local")[0].startswith("1 of 4")
    assert listed(collection=SLACK, stage="validate")[0].startswith("2 of 4")
    assert listed(collection=GITHUB, stage="sink:local")[0].startswith("0 of 4")
    options = Page(client.admin.get("/console/dead-letters").text).text
    assert "sink:local" in options and GITHUB in options


def test_replay_after_a_config_fix_moves_the_entry_into_the_sink(service_factory, tmp_path):
    doc = slack_doc("22.1", "QUARANTINE lifted: Acme renewal notes", at=T0)
    entry_id = quarantined(service_factory, tmp_path, doc)

    service = service_factory(quarantine_config(tmp_path, rule=False))  # the fix, then a restart
    with serving(service) as client:
        page = client.admin.get(f"/console/dead-letters/{entry_id}")
        assert page.status_code == 200 and "Replay" in page.text
        r = post_form(client.admin, f"/console/dead-letters/{entry_id}/replay")
        assert r.status_code == 200, r.text
        assert "passed validation and was spooled" in Page(r.text).text
        assert service.rt.dead_letters.get(entry_id) is None
        client.wait_delivered()
        [row] = rows_of(service, slack_id("22.1"))
        assert row["text"].endswith("QUARANTINE lifted: Acme renewal notes")
        assert service.rt.dead_letters.count() == 0
        assert client.admin.get(f"/console/dead-letters/{entry_id}").status_code == 404


def test_replay_of_a_still_invalid_document_files_it_anew_with_todays_reason(start_worker):
    client, service = start_worker()
    client.post(SLACK, [invalid_slack("still no ts")])
    [old] = service.rt.dead_letters.list()

    r = post_form(client.admin, f"/console/dead-letters/{old.id}/replay", HX_Request="true")
    assert r.status_code == 200
    assert "<html" not in r.text  # htmx gets the fragment only
    [new] = service.rt.dead_letters.list()
    assert new.id > old.id and new.raw == old.raw and new.stage == "validate"
    outcome = Page(r.text).text
    assert "Still invalid" in outcome and f"dead letter {new.id}" in outcome and "ts" in outcome
    assert rows_of(service) == []


def test_an_entry_that_holds_no_document_is_not_replayed(start_worker):
    client, service = start_worker()
    service.rt.dead_letters.add(SLACK, None, "sink:local", "record slack:C1/1#0: refused",
                                {"record_id": "slack:C1/1#0", "doc_id": "slack:C1/1"})
    [entry] = service.rt.dead_letters.list()
    page = Page(client.admin.get(f"/console/dead-letters/{entry.id}").text)
    assert "not-replayable" in page.ids and "replay-button" not in page.ids
    r = post_form(client.admin, f"/console/dead-letters/{entry.id}/replay")
    assert r.status_code == 400 and "holds a reference, not the document" in r.text
    assert service.rt.dead_letters.get(entry.id) is not None


def test_purge_needs_the_confirmation_and_removes_only_what_was_counted(start_worker):
    client, service = start_worker()
    client.post(SLACK, [invalid_slack("a"), invalid_slack("b")])
    client.post(GITHUB, [{"_meta": {"op": "u"}, "title": "kept: other collection"}])
    store = service.rt.dead_letters

    asked = post_form(client.admin, "/console/dead-letters/purge", {"collection": SLACK, "stage": "validate"})
    assert asked.status_code == 200 and "Delete 2 dead letters" in Page(asked.text).text
    assert store.count() == 3  # nothing yet: that was the question
    up_to_id = re.search(r'name="up_to_id" value="(\d+)"', asked.text).group(1)

    client.post(SLACK, [invalid_slack("filed after the question")])  # not in the count confirmed
    done = post_form(client.admin, "/console/dead-letters/purge",
                     {"collection": SLACK, "stage": "validate", "confirm": "yes", "up_to_id": up_to_id})
    assert done.status_code == 303
    assert done.headers["location"] == f"/console/dead-letters?collection={SLACK.replace('/', '%2F')}" \
                                       "&stage=validate&purged=2"
    left = store.list()
    assert [e.collection for e in left] == [GITHUB, SLACK]
    assert left[1].raw["text"] == "filed after the question"
    assert "Purged 2 dead letters" in Page(client.admin.get(done.headers["location"]).text).text


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": None},  # and no Referer either
    {"Origin": None, "Referer": "https://evil.example/console/dead-letters"},
    {"Origin": "http://127.0.0.1:1"},  # same host, another port: another origin
])
def test_a_cross_origin_post_is_refused(start_worker, headers):
    client, service = start_worker()
    client.post(SLACK, [invalid_slack("target of a forged purge")])
    [entry] = service.rt.dead_letters.list()
    for path, data in (("/console/dead-letters/purge", {"confirm": "yes", "up_to_id": str(entry.id)}),
                       (f"/console/dead-letters/{entry.id}/replay", {})):
        r = post_form(client.admin, path, data, **headers)
        assert r.status_code == 403 and "refused" in r.text
    assert service.rt.dead_letters.count() == 1
    # the same POST from the console's own page goes through (Referer when Origin is absent)
    ok = post_form(client.admin, "/console/dead-letters/purge", {"confirm": "yes", "up_to_id": str(entry.id)},
                   Origin=None, Referer=f"{origin_of(client.admin)}/console/purge")
    assert ok.status_code == 303 and service.rt.dead_letters.count() == 0


# -- search -------------------------------------------------------------------------------------

def _seed_search(client) -> None:  # noqa: ANN001
    client.post(SLACK, [slack_doc("23.1", "Acme asked for the SOC 2 report <b>before</b> signing", at=T0),
                        slack_doc("23.2", "Lunch order for Friday: pizza", at=T0 + 100)])
    client.post(GITHUB, [github_doc("I_s", "SOC 2 audit evidence export fails with a timeout", at=T0 + 200,
                                    labels=["bug"])])
    client.wait_delivered()


def test_search_shows_documents_with_the_query_words_marked_and_text_escaped(start_worker):
    client, _ = start_worker()
    _seed_search(client)
    r = client.admin.get("/console/search", params={"text": "soc report", "mode": "hybrid", "k": "5"})
    assert r.status_code == 200
    page = Page(r.text)
    assert "documents from local" in page.by_id("search-summary")
    assert {m.casefold() for m in page.marks} == {"soc", "report"}
    assert "&lt;b&gt;before&lt;/b&gt;" in r.text and "<b>before" not in r.text
    assert "<mark>SOC</mark> 2 <mark>report</mark>" in r.text

    only_github = Page(client.admin.get("/console/search", params={
        "text": "SOC 2", "source": "github", "mode": "keyword", "k": "5"}).text)
    assert "github:I_s" in only_github.by_id("results") and "slack:" not in only_github.by_id("results")
    by_json = Page(client.admin.get("/console/search", params={
        "text": "SOC 2", "filter": '{"labels": {"$in": ["bug"]}}', "k": "5"}).text)
    assert "github:I_s" in by_json.by_id("results") and "slack:" not in by_json.by_id("results")


@pytest.mark.parametrize("params, field", [
    ({"filter": '{"no_such_field": "x"}'}, "filter.no_such_field"),
    ({"filter": "{not json"}, "filter"),
    ({"filter": "[1, 2]"}, "filter"),
    ({"filter": '{"published_at": {"$gte": "yesterday"}}'}, "filter.published_at.$gte"),
    ({"k": "0"}, "k"),
    ({"mode": "fuzzy"}, "mode"),
    ({"sink": "pinecone"}, "sink"),
])
def test_a_bad_search_shows_the_reason_and_its_field(start_worker, params, field):
    client, _ = start_worker()
    r = client.admin.get("/console/search", params={"text": "SOC 2", **params})
    assert r.status_code == 400, r.text
    page = Page(r.text)
    assert page.by_id("error-field") == field and page.by_id("search-error")
    assert "results" not in page.ids


# -- configuration ------------------------------------------------------------------------------

def test_config_page_masks_secrets_and_lists_each_bindings_fields(start_worker, tmp_path):
    config = make_config(tmp_path, server={"webhook_token": WEBHOOK_TOKEN, "query_token": QUERY_TOKEN})
    client, _ = start_worker(config)
    r = client.admin.get("/console/config")
    assert WEBHOOK_TOKEN not in r.text and QUERY_TOKEN not in r.text
    shown = Page(r.text).by_id("config-yaml")
    assert "webhook_token: '***'" in shown and "query_token: '***'" in shown
    assert "collection: sophia-ai/slack-messages-enriched" in shown
    page = Page(r.text)
    assert re.search(r"published_at time\b", page.by_id("builtin-fields"))
    bindings = {page.by_id(f"binding-{i}").split(" ")[0]: page.by_id(f"binding-{i}") for i in (1, 2, 3)}
    for collection, field, kind in ((SLACK, "channel_name", "string"), (SLACK, "reply_count", "integer"),
                                    (SLACK, "is_reply", "boolean"), (GITHUB, "labels", "string[]"),
                                    (GONG, "started_at", "time")):
        assert re.search(rf"\b{re.escape(field)} {re.escape(kind)}( |$)", bindings[collection]), field
    assert "labels" not in bindings[SLACK]  # each binding lists its own fields only


# -- with server.admin_token ----------------------------------------------------------------------

ADMIN_TOKEN = "console-admin-t0ken"


def test_with_an_admin_token_the_console_needs_a_login(start_worker, tmp_path):
    config = make_config(tmp_path, server={"webhook_token": WEBHOOK_TOKEN, "query_token": QUERY_TOKEN,
                                           "admin_token": ADMIN_TOKEN})
    client, service = start_worker(config)
    html = {"Accept": "text/html"}
    for path in ("/console/", "/console/dead-letters", "/console/search?text=x", "/console/config"):
        r = client.admin.get(path, headers=html)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=/console/"), path
    assert client.admin.get("/console/fragments/overview").status_code == 401
    assert client.admin.get("/console/static/console.css").status_code == 200  # the login page's style
    login = client.admin.get("/login")
    assert login.status_code == 200 and "/console/static/console.css" in login.text

    assert client.admin.post("/login", data={"token": "wrong", "next": "/console/"}).status_code == 401
    assert "memory_worker_admin" not in client.admin.cookies
    signed = client.admin.post("/login", data={"token": ADMIN_TOKEN, "next": "/console/config"})
    assert signed.status_code == 303 and signed.headers["location"] == "/console/config"
    page = client.admin.get("/console/config", headers=html)
    assert page.status_code == 200 and "Sign out" in Page(page.text).text
    assert ADMIN_TOKEN not in page.text and "admin_token: '***'" in Page(page.text).by_id("config-yaml")
    # POSTs still need the same origin with a valid session
    client.post(SLACK, [invalid_slack("x")])
    [entry] = service.rt.dead_letters.list()
    assert post_form(client.admin, f"/console/dead-letters/{entry.id}/replay",
                     Origin="https://evil.example").status_code == 403

    with httpx.Client(base_url=str(client.admin.base_url)) as fresh:  # Prometheus: no cookie
        assert fresh.get("/metrics").status_code == 401
        assert fresh.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
        assert fresh.get("/console/", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200


# -- the pure parts -----------------------------------------------------------------------------

def test_highlight_escapes_every_piece_and_marks_whole_words_only():
    from worker.console.views import highlight, query_terms

    terms = query_terms("SOC lt renewal a")
    assert terms == ["renewal", "soc", "lt"]  # longest first; one-letter words left out
    out = str(highlight("Renewals: soc <b>lt</b> & SOC-2 renewal; alt", terms))
    assert out == ("Renewals: <mark>soc</mark> &lt;b&gt;<mark>lt</mark>&lt;/b&gt; &amp; "
                   "<mark>SOC</mark>-2 <mark>renewal</mark>; alt")
    assert str(highlight("a < b", query_terms("lt gt amp"))) == "a &lt; b"  # never inside an entity
    assert str(highlight("<script>", [])) == "&lt;script&gt;"


def test_rate_window_needs_two_samples_and_follows_the_last_minute():
    from worker.console.views import RateWindow

    w = RateWindow(window_s=60, min_span_s=1)
    assert w.observe(0.0, {"local": 0}) == {"local": None}
    assert w.observe(0.5, {"local": 5}) == {"local": None}  # too close to say
    assert w.observe(10.0, {"local": 100}) == {"local": 10.0}
    for t in range(12, 130, 2):  # a steady 1/s for two minutes: the old burst leaves the window
        rates = w.observe(float(t), {"local": 100 + (t - 10)})
    assert rates["local"] == pytest.approx(1.0, rel=0.05)


def test_only_http_links_become_hrefs():
    from worker.console.views import safe_link

    assert safe_link("https://github.com/x/y/issues/1") == "https://github.com/x/y/issues/1"
    for bad in ("javascript:alert(1)", " JavaScript:alert(1)", "data:text/html,x", "", "/relative"):
        assert safe_link(bad) is None


# -- a real browser -------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WAIT_S = 30.0


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium, "
                    "/usr/bin/chromedriver); .ci/run installs them")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-quic", "--window-size=1280,800",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)),
                              options=options)
    try:  # the viewport itself 1280x800 (a window size would include the browser's frame)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
        yield driver
    finally:
        driver.quit()


class Browsing:
    """One browser on one worker's admin listener: visits, waits, screenshots, console logs."""

    def __init__(self, driver, base_url: str) -> None:  # noqa: ANN001
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.base_url = base_url.rstrip("/")
        self.wait = WebDriverWait(driver, WAIT_S)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def visit(self, path: str, ready_id: str) -> None:
        self.driver.get(self.base_url + path)
        self.element(ready_id)

    def element(self, elt_id: str):  # noqa: ANN201
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        return self.wait.until(ec.presence_of_element_located((By.ID, elt_id)))

    def click(self, elt_id: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.wait.until(ec.element_to_be_clickable((By.ID, elt_id))).click()

    def text_of(self, elt_id: str) -> str:
        return self.element(elt_id).text

    def until_text(self, elt_id: str, predicate, what: str) -> str:  # noqa: ANN001
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.common.by import By

        def check(driver):  # noqa: ANN001, ANN202
            try:
                text = driver.find_element(By.ID, elt_id).text
            except (NoSuchElementException, StaleElementReferenceException):
                return False
            return text if predicate(text) else False

        try:
            return self.wait.until(check)
        except Exception as exc:
            raise AssertionError(f"timed out waiting for {what}") from exc

    def errors(self) -> list[dict]:
        """SEVERE console entries since the last call (each call drains the log)."""
        return [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def resources_from_elsewhere(self) -> list[str]:
        urls = self.driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".concat([location.href])")
        return [u for u in urls if not u.startswith(self.base_url + "/")]

    def screenshot(self, name: str) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        return path


def test_the_console_in_a_real_browser(browser, service_factory, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    fixed = slack_doc("30.1", "QUARANTINE lifted: the Acme renewal is signed for three years", at=T0)
    entry_id = quarantined(service_factory, tmp_path, fixed)
    service = service_factory(quarantine_config(tmp_path, rule=False))
    with serving(service) as client:
        _seed_search(client)
        client.post(SLACK, [invalid_slack("<script>alert('never runs')</script> no ts"),
                            invalid_slack("another message with no ts")])
        client.post(GITHUB, [github_doc("I_b", long_text := "Renewal checklist for Acme: legal review, "
                                        "security questionnaire, SOC 2 report.", at=T0 + 300)])
        client.wait_delivered()
        web = Browsing(browser, str(client.admin.base_url))

        # Overview, and it updates live: a document posted now shows up without a reload.
        web.visit("/console/", "sink-local-upserts")
        assert web.errors() == []
        before = int(web.text_of("sink-local-upserts").replace(",", ""))
        browser.execute_script("window.stillTheSamePage = true")
        assert client.post(SLACK, [slack_doc("30.2", "posted while the overview is open", at=time.time())]
                           ).json()["accepted"] == 1
        web.until_text("sink-local-upserts", lambda t: t.replace(",", "") == str(before + 1),
                       "the overview to show the new upsert")
        assert browser.execute_script("return window.stillTheSamePage") is True  # no reload
        assert web.text_of("dead-letter-count") == "3"
        web.screenshot("overview")
        assert web.resources_from_elsewhere() == []
        assert web.errors() == []

        # Dead letters: the <script> in a document stays text; replay one by clicking.
        web.visit("/console/dead-letters", "dead-letters")
        assert "3 of 3" in web.text_of("matched")
        web.screenshot("dead-letters")
        assert web.errors() == []
        browser.find_element(By.CSS_SELECTOR, f'a[href="/console/dead-letters/{entry_id}"]').click()
        web.element("replay-button")
        assert "QUARANTINE lifted" in web.text_of("raw")
        web.screenshot("dead-letter")
        web.click("replay-button")
        web.wait.until(ec.alert_is_present()).accept()  # hx-confirm
        web.until_text("replay-outcome", lambda t: "passed validation and was spooled" in t,
                       "the replay outcome")
        assert web.errors() == []
        client.wait_delivered()
        assert len(rows_of(service, slack_id("30.1"))) == 1
        assert service.rt.dead_letters.get(entry_id) is None
        web.screenshot("replayed")

        bad = [e for e in service.rt.dead_letters.list() if "<script>" in (e.raw.get("text") or "")]
        web.visit(f"/console/dead-letters/{bad[0].id}", "raw")
        assert "<script>alert('never runs')</script>" in web.text_of("raw")  # shown as text
        assert browser.find_elements(By.CSS_SELECTOR, "#raw script") == []
        assert web.errors() == []

        # Search: the query's words come back marked.
        web.visit("/console/search", "search-text")
        browser.find_element(By.ID, "search-text").send_keys("acme renewal")
        web.click("search-button")
        web.element("results")
        marks = [m.text.casefold() for m in browser.find_elements(By.CSS_SELECTOR, "#results mark")]
        assert "renewal" in marks and "acme" in marks
        assert long_text.split(":")[0] in web.text_of("results")
        web.screenshot("search")
        assert web.errors() == []

        # Purge, with the confirmation step.
        web.visit("/console/dead-letters", "purge")
        web.click("purge")
        assert "Delete 2 dead letters" in web.text_of("purge-question")
        web.screenshot("purge-confirm")
        web.click("purge-confirm")
        web.until_text("purged", lambda t: "Purged 2 dead letters" in t, "the purge outcome")
        assert service.rt.dead_letters.count() == 0
        assert web.errors() == []

        web.visit("/console/config", "config-yaml")
        assert "***" in web.text_of("config-yaml")
        web.screenshot("config")
        assert web.errors() == []

        # The overview screenshot for the README, with data in it.
        web.visit("/console/", "sink-local-upserts")
        web.until_text("dead-letter-count", lambda t: t == "0", "the overview after the purge")
        web.screenshot("overview-final")
        assert web.errors() == []


def test_signing_in_and_out_in_a_real_browser(browser, start_worker, tmp_path):
    from selenium.webdriver.common.by import By

    config = make_config(tmp_path, server={"webhook_token": WEBHOOK_TOKEN, "query_token": QUERY_TOKEN,
                                           "admin_token": ADMIN_TOKEN})
    client, _ = start_worker(config)
    web = Browsing(browser, str(client.admin.base_url))
    browser.get(f"{web.base_url}/console/dead-letters")
    token = web.wait.until(lambda d: d.find_elements(By.NAME, "token"))[0]  # sent to /login
    assert "/login?next=/console/dead-letters" in browser.current_url
    assert web.errors() == []  # the login page too (its icon is a static file the guard lets through)
    token.send_keys(ADMIN_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    web.element("dead-letters")  # back where we were going, signed in by the cookie
    assert browser.current_url.endswith("/console/dead-letters")
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: out of scripts' reach
    web.visit("/console/", "sink-local-upserts")
    first = web.text_of("as-of")
    web.until_text("as-of", lambda t: t != first, "a poll of the overview fragment")
    assert web.errors() == []  # the polled fragment is authorized by the cookie too
    browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
    web.wait.until(lambda d: d.find_elements(By.NAME, "token"))
    browser.get(f"{web.base_url}/console/config")
    web.wait.until(lambda d: d.find_elements(By.NAME, "token"))  # signed out: the form again
    assert "/login" in browser.current_url
