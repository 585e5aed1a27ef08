"""Whose view a question asks about: the name in "according to Mill", "does Veblen think", "in Mill's view",
"Darwin's argument".

That name is the author's, as a rule, and the author's own text never writes it: it is printed on the title page,
which a book's chapters leave out, or only in an editor's introduction. So it must neither rank the passages
that name the person first (the sparse query) nor count as a term the book lacks (the term check).

Two sets of frames, one shape: the sparse query leaves out the name before any verb a student uses for a view
(`without_attribution`); the term check only before verbs of a stated view (`without_view_holder`), since a tool
"supports", "uses" or "allows" things too ("Does Kubernetes support rolling updates?" is about Kubernetes). Only a
capitalised name counts: a lower-case word after "does" is the question's subject ("does memory leak").
"""

from __future__ import annotations

import re

_CAPITALISED = r"(?-i:[A-Z][a-z]+)"  # case-sensitive inside the frames' case-insensitive patterns
# "Mill", "Thorstein Veblen", "John Stuart Mill", "Professor Veblen", "Mr. Darwin"
_FULL_NAME = rf"(?:(?-i:Mr|Mrs|Ms|Dr|Prof|St)\. )?{_CAPITALISED}(?: {_CAPITALISED}){{0,2}}"
# What a person does with a view: think, say, argue, rank, answer ...
_STATED = (
    "think|thinks|say|says|believe|believes|argue|argues|mean|means|feel|claim|claims|consider|mention|propose|"
    "suggest|insist|regard|describe|explain|admit|deny|conclude|agree|disagree|rank|answer|reply|make of|use as|"
    "give as|cite|quote|blame|criticise|criticize|praise|mock|attack|dismiss"
)
# ... and what a student's question also says of them, and of a tool ("does Docker use", "would Rust allow").
_OPINION_VERBS = (
    f"{_STATED}|make|hold|see|buy|use|bring|want|accept|reject|support|oppose|defend|worry|compare|call|treat|"
    "count|build|building|know|favour|favor|like|trust|fear|hope|expect|allow|approve|value|view|prefer|imagine|"
    "assume|predict"
)
_VIEW_NOUNS = (
    "view|views|position|opinion|principle|argument|arguments|claim|case|point|answer|reason|idea|ideas|objection|"
    "example|essay|book|problem|complaint|criticism|take"
)


def _frames(verbs: str, full_name: str = _FULL_NAME) -> tuple[tuple[re.Pattern[str], str], ...]:
    name = rf"{full_name}(?:['\u2019]s)?"
    return tuple(
        (re.compile(pattern, re.IGNORECASE), replacement)
        for pattern, replacement in (
            (rf"\b(according to|per) {name}(?=\W|$)", r"\1"),
            (rf"\bin {name} (view|opinion|words|eyes|mind|account)\b", r"in the \1"),
            (rf"\b(does|did|do|would|will|could|can|is|was|has|had) {name} (?=(?:{verbs})\b)", r"\1 he "),
            (rf"\b{full_name}['\u2019]s ({_VIEW_NOUNS})\b", r"his \1"),
        )
    )


_ATTRIBUTION_FRAMES = _frames(_OPINION_VERBS)
_VIEW_HOLDER_FRAMES = _frames(_STATED)
# For the plain-word check: a lower-case name in those frames ("what does veblen think") is the author's too.
_LOWER_CASE_HOLDER_FRAMES = _frames(_STATED, r"(?-i:[a-z]+)")


def _without(question: str, frames: tuple[tuple[re.Pattern[str], str], ...]) -> str:
    for frame, replacement in frames:
        question = frame.sub(replacement, question)
    return question


def without_attribution(question: str) -> str:
    """The question for the sparse query: without the name in any frame that says whose view is asked. The dense
    query keeps the whole question (docs/retrieval.md, "Whose view is asked")."""
    return _without(question, _ATTRIBUTION_FRAMES)


def without_view_holder(question: str, lower_case: bool = False) -> str:
    """The question for the term check: without the name of whose stated view it asks ("according to Veblen",
    "does Veblen think", "Veblen's problem with"); a name asked about stays ("Did Veblen agree with Keynes?"
    keeps Keynes; docs/retrieval.md, "Two more books no default was chosen on"). With `lower_case`, a name
    written in lower case too ("what does veblen think"), for the plain-word check: after a stated view's verb
    a lower-case word is a person, and a common word there is no rare word anyway."""
    return _without(question, _LOWER_CASE_HOLDER_FRAMES if lower_case else _VIEW_HOLDER_FRAMES)
