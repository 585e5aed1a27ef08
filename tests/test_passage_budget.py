"""The chat model's share of each passage (chains/passage_budget.py): every passage whole when they fit, else the
short ones whole and the long ones cut to what is left, around the chunk each was found by, between words."""

from __future__ import annotations

from chains.passage_budget import ELLIPSIS, excerpt, passage_rooms


def test_passages_that_fit_are_whole_and_an_unlimited_budget_keeps_everything() -> None:
    assert passage_rooms([100, 200, 300], 600) == [100, 200, 300]
    assert passage_rooms([100, 200, 30_000], 0) == [100, 200, 30_000]


def test_over_the_budget_short_passages_stay_whole_and_the_long_ones_share_the_rest() -> None:
    rooms = passage_rooms([5_000, 300, 12_000, 200], 3_000)
    assert rooms[1] == 300 and rooms[3] == 200  # under an equal share (750): whole
    assert rooms[0] == rooms[2] == 1_250  # the rest, shared
    assert sum(rooms) <= 3_000
    assert passage_rooms([10, 10, 10], 1) == [0, 0, 1]  # never more than the budget, however small


def test_an_excerpt_is_centred_on_the_chunk_it_was_found_by_and_cut_between_words() -> None:
    words = [f"w{i:03d}" for i in range(400)]  # 5 characters a word with its space
    text = " ".join(words)
    found = text.index("w200"), text.index("w210") + 4
    piece = excerpt(text, 200, found)
    inner = piece.removeprefix(ELLIPSIS + " ").removesuffix(" " + ELLIPSIS)
    assert piece.startswith(ELLIPSIS) and piece.endswith(ELLIPSIS)
    assert inner in text and len(inner) <= 200
    assert all(w in inner.split() for w in words[200:211]), "the chunk found is inside"
    assert inner.split()[0] in words and inner.split()[-1] in words, "no word cut in half"
    # Without a chunk span (a passage that is one chunk), its start; a whole passage is left as it is.
    assert excerpt(text, 50).startswith("w000 ") and excerpt(text, 50).endswith(ELLIPSIS)
    assert excerpt(text, len(text)) == text
    # A chunk longer than the room: its start.
    assert excerpt(text, 30, (text.index("w100"), text.index("w300"))).startswith(f"{ELLIPSIS} w100")
