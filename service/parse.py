"""Robust parsing of a fan-out completion into at most K distinct sub-queries; never raises.

Takes the JSON list inside <queries>...</queries> (or the first [...] when the tags are missing),
tolerates a think block or stray text around it, strips, dedupes case- and space-insensitively,
drops sub-queries equal to the broad query and caps at K. Anything else is malformed: no queries and
`ok=False`, which the rewards turn into a format penalty.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable

_TAGGED = re.compile(r"<queries>(.*?)(?:</queries>|$)", re.S)
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S)
_TRAILING_COMMA = re.compile(r",\s*\]$")


@dataclass(frozen=True)
class Fanout:
    queries: tuple[str, ...]  # distinct sub-queries, at most K
    ok: bool  # a JSON list holding at least one string was found


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def _json_list(text: str) -> list | None:
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        value = json.loads(_TRAILING_COMMA.sub("]", text[start : end + 1]))
    except (json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def parse_fanout(text: str, broad_query: str, k: int = 10, echo: Iterable[str] = ()) -> Fanout:
    """Completion text (with any prefill prepended) -> Fanout. Example:
    parse_fanout('<queries>["a hat", "A  Hat", "x"]</queries>', "x") == Fanout(("a hat",), True)

    Sub-queries equal to the broad query or to any `echo` string (the prompt's worked example) are
    dropped: repeating the prompt is not a fan-out. A list of nothing but echoes is malformed.
    """
    body = _THINK.sub("", text if isinstance(text, str) else "")
    tagged = _TAGGED.search(body)
    items = _json_list(tagged.group(1)) if tagged else None
    if items is None:
        items = _json_list(body)
    if not items or not any(isinstance(item, str) for item in items):
        return Fanout((), False)
    banned = set(map(_key, echo))
    seen, out, copied = {_key(broad_query)}, [], False
    for item in items:
        if not isinstance(item, str):
            continue
        query = " ".join(item.split())
        if _key(query) in banned:
            copied = True
        elif query and _key(query) not in seen:
            seen.add(_key(query))
            out.append(query)
    return Fanout(tuple(out[:k]), bool(out) or not copied)
