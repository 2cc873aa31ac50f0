"""Privacy masking: recall on planted PII/secrets, false positives on look-alikes, pseudonyms."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from pydantic import ValidationError

from tests.pii_corpus import GENERATORS, clean_corpus, pii_corpus
from worker.config import BindingConfig
from worker.documents import Binding
from worker.privacy import Masker, PrivacyPolicy, declared_names
from worker.privacy_detect import PII_TYPES, SECRET_TYPES, Detector, EntityType, Span
from worker.records import FlowDocument

SECRET = b"test-pseudonym-key"
BINDINGS = {"gong": Binding(BindingConfig(collection="gong", preset="gong_call")),
            "slack": Binding(BindingConfig(collection="slack", preset="slack_message")),
            "github": Binding(BindingConfig(collection="github", preset="github_document"))}
_TOKEN = re.compile(r"\[[A-Z_]+(?::[0-9a-f]+)?\]")


def sink_strings(doc: FlowDocument) -> str:
    """Every string of a document that reaches a sink."""
    parts = [doc.title, doc.url, doc.context]
    for s in doc.sections:
        parts += [s.text, s.label]
    for v in doc.metadata.values():
        parts += v if isinstance(v, list) else [str(v)]
    return "\n".join(parts)


@pytest.fixture(scope="module")
def corpus():
    return pii_corpus(seed=7, n_per_shape=100)


@pytest.mark.parametrize("names", ["redact", "pseudonymize"])
def test_recall_per_type_on_planted_corpus(corpus, names):
    masker = Masker(PrivacyPolicy(names=names, default_action="redact" if names == "redact"
                                  else "pseudonymize"), secret=SECRET)
    planted: Counter[str] = Counter()
    survived: Counter[str] = Counter()
    fields: dict[str, set[str]] = {}
    for item in corpus:
        doc = BINDINGS[item.collection].parse(item.raw)
        masked = sink_strings(masker.mask_document(doc, item.raw).document)
        for p in item.planted:
            planted[p.kind] += 1
            fields.setdefault(p.kind, set()).add(p.field)
            survived[p.kind] += p.value in masked
    expected = {t.value for t in EntityType}
    assert set(planted) == expected  # every type was planted
    for kind in expected:
        recall = 1 - survived[kind] / planted[kind]
        assert planted[kind] >= 100, kind
        assert recall >= 0.99, f"{kind}: recall {recall:.3f}"
    # every non-name type went into every field type
    for kind in GENERATORS:
        assert {"title", "turn", "slack_text", "body", "account_name", "labels", "topics",
                "action_items"} <= fields[kind], kind


def test_false_positives_on_clean_corpus_below_one_percent():
    detector = Detector(default_region="US")
    tokens = masked_tokens = 0
    for text in clean_corpus(seed=11, n=400):
        spans = detector.detect(text)
        words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        tokens += len(words)
        masked_tokens += sum(any(s.start < e and b < s.end for s in spans) for b, e in words)
    assert tokens > 10_000
    assert masked_tokens / tokens <= 0.01, f"{masked_tokens}/{tokens} clean tokens masked"


@pytest.mark.parametrize("text", [
    "Order ORD-2026-00017 cost $1,299.00 on 2026-11-20T13:42:24Z",
    "SKU 555-0199-A, part 1234-5678-90, release v2.13.0 and 10.2.0, bundle 1.2.3.4.5",
    "request 123e4567-e89b-12d3-a456-426614174000 at commit 4f9c2d1e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d",
    "token=production and key: renewal are config words, not secrets",
    "use std::vector or Foo::bar; the meeting ran 13:42:24; mac 00:1A:2B:3C:4D:5E",
])
def test_look_alikes_are_not_masked(text):
    masker = Masker(PrivacyPolicy())
    masked = masker.mask_text(text)
    assert masked.text == text and masked.counts == {}


def test_pseudonyms_are_stable_normalized_and_keyed():
    policy = PrivacyPolicy(default_action="pseudonymize", names="pseudonymize")
    masker = Masker(policy, secret=SECRET)
    a = masker.mask_text("write to Dana@Acme.example today").text
    b = masker.mask_text("cc: dana@acme.example").text
    token_a = _TOKEN.search(a).group()
    assert token_a.startswith("[EMAIL:") and token_a == _TOKEN.search(b).group()
    assert masker.mask_query("dana@acme.example") == token_a
    # the same phone written two ways is one person
    p1 = masker.mask_text("call (415) 555-2671").text
    p2 = masker.mask_text("call +1 415-555-2671").text
    assert p1 == p2 and "[PHONE:" in p1
    # a different value, or a different key, gives a different token
    assert _TOKEN.search(masker.mask_text("leo@acme.example").text).group() != token_a
    other = Masker(policy, secret=b"another-key")
    assert _TOKEN.search(other.mask_text("dana@acme.example").text).group() != token_a


def test_query_finds_the_pseudonymized_email_of_a_document():
    masker = Masker(PrivacyPolicy(actions={"email": "pseudonymize"}), secret=SECRET)
    raw = {"_meta": {"uuid": "0eb31800-e4f3-11f1-8000-0242ac120002", "op": "c"},
           "call_id": "1", "title": "Renewal", "account_name": "Acme",
           "participants": [{"name": "Dana Whitfield"}],
           "transcript": [{"speaker": "Dana Whitfield", "text": "mail me at DANA@acme.example"}]}
    doc = masker.mask_document(BINDINGS["gong"].parse(raw), raw).document
    assert masker.mask_query("dana@acme.example") in doc.sections[0].text
    assert "acme.example" not in sink_strings(doc)


def test_names_declared_by_the_document_are_masked_everywhere():
    masker = Masker(PrivacyPolicy(names="pseudonymize"), secret=SECRET)
    raw = {"_meta": {"uuid": "0eb31800-e4f3-11f1-8000-0242ac120002", "op": "c"},
           "call_id": "1", "title": "Call with Dana Whitfield", "account_name": "Acme",
           "participants": [{"name": "Dana Whitfield"}, {"name": "Leo Park"}],
           "transcript": [{"speaker": "Leo Park", "text": "Dana, will you sign? DANA WHITFIELD said so"},
                          {"speaker": "Dana Whitfield", "text": "Yes Leo. I will."}]}
    masked = masker.mask_document(BINDINGS["gong"].parse(raw), raw)
    text = sink_strings(masked.document)
    assert "Dana" not in text and "DANA" not in text and "Whitfield" not in text
    assert "Leo" not in text and "Park" not in text
    assert "will you sign" in text and "I will." in text  # verbs untouched
    dana = masker.token(EntityType.PERSON, "dana whitfield")
    # first-name-only mention gets the full name's token, labels are masked too
    assert masked.document.sections[0].text.startswith(dana + ",")
    assert masked.document.sections[1].label == dana
    assert masked.counts["person"] >= 6
    assert masker.mask_query("what did Dana Whitfield promise?") == f"what did {dana} promise?"


def test_declared_names_of_each_shape():
    assert declared_names({"participants": [{"name": "A B"}], "transcript": [{"speaker": "C D"}]}) \
        == ["A B", "C D"]
    assert declared_names({"user_name": "leo", "user_id": "U1"}) == ["leo", "U1"]
    assert declared_names({"author": "mpatel"}) == ["mpatel"]


def test_secrets_redacted_even_when_policy_keeps_everything():
    masker = Masker(PrivacyPolicy(default_action="keep", names="keep"))
    import random

    r = random.Random(3)
    for kind, gen in GENERATORS.items():
        value = gen(r)
        out = masker.mask_text(f"value: {value} end")
        if EntityType(kind).is_secret:
            assert EntityType(kind).placeholder in out.text, (kind, out.text)
            assert out.counts == {kind: 1}
        else:
            assert out.text == f"value: {value} end", kind


def test_policy_cannot_keep_a_secret_and_rejects_unknown_keys():
    with pytest.raises(ValidationError, match="always redacted"):
        PrivacyPolicy(actions={"jwt": "keep"})
    with pytest.raises(ValidationError):
        PrivacyPolicy(actions={"emial": "redact"})
    with pytest.raises(ValidationError):
        PrivacyPolicy(nmaes="redact")
    with pytest.raises(ValidationError, match="default_region"):
        PrivacyPolicy(default_region="XX")
    with pytest.raises(ValueError, match="secret"):
        Masker(PrivacyPolicy(names="pseudonymize"))


def test_masker_never_shows_the_secret_or_raw_values():
    masker = Masker(PrivacyPolicy(default_action="pseudonymize"), secret=b"super-secret-key")
    assert "super-secret-key" not in repr(masker)
    out = masker.mask_text("card 4111 1111 1111 1111 and ssn 123-45-6789")
    assert "4111" not in out.text and "6789" not in out.text
    assert set(out.counts) == {"card", "ssn"} and all(isinstance(v, int) for v in out.counts.values())


def test_national_phone_formats_follow_the_default_region():
    gb = Masker(PrivacyPolicy(default_region="GB"))
    us = Masker(PrivacyPolicy(default_region="US"))
    assert gb.mask_text("ring 020 7946 0958 please").text == "ring [PHONE] please"
    assert us.mask_text("ring 020 7946 0958 please").text == "ring 020 7946 0958 please"
    assert us.mask_text("intl +44 20 7946 0958").text == "intl [PHONE]"


def test_only_checksum_valid_cards_and_ibans_are_masked():
    m = Masker(PrivacyPolicy())
    assert m.mask_text("4111 1111 1111 1111").text == "[CARD]"
    assert m.mask_text("4111 1111 1111 1112").text == "4111 1111 1111 1112"
    assert m.mask_text("IBAN DE89 3704 0044 0532 0130 00 OK").text == "IBAN [IBAN] OK"
    assert m.mask_text("IBAN DE88 3704 0044 0532 0130 00").text == "IBAN DE88 3704 0044 0532 0130 00"
    assert m.mask_text("SSN 666-12-3456 or 000-12-3456").text == "SSN 666-12-3456 or 000-12-3456"


def test_secret_forms():
    m = Masker(PrivacyPolicy())
    assert m.mask_text("postgres://admin:hunter2@db:5432/x").text == "postgres://[URL_CREDENTIALS]@db:5432/x"
    assert m.mask_text("password=changeme").text == "password=[ASSIGNED_SECRET]"  # weak, still a password
    assert m.mask_text("token=${SLACK_TOKEN}").text == "token=${SLACK_TOKEN}"  # placeholder
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN\nBgkqhkiG9w0B\n-----END PRIVATE KEY-----"
    assert m.mask_text(f"key:\n{pem}\nafter").text == "key:\n[PRIVATE_KEY]\nafter"
    truncated = "-----BEGIN RSA PRIVATE KEY-----\nMIIEvQIBADAN\nBgkqhkiG9w0B\n\nlog continues"
    assert m.mask_text(truncated).text == "[PRIVATE_KEY]\n\nlog continues"
    not_jwt = "eyJub3Rqc29u.eyJzdWIiOiIxIn0.abc"  # header has no alg
    assert m.mask_text(not_jwt).text == not_jwt


def test_overlaps_resolve_secret_first_then_longest():
    d = Detector()
    spans = d.detect("https://dana:s3cretpass@acme.example/x")
    assert [s.type for s in spans] == [EntityType.URL_CREDENTIALS]
    from worker.privacy_detect import resolve_overlaps

    a = Span(0, 10, EntityType.PHONE, "")
    b = Span(2, 20, EntityType.CARD, "")
    c = Span(5, 8, EntityType.JWT, "")
    assert resolve_overlaps([a, b, c]) == [c]
    assert resolve_overlaps([a, b]) == [b]


def test_delete_and_disabled_pass_through():
    m = Masker(PrivacyPolicy(enabled=False))
    assert m.mask_text("dana@acme.example").text == "dana@acme.example"
    doc = FlowDocument(collection="c", source="s", key=("k",), doc_id="s:k", op="d", uuid="u",
                       version=1, published_at=0.0)
    assert Masker(PrivacyPolicy()).mask_document(doc, {}).document is doc


def test_type_sets_partition_the_enum():
    assert set(PII_TYPES) | set(SECRET_TYPES) == set(EntityType)
    assert not set(PII_TYPES) & set(SECRET_TYPES)


def test_dotted_quad_is_an_ip_not_a_phone():
    spans = Detector().detect("from 224.54.158.97 today")
    assert [s.type for s in spans] == [EntityType.IP]


def test_ner_backend_hook_adds_undeclared_names():
    class FakeNer:
        def find(self, text):
            i = text.find("Zoe Quinn")
            return [] if i < 0 else [Span(i, i + 9, EntityType.PERSON, "zoe quinn")]

    masker = Masker(PrivacyPolicy(names="redact"), ner=FakeNer())
    assert masker.mask_text("ask Zoe Quinn at zoe@x.example").text == "ask [PERSON] at [EMAIL]"


def test_phone_extension_and_digit_runs_inside_words():
    m = Masker(PrivacyPolicy())
    assert m.mask_text("desk (415) 555-2671 x 204.").text == "desk [PHONE]."
    assert m.mask_text("build abc4155552671 and v10.0.0.1").text == "build abc4155552671 and v10.0.0.1"
