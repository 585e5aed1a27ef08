"""Which `[n]` markers of an answer name a real source, and which name none.

A model may cite `[7]` when five passages were shown, or cite in a run like `[1, 3]` or `[2][4]`; every number is
checked against the passages the answer was given (numbered from 1).
"""

from __future__ import annotations

import re

_MARKER = re.compile(r"\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\]")
_NUMBER = re.compile(r"\d{1,3}")


def cited_markers(answer: str) -> list[int]:
    """Every number cited in square brackets, in order of first appearance."""
    seen: dict[int, None] = {}
    for marker in _MARKER.finditer(answer):
        for number in _NUMBER.findall(marker.group(1)):
            seen.setdefault(int(number), None)
    return list(seen)


def check_citations(answer: str, source_count: int) -> tuple[list[int], list[int]]:
    """(the cited numbers that name a source, the cited numbers that name none)."""
    valid: list[int] = []
    invalid: list[int] = []
    for number in cited_markers(answer):
        (valid if 1 <= number <= source_count else invalid).append(number)
    return valid, invalid
