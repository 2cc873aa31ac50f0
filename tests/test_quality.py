"""Data-quality rules: each rule with each action, the order around parsing, the ratio window."""

from __future__ import annotations

import copy
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from worker.config import BindingConfig
from worker.documents import Binding
from worker.quality import (QualityChecker, QualityRules, ValidRatioWindow, drop_fields,
                            non_text_share, parse_duration_s)

NOW = datetime(2026, 11, 19, 12, 0, tzinfo=timezone.utc).timestamp()
SLACK = Binding(BindingConfig(collection="slack", preset="slack_message"))
GITHUB = Binding(BindingConfig(collection="github", preset="github_document"))


def slack(**fields):
    raw = {"_meta": {"uuid": "ecdd5636-e4f3-11f1-8000-0242ac120002", "op": "c"},
           "channel_id": "C024BE91L", "channel_name": "deal-acme", "ts": "1795187170.646894",
           "user_id": "U0G9QF9C6", "user_name": "leo", "sentiment_category": "neutral",
           "enriched_at": "2026-11-19T10:00:00Z",
           "text": "Acme asked for the SOC 2 report before signing, can you share the link?"}
    raw.update(fields)
    return {k: v for k, v in raw.items() if v is not None}


def checker(*rules, count_tokens=None):
    return QualityChecker(QualityRules(rules=list(rules)), clock=lambda: NOW,
                          count_tokens=count_tokens)


# one failing document per rule: (rule config without action, raw that fails, raw that passes)
CASES = {
    "required": ({"kind": "required", "fields": ["/user_id", "/text"]},
                 slack(user_id=""), slack()),
    "allowed_values": ({"kind": "allowed_values", "field": "/sentiment_category",
                        "values": ["positive", "neutral", "negative", "at_risk"]},
                       slack(sentiment_category="furious"), slack()),
    "timestamp_future": ({"kind": "timestamp", "field": "/enriched_at", "max_future_skew_s": 60},
                         slack(enriched_at="2026-11-19T21:00:00Z"), slack()),
    "timestamp_old": ({"kind": "timestamp", "field": "/enriched_at", "max_age": "30d"},
                      slack(enriched_at="2026-09-01T00:00:00Z"), slack()),
    "must_match": ({"kind": "pattern", "field": "/channel_name", "must_match": r"^deal-"},
                   slack(channel_name="random"), slack()),
    "must_not_match": ({"kind": "pattern", "field": "/user_name", "must_not_match": r"bot$"},
                       slack(user_name="deploybot"), slack()),
    "text_length": ({"kind": "text_length", "min_chars": 20, "max_chars": 500},
                    slack(text="ok"), slack()),
    "non_text_share": ({"kind": "non_text_share", "max_share": 0.3},
                       slack(text="0x7f3a 0x9c12 0x0042 ==> 1234 5678 #### $$$$ ok"), slack()),
}
FIELD_RULES = {"allowed_values", "timestamp_future", "timestamp_old", "must_match",
               "must_not_match"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dead_letter_names_the_rule(case):
    rule, bad, good = CASES[case]
    c = checker({**rule, "name": case, "action": "dead_letter"})
    out = c.run(bad, SLACK.parse)
    assert out.document is None
    assert case in out.verdict.dead_letter_reason and out.verdict.failed_rules == [case]
    ok = c.run(good, SLACK.parse)
    assert ok.document is not None and ok.verdict.valid and ok.verdict.dead_letter_reason is None
    assert "quality_flags" not in ok.document.metadata
    assert c.checked == 2 and c.failed == {case: 1} and c.dead_lettered == 1


@pytest.mark.parametrize("case", sorted(CASES))
def test_flag_keeps_the_document_and_lists_the_rule(case):
    rule, bad, good = CASES[case]
    c = checker({**rule, "name": case, "action": "flag"})
    out = c.run(bad, SLACK.parse)
    assert out.document is not None and out.verdict.dead_letter_reason is None
    assert out.document.metadata["quality_flags"] == [case]
    assert out.verdict.failed_rules == [case] and not out.verdict.valid
    assert "quality_flags" not in c.run(good, SLACK.parse).document.metadata


@pytest.mark.parametrize("case", sorted(FIELD_RULES))
def test_drop_field_removes_the_field_before_parsing(case):
    rule, bad, _ = CASES[case]
    c = checker({**rule, "name": case, "action": "drop_field"})
    before = copy.deepcopy(bad)
    out = c.run(bad, SLACK.parse)
    pointer = rule["field"]
    name = pointer[1:]
    assert out.verdict.dropped == [pointer] and out.document is not None
    assert bad == before  # the caller's raw document is not mutated
    if name in ("channel_name", "user_name", "sentiment_category"):  # kept by the preset
        assert name not in out.document.metadata
        assert bad[name] not in out.document.context + out.document.sections[0].label
    assert c.failed == {case: 1}


def test_drop_field_is_only_for_field_rules():
    with pytest.raises(ValidationError, match="drop_field"):
        QualityRules(rules=[{"kind": "text_length", "min_chars": 1, "action": "drop_field"}])
    with pytest.raises(ValidationError, match="drop_field"):
        QualityRules(rules=[{"kind": "required", "fields": ["/a"], "action": "drop_field"}])


def test_rules_are_strict():
    with pytest.raises(ValidationError):
        QualityRules(rules=[{"kind": "requird", "fields": ["/a"]}])
    with pytest.raises(ValidationError):
        QualityRules(rules=[{"kind": "required", "fields": ["/a"], "acton": "flag"}])
    with pytest.raises(ValidationError, match="JSON pointer"):
        QualityRules(rules=[{"kind": "pattern", "field": "text", "must_match": "x"}])
    with pytest.raises(ValidationError, match="bad regex"):
        QualityRules(rules=[{"kind": "pattern", "field": "/text", "must_match": "("}])
    with pytest.raises(ValidationError, match="named"):
        QualityRules(rules=[{"kind": "required", "fields": ["/a"]},
                            {"kind": "required", "fields": ["/a"], "action": "flag"}])
    with pytest.raises(ValidationError, match="duration"):
        QualityRules(rules=[{"kind": "timestamp", "field": "/t", "max_age": "ten days"}])
    with pytest.raises(ValueError, match="tokenizer"):
        checker({"kind": "text_length", "max_tokens": 5})


def test_token_limits_use_the_given_counter():
    c = checker({"kind": "text_length", "max_tokens": 5, "action": "flag"},
                count_tokens=lambda text: len(text.split()))
    assert c.run(slack(text="one two three"), SLACK.parse).verdict.flags == []
    assert c.run(slack(text="one two three four five six"), SLACK.parse).verdict.flags == \
        ["text_length"]


def test_field_rules_pass_on_a_missing_field_and_required_catches_it():
    c = checker({"kind": "allowed_values", "field": "/sentiment_category", "values": ["neutral"]})
    assert c.run(slack(sentiment_category=None), SLACK.parse).document is not None
    r = checker({"kind": "required", "fields": ["/sentiment_category"]})
    assert r.run(slack(sentiment_category=None), SLACK.parse).document is None


def test_allowed_values_checks_every_item_of_a_list_and_does_not_confuse_bool_and_int():
    c = checker({"kind": "allowed_values", "field": "/labels", "values": ["bug", "memory"],
                 "action": "flag"})
    raw = {"_meta": {"uuid": "42377028-e4fc-11f1-8000-0242ac120002", "op": "c"}, "id": "I_1",
           "title": "t", "body": "some body text", "labels": ["bug", "memory"]}
    assert c.run(raw, GITHUB.parse).verdict.valid
    assert not c.run({**raw, "labels": ["bug", "wontfix"]}, GITHUB.parse).verdict.valid
    n = checker({"kind": "allowed_values", "field": "/reply_count", "values": [1]})
    assert n.check(slack(reply_count=True)).failed_rules == ["allowed_values:/reply_count"]
    assert n.check(slack(reply_count=1)).valid and n.check(slack(reply_count=1.0)).valid


def test_timestamps_in_unix_seconds_and_ms_and_unparseable():
    c = checker({"kind": "timestamp", "field": "/t", "max_age": "1h", "max_future_skew_s": 10})
    assert c.check(slack(t=NOW - 10)).valid
    assert c.check(slack(t=(NOW - 10) * 1000)).valid  # ms since epoch
    assert not c.check(slack(t=NOW - 7200)).valid
    assert not c.check(slack(t=NOW + 11)).valid
    assert not c.check(slack(t="yesterday")).valid


def test_order_dead_letter_on_raw_rule_never_parses():
    calls = []
    c = checker({"kind": "required", "fields": ["/user_id"]})
    out = c.run(slack(user_id=None), lambda raw: calls.append(raw) or SLACK.parse(raw))
    assert out.document is None and calls == []


def test_deletes_skip_rules():
    c = checker({"kind": "required", "fields": ["/text"]})
    delete = {"_meta": {"uuid": "ecdd5636-e4f3-11f1-8000-0242ac120002", "op": "d"},
              "channel_id": "C024BE91L", "ts": "1795187170.646894"}
    out = c.run(delete, SLACK.parse)
    assert out.document is not None and out.document.is_delete and c.checked == 0


def test_several_rules_several_actions_at_once():
    c = checker({"kind": "pattern", "field": "/user_name", "must_not_match": "bot$",
                 "action": "drop_field", "name": "no-bots"},
                {"kind": "text_length", "max_chars": 10, "action": "flag", "name": "short"},
                {"kind": "allowed_values", "field": "/channel_name", "values": ["deal-acme"],
                 "action": "flag", "name": "known-channel"})
    out = c.run(slack(user_name="ci-bot"), SLACK.parse)
    assert out.verdict.dropped == ["/user_name"]
    assert out.document.metadata["quality_flags"] == ["short"]
    assert out.verdict.failed_rules == ["no-bots", "short"]
    assert c.failed == {"no-bots": 1, "short": 1, "known-channel": 0}


def test_drop_fields_copies_only_along_the_path():
    raw = {"a": {"b": 1, "c": [1, 2, 3]}, "d": {"e": 1}}
    out = drop_fields(raw, ["/a/b", "/a/c/1", "/missing/x"])
    assert out == {"a": {"c": [1, 3]}, "d": {"e": 1}}
    assert raw == {"a": {"b": 1, "c": [1, 2, 3]}, "d": {"e": 1}}
    assert out["d"] is raw["d"]


def test_helpers():
    assert parse_duration_s("90d") == 90 * 86400 and parse_duration_s("12h") == 43200
    assert parse_duration_s(5) == 5.0
    assert non_text_share("plain words, and punctuation!") == 0.0
    assert non_text_share("1234") == 1.0
    assert non_text_share("") == 0.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_valid_ratio_window_by_count():
    w = ValidRatioWindow(size=4)
    assert w.ratio("slack") is None
    for valid in (True, True, False, True):
        w.record("slack", valid)
    assert w.ratio("slack") == 0.75
    w.record("slack", False)  # evicts the first True
    assert w.ratio("slack") == 0.5 and w.counts("slack") == (2, 4)
    w.record("gong", True)
    assert w.ratios() == {"slack": 0.5, "gong": 1.0}


def test_valid_ratio_window_by_time_with_injected_clock():
    clock = FakeClock()
    w = ValidRatioWindow(window_s=60, clock=clock)
    w.record("slack", False)
    clock.now = 30
    w.record("slack", True)
    w.record("slack", True)
    assert w.ratio("slack") == pytest.approx(2 / 3)
    clock.now = 61  # the False at t=0 leaves the window
    assert w.ratio("slack") == 1.0
    clock.now = 200
    assert w.ratio("slack") is None and w.counts("slack") == (0, 0)
    with pytest.raises(ValueError):
        ValidRatioWindow(size=10, window_s=10)
    with pytest.raises(ValueError):
        ValidRatioWindow()
