"""The bench-only term check (bench/prototypes.py): distinctive question terms the book never uses."""

from __future__ import annotations

from bench.prototypes import BookVocabulary, distinctive_terms

BOOK = BookVocabulary.of(
    [
        "# Closures\n\nClosures capture constants from their context. A closure is said to escape a function...",
        "Use a URLSession-free design: the `DispatchGroup` type waits. Thoreau borrowed an axe near Walden Pond.",
    ]
)


def test_identifiers_names_and_rare_words_are_distinctive_common_words_are_not() -> None:
    assert distinctive_terms("How do I write tests with XCTest?") == ["XCTest"]
    assert distinctive_terms("What did Thoreau say about John Brown's raid?") == ["Thoreau", "John Brown"]
    assert distinctive_terms("how do i deploy it on kubernetes") == ["kubernetes"]
    # Stop words, contractions, inflections and common words are not: a paraphrase in plain words has none.
    assert distinctive_terms("what's the way to bail out of a function when it can't go on?") == []
    assert distinctive_terms("Which birds were singing while the leaves stopped moving?") == []


def test_a_term_the_book_never_uses_is_missing_and_one_it_uses_is_not() -> None:
    assert BOOK.missing("How do I add a package with CocoaPods?") == ["CocoaPods"]
    assert BOOK.missing("How do I wait for tasks with DispatchGroup?") == []
    assert BOOK.missing("Where did Thoreau get his axe?") == []
    assert BOOK.missing("What did Thoreau think of Karl Marx?") == ["Karl Marx"]


def test_a_name_of_several_words_must_occur_as_that_phrase() -> None:
    assert BOOK.missing("Why did he go to Walden Pond?") == []
    assert BOOK.missing("Did he visit Pond Walden?") == ["Pond Walden"]  # both words occur, not as this name


def test_without_the_rare_word_rule_only_identifiers_and_names_count() -> None:
    question = "the leaky hut where XCTest met Karl Marx"
    assert distinctive_terms(question, rare_words=False) == ["XCTest", "Karl Marx"]
    assert "leaky" in distinctive_terms(question)
