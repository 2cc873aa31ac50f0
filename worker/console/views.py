"""What the console's pages show, as plain data: pure functions over the status and counters.

Nothing here does I/O or reads a clock on its own (:class:`RateWindow` takes ``now``), so each
piece is tested on its own; :mod:`worker.console.pages` feeds them the service's numbers.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from markupsafe import Markup, escape

#: Sink states that need a person (the overview shows them red, with the loop's reason).
TROUBLE_STATES = ("failing", "misconfigured", "stopped")
#: Share of a byte budget past which the overview marks it (the "spool over 80 %" alert's line).
BUDGET_HIGH_SHARE = 0.8


@dataclass(frozen=True, slots=True)
class Budget:
    """Bytes in use against a configured maximum."""

    used: int
    max: int

    @property
    def share(self) -> float:
        return self.used / self.max if self.max > 0 else 0.0

    @property
    def high(self) -> bool:
        return self.share >= BUDGET_HIGH_SHARE


@dataclass(frozen=True, slots=True)
class SinkCounters:
    """A sink's counters since the process started (``memory_worker_sink_*_total``)."""

    upserts: float = 0.0
    deletes: float = 0.0
    errors: float = 0.0
    retries: float = 0.0


@dataclass(frozen=True, slots=True)
class SinkRow:
    """One sink on the overview: state, freshness, backlog, throughput, errors."""

    name: str
    state: str
    reason: str | None  # why it is failing or parked (secrets already masked)
    lag_s: float | None
    behind_entries: int
    prepared_records: int
    prepared_bytes: int
    last_error: str | None
    last_error_at: float | None
    vectors_missing: int
    counters: SinkCounters
    upserts_per_s: float | None  # over the rate window; None until two samples are far enough apart

    @property
    def trouble(self) -> bool:
        return self.state in TROUBLE_STATES

    @property
    def label(self) -> str:
        return "parked" if self.state == "misconfigured" else self.state


@dataclass(frozen=True, slots=True)
class Overview:
    """Everything the overview page (and its polled fragment) shows."""

    status: dict[str, Any]  # Service.public_status(): secrets masked
    sinks: list[SinkRow]
    spool: Budget
    prepared: Budget
    received: float  # documents, every collection, since the process started
    accepted: float
    as_of: float  # unix seconds


def sink_rows(sinks: Mapping[str, Mapping[str, Any]], counters: Mapping[str, SinkCounters],
              rates: Mapping[str, float | None]) -> list[SinkRow]:
    """``status["sinks"]`` (from ``Service.public_status``) joined with the counters and rates."""
    return [SinkRow(name=name, state=str(s.get("state", "unknown")), reason=s.get("reason"),
                    lag_s=s.get("lag_s"), behind_entries=int(s.get("behind_entries") or 0),
                    prepared_records=int(s.get("prepared_records") or 0),
                    prepared_bytes=int(s.get("prepared_bytes") or 0), last_error=s.get("last_error"),
                    last_error_at=s.get("last_error_at"),
                    vectors_missing=int(s.get("vectors_missing") or 0),
                    counters=counters.get(name, SinkCounters()), upserts_per_s=rates.get(name))
            for name, s in sinks.items()]


class RateWindow:
    """Per-second rates of monotonically growing totals, over the last ``window_s`` seconds.

    The overview samples the upsert counters each time it renders (every 2 s while a page is
    open); a rate needs two samples at least ``min_span_s`` apart, so it reads ``None`` on a
    fresh page (and for a counter that went down, until its older samples leave the window).
    Thread-safe: pages render in the thread pool.
    """

    def __init__(self, window_s: float = 60.0, min_span_s: float = 1.0) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        self._samples: deque[tuple[float, dict[str, float]]] = deque()
        self._lock = threading.Lock()

    def observe(self, now: float, totals: Mapping[str, float]) -> dict[str, float | None]:
        with self._lock:
            self._samples.append((now, dict(totals)))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
                self._samples.popleft()
            first_at, first = self._samples[0]
            span = now - first_at
            rates: dict[str, float | None] = {}
            for name, value in totals.items():
                start = first.get(name)
                if start is None or span < self.min_span_s or value < start:
                    rates[name] = None
                else:
                    rates[name] = (value - start) / span
            return rates


# -- highlighting ------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")
#: Words shorter than this are not highlighted ("a", "I" would mark half the page).
MIN_TERM_CHARS = 2


def query_terms(query: str) -> list[str]:
    """The query's whole words (case folded, each once, longest first so longer ones win)."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query):
        if len(word) >= MIN_TERM_CHARS:
            seen.setdefault(word.casefold(), None)
    return sorted(seen, key=len, reverse=True)


def highlight(text: str, terms: Iterable[str]) -> Markup:
    """``text`` escaped for HTML, each whole-word, case-insensitive match of ``terms`` in <mark>.

    Matches are found on the raw text and every piece (matched or not) is escaped before it is
    joined, so markup in a document can never get out, and a term can never match inside an
    entity the escaping made (``lt`` in ``&lt;``).
    """
    words = [t for t in terms if t]
    if not words:
        return escape(text)
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    out: list[str] = []
    last = 0
    for m in pattern.finditer(text):
        out.append(str(escape(text[last:m.start()])))
        out.append(f"<mark>{escape(m.group(0))}</mark>")
        last = m.end()
    out.append(str(escape(text[last:])))
    return Markup("".join(out))


def safe_link(url: str) -> str | None:
    """``url`` if it may be an ``href`` (http or https), else None: a document's ``url`` field is
    data from the source, and ``javascript:`` in it must stay text."""
    try:
        scheme = urlsplit(url.strip()).scheme.lower()
    except ValueError:
        return None
    return url.strip() if scheme in ("http", "https") else None


# -- formatting --------------------------------------------------------------------------------

def human_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def utc_time(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return datetime.fromtimestamp(float(seconds), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"
