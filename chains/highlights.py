"""The sentences of a passage that best answer the question, as `[start, end]` character offsets into its text.

A reader checks a citation by its quote, not by a 256-token passage. Sentences are scored with the embedding model
already loaded (the question's vector against each sentence's) plus a small bonus for the question's own words, so
that a sentence naming the thing asked about wins a tie. No new model. The sentence vectors are those ingest stored
in the chunk's payload for re-scoring (`chains.sentence_rescore`, split by `split_sentences` too) when the passage
has them, else embedded for the answer, in one batch for all passages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

_SENTENCE_END = re.compile(
    r"(?<=[.!?…])[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9À-ÖØ-Þ])|\n\s*\n|\n(?=\s*(?:[-*+]|\d+[.)])\s)"
)
_WORD = re.compile(r"\w+", re.UNICODE)
_MIN_CHARS = 12
_MAX_SENTENCES_PER_PASSAGE = 40
# A passage whose sentence vectors ingest stored (a first passage joined with its whole section can hold several
# chunks' worth) is scored over this many: only the sentences at the seams of its chunks are embedded.
_MAX_SENTENCES_STORED = 240
# A long passage (one that joins neighbours, or nearby candidates of its chapter) may highlight one more sentence for
# every so many characters beyond its first two: it stands for several passages' worth of text.
_CHARS_PER_EXTRA_HIGHLIGHT = 2000
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "my",
        "of",
        "on",
        "or",
        "should",
        "so",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
    ]
)


@dataclass(frozen=True, slots=True)
class Sentence:
    start: int
    end: int
    text: str


def split_sentences(text: str, limit: int = _MAX_SENTENCES_PER_PASSAGE) -> list[Sentence]:
    """The passage's first `limit` sentences (and list items, paragraphs), with offsets; fragments too short to
    quote are kept joined to their neighbour."""
    sentences: list[Sentence] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        _append(sentences, text, start, match.start())
        start = match.end()
    _append(sentences, text, start, len(text))
    return sentences[:limit]


def _append(sentences: list[Sentence], text: str, start: int, end: int) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end <= start:
        return
    if sentences and (end - start < _MIN_CHARS or sentences[-1].end - sentences[-1].start < _MIN_CHARS):
        previous = sentences.pop()
        start = previous.start
    sentences.append(Sentence(start, end, text[start:end]))


def content_words(text: str) -> set[str]:
    return {w for w in (m.group(0).casefold() for m in _WORD.finditer(text)) if w not in STOPWORDS and len(w) > 1}


def lexical_overlap(question_words: set[str], sentence: str) -> float:
    """The share of the question's content words the sentence contains (prefix match, a crude stem)."""
    if not question_words:
        return 0.0
    words = content_words(sentence)
    hits = sum(1 for q in question_words if any(w.startswith(q[:5]) or q.startswith(w[:5]) for w in words))
    return hits / len(question_words)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def sentence_scores(
    question: str, question_vector: Sequence[float], sentences: Sequence[str], vectors: Sequence[Sequence[float]]
) -> list[float]:
    """Each sentence's support for the question: cosine similarity plus a bonus for shared content words."""
    words = content_words(question)
    return [
        cosine(question_vector, v) + 0.15 * lexical_overlap(words, s) for s, v in zip(sentences, vectors, strict=True)
    ]


def is_quotable(sentence: str) -> bool:
    """A sentence a reader can be shown as the quote: not a bare heading line (short, no closing punctuation)."""
    text = sentence.strip()
    return len(text.split()) >= 6 or text[-1:] in ".!?…:;)\"'”’"


def choose(scores: Sequence[float], best_overall: float, limit: int = 2, margin: float = 0.16) -> list[int]:
    """The indices of a passage's highlighted sentences: its best one, and a second close to it, each within
    `margin` of the best sentence of all passages, in text order."""
    if not scores:
        return []
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    top = scores[ranked[0]]
    chosen = [i for i in ranked[:limit] if scores[i] >= top - margin / 2 and scores[i] >= best_overall - margin]
    return sorted(chosen or [ranked[0]])


def highlight_passages(
    question: str,
    question_vector: Sequence[float],
    texts: Sequence[str],
    embed: Callable[[list[str]], list[list[float]]] | None,
    stored: Sequence[Mapping[str, Sequence[float]] | None] | None = None,
) -> list[list[tuple[int, int]]]:
    """For each passage, the `(start, end)` offsets of its best-answering sentences (two, and one more for every
    `_CHARS_PER_EXTRA_HIGHLIGHT` characters of a long passage, each close to the best: `choose`).

    `stored` holds, per passage, the sentence vectors ingest stored for its chunks (`chains.sentence_rescore`),
    keyed by sentence, or None: a sentence found there is not embedded again; the others are embedded in one
    batch (a passage joined with its neighbours can have a sentence cut otherwise at the seam)."""
    known_rows = stored or [None] * len(texts)
    split = [
        split_sentences(text, _MAX_SENTENCES_STORED if known else _MAX_SENTENCES_PER_PASSAGE)
        for text, known in zip(texts, known_rows, strict=True)
    ]
    flat = [s.text for sentences in split for s in sentences]
    if not flat:
        return [[] for _ in texts]
    if embed is None:  # lexical only: the question's words, no model call
        words = content_words(question)
        raw = [lexical_overlap(words, text) for text in flat]
    else:
        rows = [
            (known or {}).get(s.text) for known, sentences in zip(known_rows, split, strict=True) for s in sentences
        ]
        missing = [text for text, row in zip(flat, rows, strict=True) if row is None]
        fresh = iter(embed(missing) if missing else [])
        vectors = [row if row is not None else next(fresh) for row in rows]
        raw = sentence_scores(question, question_vector, flat, vectors)
    # A heading line often echoes the question best and answers nothing: it can only be chosen when nothing else is.
    scores = [score if is_quotable(text) else score - 1.0 for score, text in zip(raw, flat, strict=True)]
    best_overall = max(scores)
    spans: list[list[tuple[int, int]]] = []
    offset = 0
    for text, sentences in zip(texts, split, strict=True):
        own = scores[offset : offset + len(sentences)]
        offset += len(sentences)
        limit = 2 + len(text) // _CHARS_PER_EXTRA_HIGHLIGHT
        spans.append([(sentences[i].start, sentences[i].end) for i in choose(own, best_overall, limit)])
    return spans


def quote(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """The highlighted sentences of a passage as one quote, `…` where text was left out between them."""
    pieces = [" ".join(text[start:end].split()) for start, end in spans]
    return " … ".join(piece for piece in pieces if piece)


def quote_in_context(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """The highlighted sentences and the one after the last of them (an answer often follows its topic sentence:
    "Young trees need deep watering. Give each about twenty litres a week."), `…` where text was left out."""
    if not spans:
        return ""
    following = next((s for s in split_sentences(text) if s.start >= spans[-1][1]), None)
    if following is None:
        return quote(text, spans)
    return quote(text, [*spans[:-1], (spans[-1][0], following.end)])
