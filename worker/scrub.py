"""Secrets out of text meant for people: ``/estuary/status``, the console, error reasons.

A vendor's error string can echo what it was sent (an API key in a URL, a bearer header in a
debug dump). Two passes, both always on: every secret the config holds is replaced verbatim,
then the secret detectors of :mod:`worker.privacy_detect` (API keys, tokens, JWTs, private keys,
credentials in URLs, ``password=…``) mask what the config does not know about. Personal data is
left alone here: this is for operators, and a status reason rarely carries any.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from worker.privacy import Masker, PrivacyPolicy

MASK = "***"
#: Shorter configured values are not replaced verbatim (``"a"`` would mask every a).
MIN_KNOWN_LENGTH = 6


class Scrubber:
    def __init__(self, known: Iterable[str] = ()) -> None:
        self._known = sorted({v for v in known if len(v) >= MIN_KNOWN_LENGTH}, key=len, reverse=True)
        self._masker = Masker(PrivacyPolicy(default_action="keep"))

    def text(self, text: str) -> str:
        for value in self._known:
            if value in text:
                text = text.replace(value, MASK)
        return self._masker.mask_text(text).text

    def tree(self, node: Any) -> Any:  # noqa: ANN401
        """``node`` with every string (keys kept) scrubbed; other values as they are."""
        if isinstance(node, str):
            return self.text(node)
        if isinstance(node, dict):
            return {k: self.tree(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [self.tree(v) for v in node]
        return node
