"""Whether a question's distinctive terms occur in the book at all: a refusal signal beside the cosine threshold.

An in-domain question the book does not answer still finds passages on the same topic above any cosine
threshold ("How do I mock requests with XCTest?" in a Swift book that never names XCTest). A term the book never
uses is a strong sign: such a question is refused, saying what the book lacks.

Distinctive terms are identifiers (`URLSession`, `ros2_control`, `16GB`) and capitalised words inside the
question (a run of them is one name: `Core Data`); English stop words and one- or two-letter words never are.
With REFUSAL_TERM_CHECK=words (the default) so are plain lower-case words that general English barely knows
(`RARE_BELOW`, by the `wordfreq` package's list: library names and jargon, "serde", "espalier") and that the book
uses in no close form. An English word the book lacks is not enough, however uncommon ("lopsided", "churchgoers",
"cider"): a student paraphrasing the book uses words it does not, while the answer is there. An uncommon one
(`UNCOMMON_BELOW`) counts only when no passage has a sentence near the question either. Nor are close forms of the
book's own words ("leaky" for "leak", "thunderstorm", "normalisation" for "normalization") or inflected verbs and
adjectives ("thawed", "weakest"). A missing rare word does not refuse when a passage matches the question strongly
(`STRONG_MATCH`); a missing name always does, except a single one in a book told in the first person when the
question names no one the book does (most likely the narrator's own name), the plural of an acronym the book has
in the singular ("URLs"), a language or tool the student compares with ("coming from Java", "in Python I'd",
"C-style"), and the name of whose view is asked ("according to Veblen", "does Veblen think": the author, whose
name the chapters never print); nor do the student's own names in their code. Measured with
`python -m bench.refusal_signals --books all` (docs/retrieval.md).

A term occurs when each of its indexed terms (`chains.sparse.terms`) is in the book's term set; a name of several
words must occur as that phrase. The vocabulary is read from the stored chunks in a background thread and read
again when the point count changes; until the first read is done the check is skipped.
"""

from __future__ import annotations

import bisect
import functools
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from qdrant_client import QdrantClient

from chains.attribution import without_view_holder
from chains.sparse import terms
from chains.vectorstore import CONTENT_KEY, METADATA_KEY, VISIBLE, BookVersion, book_version

logger = logging.getLogger(__name__)

_STOP_TEXT = """a about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some such than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when where
which while who whom why will with would you your yours yourself yourselves ok okay"""
STOP_WORDS = frozenset(_STOP_TEXT.split())  # shared with the term-check prototypes (bench/prototypes.py)
WORD = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:[.\-+#'][A-Za-z0-9_]+)*")
# A contraction's ending: "didn't" is "did", not "didn" (which a book of "did not" never uses).
_CONTRACTION = re.compile(r"(?:n't|'(?:s|t|re|ve|ll|d|m))$")
_IDENTIFIER = re.compile(r"[a-z][A-Z]|[A-Z]{2,}[a-z]|[0-9_.]")
_ACRONYM = re.compile(r"^[A-Z]{3,}$")
_ACRONYM_PLURAL = re.compile(r"[A-Z]{2,}s")
# How a student names a language or tool to compare with: it is their reference point, not the question's subject.
_COMPARISON_FRAMES = (
    r"\b(?:coming|switching|moving|migrating) (?:over )?from {name}\b",
    r"\b(?:in|with) {name},? (?:i|we|you)(?:'d|'m| would| usually| normally| always| can| just)\b",
    r"\b{name}-(?:style|like)\b",
    r"\b(?:unlike|compared (?:to|with)) {name}\b",
)
# A product's name in CamelCase, letters only ("GitHub", "PyTorch", "JavaScript"): part of a name run.
_CAMEL_NAME = re.compile(r"[A-Z][a-z]+(?:[A-Z][a-z]*)+")
# What a library is called in a question, after its name ("the tracing crate", "the requests library").
_PACKAGE_WORDS = frozenset({"crate", "crates", "library", "package", "module", "framework", "plugin", "gem"})
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_PROGRAM = re.compile(r"[\s;={}()|]")
_LOWER_IDENTIFIER = re.compile(r"(?<![A-Za-z0-9_@])[a-z_][A-Za-z0-9_]*(?:\.[a-z_][A-Za-z0-9_]*)*[?!]?")
_SCROLL_PAGE = 1000

# The lower-case word check: a plain word the book never uses, in no close form, and rarer in general English than
# this (Zipf scale, log10 of occurrences per billion words, wordfreq's large list: "serde" 0, "espalier" 1.5,
# "flexbox" 1.6, "simd" 1.9 below; "churchgoers" 2.2, "kubernetes" 2.3, "lopsided" 2.9, "cider" 3.5 above). 4.0
# on the small list, chosen on seven books' sets, refused 34-41 % of the answerable questions of two books it had
# not seen, every one for a plain English word of a paraphrase (docs/retrieval.md, "Two books no default
# was chosen on"); below 2 only words a general reader never meets are left.
RARE_BELOW = 2.0
# An English word that is merely uncommon ("cider" 3.5, "clap" 3.5, "antibiotics" 3.7; not "sunshine" 4.2) counts
# only when the passages are weak too: none has a sentence reaching the cosine gate's own sentence cut
# (RETRIEVAL_SENTENCE_THRESHOLD, which the service passes; a model without one, at 1.0, has no such tier). On nine
# books it refused no answerable question the rarest-words rule alone did not, and took back six of the 16
# in-domain refusals that rule lost (docs/retrieval.md).
UNCOMMON_BELOW = 4.0
# A missing rare word does not refuse a question whose best passage is at least this close (dense cosine): the
# passage answers it in other words. Names and identifiers refuse whatever the cosine. The service passes the
# model's own cut (REFUSAL_STRONG_MATCH); this is all-MiniLM-L6-v2's.
STRONG_MATCH = 0.60
# The same for the passages' best sentence (REFUSAL_STRONG_SENTENCE): "forbids" on the Rust book, whose unsafe-block
# passage has a sentence at 0.76; no in-domain unanswerable question's best sentence reached 0.63 on seven books.
STRONG_SENTENCE = 0.70
# An upper-case word is emphasis ("the BEST time", "NEVER") only when it is this common in English (Zipf): the
# model's vocabulary also holds acronyms, which are names ("UNESCO" 3.6, "NASA" 4.2, "DNA" 4.5, "HTTP" 4.8).
EMPHASIS_ABOVE = 5.0
_PLAIN_WORD = re.compile(r"[a-z]+")
# A book counts as told in the first person when "me", "my", "mine" and "myself" make up this share of its words
# (not "I", which is also code's loop variable): about 1 % in Walden, under 0.1 % in the project's textbooks,
# which say "we" and "you".
FIRST_PERSON_SHARE = 0.003
_FIRST_PERSON = frozenset({"me", "my", "mine", "myself"})
_VERB_OR_ADJECTIVE = re.compile(r"(?:ed|ing|est)$")
# Endings whose removal leaves a word of the same family ("hopelessness" -> "hopeless" -> "hope").
_DERIVATIONS = (
    "ness", "less", "ful", "ly", "y", "er", "or", "ation", "ment", "ity", "al", "ic", "ist", "ism",
    "able", "ible", "ive", "ous", "ise", "ize",
)  # fmt: skip
_INFLECTIONS = (
    ("ies", "y"), ("es", ""), ("s", ""), ("ied", "y"), ("ed", ""), ("ed", "e"), ("ing", ""), ("ing", "e"),
    ("er", ""), ("est", ""), ("ier", "y"), ("iest", "y"),
)  # fmt: skip
_NOUN_PHRASE_STARTS = frozenset(
    ("a", "an", "the", "my", "your", "his", "her", "our", "their", "its", "this", "that", "these", "those", "some",
     "any", "from", "of", "for", "with", "about", "against", "on", "in", "into", "by")
)  # fmt: skip
_PREFIXES = (
    "re", "un", "in", "im", "pre", "over", "under", "out", "non", "mis", "dis", "co", "sub", "self", "down", "up",
)  # fmt: skip
_SPELLINGS = (  # British to American, the spelling most technical books use
    ("isation", "ization"), ("ise", "ize"), ("our", "or"), ("ll", "l"), ("tre", "ter"), ("yse", "yze"),
    ("ogue", "og"), ("ence", "ense"),
)  # fmt: skip


@functools.cache
def english_words() -> frozenset[str]:
    """Whole words of the packaged embedding model's WordPiece vocabulary (about 20,000 common English words):
    an upper-case word that is one of them is emphasis ("the BEST time"), not an acronym."""
    from chains.embeddings import packaged_model_path

    try:
        vocab = packaged_model_path("all-MiniLM-L6-v2") / "vocab.txt"
        lines = vocab.read_text(encoding="utf-8").splitlines()
    except Exception:  # no packaged model here: every acronym counts
        return frozenset()
    return frozenset(line for line in lines if line.isalpha())


def is_identifier(word: str) -> bool:
    if _IDENTIFIER.search(word):
        return True
    lowered = word.lower()
    return bool(_ACRONYM.match(word)) and (lowered not in english_words() or word_frequency(lowered) < EMPHASIS_ABOVE)


def question_words(question: str) -> list[str]:
    """The question's words as written, without a contraction's ending ("didn't" -> "did", "Darwin's" -> "Darwin")."""
    return [word for word, _ in _spaced_words(question)]


def _spaced_words(question: str) -> list[tuple[str, bool]]:
    """`question_words`, each with whether a single space joins it to the word before (a name runs on only so:
    "Core Data", not "Scala 2 ... List(")."""
    found = []
    end = None
    for match in WORD.finditer(question.replace("\u2019", "'")):
        found.append((_CONTRACTION.sub("", match.group(0)), end is not None and question[end : match.start()] == " "))
        end = match.end()
    return found


def distinctive_terms(question: str) -> list[str]:
    """The question's identifiers and names: a run of capitalised words as one name, a product's CamelCase name
    among them ("GitHub Actions"), and the lower-case word a student puts before "crate" or "library" ("the
    tracing crate")."""
    found: list[str] = []
    name: list[str] = []
    spaced = _spaced_words(question)
    words = [word for word, _ in spaced]
    for position, (word, joined) in enumerate(spaced):
        lowered = word.lower()
        capitalised = word[0].isupper() and position > 0 and lowered not in STOP_WORDS and len(word) > 1
        if name and not joined:
            found.append(" ".join(name))
            name = []
        if capitalised and not _ACRONYM.match(word) and (not is_identifier(word) or _CAMEL_NAME.fullmatch(word)):
            name.append(word)
            continue
        if name:
            found.append(" ".join(name))
            name = []
        if lowered in STOP_WORDS or len(word) < 3:
            continue
        if is_identifier(word):
            found.append(word)
        elif lowered in _PACKAGE_WORDS and position > 0 and _is_package_name(words[position - 1]):
            found.append(words[position - 1])
    if name:
        found.append(" ".join(name))
    return found


def without_own_code(question: str) -> str:
    """The question without the names that begin in lower case inside a piece of code the student wrote (a backtick
    span with spaces or statement punctuation: `begin; a = 1; do_risky; end`, `List(isLessThan)`): their own
    variables and methods, which no book uses. A lone name in backticks (`URLSession`) is what they look up, and
    stays, as do the capitalised names of types and modules inside their code."""

    def names_only(span: re.Match[str]) -> str:
        code = span.group(1)
        return span.group(0) if not _PROGRAM.search(code) else f" {_LOWER_IDENTIFIER.sub(' ', code)} "

    return _CODE_SPAN.sub(names_only, question)


def is_compared_with(question: str, name: str) -> bool:
    """Whether the question names `name` as what the student knows already, not what they ask about: "coming from
    Java", "in Python I'd write", "C-style", "unlike Go"."""
    if re.fullmatch(r".+-(?:style|like)", name, re.IGNORECASE):
        return True  # "C-style", as one word
    quoted = re.escape(name)
    return any(re.search(frame.format(name=quoted), question, re.IGNORECASE) for frame in _COMPARISON_FRAMES)


def _is_package_name(word: str) -> bool:
    """A lower-case word that can be a library's name: not a stop word, nor one common in English ("two", "new",
    "standard", "main")."""
    return (
        bool(_PLAIN_WORD.fullmatch(word)) and len(word) >= 3 and word not in STOP_WORDS and word_frequency(word) < 5.0
    )


def plain_words(question: str) -> list[tuple[int, str]]:
    """The question's lower-case content words (position, word): no stop words, names, identifiers, hyphenated
    coinages ("tidy-up", "food-wise") or inflected verb and adjective forms ("thawed", "messing", "weakest"),
    which a paraphrase swaps far more often than the thing it asks about."""
    found = []
    words = question_words(question)
    for position, word in enumerate(words):
        if position == 0 and word[:1].isupper() and word[1:].islower():
            word = word.lower()  # the sentence's capital: "Cider from my own apples?"
        if not _PLAIN_WORD.fullmatch(word) or len(word) < 3 or word in STOP_WORDS:
            continue  # capitalised, an identifier, hyphenated, or a stop word
        if is_inflected(word):
            continue
        found.append((position, word))
    return found


def is_inflected(word: str) -> bool:
    """An -ed, -ing or -est form of an English word ("thawed", "messing", "weakest", "tracing"), not a name that
    merely ends so ("reqwest", "embed"): its base, as written, with an "e" or without a doubled last letter, is
    itself common enough in English (Zipf 3 or more)."""
    ending = _VERB_OR_ADJECTIVE.search(word)
    if ending is None or ending.start() < 3:
        return False
    stem = word[: ending.start()]
    bases = {stem, stem + "e", stem[:-1] if len(stem) > 3 and stem[-1] == stem[-2] else stem}
    return any(word_frequency(base) >= 3.0 for base in bases)


@functools.cache
def word_frequency(word: str) -> float:
    """The word's frequency in general English on the Zipf scale (0 when rarer than once per hundred million words),
    from the `wordfreq` package's large English list (installed with it: nothing is downloaded)."""
    from wordfreq import zipf_frequency

    return float(zipf_frequency(word, "en", wordlist="large"))


def close_forms(word: str) -> set[str]:
    """The word, its inflections' bases ("aphids" -> "aphid"), family members without a derivational ending
    ("leaky" -> "leak") and its American spelling ("normalisation" -> "normalization")."""
    forms = {word}
    if word.endswith("s") and len(word) == 3:
        forms.add(word[:-1])  # the plural of a two-letter word: "fns" -> "fn"
    for suffix, replacement in _INFLECTIONS:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[: -len(suffix)] + replacement
            forms.add(base)
            if not replacement and len(base) > 3 and base[-1] == base[-2]:
                forms.add(base[:-1])  # "stopped" -> "stopp" -> "stop"
    for form in list(forms):
        for british, american in _SPELLINGS:
            if form.endswith(british):
                forms.add(form[: -len(british)] + american)
    for form in list(forms):
        for suffix in _DERIVATIONS:
            if form.endswith(suffix) and len(form) - len(suffix) >= 4:
                base = form[: -len(suffix)]
                forms.update((base, base + "e"))
    return forms


@dataclass(frozen=True)
class Vocabulary:
    """What the book's chunks say, for presence checks: its indexed terms and their running text, and its words as
    written (sorted, for close forms by prefix)."""

    terms: frozenset[str]
    text: str  # every chunk's indexed terms in order, space-separated: phrases are looked up in it
    words: tuple[str, ...] = field(default=(), repr=False)
    # Told in the first person ("I lived alone, in the woods"): the narrator is rarely named in such a book, while
    # students name them ("Why did Thoreau go to the woods?"), so a single missing name is taken to be theirs.
    first_person: bool = False

    @classmethod
    def of(cls, texts: Iterable[str]) -> Vocabulary:
        texts = list(texts)
        streams = [" ".join(terms(text)) for text in texts]
        tokens = [w for text in texts for w in _PLAIN_WORD.findall(text.lower())]
        narrator = sum(1 for w in tokens if w in _FIRST_PERSON)
        return cls(
            frozenset(t for stream in streams for t in stream.split()),
            " \n ".join(streams),
            tuple(sorted(set(tokens))),
            first_person=narrator >= FIRST_PERSON_SHARE * max(1, len(tokens)),
        )

    def uses(self, word: str) -> bool:
        """Whether the book uses a lower-case word in some close form: itself or a form of `close_forms`, after a
        prefix ("reuse" -> "use", "redo" -> "do", "incompatible" -> "compatible"), a book word sharing all but its
        last three letters ("simulator" -> "simulation"), or two book words joined ("thunderstorm")."""
        if any(self._has_word(form) for form in close_forms(word)):
            return True
        for prefix in _PREFIXES:
            if word.startswith(prefix) and len(word) - len(prefix) >= 2 and self._has_word(word[len(prefix) :]):
                return True
        if len(word) >= 6 and self._has_prefix(word[: max(5, len(word) - 3)]):
            return True
        return any(
            self._has_word(word[:i]) and self._has_word(word[i:])
            for i in range(3, len(word) - 2)
            if word[:i] not in STOP_WORDS and word[i:] not in STOP_WORDS
        )

    def _has_word(self, word: str) -> bool:
        return word in self.terms or self._is_word(word)

    def _is_word(self, word: str) -> bool:
        i = bisect.bisect_left(self.words, word)
        return i < len(self.words) and self.words[i] == word

    def _has_prefix(self, prefix: str) -> bool:
        i = bisect.bisect_left(self.words, prefix)
        return i < len(self.words) and self.words[i].startswith(prefix)

    def missing_words(self, question: str, rare_below: float = RARE_BELOW) -> list[str]:
        """The question's plain lower-case words that the book never uses in any close form and that are rare in
        general English (`RARE_BELOW`): "espalier", "cider", "blight"; a run of them is one phrase ("drip
        irrigation"), and a missing word is named with the content word just before it when that one follows a
        preposition or a determiner ("from fire blight" -> "fire blight"). The author's name in lower case, as
        whose view is asked ("what does veblen think"), is none of them."""
        question = without_view_holder(question, lower_case=True)
        words = [m.group(0) for m in WORD.finditer(question.replace("\u2019", "'"))]
        absent = [
            position
            for position, word in plain_words(question)
            if word_frequency(word) < rare_below and not self.uses(word)
        ]
        phrases: list[list[int]] = []
        for position in absent:
            if phrases and phrases[-1][-1] == position - 1:
                phrases[-1].append(position)
            else:
                phrases.append([position])
        named = []
        for phrase in phrases:
            before = phrase[0] - 1
            if (
                before >= 1
                and _PLAIN_WORD.fullmatch(words[before])
                and words[before] not in STOP_WORDS
                and words[before - 1].lower() in _NOUN_PHRASE_STARTS
            ):
                phrase.insert(0, before)
            named.append(" ".join(words[i] for i in phrase))
        return named

    def has(self, term: str) -> bool:
        indexed = terms(term)
        if not indexed:
            return True  # nothing the book could be checked for
        if _ACRONYM_PLURAL.fullmatch(term) and self.has(term[:-1]):
            return True  # "URLs" in a book that says "URL"
        if " " in term.strip():
            return f" {' '.join(indexed)} " in f" {self.text} "
        if "." in term:  # a member access: "v.iter" is the student's own `v` and the book's `iter`
            indexed = [t for t in indexed if "." not in t] or indexed
        return all(t in self.terms for t in indexed)

    def _missing_names(self, question: str, asked: str) -> list[str]:
        return [
            term
            for term in distinctive_terms(asked)
            if not self.has(term) and not is_compared_with(question, term) and not self._own_member(term, question)
        ]

    def _names_someone(self, question: str) -> bool:
        """Whether the question names, with a capital, someone or something the book names too."""
        return any(not is_identifier(term) and self.has(term) for term in distinctive_terms(question))

    def _own_member(self, term: str, question: str) -> bool:
        """A member access whose parts the book lacks are words the question also uses on their own ("if secret is
        private, can I call other.secret"): the student's own names, left to the plain-word check."""
        if "." not in term:
            return False
        lacking = [t for t in terms(term) if "." not in t and t not in self.terms]
        alone = set(terms(" ".join(word for word in question_words(question) if "." not in word)))
        return bool(lacking) and all(t in alone for t in lacking)

    def missing(
        self,
        question: str,
        words: bool = True,
        best_cosine: float = 0.0,
        strong_match: float = STRONG_MATCH,
        best_sentence: float = 0.0,
        strong_sentence: float = STRONG_SENTENCE,
        weak_sentence: float = 0.0,
    ) -> list[str]:
        """The question's distinctive terms the book never uses: names and identifiers, and with `words` rare
        lower-case words (`missing_words`) unless the best passage's cosine reaches `strong_match` or its best
        sentence's `strong_sentence` (a passage that close answers it in other words: "bosses" in Walden, whose
        ice-cutters' passage scores 0.63). When no passage's best sentence reaches `weak_sentence` either (the
        service passes RETRIEVAL_SENTENCE_THRESHOLD; 0, the default, or 1.0 leave this out), an uncommon English
        word counts too (`UNCOMMON_BELOW`): nothing in the passages comes near the question."""
        asked = without_own_code(question)
        asked_of = without_view_holder(asked)
        names = self._missing_names(question, asked_of)
        # The author's (or narrator's) name is taken for granted once: named as whose view is asked, or as the one
        # name missing from a book told in the first person, unless the question names someone the book does
        # ("Did Darwin use Gregor Mendel's experiments?": the narrator is named already); a second missing name
        # still refuses.
        named_author = len(names) < len(self._missing_names(question, asked))
        if (
            self.first_person
            and not named_author
            and len(names) == 1
            and not is_identifier(names[0])
            and not self._names_someone(asked_of)
        ):
            names = []
        if not words or best_cosine >= strong_match or best_sentence >= strong_sentence:
            return names
        weak = 0.0 < weak_sentence < 1.0 and best_sentence < weak_sentence
        cut = UNCOMMON_BELOW if weak else RARE_BELOW
        return names + self.missing_words(question, cut)


_FORGOTTEN: BookVersion = (-1, 0)  # matches no stored book: read again


class BookVocabulary:
    """The collection's vocabulary, read in a background thread and again whenever the stored book changes
    (`book_version`)."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self._lock = threading.Lock()
        self._ready: tuple[BookVersion, Vocabulary] | None = None
        self._reading: BookVersion | None = None

    def current(self, client: QdrantClient) -> Vocabulary | None:
        """The vocabulary of the book as stored now, or None while it is being read (a read starts when the
        stored book has changed)."""
        try:
            version = book_version(client, self.collection)
        except Exception as exc:  # the retrieval itself reports a store that is down
            logger.debug("book vocabulary: cannot read the book's version: %s", exc)
            return self._ready[1] if self._ready else None
        with self._lock:
            ready = self._ready
            stale = ready is None or ready[0] != version
            if stale and self._reading != version:
                self._reading = version
                threading.Thread(target=self._read, args=(client, version), name="book-vocabulary", daemon=True).start()
        # A stale vocabulary may lack a chapter just added: no check until the new one is read.
        return None if ready is None or stale else ready[1]

    def forget(self) -> None:
        """Read again on the next use: an ingest in this process has finished, and a chapter replaced by one of
        the same number of chunks leaves the point count as it was. The check is skipped until the new read."""
        with self._lock:
            if self._ready is not None:
                self._ready = (_FORGOTTEN, self._ready[1])

    def read_now(self, client: QdrantClient) -> Vocabulary:
        """Read it in this thread (start-up warm-up, tests)."""
        self._read(client, book_version(client, self.collection))
        assert self._ready is not None
        return self._ready[1]

    def _read(self, client: QdrantClient, version: BookVersion) -> None:
        try:
            vocabulary = Vocabulary.of(stored_texts(client, self.collection))
            word_frequency("book")  # load the word list here, not in the first question's answer (~0.15 s)
        except Exception as exc:
            logger.warning("could not read the book's vocabulary (the term check is off until it can): %s", exc)
            with self._lock:
                self._reading = None
            return
        with self._lock:
            self._ready = (version, vocabulary)
            if self._reading == version:
                self._reading = None


def stored_texts(client: QdrantClient, collection: str) -> list[str]:
    """Every visible chunk's text, and once each the headings and titles over them: a word the book uses only in
    a heading ("## The drip logger") is a word of the book."""
    texts: list[str] = []
    headings: dict[str, None] = {}
    offset = None
    while True:
        records, offset = client.scroll(
            collection,
            scroll_filter=VISIBLE,
            limit=_SCROLL_PAGE,
            offset=offset,
            with_payload=[CONTENT_KEY, METADATA_KEY],
            with_vectors=False,
        )
        for record in records:
            payload = record.payload or {}
            texts.append(str(payload.get(CONTENT_KEY, "")))
            headings.update(dict.fromkeys(heading_lines(payload.get(METADATA_KEY))))
        if offset is None:
            return texts + list(headings)


def heading_lines(metadata: object) -> list[str]:
    """A chunk's heading path, chapter and title, each as its own line of text."""
    if not isinstance(metadata, dict):
        return []
    path = metadata.get("heading_path")
    lines = [str(part) for part in path] if isinstance(path, list) else []
    return lines + [str(metadata[key]) for key in ("chapter", "title") if metadata.get(key)]
