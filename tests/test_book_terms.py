"""The lower-case word check of chains.book_terms: a word general English barely knows that the book never uses, in
no close form, refuses the question naming it; an English word however uncommon, a close form of the book's own
words, a strong passage match, or a name the student only compares with does not.
Unit tests on vocabularies built from a few sentences, then the answer chain on a small built book (real ingest,
real embedding model, real embedded Qdrant, no chat model)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from chains.answer import build_answer_chain
from chains.book_terms import (
    RARE_BELOW,
    STRONG_MATCH,
    STRONG_SENTENCE,
    BookVocabulary,
    Vocabulary,
    distinctive_terms,
    plain_words,
    word_frequency,
)
from chains.embeddings import LocalEmbeddings
from chains.retrieval import BookRetriever
from chains.settings import Settings
from chains.vectorstore import build_vector_store
from tests.conftest import ingest_into

SAMPLE_BOOK = Path(__file__).resolve().parent.parent / "sample_book"
ORCHARD = Vocabulary.of(
    [
        "Protect young apple trees from frost with fleece, and from rabbits with a spiral guard.",
        "Apple scab shows as olive-brown spots on the leaves; rake up fallen leaves in autumn.",
        "A tree needs six hours of direct sun in summer. Water it when the probe reads below 35.",
        "The old hut had a leak, and in the storm the thunder shook it; he felt hopeless.",
        "Use the boards again. Batch normalization and the simulation run on the GPU.",
    ]
)


def test_a_rare_word_the_book_never_uses_is_missing_and_named_with_its_noun() -> None:
    assert ORCHARD.missing_words("How do I train an apple tree as an espalier against a wall?") == ["espalier"]
    assert ORCHARD.missing_words("Can I train my trees as espaliers?") == ["espaliers"]
    assert ORCHARD.missing("Should I set up an espalier frame for my Bramley trees?") == ["Bramley", "espalier"]
    assert ORCHARD.missing_words("Espalier or cordon: how?") == ["Espalier"]  # the sentence's capital
    assert ORCHARD.missing("How do I train an apple tree as an espalier?", words=False) == []
    # English words are not checked, however specific: the book may say it otherwise ("canker", "disease").
    assert ORCHARD.missing_words("How do I protect my apple trees from fire blight?") == []


def test_everyday_words_and_close_forms_of_the_books_words_are_not_missing() -> None:
    assert word_frequency("lopsided") >= RARE_BELOW > word_frequency("espalier")  # English vs barely known
    paraphrases = [
        "How much sunshine does a fruit tree need in summer?",  # everyday English: not checked
        "Who lived in the leaky hut where he waited out a thunderstorm?",  # "leak"; "thunder" + "storm"
        "The line saying most people live in silent hopelessness",  # "hopeless"
        "Whose boards did he reuse for the house?",  # "use"
        "Does batch normalisation act differently at test time?",  # the American spelling
        "How does the simulator decide how objects bounce?",  # "simulation": the same family
        "One corner stays white with frost long after the rest has thawed",  # an inflected verb: not checked
        "How do I protect the trees from rabbits and apple scab?",  # the book's own words
        # Paraphrases of answerable questions on two books no rule was tuned on, refused for these words before.
        "why does he say the ethics taught by the church is lopsided?",
        "does he think regular churchgoers really live by the Gospels?",
        "a guy got jail time for scribbling anti-religious words",
        "can I force a field instead of it silently ending up nil?",
        "why is adding at the end noticeably slower?",
        "would running 100k of them melt my machine?",
    ]
    for question in paraphrases:
        assert ORCHARD.missing_words(question) == [], question
    assert [word for _, word in plain_words("the tidy-up code the student thawed")] == ["code", "student"]


def test_an_uncommon_english_word_is_missing_only_when_no_passage_comes_near_the_question() -> None:
    question = "How do I press my apples to make cider at home?"
    assert ORCHARD.missing(question) == []  # English: left to the passages
    assert ORCHARD.missing(question, best_cosine=0.49, best_sentence=0.47, weak_sentence=0.46) == []
    assert ORCHARD.missing(question, best_cosine=0.49, best_sentence=0.45, weak_sentence=0.46) == ["cider"]
    # Everyday English never counts; a model without a calibrated sentence cut (1.0) has no such tier.
    assert ORCHARD.missing("How much sunshine do they need?", best_sentence=0.3, weak_sentence=0.46) == []
    assert ORCHARD.missing(question, best_cosine=0.49, best_sentence=0.45, weak_sentence=1.0) == []


def test_a_strong_passage_match_overrides_a_missing_word_but_not_a_missing_name() -> None:
    question = "Does an espalier keep pests off the trees in Kubernetes?"
    assert ORCHARD.missing(question) == ["Kubernetes", "espalier"]
    assert ORCHARD.missing(question, best_cosine=STRONG_MATCH) == ["Kubernetes"]
    # A sentence that close does too (on the Rust book an unsafe-block passage of 0.598 had a sentence at 0.76).
    assert ORCHARD.missing(question, best_cosine=0.5, best_sentence=STRONG_SENTENCE) == ["Kubernetes"]
    assert ORCHARD.missing(question, best_cosine=0.5, best_sentence=STRONG_SENTENCE - 0.01) == [
        "Kubernetes",
        "espalier",
    ]
    assert Settings(_env_file=None).refusal_strong_sentence == STRONG_SENTENCE  # type: ignore[call-arg]
    uncalibrated = Settings(_env_file=None, embedding_model="bge-small-en-v1.5")  # type: ignore[call-arg]
    assert uncalibrated.refusal_strong_sentence == 1.0  # off for a model it was not calibrated on


CODE_BOOK = Vocabulary.of(
    [
        "Calling `v1.iter()` makes an iterator; a `fn` item declares a function. You can do it twice.",
        "Iterator adapters are lazy: nothing happens until `collect` consumes them. They did not print.",
        "The two are compatible only when the types agree.",
    ]
)


def test_contractions_member_access_and_short_or_prefixed_forms_of_the_books_words_are_not_missing() -> None:
    # Each was an answerable question refused on a book the checks had not been tuned on (docs/retrieval.md).
    assert CODE_BOOK.missing("He didn't compare it to languages, did he? Why aren't they printed?") == []
    assert CODE_BOOK.missing("I wrote v.iter().map(|x| x + 1) and nothing printed. Why?") == []
    assert CODE_BOOK.missing("what can iterators do that ordinary fns can't?") == []  # "fn"
    assert CODE_BOOK.missing("can i redo the binding further down?") == []  # "do"
    assert CODE_BOOK.missing("Are the two types incompatible?") == []  # "compatible"
    # What the book never names is still missing: the module, not the student's own variable before the dot.
    assert CODE_BOOK.missing("How do I call sklearn.metrics on my results?") == ["sklearn.metrics"]
    assert CODE_BOOK.missing("How do I turn my iterators into json with serde?", words=True) == ["serde"]
    # A name that merely ends like a superlative is checked; an inflected English word is not.
    assert CODE_BOOK.missing("how do I make network requests with reqwest?") == ["reqwest"]
    assert CODE_BOOK.missing("why was nothing printed when the iterator thawed?") == []


def test_a_language_the_student_compares_with_and_an_acronyms_plural_are_not_missing_names() -> None:
    # Answerable questions of a book no rule was tuned on (the Elixir guide), refused for these names before.
    web = Vocabulary.of(["Parse the URL first. A protocol lets each type supply its own version of a function."])
    assert web.missing("coming from Java, is there something like an interface for that?") == []
    assert web.missing("in Python I'd write a for loop here. what do I use instead?") == []
    assert web.missing("how do I format a float with padding, C-style?") == []
    assert web.missing("my regex for matching URLs is unreadable") == []  # the book's "URL"
    # Named as the subject, the same names are missing; so is an acronym the book has in no form.
    assert web.missing("How do I call Java code from here?") == ["Java"]
    assert web.missing("How do I run it in Python instead?") == ["Python"]
    assert web.missing("Which APIs does it have?") == ["APIs"]


RUST_LIKE = Vocabulary.of(
    [
        "Publish the crate from its GitHub repository; the actions of the compiler are logged to the terminal.",
        "Two crates can depend on each other through Cargo.toml; the standard library is always there.",
    ]
)


def test_a_product_name_in_camel_case_and_the_name_before_crate_are_checked_as_names() -> None:
    # Both were in-domain questions the Rust book does not answer, passed because each word is in the book.
    assert RUST_LIKE.missing("How do I set up GitHub Actions to run cargo test?", words=False) == ["GitHub Actions"]
    assert RUST_LIKE.missing("how do i add logging with the tracing crate", words=False) == ["tracing"]
    # The book's own names and everyday words before "crate" are not missing.
    assert RUST_LIKE.missing("Where is the GitHub repository of a crate?", words=False) == []
    assert RUST_LIKE.missing("Can two crates depend on each other?", words=False) == []
    assert RUST_LIKE.missing("Is the standard library always there?", words=False) == []


def test_the_name_of_whose_view_is_asked_is_not_missing_but_a_name_asked_about_is() -> None:
    # The author's name is on the title page, which the chapters leave out: "Veblen" is in no chunk of his book.
    essay = Vocabulary.of(["The leisure class spends on goods that show its standing; a cat is less reputable."])
    for question in (
        "According to Veblen, what was the first property?",
        "Why does Veblen rank cats below dogs?",
        "What's Veblen's problem with cats?",
        "what did Veblen make of cats?",
        "What did Thorstein Veblen think of cats?",
        "What does Professor Veblen say about cats?",
        "What did Mr. Veblen think of cats?",
    ):
        assert essay.missing(question, words=False) == [], question
    assert essay.missing("Did Veblen agree with Keynes about spending?", words=False) == ["Keynes"]
    assert essay.missing("How is his idea different from Bourdieu's cultural capital?", words=False) == ["Bourdieu"]
    # A tool supports, uses or makes things too: those verbs are not a view, and its name still refuses.
    assert essay.missing("Does Kubernetes support the leisure class?", words=False) == ["Kubernetes"]
    assert essay.missing("Does Docker make cats reputable?", words=False) == ["Docker"]
    assert essay.missing("Which goods does Veblen show?", words=False) == ["Veblen"]
    # In lower case the name is a plain word, rare enough to count; in those frames it is the author's too.
    assert essay.missing_words("what does veblen think of tariffs?", 4.0) == ["tariffs"]
    assert essay.missing_words("which goods would veblen show?", 4.0) == ["veblen"]


def test_the_students_own_names_in_their_code_are_not_missing_but_a_looked_up_name_is() -> None:
    guide = Vocabulary.of(["Use begin, rescue and ensure: a variable assigned in begin may be Nil in ensure."])
    question = "In `begin; a = 1; do_risky; ensure; puts a + 1; end` I get Nil. Why?"
    assert guide.missing(question, words=False) == []
    assert guide.missing("How do I call `do_risky` from ensure?", words=False) == ["do_risky"]  # looked up
    assert guide.missing("Why does `x = Kemal.run(port)` fail in begin?", words=False) == ["Kemal"]  # a module
    # A member the question names on its own too is the student's; one it does not is looked up.
    assert guide.missing("If secret is private, can I call other.secret in ensure?", words=False) == []
    assert guide.missing("Can I call tokio.spawn in ensure?", words=False) == ["tokio.spawn"]
    # A camelCase name of their own is theirs too; the book's types in the same code still count, each alone.
    scala = Vocabulary.of(["In Scala 3 a method is lifted to a function value: List(f) works without f _."])
    question = "In Scala 2 `val fs = List(isLessThan)` gave me an error. Do I still need the underscore?"
    assert scala.missing(question, words=False) == []  # was "Scala List" and "LessThan"
    assert scala.missing("Does Scala 2 `List(Vector)` work?", words=False) == ["Vector"]


def test_a_name_runs_on_only_over_single_spaces() -> None:
    assert distinctive_terms("Can I use Core Data with Swift?") == ["Core Data", "Swift"]
    assert distinctive_terms("Is Tokio, Serde or Rayon better?") == ["Tokio", "Serde", "Rayon"]
    assert distinctive_terms("In Scala 2 List(x) fails") == ["Scala", "List"]


MEMOIR = Vocabulary.of(
    [
        "When I wrote the following pages I lived alone, in the woods, in a house which I had built myself.",
        "My neighbours asked what I got to eat; I kept a bean field and hoed it every morning of my first summer.",
        "The railroad passes by my house, and its whistle reaches me in the woods; Emerson's woodlot lies beyond.",
    ]
)


def test_a_single_missing_name_in_a_book_told_in_the_first_person_is_taken_for_the_narrators() -> None:
    assert MEMOIR.first_person and not ORCHARD.first_person
    assert MEMOIR.missing("Why did Thoreau grow beans in his field?") == []  # the narrator is never named
    # A second name still refuses; the first is whose view is asked, so only the second is named.
    assert MEMOIR.missing("What did Thoreau think of Karl Marx?") == ["Karl Marx"]
    assert MEMOIR.missing("Did Thoreau keep his accounts in Excel?") == ["Thoreau", "Excel"]
    assert MEMOIR.missing("How do I run it in Kubernetes?") == []  # one missing name: the rule's known cost
    assert ORCHARD.missing("Why did Thoreau grow apples?") == ["Thoreau"]  # a book not told in the first person
    assert MEMOIR.missing("What does ros2_control do?") == ["ros2_control"]  # an identifier is never a narrator
    # A question that names someone the book names (Emerson) has named who acts already: the name the book lacks
    # is not the narrator's.
    assert MEMOIR.missing("Did Emerson ever visit Krakatoa?") == ["Krakatoa"]
    assert MEMOIR.missing("What did Thoreau think of Emerson's woodlot?") == []  # whose view: still the narrator's


BOOK = {
    "site.md": "# Site and Sun\n\nAn apple tree needs at least six hours of direct sun a day in summer. Avoid frost "
    "pockets at the bottom of slopes, where cold air settles on still nights.\n",
    "diseases.md": "# Diseases of Apple Trees\n\n## Scab\n\nApple scab shows as olive-brown spots on the leaves and "
    "cracked, corky patches on the fruit. Rake up and burn the fallen leaves in autumn, and prune to let air "
    "through the canopy.\n\n## Canker\n\nCanker sinks into the bark of the branches. Cut the diseased wood back to "
    "clean, healthy growth in dry weather and paint the wounds.\n",
    "planting.md": "# Planting\n\nDig a hole three times as wide as the roots and no deeper than they are. Stake "
    "the tree on the side of the prevailing wind.\n\n## Mycorrhizae\n\nSprinkle the fungal powder on the roots "
    "before you fill the hole back in.\n",
}


@pytest.fixture
def orchard_book(tmp_path: Path, qdrant: QdrantClient, embeddings: LocalEmbeddings, settings: Settings) -> Path:
    folder = tmp_path / "orchard"
    folder.mkdir()
    for name, text in BOOK.items():
        (folder / name).write_text(text, encoding="utf-8")
    assert not ingest_into(qdrant, embeddings, settings, folder).failed
    return folder


async def _answer(
    question: str, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> dict[str, object]:
    retriever = BookRetriever.from_settings(build_vector_store(qdrant, settings, embeddings), settings)
    vocabulary = BookVocabulary(settings.qdrant_collection)
    vocabulary.read_now(qdrant)
    chain = build_answer_chain(retriever, None, settings, vocabulary=vocabulary)
    return dict(await chain.ainvoke(question))


@pytest.mark.integration
async def test_a_question_about_a_rare_thing_the_book_never_mentions_is_refused_naming_it(
    orchard_book: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    answer = await _answer("How do I protect my apple trees from erwinia?", settings, qdrant, embeddings)
    assert answer["mode"] == "not_in_book" and answer["sources"] == []
    text = str(answer["answer"])
    assert text.startswith("The book does not mention “erwinia”, so it cannot answer this.")
    closest = text.split("The closest sections: ", 1)[1]
    assert "Diseases of Apple Trees" in closest  # where a reader would look instead


@pytest.mark.integration
async def test_an_uncommon_word_refuses_when_no_passage_sentence_comes_near(
    settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    # The project's sample book: its passages pass the cosine gate for this question, but none has a sentence near it.
    assert not ingest_into(qdrant, embeddings, settings, SAMPLE_BOOK).failed
    question = "What do I need for organic certification of my orchard?"
    retriever = BookRetriever.from_settings(build_vector_store(qdrant, settings, embeddings), settings)
    found = retriever.invoke(question)
    assert max(d.metadata["score"] for d in found) >= settings.retrieval_score_threshold  # not the gate's refusal
    assert max(d.metadata.get("sentence_score") or 0.0 for d in found) < settings.retrieval_sentence_threshold
    answer = await _answer(question, settings, qdrant, embeddings)
    assert answer["mode"] == "not_in_book"
    assert str(answer["answer"]).startswith("The book does not mention “organic certification”")


@pytest.mark.integration
async def test_a_question_no_passage_is_close_to_still_names_what_the_book_lacks(
    orchard_book: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    question = "What is the capital of Mongolia?"
    retriever = BookRetriever.from_settings(build_vector_store(qdrant, settings, embeddings), settings)
    best = max(d.metadata["score"] for d in retriever.invoke(question))
    assert best < settings.retrieval_score_threshold  # refused by the threshold anyway: the message says why
    answer = await _answer(question, settings, qdrant, embeddings)
    assert answer["mode"] == "not_in_book" and answer["sources"] == []
    assert str(answer["answer"]).startswith("The book does not mention “Mongolia”, so it cannot answer this.")


@pytest.mark.integration
async def test_a_question_naming_the_author_is_answered_and_one_naming_another_name_is_refused_for_it(
    orchard_book: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    # The author's name is on no page of the book, as in a book's chapters without their title page.
    answer = await _answer("According to Hollis, how wide should the planting hole be?", settings, qdrant, embeddings)
    assert answer["mode"] == "extractive"
    assert any("three times as wide" in source.text for source in answer["sources"])  # type: ignore[attr-defined]
    answer = await _answer("What does Hollis think of planting with Kubernetes?", settings, qdrant, embeddings)
    assert answer["mode"] == "not_in_book"
    assert str(answer["answer"]).startswith("The book does not mention “Kubernetes”, so it cannot answer this.")


@pytest.mark.integration
async def test_a_paraphrase_with_an_everyday_word_the_book_lacks_is_answered(
    orchard_book: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    answer = await _answer("How much sunshine does an apple tree need?", settings, qdrant, embeddings)
    assert answer["mode"] == "extractive"
    assert "six hours of direct sun" in answer["sources"][0].text  # type: ignore[index]


@pytest.mark.integration
async def test_a_passage_under_the_cosine_threshold_reaches_the_answer_by_its_best_sentence(
    orchard_book: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    question = "How much sunshine does an apple tree need?"
    strict = settings.model_copy(update={"retrieval_score_threshold": 0.99, "retrieval_sentence_threshold": 1.0})
    assert (await _answer(question, strict, qdrant, embeddings))["mode"] == "not_in_book"
    by_sentence = strict.model_copy(update={"retrieval_sentence_threshold": 0.3})
    answer = await _answer(question, by_sentence, qdrant, embeddings)
    assert answer["mode"] == "extractive"
    [first, *_] = answer["sources"]  # type: ignore[misc]
    assert "six hours of direct sun" in first.text
    assert Settings(_env_file=None).retrieval_sentence_threshold == 0.46  # type: ignore[call-arg]
    assert Settings(_env_file=None, embedding_model="bge-small-en-v1.5").retrieval_sentence_threshold == 1.0  # type: ignore[call-arg]


@pytest.mark.integration
async def test_the_word_check_can_be_turned_off_leaving_the_names_check(
    orchard_book: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    names_only = settings.model_copy(update={"refusal_term_check": "names"})
    answer = await _answer("How do I protect my apple trees from fire blight?", names_only, qdrant, embeddings)
    assert answer["mode"] == "extractive"  # above the cosine threshold: only the word check refused it
    answer = await _answer("How do I protect my Bramley trees from canker?", names_only, qdrant, embeddings)
    assert str(answer["answer"]).startswith("The book does not mention “Bramley”")
    off = settings.model_copy(update={"refusal_term_check": "off"})
    answer = await _answer("How do I protect my Bramley trees from canker?", off, qdrant, embeddings)
    assert answer["mode"] == "extractive"


@pytest.mark.integration
async def test_a_word_the_book_uses_only_in_a_heading_is_a_word_of_the_book(
    orchard_book: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    vocabulary = BookVocabulary(settings.qdrant_collection).read_now(qdrant)
    assert vocabulary.missing_words("Should I add mycorrhizae when planting?") == []  # "## Mycorrhizae" only
    assert vocabulary.missing_words("Should I add biochar when planting?") == ["biochar"]
    answer = await _answer("Should I add mycorrhizae when planting?", settings, qdrant, embeddings)
    assert answer["mode"] != "not_in_book"


def _read_when_ready(vocabulary: BookVocabulary, qdrant: QdrantClient) -> Vocabulary:
    for _ in range(200):
        ready = vocabulary.current(qdrant)
        if ready is not None:
            return ready
        time.sleep(0.05)
    raise AssertionError("the vocabulary was never read again")


@pytest.mark.integration
def test_a_chapter_replaced_elsewhere_by_one_of_as_many_chunks_is_read_again(
    orchard_book: Path, settings: Settings, qdrant: QdrantClient, embeddings: LocalEmbeddings
) -> None:
    """An ingest in another process (a CI job writing to the Qdrant server the API reads) cannot tell the API to
    read the vocabulary again, and a revised chapter may keep its number of chunks: the file hashes show it."""
    vocabulary = BookVocabulary(settings.qdrant_collection)
    assert _read_when_ready(vocabulary, qdrant).missing_words("Should I add biochar when planting?") == ["biochar"]
    count = qdrant.count(settings.qdrant_collection, exact=True).count
    (orchard_book / "planting.md").write_text(
        BOOK["planting.md"].replace("Sprinkle the fungal powder", "Sprinkle biochar and the fungal powder"),
        encoding="utf-8",
    )
    assert not ingest_into(qdrant, embeddings, settings, orchard_book).failed  # no forget(): as if elsewhere
    assert qdrant.count(settings.qdrant_collection, exact=True).count == count
    assert _read_when_ready(vocabulary, qdrant).missing_words("Should I add biochar when planting?") == []


def test_an_acronym_in_the_models_vocabulary_is_a_name_but_a_shouted_common_word_is_not() -> None:
    voyage = Vocabulary.of(["The tortoises of the Galapagos islands are protected by no law; the sailors eat them."])
    assert voyage.missing("How does UNESCO protect the tortoises?", words=False) == ["UNESCO"]
    assert voyage.missing("How does DNA differ between the tortoises?", words=False) == ["DNA"]
    assert voyage.missing("What is the BEST island for tortoises?", words=False) == []  # emphasis
    assert voyage.missing("Do the sailors NEVER eat the tortoises?", words=False) == []
