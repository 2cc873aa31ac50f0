"""Estuary documents → :class:`FlowDocument`, through a binding's preset or generic mapping.

The whole document arrives as Estuary sends it, ``_meta`` included. ``_meta.uuid`` is a v1 UUID
whose timestamp is the publish time; ``version_of`` turns it into a sortable integer (timestamp,
then the 4-bit tick counter in the clock sequence). Unknown fields are ignored. A missing key, a
missing text field or a bad ``_meta`` raises :class:`DocumentInvalid` naming the collection, the
key (when known) and the field; the caller dead-letters the document and goes on.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from worker.config import BindingConfig
from worker.errors import DocumentInvalid
from worker.fields import BindingFields
from worker.ids import document_id
from worker.pointers import MISSING as _MISSING, resolve_pointer
from worker.records import FlowDocument, MetadataValue, Section

_GREGORIAN_TO_UNIX_TICKS = 0x01B21DD213814000
_MAX_VERSION = 1 << 63  # versions are stored as signed 64-bit integers (ledger, prepared store)


def version_of(u: uuidlib.UUID) -> int:
    """Sort key of a Flow message UUID: ``(time, clock_seq >> 10)`` packed into one int."""
    return (u.time << 4) | (u.clock_seq >> 10)


def published_at_of(u: uuidlib.UUID) -> float:
    """Unix seconds of a v1 UUID's timestamp."""
    return (u.time - _GREGORIAN_TO_UNIX_TICKS) / 1e7


def clean_text(value: str) -> str:
    """Drop NUL bytes and lone surrogates; everything else (emoji, CJK, RTL) passes untouched."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _key_part(value: Any) -> str | None:
    if isinstance(value, bool) or value is None or value is _MISSING:
        return None if value is None or value is _MISSING else str(value).lower()
    if isinstance(value, str):
        return value if value else None
    if isinstance(value, (int, float)):
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def metadata_value(value: Any) -> MetadataValue | None:
    """Coerce to what every sink stores: str, number, bool or list of str. ``None`` is dropped."""
    if value is None or value is _MISSING:
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        # 3 and 3.0 are one JSON number; Avro paths (Dekaf) deliver a `number` as a double.
        return int(value)
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [clean_text(v) for v in value]
    if isinstance(value, list) and all(isinstance(v, (int, float, bool)) and v is not None
                                       for v in value):
        return [str(v) for v in value]
    return clean_text(orjson.dumps(value).decode())


@dataclass(frozen=True, slots=True)
class Envelope:
    """The binding-independent part of a document: key, op and version."""

    key: tuple[str, ...]
    op: str
    uuid: str
    version: int
    published_at: float


class Binding:
    """A collection bound to a preset or a generic mapping; parses its documents."""

    def __init__(self, config: BindingConfig) -> None:
        self.config = config
        self.collection = config.collection
        preset = PRESETS.get(config.preset) if config.preset else None
        self.source: str = config.source or (preset.source if preset else "doc")
        self.key_pointers: tuple[str, ...] = config.key or (preset.key if preset else ())
        self.chunker: str = config.chunker or (preset.chunker if preset else "plain")
        self._preset = preset
        self.fields = BindingFields(config.collection, config.declared_fields())  # type: ignore[arg-type]

    # -- parsing -----------------------------------------------------------------------------
    def _invalid(self, message: str, key: tuple[str, ...] | None, field: str | None) -> DocumentInvalid:
        shown = None if key is None else "[" + ", ".join(repr(k) for k in key) + "]"
        return DocumentInvalid(message, collection=self.collection, key=shown, field=field)

    def envelope(self, raw: Any) -> Envelope:
        """Read key and ``_meta``; enough to order versions and apply deletes."""
        if not isinstance(raw, Mapping):
            raise self._invalid("document is not a JSON object", None, None)
        parts: list[str] = []
        for pointer in self.key_pointers:
            part = _key_part(resolve_pointer(raw, pointer))
            if part is None:
                raise self._invalid("key field is missing or empty", None, pointer)
            parts.append(part)
        key = tuple(parts)
        meta = raw.get("_meta")
        if not isinstance(meta, Mapping):
            raise self._invalid("_meta is missing or not an object", key, "/_meta")
        op = meta.get("op", "u")
        if op not in ("c", "u", "d"):
            raise self._invalid(f"_meta.op must be c, u or d, not {op!r}", key, "/_meta/op")
        raw_uuid = meta.get("uuid")
        try:
            u = uuidlib.UUID(str(raw_uuid))
        except ValueError:
            raise self._invalid("_meta.uuid is not a UUID", key, "/_meta/uuid") from None
        if u.version != 1:
            raise self._invalid(f"_meta.uuid is a v{u.version} UUID, Flow sends v1", key,
                                "/_meta/uuid")
        version = version_of(u)
        if version >= _MAX_VERSION:  # past year ~3400: not a Flow publish clock, and no store holds it
            raise self._invalid("_meta.uuid's timestamp is out of range for a publish time", key,
                                "/_meta/uuid")
        return Envelope(key, op, str(u), version, published_at_of(u))

    def parse(self, raw: Any) -> FlowDocument:
        env = self.envelope(raw)
        doc_id = document_id(self.source, env.key)
        base = dict(collection=self.collection, source=self.source, key=env.key, doc_id=doc_id,
                    op=env.op, uuid=env.uuid, version=env.version, published_at=env.published_at,
                    chunker=self.chunker)
        if env.op == "d":
            return FlowDocument(**base)  # a delete carries only the key and _meta
        if self._preset is not None:
            fields = self._preset.extract(raw, lambda m, f: self._invalid(m, env.key, f))
        else:
            fields = self._generic(raw, env.key)
        metadata = dict(fields.pop("metadata"))
        for name, pointer in self.config.pointers().items():
            value = metadata_value(resolve_pointer(raw, pointer))
            if value is not None:
                metadata[name] = value
        metadata = self.fields.coerce(metadata, doc_id)
        return FlowDocument(**base, **fields, metadata=metadata)

    def _generic(self, raw: Mapping[str, Any], key: tuple[str, ...]) -> dict[str, Any]:
        texts: list[Section] = []
        found = False
        for pointer in self.config.text or ():
            value = resolve_pointer(raw, pointer)
            if value is _MISSING or value is None:
                continue
            found = True
            if isinstance(value, list):
                value = "\n".join(v if isinstance(v, str) else orjson.dumps(v).decode()
                                  for v in value)
            elif not isinstance(value, str):
                value = orjson.dumps(value).decode()
            texts.append(Section(clean_text(value)))
        if not found:
            raise self._invalid("no text field present", key, ",".join(self.config.text or ()))
        title = resolve_pointer(raw, self.config.title) if self.config.title else _MISSING
        url = resolve_pointer(raw, self.config.url) if self.config.url else _MISSING
        return dict(title=clean_text(title) if isinstance(title, str) else "",
                    url=url if isinstance(url, str) else "", context="",
                    sections=tuple(texts), metadata={})

    # -- schema ------------------------------------------------------------------------------
    def json_schema(self) -> dict[str, Any]:
        """JSON Schema of the documents this binding expects (served at /estuary/schema)."""
        properties: dict[str, Any] = {
            "_meta": {"type": "object", "required": ["uuid", "op"], "properties": {
                "uuid": {"type": "string", "format": "uuid",
                         "description": "v1 UUID; its timestamp is the publish time"},
                "op": {"enum": ["c", "u", "d"]}}},
        }
        required = ["_meta"]
        for pointer in self.key_pointers:
            top = pointer[1:].split("/")[0]
            properties.setdefault(top, {"type": ["string", "integer"]})
            required.append(top)
        if self._preset is not None:
            properties.update(self._preset.schema)
        else:
            for pointer in self.config.text or ():
                properties.setdefault(pointer[1:].split("/")[0], {})
        return {"$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": self.collection, "type": "object", "properties": properties,
                "required": required, "additionalProperties": True,
                "description": f"preset {self.config.preset or 'generic'}; source {self.source}; "
                               f"chunker {self.chunker}. Deletes (_meta.op = d) need only the key."}


# -- presets -------------------------------------------------------------------------------------

Invalid = Callable[[str, str | None], DocumentInvalid]


@dataclass(frozen=True)
class Preset:
    source: str
    key: tuple[str, ...]
    chunker: str
    extract: Callable[[Mapping[str, Any], Invalid], dict[str, Any]]
    schema: dict[str, Any]


def _str(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    return clean_text(value) if isinstance(value, str) else ""


def _meta(raw: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, MetadataValue]:
    out: dict[str, MetadataValue] = {}
    for name in names:
        value = metadata_value(raw.get(name, _MISSING))
        if value is not None:
            out[name] = value
    return out


def _gong(raw: Mapping[str, Any], invalid: Invalid) -> dict[str, Any]:
    transcript = raw.get("transcript", _MISSING)
    sections: list[Section] = []
    if transcript is _MISSING or transcript is None:
        raise invalid("transcript is missing", "/transcript")
    if isinstance(transcript, str):
        for line in clean_text(transcript).splitlines():
            speaker, sep, text = line.partition(":")
            if sep and 0 < len(speaker) <= 80 and not speaker.startswith(("http", " ")):
                sections.append(Section(text.strip(), speaker.strip()))
            elif line.strip():
                if sections:  # a continuation line of the previous turn
                    prev = sections[-1]
                    sections[-1] = Section(f"{prev.text}\n{line.strip()}", prev.label)
                else:
                    sections.append(Section(line.strip()))
    elif isinstance(transcript, list):
        for i, turn in enumerate(transcript):
            if not isinstance(turn, Mapping):
                raise invalid(f"turn {i} is not an object", f"/transcript/{i}")
            text = turn.get("text")
            if not isinstance(text, str):
                raise invalid(f"turn {i} has no text", f"/transcript/{i}/text")
            speaker = turn.get("speaker")
            sections.append(Section(clean_text(text), clean_text(speaker) if isinstance(speaker, str) else ""))
    else:
        raise invalid("transcript must be a list of turns or a string", "/transcript")
    metadata = _meta(raw, ("account_id", "account_name", "started_at", "duration_s", "topics",
                           "action_items", "sentiment", "sentiment_category"))
    participants = raw.get("participants")
    if isinstance(participants, list):
        names = [p["name"] for p in participants if isinstance(p, Mapping) and isinstance(p.get("name"), str)]
        if names:
            metadata["participants"] = names
    account = _str(raw, "account_name")
    return dict(title=_str(raw, "title"), url=_str(raw, "url"),
                context=f"call with {account}" if account else "call",
                sections=tuple(s for s in sections if s.text.strip()), metadata=metadata)


_SLACK_USER = re.compile(r"<@([A-Z0-9]+)(?:\|([^>]+))?>")
_SLACK_CHANNEL = re.compile(r"<#([A-Z0-9]+)(?:\|([^>]*))?>")
_SLACK_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]+))?>")
_SLACK_SPECIAL = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")


def slack_plain_text(text: str) -> str:
    """Slack markup to the words a reader sees: ``<@U1|leo>`` → ``@leo``, ``<#C1|deal>`` →
    ``#deal``, ``<https://x|label>`` → ``label (https://x)``."""
    text = _SLACK_USER.sub(lambda m: "@" + (m.group(2) or m.group(1)), text)
    text = _SLACK_CHANNEL.sub(lambda m: "#" + (m.group(2) or m.group(1)), text)
    text = _SLACK_LINK.sub(lambda m: f"{m.group(2)} ({m.group(1)})" if m.group(2) else m.group(1), text)
    text = _SLACK_SPECIAL.sub(lambda m: "@" + m.group(1), text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _slack(raw: Mapping[str, Any], invalid: Invalid) -> dict[str, Any]:
    text = raw.get("text", _MISSING)
    if text is _MISSING or text is None:
        raise invalid("text is missing", "/text")
    if not isinstance(text, str):
        raise invalid("text must be a string", "/text")
    channel = _str(raw, "channel_name") or _str(raw, "channel_id")
    ts = _str(raw, "ts")
    thread_ts = _str(raw, "thread_ts")
    is_reply = bool(thread_ts) and thread_ts != ts
    metadata = _meta(raw, ("channel_id", "channel_name", "user_id", "user_name", "ts",
                           "reply_count", "sentiment", "sentiment_category"))
    metadata["thread_ts"] = thread_ts or ts
    metadata["is_reply"] = is_reply
    context = f"#{channel}" + (f" thread {thread_ts}" if is_reply else "")
    user = _str(raw, "user_name") or _str(raw, "user_id")
    return dict(title=f"#{channel}" if channel else "", url=_str(raw, "permalink"), context=context,
                sections=(Section(slack_plain_text(clean_text(text)), user),) if text.strip() else (),
                metadata=metadata)


def _github(raw: Mapping[str, Any], invalid: Invalid) -> dict[str, Any]:
    if "body" not in raw and "title" not in raw:
        raise invalid("neither body nor title is present", "/body")
    body = raw.get("body")
    if body is not None and not isinstance(body, str):
        raise invalid("body must be a string or null", "/body")
    kind = _str(raw, "kind") or "issue"
    repo = _str(raw, "repo")
    number = raw.get("number") if isinstance(raw.get("number"), int) else raw.get("parent_number")
    ref = f"{repo}#{number}" if repo and isinstance(number, int) else repo
    title = _str(raw, "title") or (f"{kind.replace('_', ' ')} on {ref}" if ref else kind)
    metadata = _meta(raw, ("repo", "number", "parent_number", "kind", "state", "author", "labels",
                           "created_at", "updated_at", "sentiment_category"))
    return dict(title=title, url=_str(raw, "url"), context=f"{kind.replace('_', ' ')} {ref}".strip(),
                sections=(Section(clean_text(body)),) if body and body.strip() else (),
                metadata=metadata)


PRESETS: dict[str, Preset] = {
    "gong_call": Preset("gong", ("/call_id",), "transcript", _gong, {
        "call_id": {"type": "string"}, "title": {"type": "string"}, "url": {"type": "string"},
        "transcript": {"oneOf": [
            {"type": "string", "description": "lines 'Speaker: text'"},
            {"type": "array", "items": {"type": "object", "required": ["text"], "properties": {
                "speaker": {"type": "string"}, "start_s": {"type": "number"},
                "text": {"type": "string"}}}}]},
        "account_name": {"type": "string"}, "topics": {"type": "array", "items": {"type": "string"}},
    }),
    "slack_message": Preset("slack", ("/channel_id", "/ts"), "slack", _slack, {
        "channel_id": {"type": "string"}, "ts": {"type": "string"}, "text": {"type": "string"},
        "thread_ts": {"type": "string"}, "channel_name": {"type": "string"},
        "user_name": {"type": "string"}, "permalink": {"type": "string"},
    }),
    "github_document": Preset("github", ("/id",), "markdown", _github, {
        "id": {"type": "string"}, "kind": {"enum": ["issue", "pull_request", "issue_comment",
                                                    "review_comment", "release"]},
        "title": {"type": ["string", "null"]}, "body": {"type": ["string", "null"]},
        "repo": {"type": "string"}, "number": {"type": "integer"}, "url": {"type": "string"},
    }),
}
