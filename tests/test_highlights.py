"""Highlights: the sentences that answer, as offsets into the passage, scored with the real embedding model."""

from __future__ import annotations

import pytest

from chains.embeddings import LocalEmbeddings
from chains.highlights import choose, highlight_passages, quote, split_sentences

PRUNING = (
    "Most pruning is done in late winter, while the trees are dormant and their shape is easy to see. Apples and "
    "pears are pruned then. Stone fruit is different: cherries and plums are pruned in summer, after harvest, "
    "because winter cuts let in silver leaf disease. Always cut just above an outward-facing bud."
)
PLANTING = (
    "Dig the hole twice as wide as the root ball but no deeper. Set the tree so that the graft union stays a "
    "hand's width above the soil. Backfill with the soil you dug out."
)


def test_sentences_keep_their_offsets_and_short_fragments_join_a_neighbour() -> None:
    text = "First sentence here. Ok. Then the third one, longer.\n\n- a list item\n- another list item"
    sentences = split_sentences(text)
    assert all(text[s.start : s.end] == s.text for s in sentences)
    assert sentences[0].text == "First sentence here. Ok."
    assert [s.text for s in sentences[-2:]] == ["- a list item", "- another list item"]


def test_choose_keeps_the_best_and_a_close_second_in_text_order() -> None:
    assert choose([0.2, 0.9, 0.86, 0.1], best_overall=0.9) == [1, 2]
    assert choose([0.2, 0.5, 0.1], best_overall=0.9) == [1]  # a weak passage still shows its best sentence


@pytest.mark.integration
def test_the_answering_sentence_is_highlighted(embeddings: LocalEmbeddings) -> None:
    question = "When should I prune cherry trees?"
    spans = highlight_passages(
        question, embeddings.embed_query(question), [PRUNING, PLANTING], embeddings.embed_documents
    )
    pruning, planting = spans
    assert all(0 <= start < end <= len(PRUNING) for start, end in pruning)
    assert "cherries and plums are pruned in summer" in quote(PRUNING, pruning)
    assert len(planting) == 1


def test_lexical_highlights_need_no_model() -> None:
    question = "When should I prune cherry trees?"
    (pruning,) = highlight_passages(question, [], [PRUNING], None)
    assert "cherries and plums are pruned in summer" in quote(PRUNING, pruning)
