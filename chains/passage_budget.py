"""How much of each passage the chat model reads (CHAT_PASSAGE_CHARS): all of them when they fit, else an equal
share each, cut around the chunk each passage was found by.

Joined neighbours and nearby passages make one answer's passages long (docs/retrieval.md), and a model served with
a small context window truncates a longer prompt, often silently and from the start, where the rules are. A budget
keeps the prompt inside the window with every numbered passage still in it: the short passages stay whole and the
long ones (joined ones) share what is left, each keeping the text around its own chunk. The reader's sources keep
their whole text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ELLIPSIS = "…"
_SPACE = re.compile(r"\s")


def passage_rooms(lengths: Sequence[int], budget: int) -> list[int]:
    """The characters of each passage that fit in `budget` (0: no limit): every passage whole when they all fit;
    else an equal share each, a passage shorter than its share whole and what it leaves to the longer ones."""
    if budget <= 0 or sum(lengths) <= budget:
        return list(lengths)
    rooms = [0] * len(lengths)
    left = budget
    by_length = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for placed, i in enumerate(by_length):
        rooms[i] = min(lengths[i], left // (len(lengths) - placed))
        left -= rooms[i]
    return rooms


def excerpt(text: str, room: int, focus: tuple[int, int] | None = None) -> str:
    """At most `room` characters of `text` (plus an ellipsis at each cut end), centred on the span `focus` (the
    chunk the passage was found by; its start when None), cut between words."""
    if len(text) <= room:
        return text
    if room <= 0:
        return ""
    first, last = focus if focus is not None else (0, 0)
    first, last = max(0, min(first, len(text))), max(0, min(last, len(text)))
    start = max(0, first - max(0, room - (last - first)) // 2) if last - first < room else first
    start = min(start, len(text) - room)
    end = start + room
    if start > 0 and not text[start - 1].isspace() and (space := _SPACE.search(text, start, end)) is not None:
        start = space.end()  # begin at a word
    if end < len(text) and not text[end].isspace():  # end at a word
        spaces = [m.start() for m in _SPACE.finditer(text, start, end)]
        end = spaces[-1] if spaces else end
    piece = text[start:end].strip()
    return (ELLIPSIS + " " if start > 0 else "") + piece + (" " + ELLIPSIS if end < len(text) else "")
