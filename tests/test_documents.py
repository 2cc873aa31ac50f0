"""Estuary documents → FlowDocument (worker/documents.py)."""

from __future__ import annotations

import copy
import uuid
from datetime import datetime, timezone

import pytest

from conftest import COLLECTIONS, flow_uuid, load_stream
from worker.config import BindingConfig
from worker.documents import Binding, published_at_of, version_of
from worker.errors import DocumentInvalid

GONG, SLACK, GITHUB = COLLECTIONS
T0 = datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc).timestamp()


def binding(collection: str = SLACK, **fields) -> Binding:
    preset = {GONG: "gong_call", SLACK: "slack_message", GITHUB: "github_document"}.get(collection)
    if fields:
        return Binding(BindingConfig(collection=collection, **fields))
    return Binding(BindingConfig(collection=collection, preset=preset))


def meta(op: str = "c", at: float = T0) -> dict:
    return {"uuid": flow_uuid(at), "op": op}


def slack_doc(**fields) -> dict:
    doc = {"_meta": meta(), "channel_id": "C024BE91L", "channel_name": "deal-acme",
           "ts": "1732550400.000200", "user_name": "leo",
           "text": "<@U0G9QF9C7> Acme asked for the SOC 2 report, can you share the link?",
           "permalink": "https://sophia.slack.com/archives/C024BE91L/p1732550400000200"}
    doc.update(fields)
    return doc


# -- _meta.uuid ----------------------------------------------------------------------------------

def test_published_at_decodes_the_v1_timestamp():
    u = uuid.UUID(flow_uuid(T0 + 0.1234567))
    assert published_at_of(u) == pytest.approx(T0 + 0.1234567, abs=1e-7)
    # The example from the collections reference: 2024-11-25, the day it was written.
    example = uuid.UUID("0b7c9e40-ab13-11ef-8000-0242ac120002")
    assert datetime.fromtimestamp(published_at_of(example), timezone.utc).date().isoformat() == "2024-11-25"


def test_version_orders_by_time_then_tick_counter_ignoring_flags():
    def v(at: float, counter: int = 0, flags: int = 0) -> int:
        return version_of(uuid.UUID(flow_uuid(at, counter, flags)))

    assert v(T0) < v(T0, counter=1) < v(T0, counter=15) < v(T0 + 0.001)
    assert v(T0, counter=3, flags=0x3FF) < v(T0, counter=4, flags=0)  # flags are not a clock
    assert v(T0, counter=3, flags=0x3FF) == v(T0, counter=3, flags=1)
    assert v(T0 - 86400) < v(T0)


def test_envelope_reads_key_op_and_clock():
    env = binding().envelope(slack_doc(_meta={"uuid": flow_uuid(T0, 2), "op": "u"}))
    assert env.key == ("C024BE91L", "1732550400.000200")
    assert env.op == "u"
    assert env.published_at == pytest.approx(T0)
    assert env.version == version_of(uuid.UUID(flow_uuid(T0, 2)))


# -- invalid documents: collection, key and field are named --------------------------------------

@pytest.mark.parametrize("change, field, reason", [
    (lambda d: d.pop("ts"), "/ts", "key field is missing"),
    (lambda d: d.update(channel_id=""), "/channel_id", "key field is missing or empty"),
    (lambda d: d.pop("text"), "/text", "text is missing"),
    (lambda d: d.update(text=None), "/text", "text is missing"),
    (lambda d: d.update(text={"blocks": []}), "/text", "text must be a string"),
    (lambda d: d.pop("_meta"), "/_meta", "_meta is missing"),
    (lambda d: d["_meta"].update(uuid="not-a-uuid"), "/_meta/uuid", "not a UUID"),
    (lambda d: d["_meta"].pop("uuid"), "/_meta/uuid", "not a UUID"),
    (lambda d: d["_meta"].update(uuid=str(uuid.uuid4())), "/_meta/uuid", "v4 UUID, Flow sends v1"),
    (lambda d: d["_meta"].update(op="x"), "/_meta/op", "c, u or d"),
    (lambda d: d["_meta"].update(op="delete"), "/_meta/op", "c, u or d"),
])
def test_invalid_document_names_collection_key_and_field(change, field, reason):
    doc = slack_doc()
    change(doc)
    with pytest.raises(DocumentInvalid) as err:
        binding().parse(doc)
    e = err.value
    assert e.collection == SLACK and e.field == field
    message = str(e)
    assert repr(SLACK) in message and repr(field) in message and reason in message
    if field not in ("/ts", "/channel_id"):  # once the key is read, it is named too
        assert e.key == "['C024BE91L', '1732550400.000200']"
        assert "C024BE91L" in message


def test_non_object_document_is_invalid():
    with pytest.raises(DocumentInvalid, match="not a JSON object"):
        binding().parse(["not", "an", "object"])


# -- Gong ----------------------------------------------------------------------------------------

TURNS = [{"speaker": "Leo Park", "start_s": 12.4, "text": "Thanks for making time today."},
         {"speaker": "Dana Whitfield", "start_s": 20.1, "text": "Sure. Our main concern is the SOC 2 report."},
         {"speaker": "Leo Park", "start_s": 31.0, "text": "We can share it under NDA: today."}]


def gong_doc(transcript, **fields) -> dict:
    doc = {"_meta": meta(), "call_id": "7782342274025937895", "title": "Acme Corp <> Sophia renewal review",
           "url": "https://app.gong.io/call?id=7782342274025937895", "account_name": "Acme Corp",
           "participants": [{"name": "Dana Whitfield"}, {"name": "Leo Park"}],
           "topics": ["pricing", "renewal"], "transcript": transcript}
    doc.update(fields)
    return doc


def test_both_gong_transcript_forms_give_the_same_document_and_chunks(chunker):
    as_turns = binding(GONG).parse(gong_doc(TURNS))
    as_lines = binding(GONG).parse(gong_doc("\n".join(f"{t['speaker']}: {t['text']}" for t in TURNS)))
    assert [(s.label, s.text) for s in as_turns.sections] == [
        ("Leo Park", "Thanks for making time today."),
        ("Dana Whitfield", "Sure. Our main concern is the SOC 2 report."),
        ("Leo Park", "We can share it under NDA: today."),  # only the first ':' splits
    ]
    assert as_lines.sections == as_turns.sections
    a, b = chunker.chunk([as_turns, as_lines])
    assert [c.text for c in a.chunks] == [c.text for c in b.chunks]
    assert "Dana Whitfield: Sure. Our main concern" in a.chunks[0].text
    assert as_turns.metadata["participants"] == ["Dana Whitfield", "Leo Park"]
    assert as_turns.metadata["topics"] == ["pricing", "renewal"]
    assert as_turns.context == "call with Acme Corp"


def test_string_transcript_keeps_continuation_lines_with_their_speaker():
    doc = binding(GONG).parse(gong_doc("Leo Park: first line\nsecond line of Leo\n\nDana: reply\n"
                                       "https://example.com/a:b is a link"))
    assert [(s.label, s.text) for s in doc.sections] == [
        ("Leo Park", "first line\nsecond line of Leo"),
        ("Dana", "reply\nhttps://example.com/a:b is a link"),
    ]


def test_blank_turns_give_no_sections(chunker):
    doc = binding(GONG).parse(gong_doc([{"speaker": "Leo", "text": "   \n "}, {"speaker": "Dana", "text": ""}]))
    assert doc.sections == ()
    assert chunker.chunk([doc])[0].chunks == ()


@pytest.mark.parametrize("transcript, field", [
    (None, "/transcript"), (42, "/transcript"), ([{"speaker": "Leo"}], "/transcript/0/text"),
    (["just a string"], "/transcript/0"),
])
def test_bad_gong_transcript_is_invalid(transcript, field):
    with pytest.raises(DocumentInvalid) as err:
        binding(GONG).parse(gong_doc(transcript))
    assert err.value.field == field and err.value.key == "['7782342274025937895']"


def test_every_sample_document_parses():
    for collection in COLLECTIONS:
        b = binding(collection)
        for raw in load_stream(collection):
            doc = b.parse(raw)
            assert doc.collection == collection and doc.doc_id.startswith(f"{b.source}:")


# -- Slack ---------------------------------------------------------------------------------------

def test_slack_reply_carries_its_thread_context():
    reply = binding().parse(slack_doc(thread_ts="1732550000.000100"))
    assert reply.metadata["is_reply"] is True
    assert reply.metadata["thread_ts"] == "1732550000.000100"
    assert reply.context == "#deal-acme thread 1732550000.000100"
    assert reply.sections[0].label == "leo"
    assert reply.url.startswith("https://sophia.slack.com/")


@pytest.mark.parametrize("thread_ts", [None, "1732550400.000200"])
def test_slack_top_level_message_is_not_a_reply(thread_ts):
    fields = {} if thread_ts is None else {"thread_ts": thread_ts}
    doc = binding().parse(slack_doc(**fields))
    assert doc.metadata["is_reply"] is False
    assert doc.metadata["thread_ts"] == "1732550400.000200"  # a thread is named by its first message
    assert doc.context == "#deal-acme"


def test_slack_header_names_the_channel(chunker):
    [cd] = chunker.chunk([binding().parse(slack_doc(thread_ts="1732550000.000100"))])
    [chunk] = cd.chunks
    assert "#deal-acme" in chunk.text and "leo: @U0G9QF9C7 Acme asked" in chunk.text


def test_slack_markup_becomes_the_words_a_reader_sees():
    text = ("<@U0G9QF9C7|priya> see <#C05K1NC1D|incidents> and <https://status.example/8812|INC-8812>, "
            "<!here> &lt;3 &amp; <https://x.example>")
    doc = binding().parse(slack_doc(text=text))
    assert doc.sections[0].text == ("@priya see #incidents and INC-8812 (https://status.example/8812), "
                                    "@here <3 & https://x.example")


def test_unknown_fields_are_ignored_and_metadata_is_store_safe():
    doc = binding().parse(slack_doc(brand_new_enrichment={"nested": [1, {"x": None}]},
                                    reactions=[{"name": "eyes", "count": 2}], sentiment=None,
                                    reply_count=3, _enrichment_version=7))
    assert "brand_new_enrichment" not in doc.metadata
    assert "sentiment" not in doc.metadata  # null is dropped, never stored
    assert doc.metadata["reply_count"] == 3
    for value in doc.metadata.values():
        assert isinstance(value, (str, int, float, bool)) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value))


def test_delete_needs_only_the_key():
    doc = binding().parse({"_meta": meta("d"), "channel_id": "C024BE91L", "ts": "1732550400.000200"})
    assert doc.is_delete and doc.sections == () and doc.doc_id == "slack:C024BE91L/1732550400.000200"


def test_nul_bytes_and_lone_surrogates_are_cleaned():
    doc = binding().parse(slack_doc(text="abc\x00def \ud800 ok", channel_name="deal\x00acme"))
    assert doc.sections[0].text == "abcdef ? ok"
    assert doc.metadata["channel_name"] == "dealacme"
    doc.sections[0].text.encode("utf-8")  # always encodable


# -- GitHub --------------------------------------------------------------------------------------

def github_doc(**fields) -> dict:
    doc = {"_meta": meta(), "id": "I_kwDOAbc123", "kind": "issue", "repo": "sophia-ai/ai-memory",
           "number": 412, "title": "Memory search returns stale Slack threads after edits",
           "body": "## Steps\n1. Edit a message\n", "labels": ["bug", "memory"],
           "url": "https://github.com/sophia-ai/ai-memory/issues/412"}
    doc.update(fields)
    return doc


def test_github_null_body_is_valid_and_gives_zero_chunks(chunker):
    doc = binding(GITHUB).parse(github_doc(body=None))
    assert doc.sections == () and doc.title.startswith("Memory search")
    [cd] = chunker.chunk([doc])
    assert cd.chunks == ()


def test_github_comment_without_title_gets_a_descriptive_one():
    doc = binding(GITHUB).parse(github_doc(kind="issue_comment", title="", number=None,
                                           parent_number=412, body="Reproduced on staging."))
    assert doc.title == "issue comment on sophia-ai/ai-memory#412"
    assert doc.context == "issue comment sophia-ai/ai-memory#412"
    assert doc.metadata["parent_number"] == 412


def test_github_body_of_wrong_type_is_invalid():
    with pytest.raises(DocumentInvalid) as err:
        binding(GITHUB).parse(github_doc(body=["a"]))
    assert err.value.field == "/body" and err.value.key == "['I_kwDOAbc123']"


def test_github_integer_key_is_read_as_text():
    doc = binding(GITHUB).parse(github_doc(id=1234567))
    assert doc.key == ("1234567",) and doc.doc_id == "github:1234567"


# -- generic mapping -----------------------------------------------------------------------------

NOTES = dict(source="notes", key=["/org", "/note/id"], text=["/note/summary", "/note/body"],
             title="/note/title", url="/note/link", metadata={"owner": "/note/owner",
                                                                 "tags": {"pointer": "/tags", "type": "string[]"}},
             chunker="markdown")


def notes_doc(**note) -> dict:
    base = {"id": 7, "title": "Q4 plan", "summary": "Short summary.", "body": "## Goals\nShip v2.",
            "link": "https://notes.example/7", "owner": "dana"}
    base.update(note)
    return {"_meta": meta(), "org": "acme", "note": base, "tags": ["q4", "plan"], "ignored": True}


def test_generic_binding_maps_key_text_title_metadata_and_chunker():
    doc = binding("acme/notes", **NOTES).parse(notes_doc())
    assert doc.source == "notes" and doc.key == ("acme", "7") and doc.doc_id == "notes:acme/7"
    assert [s.text for s in doc.sections] == ["Short summary.", "## Goals\nShip v2."]
    assert doc.title == "Q4 plan" and doc.url == "https://notes.example/7"
    assert doc.metadata == {"owner": "dana", "tags": ["q4", "plan"]}
    assert doc.chunker == "markdown"


def test_a_metadata_value_that_does_not_fit_its_type_is_left_out_and_counted():
    b = binding("acme/notes", **{**NOTES, "metadata": {"owner": "/note/owner", "tags": "/tags",
                                                       "n": {"pointer": "/note/id", "type": "integer"},
                                                       "due": {"pointer": "/note/title", "type": "time"}}})
    doc = b.parse(notes_doc())
    assert doc.metadata == {"owner": "dana", "n": 7}  # a list is no string, "Q4 plan" no time
    assert b.fields.dropped == {"tags": 1, "due": 1}


def test_generic_binding_needs_at_least_one_text_field():
    raw = notes_doc()
    del raw["note"]["summary"], raw["note"]["body"]
    with pytest.raises(DocumentInvalid) as err:
        binding("acme/notes", **NOTES).parse(raw)
    assert err.value.field == "/note/summary,/note/body"
    assert err.value.key == "['acme', '7']"


def test_generic_binding_tolerates_one_missing_text_field_and_non_string_values():
    raw = notes_doc(body=None, summary={"points": [1, 2]})
    doc = binding("acme/notes", **NOTES).parse(copy.deepcopy(raw))
    assert [s.text for s in doc.sections] == ['{"points":[1,2]}']


def test_preset_metadata_can_be_extended_by_pointers():
    b = Binding(BindingConfig(collection=SLACK, preset="slack_message", metadata={"edited_by": "/edited/user"}))
    doc = b.parse(slack_doc(edited={"user": "U0G9QF9C6", "ts": "1.0"}))
    assert doc.metadata["edited_by"] == "U0G9QF9C6"
    assert doc.metadata["channel_name"] == "deal-acme"
